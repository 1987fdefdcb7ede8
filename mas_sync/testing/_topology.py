"""Redis topologies on loopback for fault tests: Sentinel groups and clusters."""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple, TypeVar

import redis

from ._server import RedisServer, free_port

if TYPE_CHECKING:  # pragma: no cover
    from ._tls import TLSCertificates

Address = Tuple[str, int]
T = TypeVar("T")


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout} s")
        pause.wait(0.05)


def _ask(server: RedisServer, question: Callable[[redis.Redis], T]) -> T:
    """Ask ``server`` one question, on a connection of its own."""
    with server.client(socket_timeout=2, socket_connect_timeout=1,
                       decode_responses=True) as client:
        return question(client)


def _sentinel(client: redis.Redis, *args: str) -> Any:
    """A SENTINEL subcommand's reply, not parsed.

    redis-py's ``sentinel_sentinels()`` and ``sentinel_get_master_addr_by_name()``
    pass options that its own reply parsers refuse on a plain client in 7.0
    (``TypeError: ... unexpected keyword argument 'return_responses'``).
    """
    return client.execute_command("SENTINEL", *args)


# A cluster node also listens on its bus port, its port + 10000, so the port
# must be at most 55535 and the one 10000 above it free as well.
_BUS_OFFSET = 10000


def _free_on_loopback(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _cluster_port() -> int:
    """A free port on 127.0.0.1 whose cluster bus port is free too."""
    for _ in range(200):
        port = free_port()
        if port + _BUS_OFFSET <= 65535 and _free_on_loopback(port + _BUS_OFFSET):
            return port
    raise RuntimeError("found no free pair of ports p and p + 10000 on 127.0.0.1")


class _ClusterNode(RedisServer):
    """A redis-server in cluster mode, on a port whose bus port is free too."""

    def _pick_port(self) -> int:
        return _cluster_port()


class SentinelGroup:
    """A master, its replicas and a quorum of sentinels, each its own process.

    Use it as a context manager; every process is stopped on exit, also when
    starting failed half-way.

    Args:
        service: The name the sentinels monitor the master under.
        replicas: How many replicas.
        sentinels: How many sentinels (the quorum is a majority).
        down_after: Seconds without an answer before a sentinel calls the
            master down.
        failover_timeout: Sentinel's ``failover-timeout``, in seconds.
        tls: Every server and sentinel serves TLS only, with these
            certificates (clients must show the client certificate), and
            they talk TLS to each other; :attr:`url` is then a
            ``rediss+sentinel://`` one.
    """

    def __init__(
        self,
        service: str = "mymaster",
        replicas: int = 1,
        sentinels: int = 3,
        down_after: float = 0.5,
        failover_timeout: float = 3.0,
        tls: Optional["TLSCertificates"] = None,
    ) -> None:
        self.service = service
        self.tls = tls
        self.n_replicas = replicas
        self.n_sentinels = sentinels
        self.down_after = down_after
        self.failover_timeout = failover_timeout
        self.servers: List[RedisServer] = []
        self.sentinels: List[RedisServer] = []

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:p1,127.0.0.1:p2,.../{service}``.

        With TLS: ``rediss+sentinel://...?ssl_ca_certs=...&ssl_certfile=...&ssl_keyfile=...``.
        """
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        if self.tls is not None:
            return f"rediss+sentinel://{hosts}/{self.service}?{self.tls.query()}"
        return f"redis+sentinel://{hosts}/{self.service}"

    def start(self) -> "SentinelGroup":
        """Start everything and wait until the sentinels know every replica and each other."""
        try:
            master = RedisServer(tls=self.tls).start()
            self.servers.append(master)
            for _ in range(self.n_replicas):
                self.servers.append(RedisServer(
                    extra_args=["--replicaof", "127.0.0.1", str(master.port)], tls=self.tls,
                ).start())
            for replica in self.servers[1:]:
                _wait(lambda r=replica: _ask(r, lambda c: c.info("replication")).get(
                    "master_link_status") == "up", 10, "a replica did not sync")
            quorum = self.n_sentinels // 2 + 1
            config = (
                f"sentinel monitor {self.service} 127.0.0.1 {master.port} {quorum}\n"
                f"sentinel down-after-milliseconds {self.service} {int(self.down_after * 1000)}\n"
                f"sentinel failover-timeout {self.service} {int(self.failover_timeout * 1000)}\n"
            )
            for _ in range(self.n_sentinels):
                self.sentinels.append(
                    RedisServer(config=config, extra_args=["--sentinel"], tls=self.tls).start()
                )
            for sentinel in self.sentinels:
                _wait(
                    lambda s=sentinel: _ask(s, self._knows_everyone),
                    20,
                    "the sentinels did not find the replicas and each other",
                )
        except BaseException:
            self.stop()
            raise
        return self

    def _knows_everyone(self, sentinel: redis.Redis) -> bool:
        return (
            len(_sentinel(sentinel, "REPLICAS", self.service)) == self.n_replicas
            and len(_sentinel(sentinel, "SENTINELS", self.service)) == self.n_sentinels - 1
        )

    def master_address(self) -> Address:
        """The master's address, as the first sentinel that answers names it."""
        for sentinel in self.sentinels:
            try:
                answer = _ask(
                    sentinel, lambda c: _sentinel(c, "GET-MASTER-ADDR-BY-NAME", self.service)
                )
            except redis.RedisError:
                continue
            if answer:
                host, port = answer
                return host, int(port)
        raise RuntimeError("no sentinel answers")

    def server_at(self, address: Address) -> RedisServer:
        """The server process listening on ``address``."""
        for server in self.servers:
            if server.port == address[1]:
                return server
        raise KeyError(address)

    def kill_master(self) -> Address:
        """Kill the current master (SIGKILL); returns its address."""
        address = self.master_address()
        self.server_at(address).kill()
        return address

    def failover(self) -> Address:
        """Ask a sentinel for a failover with the master alive (it is demoted)."""
        address = self.master_address()
        _ask(self.sentinels[0], lambda c: c.execute_command("SENTINEL", "FAILOVER", self.service))
        return address

    def stop(self) -> None:
        """Stop every process."""
        for server in self.sentinels + self.servers:
            server.stop()
        self.sentinels = []
        self.servers = []

    def __enter__(self) -> "SentinelGroup":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def redis_version(server: RedisServer) -> Tuple[int, ...]:
    """The version of a running server, as a tuple of ints."""
    version = _ask(server, lambda c: c.info("server")["redis_version"])
    return tuple(int(x) for x in version.split("."))



class LocalCluster:
    """A Redis Cluster of ``primaries`` nodes (no replicas), each its own process.

    The slots are split evenly; ``cluster-require-full-coverage`` is off, so
    the other nodes keep serving while one is down. Requires Redis 7 or newer
    for sharded pub/sub. Use it as a context manager.

    With ``tls`` (see :class:`~mas_sync.testing.TLSCertificates`), every node
    serves TLS only (clients must show the client certificate), the cluster
    bus is TLS too, and :attr:`url` is a ``rediss+cluster://`` one.
    """

    SLOTS = 16384

    def __init__(
        self, primaries: int = 3, node_timeout: float = 1.0,
        tls: Optional["TLSCertificates"] = None,
    ) -> None:
        self.n = primaries
        self.node_timeout = node_timeout
        self.tls = tls
        self.nodes: List[RedisServer] = []

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...``.

        With TLS: ``rediss+cluster://...?ssl_ca_certs=...&ssl_certfile=...&ssl_keyfile=...``.
        """
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        if self.tls is not None:
            return f"rediss+cluster://{hosts}?{self.tls.query()}"
        return "redis+cluster://" + hosts

    def start(self) -> "LocalCluster":
        """Start the nodes, assign the slots, join them, and wait for ``cluster_state:ok``."""
        args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(int(self.node_timeout * 1000)),
            "--cluster-require-full-coverage", "no",
        ]
        if self.tls is not None:
            args += ["--tls-cluster", "yes"]
        try:
            for _ in range(self.n):
                self.nodes.append(_ClusterNode(extra_args=args, tls=self.tls).start())
            per_node = self.SLOTS // self.n
            for i, node in enumerate(self.nodes):
                first = i * per_node
                last = self.SLOTS - 1 if i == self.n - 1 else first + per_node - 1
                _ask(node, lambda c, e=i + 1: c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", e))
                _ask(node, lambda c, a=first, b=last: c.execute_command(
                    "CLUSTER", "ADDSLOTSRANGE", a, b))
            for node in self.nodes[1:]:
                _ask(self.nodes[0], lambda c, p=node.port: c.execute_command(
                    "CLUSTER", "MEET", "127.0.0.1", p))
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, timeout: float = 20.0) -> None:
        """Wait until every node reports ``cluster_state:ok`` and knows every other."""

        def ok(node: RedisServer) -> bool:
            info = _ask(node, lambda c: c.execute_command("CLUSTER", "INFO"))
            if isinstance(info, bytes):
                info = info.decode()
            text = info if isinstance(info, str) else str(info)
            return "cluster_state:ok" in text and f"cluster_known_nodes:{self.n}" in text

        for node in self.nodes:
            _wait(lambda n=node: ok(n), timeout, "the cluster did not form")

    def restart_node(self, index: int, down_for: float = 0.0) -> None:
        """Kill node ``index`` (SIGKILL) and start it again with its data and identity."""
        self.nodes[index].restart(keep_data=True, down_for=down_for)
        self.wait_ok()

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()
        self.nodes = []

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
