"""TLS: the ``ssl_*`` query parameters of a Redis URL, read alike for every URL kind.

``rediss://``, ``rediss+sentinel://`` and ``rediss+cluster://`` URLs connect
over TLS; their ``ssl_*`` query parameters (the names and values redis-py's
``from_url`` reads) are read here, once, into redis-py keyword arguments, so
that every release of redis-py mas_sync takes, and every connection of a
Sentinel or Cluster client, gets the same settings. A URL without TLS takes
no ``ssl_*`` parameter. Failed handshakes are told apart here too, for error
messages that say what is wrong.
"""

from __future__ import annotations

import functools
import inspect
import os
import ssl
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import unquote_plus

import redis

from .urls import _user_info_end

#: The schemes that connect over TLS.
TLS_SCHEMES = ("rediss://", "rediss+sentinel://", "rediss+cluster://")
#: Parameters a URL without TLS must not take, with the scheme to use instead.
_PLAIN_TO_TLS = {"redis://": "rediss://", "redis+sentinel://": "rediss+sentinel://",
                 "redis+cluster://": "rediss+cluster://", "unix://": "rediss://"}

_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off", ""}
_VERSIONS = {
    "tlsv1": ssl.TLSVersion.TLSv1, "tlsv1.0": ssl.TLSVersion.TLSv1, "1.0": ssl.TLSVersion.TLSv1,
    "tlsv1.1": ssl.TLSVersion.TLSv1_1, "1.1": ssl.TLSVersion.TLSv1_1,
    "tlsv1.2": ssl.TLSVersion.TLSv1_2, "1.2": ssl.TLSVersion.TLSv1_2,
    "tlsv1.3": ssl.TLSVersion.TLSv1_3, "1.3": ssl.TLSVersion.TLSv1_3,
}


def _cert_reqs(value: str) -> str:
    if value.lower() not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs must be one of none, optional, required, not {value!r}")
    return value.lower()


def _bool(name: str) -> Callable[[str], bool]:
    def parse(value: str) -> bool:
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise ValueError(f"{name} must be true or false, not {value!r}")

    return parse


def _version(value: str) -> ssl.TLSVersion:
    key = value.lower().replace("_", ".")
    if key in _VERSIONS:
        return _VERSIONS[key]
    if value.isdigit() and int(value) in {v.value for v in _VERSIONS.values()}:
        return ssl.TLSVersion(int(value))  # redis-py 8 reads the number
    raise ValueError(f"ssl_min_version must be TLSv1_2 or TLSv1_3 (or 1.2, 1.3), not {value!r}")


def _text(value: str) -> str:
    return value


#: The parameters mas_sync reads, and how.
PARAMETERS: Dict[str, Callable[[str], Any]] = {
    "ssl_cert_reqs": _cert_reqs,
    "ssl_check_hostname": _bool("ssl_check_hostname"),
    "ssl_ca_certs": _text,
    "ssl_ca_path": _text,
    "ssl_ca_data": _text,
    "ssl_certfile": _text,
    "ssl_keyfile": _text,
    "ssl_password": _text,
    "ssl_min_version": _version,
    "ssl_ciphers": _text,
}
_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
#: Parameters redis-py does not hand on to the nodes of a cluster.
_NOT_FOR_CLUSTER = ("ssl_min_version", "ssl_ciphers")


def split_query(url: str) -> Tuple[str, List[Tuple[str, str]]]:
    """``url`` without its query, and the query's ``(name, value)`` pairs, decoded."""
    scheme, sep, rest = url.partition("://")
    # The query starts at the first "?" after the user info: a password may
    # hold one (see urls._user_info_end).
    at = _user_info_end(rest)
    question = rest.find("?", max(at, 0))
    if question < 0:
        return url, []
    pairs = []
    for parameter in rest[question + 1:].split("&"):
        if parameter:
            name, _, value = parameter.partition("=")
            pairs.append((unquote_plus(name), unquote_plus(value)))
    return f"{scheme}{sep}{rest[:question]}", pairs


def uses_tls(url: str) -> bool:
    """True for a URL whose connections are TLS ones."""
    return url.startswith(TLS_SCHEMES)


