"""A TCP proxy on loopback whose connections can be frozen: a half-open network.

``freeze()`` makes every connection open at that moment stop forwarding in
both directions while its sockets stay open, as when the path to a server
dies silently. New connections are forwarded normally.

``swallow_replies()`` forwards commands to the server but drops its answers:
the commands run, and the client never hears that they did (a reply lost on
the way back). ``restore()`` forwards everything again.
"""

from __future__ import annotations

import select
import socket
import threading
from typing import List


class _Link:
    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.frozen = False
        self.swallow = False


class FreezableProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._links: List[_Link] = []
        self._threads: List[threading.Thread] = []
        self._swallow_new = False
        self._spawn(self._accept, "proxy-accept")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def freeze(self) -> int:
        """Blackhole the connections open now; returns how many."""
        with self._lock:
            for link in self._links:
                link.frozen = True
            return len(self._links)

    def swallow_replies(self, new_connections: bool = True) -> int:
        """Drop what the server sends on the connections open now (and, with
        ``new_connections``, on those opened later); returns how many are open."""
        with self._lock:
            self._swallow_new = new_connections
            for link in self._links:
                link.swallow = True
            return len(self._links)

    def restore(self) -> None:
        """Forward the answers of every connection again, from now on."""
        with self._lock:
            self._swallow_new = False
            for link in self._links:
                link.swallow = False

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            links = list(self._links)
        for link in links:
            for sock in (link.client, link.server):
                try:
                    sock.close()
                except OSError:
                    pass
        for thread in self._threads:
            thread.join(5)

    def _spawn(self, target, name: str, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([self._listener], [], [], 0.1)
                if not readable:
                    continue
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            link = _Link(client, server)
            with self._lock:
                link.swallow = self._swallow_new
                self._links.append(link)
            self._spawn(self._pump, "proxy-pump", link)

    def _pump(self, link: _Link) -> None:
        pairs = {link.client: link.server, link.server: link.client}
        watch = list(pairs)
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select(watch, [], [], 0.1)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        if link.frozen:  # a blackhole: the other side sees nothing
                            watch.remove(sock)
                            continue
                        return
                    if link.frozen or (link.swallow and sock is link.server):
                        continue
                    pairs[sock].sendall(data)
        except OSError:
            return
        finally:
            for sock in pairs:
                try:
                    sock.close()
                except OSError:
                    pass
