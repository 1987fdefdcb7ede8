"""TLS: agents, the service, Sentinel and Cluster on a redis-server that serves TLS only.

The certificates (a CA, a server certificate for 127.0.0.1, a client
certificate) are made with ``openssl`` for the module. Skipped only where
redis-server is built without TLS or there is no ``openssl``.
"""

from __future__ import annotations

import inspect
import json
import shlex
import ssl
import time
from typing import Iterator, List

import pytest
import redis

from mas_sync import Agent, Keyring, MASConnectionError, MASService, SigningKey, acl_rules
from mas_sync._redis import check_redis_url, close_client, make_client, redact_url
from mas_sync._redis.tls import tls_settings
from mas_sync.testing import (
    LocalCluster,
    RedisServer,
    SentinelGroup,
    TLSCertificates,
    find_redis_server,
    redis_version,
    tls_unsupported,
    wait_until,
)

from .support import FAST, REDIS_PY_RUNS_CLUSTER, Inbox, flows, start

#: Whether the installed redis-py takes ssl_min_version (5.0 does not).
MIN_VERSION = "ssl_min_version" in inspect.signature(redis.connection.SSLConnection).parameters


@pytest.fixture(scope="module")
def certs() -> Iterator[TLSCertificates]:
    reason = tls_unsupported(find_redis_server())
    if reason:
        pytest.skip(reason)
    with TLSCertificates() as made:
        yield made


@pytest.fixture(scope="module")
def tls_server(certs) -> Iterator[RedisServer]:
    """A redis-server on TLS only that wants a client certificate of ``certs``' CA."""
    with RedisServer(tls=certs, tls_auth_clients="yes") as server:
        yield server


@pytest.fixture
def tls_url(tls_server) -> str:
    with tls_server.client() as client:
        client.flushall()
    return tls_server.url


# -- URLs -------------------------------------------------------------------------


def test_tls_schemes_and_parameters_are_checked_before_connecting(certs) -> None:
    query = certs.query()
    for url in (f"rediss://h:1/0?{query}", f"rediss+sentinel://h:1,h:2/m?{query}",
                "rediss+sentinel://h:1/m"):
        check_redis_url(url)
    for url in (f"rediss+cluster://h:1,h:2?{query}", "rediss+cluster://h:1"):
        if REDIS_PY_RUNS_CLUSTER:
            check_redis_url(url)
        else:
            with pytest.raises(ValueError, match="needs redis-py 8.1.0 or newer"):
                check_redis_url(url)
    bad = {
        "redis://h:1/0?ssl_ca_certs=/x": "rediss://",
        "redis+sentinel://h:1/m?ssl_certfile=/x": "rediss+sentinel://",
        "redis+cluster://h:1?ssl_cert_reqs=none": "rediss+cluster://",
        "rediss://h:1/0?ssl_cert_reqs=maybe": "ssl_cert_reqs",
        "rediss://h:1/0?ssl_check_hostname=perhaps": "ssl_check_hostname",
        "rediss://h:1/0?ssl_ca_cert=/x": "ssl_ca_cert",
        "rediss+sentinel://h:1/m?socket_timeout=1": "socket_timeout",
        "rediss+sentinel://h:1/m?ssl_min_version=TLSv0": "ssl_min_version",
    }
    for url, named in bad.items():
        with pytest.raises(ValueError, match=named.replace("+", r"\+")):
            check_redis_url(url)
    settings = tls_settings(f"rediss://h:1/0?{query}&ssl_cert_reqs=none")
    assert (settings["ssl_cert_reqs"], settings["ssl_check_hostname"]) == ("none", False)
    assert tls_settings("rediss://h:1/0")["ssl_check_hostname"] is True
    if MIN_VERSION:
        assert tls_settings("rediss://h:1/0?ssl_min_version=TLSv1_3")["ssl_min_version"] == (
            ssl.TLSVersion.TLSv1_3)
        with pytest.raises(ValueError, match="not supported with rediss"):
            check_redis_url("rediss+cluster://h:1?ssl_min_version=1.3")
    else:
        with pytest.raises(ValueError, match="needs a newer redis-py"):
            check_redis_url("rediss://h:1/0?ssl_min_version=1.3")
    # A file that is not there is named before any connection is tried.
    with pytest.raises(ValueError, match="ssl_ca_certs.*/nowhere/ca.crt"):
        make_client("rediss://127.0.0.1:1/0?ssl_ca_certs=/nowhere/ca.crt", 1)
    with pytest.raises(ValueError,
                       match="ssl_keyfile" if REDIS_PY_RUNS_CLUSTER else "needs redis-py 8.1"):
        make_client(f"rediss+cluster://127.0.0.1:1?ssl_certfile={certs.client_cert}"
                    "&ssl_keyfile=/nowhere/k", 1)


