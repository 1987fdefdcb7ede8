"""Certificates made on the fly with the ``openssl`` command line, for Redis over TLS in tests."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from typing import Dict, Optional, Sequence
from urllib.parse import quote

#: Days the certificates are valid: they live as long as a test run.
DAYS = 2

# The extensions of each certificate. Python 3.13 verifies strictly
# (VERIFY_X509_STRICT): a CA needs keyUsage, a leaf its key identifiers.
_CA_EXTENSIONS = (
    "basicConstraints = critical, CA:TRUE\n"
    "keyUsage = critical, keyCertSign, cRLSign\n"
    "subjectKeyIdentifier = hash\n"
)
_LEAF_EXTENSIONS = (
    "basicConstraints = critical, CA:FALSE\n"
    "keyUsage = critical, digitalSignature, keyEncipherment\n"
    "subjectKeyIdentifier = hash\n"
    "authorityKeyIdentifier = keyid, issuer\n"
)
# The server's certificate is also the one redis-server shows when it connects
# to another server (a replica to its master, a sentinel, a cluster node).
_SERVER_EXTENSIONS = _LEAF_EXTENSIONS + "extendedKeyUsage = serverAuth, clientAuth\n"
_CLIENT_EXTENSIONS = _LEAF_EXTENSIONS + "extendedKeyUsage = clientAuth\n"
_REQ_CONFIG = "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {cn}\n"


def find_openssl() -> Optional[str]:
    """The ``openssl`` command on ``PATH``, or None."""
    return shutil.which("openssl")


class TLSCertificates:
    """A CA, a server certificate (for 127.0.0.1 and localhost), and a client certificate.

    Made with the ``openssl`` command line in a temporary folder (P-256 keys,
    unencrypted), removed by :meth:`cleanup`. Each instance has a CA of its
    own: another instance's CA does not verify these certificates.

    Args:
        name: Put in the common names, to tell several sets apart.
        hosts: The names and IP addresses the server certificate is for
            (its subject alternative names).

    Raises:
        FileNotFoundError: there is no ``openssl`` command.
        RuntimeError: ``openssl`` failed (its output is in the message).
    """

    def __init__(
        self, name: str = "mas-sync test", hosts: Sequence[str] = ("127.0.0.1", "localhost")
    ) -> None:
        openssl = find_openssl()
        if openssl is None:
            raise FileNotFoundError("no openssl command: install it (apt-get install openssl)")
        self._openssl = openssl
        self._dir: Optional[tempfile.TemporaryDirectory] = tempfile.TemporaryDirectory(
            prefix="mas-sync-tls-"
        )
        self.folder = self._dir.name
        self.ca_cert = self._path("ca.crt")
        self.ca_key = self._path("ca.key")
        self.server_cert = self._path("server.crt")
        self.server_key = self._path("server.key")
        self.client_cert = self._path("client.crt")
        self.client_key = self._path("client.key")
        try:
            self._request("ca", f"{name} CA")
            self._run("x509", "-req", "-in", self._path("ca.csr"), "-signkey", self.ca_key,
                      "-days", str(DAYS), "-out", self.ca_cert,
                      "-extfile", self._write("ca.ext", _CA_EXTENSIONS))
            names = ", ".join(
                f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}"
                for h in hosts
            )
            self._signed("server", f"{name} server",
                         f"{_SERVER_EXTENSIONS}subjectAltName = {names}\n")
            self._signed("client", f"{name} client", _CLIENT_EXTENSIONS)
        except BaseException:
            self.cleanup()
            raise

    def _path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def _write(self, name: str, text: str) -> str:
        path = self._path(name)
        with open(path, "w") as file:
            file.write(text)
        return path

    def _run(self, *args: str) -> None:
        done = subprocess.run([self._openssl, *args], capture_output=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(
                f"openssl {args[0]} failed: {done.stderr.decode(errors='replace').strip()}"
            )

    def _request(self, stem: str, common_name: str) -> None:
        config = self._write(f"{stem}.cnf", _REQ_CONFIG.format(cn=common_name))
        self._run("req", "-new", "-config", config, "-newkey", "ec",
                  "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                  "-keyout", self._path(f"{stem}.key"), "-out", self._path(f"{stem}.csr"))

    def _signed(self, stem: str, common_name: str, extensions: str) -> None:
        self._request(stem, common_name)
        self._run("x509", "-req", "-in", self._path(f"{stem}.csr"), "-CA", self.ca_cert,
                  "-CAkey", self.ca_key, "-CAcreateserial", "-days", str(DAYS),
                  "-out", self._path(f"{stem}.crt"),
                  "-extfile", self._write(f"{stem}.ext", extensions))

    def server_args(self, auth_clients: str = "yes") -> list:
        """The ``redis-server`` arguments for these files (not the port).

        Args:
            auth_clients: ``--tls-auth-clients``: ``yes`` (a client must show
                a certificate of this CA), ``optional`` or ``no``.
        """
        return [
            "--tls-cert-file", self.server_cert,
            "--tls-key-file", self.server_key,
            "--tls-ca-cert-file", self.ca_cert,
            "--tls-auth-clients", auth_clients,
        ]

    def query(self, client_cert: bool = True, ca: Optional[str] = None) -> str:
        """The query of a ``rediss://`` URL that trusts this CA (no ``?``).

        Args:
            client_cert: Show the client certificate too (mutual TLS).
            ca: Trust this CA file instead.
        """
        parameters = {"ssl_ca_certs": ca or self.ca_cert}
        if client_cert:
            parameters.update(ssl_certfile=self.client_cert, ssl_keyfile=self.client_key)
        return "&".join(f"{name}={quote(value, safe='/')}" for name, value in parameters.items())

    def client_kwargs(self, client_cert: bool = True) -> Dict[str, object]:
        """redis-py keyword arguments for a client that trusts this CA (host names unchecked)."""
        kwargs: Dict[str, object] = {"ssl": True, "ssl_ca_certs": self.ca_cert,
                                     "ssl_cert_reqs": "required", "ssl_check_hostname": False}
        if client_cert:
            kwargs.update(ssl_certfile=self.client_cert, ssl_keyfile=self.client_key)
        return kwargs

    def cleanup(self) -> None:
        """Remove the files."""
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> "TLSCertificates":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()


@functools.lru_cache(maxsize=None)
def tls_unsupported(executable: Optional[str]) -> Optional[str]:
    """Why Redis over TLS cannot be tested with ``executable``, or None when it can.

    Reasons: no ``openssl`` command, no redis-server, or a redis-server built
    without TLS (one started with ``--tls-port`` does not answer over TLS).
    The answer is kept for the process.
    """
    if find_openssl() is None:
        return "no openssl command to make certificates with (apt-get install openssl)"
    if executable is None:
        return "no redis-server"
    from ._server import RedisServer

    with TLSCertificates("probe") as certificates:
        server = RedisServer(executable, tls=certificates, startup_timeout=5.0)
        try:
            server.start()
        except RuntimeError as exc:
            return f"{executable} does not serve TLS (built without it?): {exc}"
        finally:
            server.stop()
    return None
