"""Redis URLs: the schemes mas_sync takes, and hiding their secrets in messages and logs."""

from __future__ import annotations

import re
from typing import List, Tuple
from urllib.parse import unquote, unquote_plus

#: The URL schemes mas_sync takes, as written (case matters): redis-py's
#: three, whose URLs redis-py reads, then Sentinel and Cluster, each also
#: over TLS.
REDIS_URL_SCHEMES = (
    "redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://",
    "redis+cluster://", "rediss+cluster://",
)


def check_redis_url(url: str) -> None:
    """Refuse a URL whose scheme mas_sync does not take, or whose TLS settings are bad.

    The error message for a scheme lists every scheme of
    :data:`REDIS_URL_SCHEMES`, the same wherever a URL is refused. The
    ``ssl_*`` query parameters are read as :func:`.tls.tls_settings` reads
    them (the files they name are checked on connect); a Sentinel or Cluster
    URL takes no other query parameter. The rest is checked on connect.

    Raises:
        TypeError: ``url`` is not a str.
        ValueError: an unknown scheme, bad TLS settings, or a cluster URL
            where redis-py is older than 8.1 (the URL is shown with its
            passwords redacted).
    """
    if not isinstance(url, str):
        raise TypeError(f"a Redis URL must be a str, not {type(url).__name__}")
    if url.startswith(REDIS_URL_SCHEMES):
        from .tls import check_only_tls_query, tls_settings

        try:
            if "+sentinel://" in url or "+cluster://" in url:
                check_only_tls_query(url, url.partition("://")[0])
            tls_settings(url)
            if "+cluster://" in url:
                from .cluster import check_cluster_support

                check_cluster_support()
        except ValueError as exc:
            raise ValueError(f"invalid Redis URL {redact_url(url)!r}: {exc}") from None
        return
    raise ValueError(
        f"invalid Redis URL {redact_url(url)!r}: it must start with one of"
        f" {', '.join(REDIS_URL_SCHEMES)}"
    )



def redact_url(url: str) -> str:
    """``url`` with every password replaced by ``***``, for messages and logs.

    Hidden are the password of the user info, in every form redis-py reads
    (``user:pass@``, ``:pass@``, a password holding ``@`` or ``:``: the user
    info ends at the last ``@``), a user info without ``:`` (redis-py takes
    it for a user name, but it is often a password), and the values of the
    query parameters that carry a secret (``password``, ``ssl_password``,
    any name holding ``pass``, ``pwd``, ``secret``, ``token`` or ``auth``,
    percent-encoded or not). The same goes for the ``unix://``,
    ``redis+sentinel://`` and ``redis+cluster://`` forms, and their TLS
    forms (``rediss://``, ``rediss+sentinel://``, ``rediss+cluster://``). A password holding
    an unencoded ``/`` or ``#`` (which redis-py does not read as one) is
    hidden too, and one holding ``?`` unless a ``=`` follows it in the
    password. User names are shown.
    """
    return _redact(url)[0]


def redact_text(text: str, url: str) -> str:
    """``text``, an error message about ``url``, without the secrets of ``url``.

    redis-py's own messages name the host and port only, but it may quote
    the pieces of a URL it cannot parse: a password holding an unencoded
    ``/`` is read as the port (``Port could not be cast to integer value as
    'pass'``).
    """
    secrets = set()
    for secret in _redact(url)[1]:
        pieces = [secret, unquote(secret), unquote_plus(secret), *re.split(r"[/?#@:&]", secret)]
        for piece in pieces:
            if len(piece) >= 3:  # shorter pieces would mangle the text, and tell little
                secrets.add(piece)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _redact(url: str) -> Tuple[str, List[str]]:
    """``url`` with its secrets hidden, and those secrets."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url, []
    hidden = []
    at = _user_info_end(rest)
    if at >= 0:
        user, colon, password = rest[:at].partition(":")
        hidden.append(password if colon else user)
        rest = (f"{user}:***" if colon else "***") + rest[at:]
    path, question, query = rest.partition("?")
    if question:
        parameters = []
        for parameter in query.split("&"):
            name, equals, value = parameter.partition("=")
            if equals and _SECRET_NAME.search(unquote_plus(name)):
                hidden.append(value)
                parameter = f"{name}=***"
            parameters.append(parameter)
        query = "&".join(parameters)
    return f"{scheme}://{path}{question}{query}", [h for h in hidden if h]


_SECRET_NAME = re.compile(r"pass|pwd|secret|token|auth", re.IGNORECASE)


def _user_info_end(rest: str) -> int:
    """Where the user info of ``rest`` (a URL less its ``scheme://``) ends: its "@", or -1."""
    # As redis-py (urlparse) reads it: the last "@" of the netloc, which ends
    # at the first "/", "?" or "#".
    netloc_end = min([i for i in map(rest.find, "/?#") if i >= 0], default=len(rest))
    at = rest.rfind("@", 0, netloc_end)
    if at >= 0:
        return at
    # A password holding an unencoded "/", "#" or "?", which redis-py does not
    # read as one: the last "@" before the query, or in the query before its
    # first "=" (a "?" of the password).
    question = rest.find("?")
    if question < 0:
        return rest.rfind("@")
    at = rest.rfind("@", 0, question)
    if at >= 0:
        return at
    equals = rest.find("=", question)
    return rest.rfind("@", question, len(rest) if equals < 0 else equals)