def test_tls_urls_are_redacted() -> None:
    for scheme in ("rediss://", "rediss+sentinel://", "rediss+cluster://"):
        url = f"{scheme}u:pw1@h:1,h:2/m?ssl_certfile=/c.crt&ssl_password=pw2&ssl_ca_certs=/ca"
        shown = redact_url(url)
        assert "pw1" not in shown and "pw2" not in shown
        assert shown == (
            f"{scheme}u:***@h:1,h:2/m?ssl_certfile=/c.crt&ssl_password=***&ssl_ca_certs=/ca"
        )


# -- agents and the service on a TLS server -------------------------------------


def test_agents_talk_over_mutual_tls(tls_url, agents) -> None:
    a = start(agents, Inbox("tls-a", ["tls"], tls_url, **FAST))
    b = start(agents, Inbox("tls-b", ["tls"], tls_url, **FAST))
    assert flows(a, b, "one", within=5)
    assert a.request("tls-b", {"token": "q"}, timeout=5).payload == {"pong": "q"}
    assert sorted(x["id"] for x in a.discover(["tls"])) == ["tls-a", "tls-b"]
    a.update_state({"n": 1})
    assert dict(a.state) == {"n": "1"}
    reliable = start(agents, Inbox("tls-r", ["tls"], tls_url, delivery="reliable", **FAST))
    assert flows(a, reliable, "kept", within=5)
    assert a.request("tls-r", {"token": "r"}, timeout=5).payload == {"pong": "r"}
    assert reliable.dead_letters() == []
    # Every connection is a TLS one (the server has no plain port), each
    # agent's listener among them.
    with redis.Redis.from_url(tls_url, decode_responses=True) as client:
        names = {c["name"] for c in client.client_list()}
    assert {"mas-agent:tls-a", "mas-agent:tls-b", "mas-agent:tls-r"} <= names


def test_a_client_without_a_certificate_is_refused(certs, tls_server) -> None:
    url = f"rediss://127.0.0.1:{tls_server.port}/0?{certs.query(client_cert=False)}"
    began = time.monotonic()
    with pytest.raises(MASConnectionError, match="TLS: the server .*client certificate"):
        Agent("no-cert", [], url, **FAST).start()
    assert time.monotonic() - began < 5


def test_a_wrong_ca_is_named(tls_server) -> None:
    with TLSCertificates("other") as other:
        url = f"rediss://127.0.0.1:{tls_server.port}/0?{other.query()}"
        began = time.monotonic()
        named = "TLS: the server's certificate was not accepted .*ssl_ca_certs must name the CA"
        with pytest.raises(MASConnectionError, match=named):
            Agent("wrong-ca", [], url, **FAST).start()
        assert time.monotonic() - began < 5
        with pytest.raises(MASConnectionError, match=named):
            MASService(url).start()


def test_a_plain_client_is_refused_by_a_tls_server(tls_server) -> None:
    with pytest.raises(MASConnectionError):
        Agent("plain", [], f"redis://127.0.0.1:{tls_server.port}/0", **FAST).start()


def test_an_optional_client_certificate(certs, agents) -> None:
    with RedisServer(tls=certs, tls_auth_clients="optional") as server:
        url = f"rediss://127.0.0.1:{server.port}/0?{certs.query(client_cert=False)}"
        a = start(agents, Inbox("opt-a", [], url, **FAST))
        # With the client certificate, and (where redis-py can) TLS 1.3 at least.
        b_url = f"{server.url}&ssl_min_version=TLSv1_3" if MIN_VERSION else server.url
        start(agents, Inbox("opt-b", [], b_url, **FAST))
        assert a.request("opt-b", {"token": "o"}, timeout=5).payload == {"pong": "o"}
        for agent in agents:
            agent.stop(timeout=5)


def test_the_server_name_is_checked_by_default(certs, agents) -> None:
    with TLSCertificates("elsewhere", hosts=["redis.example"]) as elsewhere, \
            RedisServer(tls=elsewhere) as server:
        with pytest.raises(MASConnectionError, match="not for this host.*ssl_check_hostname"):
            Agent("by-ip", [], server.url, **FAST).start()
        start(agents, Agent("unchecked", [], f"{server.url}&ssl_check_hostname=false", **FAST))
        agents[0].stop(timeout=5)


def test_the_service_over_tls(tls_url, agents) -> None:
    with MASService(tls_url, heartbeat_timeout=60, check_interval=60) as service:
        start(agents, Inbox("svc-a", ["s"], tls_url, **FAST))
        assert service.check_health() == []
        with redis.Redis.from_url(tls_url, decode_responses=True) as client:
            assert client.hget("agent:svc-a", "status") == "ACTIVE"


# -- Sentinel and Cluster ----------------------------------------------------------


def _send_and_request(url: str, agents: List[Agent], prefix: str) -> None:
    a = start(agents, Inbox(f"{prefix}-a", ["t"], url, **FAST))
    b = start(agents, Inbox(f"{prefix}-b", ["t"], url, **FAST))
    assert flows(a, b, "hello", within=5)
    assert b.request(a.id, {"token": "q"}, timeout=5).payload == {"pong": "q"}


def test_sentinel_over_tls(certs, agents) -> None:
    with SentinelGroup(replicas=0, sentinels=1, tls=certs) as group:
        assert group.url.startswith("rediss+sentinel://")
        _send_and_request(group.url, agents, "sen")
        with MASService(group.url, check_interval=60) as service:
            assert service.check_health() == []
        for agent in agents:
            agent.stop(timeout=5)
        # redis-py says only that no sentinel answered; mas_sync says why.
        hosts = group.url.partition("?")[0]
        with pytest.raises(MASConnectionError, match="sentinels: TLS: .*client certificate"):
            Agent("no-cert", [], f"{hosts}?{certs.query(client_cert=False)}").start()


def test_cluster_over_tls(certs, cluster_supported, agents) -> None:
    with LocalCluster(primaries=3, tls=certs) as cluster:
        assert cluster.url.startswith("rediss+cluster://")
        _send_and_request(cluster.url, agents, "clu")
        client = make_client(cluster.url, 2)
        try:
            assert client.ping()
        finally:
            close_client(client)
        for agent in agents:
            agent.stop(timeout=5)
        with TLSCertificates("other") as other:
            hosts = cluster.url.partition("?")[0]
            with pytest.raises(MASConnectionError, match="ssl_ca_certs must name the CA"):
                Agent("wrong-ca", [], f"{hosts}?{other.query()}").start()


def test_the_worked_setup_of_the_readme(certs, agents) -> None:
    """Mutual TLS, a Redis user per agent, a key per agent, an allow-list, limits, a breaker."""
    with RedisServer(tls=certs) as server:
        with server.client(decode_responses=True) as admin:
            if redis_version(server) < (7,):
                pytest.skip("the ACL rules need Redis 7")
            for rule in (*acl_rules("web", password="pw-web"),
                         *acl_rules("orders", password="pw-orders")):
                admin.execute_command(*shlex.split(rule))
            admin.acl_log_reset()
            query = certs.query()

            def url(user: str) -> str:
                return f"rediss://{user}:pw-{user}@127.0.0.1:{server.port}/0?{query}"

            web_key = SigningKey("web-2026", b"w" * 32, senders=["web"])
            orders_key = SigningKey("orders-2026", b"o" * 32, senders=["orders"])
            orders = start(agents, Inbox(
                "orders", ["orders"], url("orders"), delivery="reliable",
                keyring=Keyring([orders_key, web_key]), require_signed=True,
                accept_from=["web"], rate_limit="100/s", **FAST,
            ))
            web = start(agents, Agent(
                "web", [], url("web"), keyring=Keyring([web_key, orders_key]),
                require_signed=True, send_rate="90/s", breaker_failures=5,
                breaker_cooldown=30, **FAST,
            ))
            assert web.request("orders", {"token": 1}, timeout=5).payload == {"pong": 1}
            web.send_many([("orders", {"n": n}) for n in range(20)])
            wait_until(lambda: len(orders.got) == 21)
            # A forged sender, from a client that may publish (web's user) but holds no key.
            with redis.Redis.from_url(url("web")) as raw:
                raw.xadd("agent.stream:orders", {"envelope": json.dumps(
                    {"sender_id": "web", "target_id": "orders", "payload": {"forged": 1}}
                )})
            wait_until(lambda: orders.stats.refused_unsigned == 1)
            assert len(orders.got) == 21 and orders.stats.refused == 1
            assert admin.acl_log() == []