def tls_settings(url: str, check_files: bool = False) -> Optional[Dict[str, Any]]:
    """The redis-py keyword arguments (``ssl_*``) of ``url``'s TLS; None for a URL without TLS.

    Defaults: the server's certificate is verified (``ssl_cert_reqs=required``)
    against ``ssl_ca_certs`` (or ``ssl_ca_path``, ``ssl_ca_data``, or the
    system's CAs), and so is its host name (``ssl_check_hostname``, true
    unless ``ssl_cert_reqs=none``), with every redis-py release.

    Args:
        url: Any URL mas_sync takes.
        check_files: Check that the files and folder named exist.

    Raises:
        ValueError: an ``ssl_*`` parameter in a URL without TLS, an unknown
            ``ssl_*`` parameter, a bad value, a file that is not there, or a
            parameter the installed redis-py cannot apply.
    """
    _, pairs = split_query(url)
    given = [(name, value) for name, value in pairs if name.startswith("ssl_")]
    if not uses_tls(url):
        if given:
            scheme = url.partition("://")[0] + "://"
            raise ValueError(
                f"{given[0][0]} is a TLS setting: use a {_PLAIN_TO_TLS.get(scheme, 'rediss://')}"
                " URL to connect over TLS"
            )
        return None
    settings: Dict[str, Any] = {}
    for name, value in given:
        parse = PARAMETERS.get(name)
        if parse is None:
            raise ValueError(
                f"unknown TLS parameter {name!r}; mas_sync reads {', '.join(PARAMETERS)}"
            )
        settings[name] = parse(value)
    if "ssl_keyfile" in settings and "ssl_certfile" not in settings:
        raise ValueError("ssl_keyfile needs ssl_certfile (the client certificate)")
    verify = settings.setdefault("ssl_cert_reqs", "required") != "none"
    if settings.setdefault("ssl_check_hostname", verify) and not verify:
        raise ValueError("ssl_check_hostname needs a verified certificate, not ssl_cert_reqs=none")
    missing = [name for name in settings if name not in _ssl_connection_parameters()]
    if missing:
        raise ValueError(
            f"{missing[0]} needs a newer redis-py than the installed {redis.__version__}"
        )
    if url.startswith("rediss+cluster://"):
        for name in _NOT_FOR_CLUSTER:
            if name in settings:
                raise ValueError(
                    f"{name} is not supported with rediss+cluster:// (redis-py does not"
                    " hand it on to the cluster's nodes)"
                )
    if check_files:
        for name in _FILES:
            if name in settings and not os.path.isfile(settings[name]):
                raise ValueError(f"{name}: there is no file {settings[name]}")
        if "ssl_ca_path" in settings and not os.path.isdir(settings["ssl_ca_path"]):
            raise ValueError(f"ssl_ca_path: there is no folder {settings['ssl_ca_path']}")
    return settings


@functools.lru_cache(maxsize=None)
def _ssl_connection_parameters() -> frozenset:
    return frozenset(inspect.signature(redis.connection.SSLConnection.__init__).parameters)


def check_only_tls_query(url: str, kind: str) -> None:
    """Refuse a query parameter other than the ``ssl_*`` ones (Sentinel and Cluster URLs).

    Raises:
        ValueError: one is there.
    """
    for name, _ in split_query(url)[1]:
        if not name.startswith("ssl_"):
            raise ValueError(
                f"a {kind} URL takes no query parameter but the ssl_* ones, not {name!r}"
            )


def describe_tls_failure(exc: BaseException, connection: Any = None) -> Optional[str]:
    """What went wrong, in words, when ``exc`` ended a TLS connect; None if not TLS's doing.

    Args:
        exc: The error of the connect (handshake, or the first command on it).
        connection: The redis-py connection, to tell whether it showed a
            client certificate.
    """
    if connection is not None and not hasattr(connection, "cert_reqs"):
        return None  # not a TLS connection
    texts = [str(e) for e in _chain(exc)]
    for text in texts:
        if "TLS: " in text:  # told already, deeper down
            return text[text.index("TLS: "):]
    text = " ".join(texts)
    has_cert = getattr(connection, "certfile", None) is not None
    if "certificate verify failed" in text:
        reason = text.split("certificate verify failed", 1)[1]
        reason = reason.split("(_ssl", 1)[0].split(")", 1)[0].strip(" :.")
        if "Hostname mismatch" in text or "IP address mismatch" in text:
            return (
                f"TLS: the server's certificate is not for this host ({reason}); connect"
                " by a name the certificate holds, or set ssl_check_hostname=false"
            )
        return (
            f"TLS: the server's certificate was not accepted (certificate verify failed:"
            f" {reason}); ssl_ca_certs must name the CA that signed it"
        )
    if "CERTIFICATE_REQUIRED" in text:
        return (
            "TLS: the server wants a client certificate (mutual TLS) and none was shown;"
            " give one with ssl_certfile and ssl_keyfile"
        )
    if not has_cert and _closed_at_once(text):
        return (
            "TLS: the server closed the connection at once: it may want a client"
            " certificate (mutual TLS), and none was shown; give one with ssl_certfile"
            " and ssl_keyfile"
        )
    for alert in ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN",
                  "CERTIFICATE_EXPIRED", "ACCESS_DENIED"):
        if alert in text:
            return (
                f"TLS: the server refused the client certificate ({alert.lower()});"
                " ssl_certfile must be signed by a CA the server trusts"
            )
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
        return "TLS: the server does not speak TLS on this port (a redis:// URL?)"
    if isinstance(exc, ssl.SSLError) or any(isinstance(e, ssl.SSLError) for e in _chain(exc)):
        return f"TLS handshake failed: {text}"
    return None


def _closed_at_once(text: str) -> bool:
    return any(s in text for s in ("EOF occurred in violation of protocol",
                                   "Connection closed by server", "Connection reset by peer",
                                   "UNEXPECTED_EOF"))


def _chain(exc: BaseException) -> List[BaseException]:
    seen: List[BaseException] = []
    current: Optional[BaseException] = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen
