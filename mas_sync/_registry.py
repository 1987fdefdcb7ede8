"""The agent registry: registration hashes, heartbeats and discovery."""

from __future__ import annotations

import logging
import secrets
import threading
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

import redis

from . import _wire
from ._discovery import RAW
from ._errors import AgentIdInUseError
from ._liveness import LivenessReader, checked_ttl_ms
from ._options import DELIVERY_MODES, default_instance
from ._redis import is_cluster, publish
from ._scripts import load_script
from ._shared_stats import combine_stats

log = logging.getLogger(__name__)

#: What :meth:`AgentRegistry.refresh` returns.
REFRESH_OK = "ok"
REFRESH_REACTIVATED = "reactivated"
REFRESH_GONE = "gone"
REFRESH_TAKEN = "taken"

_DELIVERY_FIELD = _wire.DELIVERY_FIELD.encode("ascii")
_RELIABLE = _wire.DELIVERY_RELIABLE.encode("ascii")

# What instance_deregister.lua returns.
_LEFT_ALONE, _REMOVED, _INSTANCE_LEFT = 0, 1, 2


class AgentRegistry(LivenessReader):
    """Registers agents in Redis and finds them by capability.

    Liveness is the heartbeat key ``agent:{id}:heartbeat`` and nothing else:
    its TTL, kept by Redis, says whether an agent lives; ``registered_at``,
    written with the agent's clock, is never compared with another clock.

    Data it cannot read never breaks a call: :meth:`discover` and
    :meth:`get_agent` skip a registration whose fields are not strict JSON of
    the right shape or not UTF-8, or whose ``id`` does not name its key; the
    scans of :meth:`prune_dead` and :class:`MASService` skip keys under
    ``agent:`` that are not registration hashes, or whose name, status or
    token is not UTF-8. Each such key is logged as a warning once per
    registry object (then at debug level), and the registrations skipped
    are passed to ``on_skip``.

    Thread-safe: it holds the client and a lock-guarded memory of the keys
    logged, and redis-py clients may be shared by threads.

    Args:
        redis: A client created with ``decode_responses=True``.
        on_skip: Called, in the calling thread, with the number of
            registrations that one call of :meth:`discover` or
            :meth:`get_agent` skipped because they could not be read (never
            with 0). A registration that could not match the capabilities
            asked may go uncounted.
    """

    def __init__(
        self, redis: redis.Redis, *, on_skip: Optional[Callable[[int], None]] = None
    ) -> None:
        self._redis = redis
        self._on_skip = on_skip
        # The keys already logged, oldest first, at most _discovery._LOGGED_KEYS.
        self._logged: "OrderedDict[bytes, None]" = OrderedDict()
        self._logged_lock = threading.Lock()
        # A cluster keeps a registration and its heartbeat in different
        # slots, which one script cannot span: there the steps run apart.
        self._cluster = is_cluster(redis)
        if not self._cluster:
            self._select_page = redis.register_script(load_script("select_page"))
            self._register = redis.register_script(load_script("register"))
            self._deregister = redis.register_script(load_script("deregister"))
            self._refresh = redis.register_script(load_script("refresh"))
            self._condemn = redis.register_script(load_script("condemn"))
            self._prune = redis.register_script(load_script("prune"))
            self._instance_register = redis.register_script(load_script("instance_register"))
            self._instance_refresh = redis.register_script(load_script("instance_refresh"))
            self._instance_deregister = redis.register_script(
                load_script("instance_deregister"))

    def register(
        self,
        agent_id: str,
        capabilities: List[str],
        metadata: Optional[Mapping[str, Any]] = None,
        *,
        heartbeat_ttl: Optional[float] = None,
        take_over: bool = False,
        token: Optional[str] = None,
        delivery: str = "pubsub",
        instance: Optional[str] = None,
    ) -> str:
        """Write the registration hash and announce it, unless the id is live elsewhere.

        On one server, one script checks and writes: it replaces the
        ``agent:{id}`` hash, sets the heartbeat key when ``heartbeat_ttl`` is
        given, and publishes REGISTER on ``mas.system``. A registration whose
        heartbeat key is gone (its agent died) is replaced.

        With ``delivery="reliable"``, runs of one id are instances of one
        agent: the hash gets ``delivery`` = ``reliable`` and a field
        ``instance:{name}`` per instance, holding its token and its expiry
        (``heartbeat_ttl`` from now, on Redis's clock). An instance that finds
        a live reliable registration joins it: only its own field is written
        (and the heartbeat key), nothing is announced. One script on the hash
        decides, on a cluster too.

        Args:
            agent_id: The id to register.
            capabilities: What the agent can do.
            metadata: A JSON object published with the registration.
            heartbeat_ttl: Seconds the heartbeat key lives; None writes none
                (the caller beats with :meth:`update_heartbeat`). Needed by a
                reliable instance: its entry lives as long.
            take_over: Replace the registration even if the id is live: for
                an operator who knows its holder is dead.
            token: The token of a run that registers again (its registration
                was lost): refused only if another token holds the id.
            delivery: ``"pubsub"`` (the default) or ``"reliable"``.
            instance: The name of this instance of a reliable agent (same
                rules as an id); None for ``{host}-{pid}``. Only with
                ``delivery="reliable"``. ``take_over`` then replaces a live
                instance of this name, or a live pub/sub registration.

        Returns:
            The token of the registration (``token`` itself when given); for
            a reliable agent, the token of this instance.

        Raises:
            AgentIdInUseError: without ``take_over``, the id's heartbeat key
                exists (with ``token``: another token holds the registration);
                for a reliable instance, a live pub/sub registration holds the
                id, or this instance's name is live with another token; for a
                pub/sub run, any live registration holds the id. Nothing is
                written.
            TypeError, ValueError: bad id, capabilities, metadata, delivery or
                instance; nothing is written.
        """
        _wire.validate_agent_id(agent_id)
        capabilities = _wire.validate_capabilities(capabilities)
        if not isinstance(take_over, bool):
            raise TypeError(f"take_over must be a bool, not {take_over!r}")
        if token is not None and (not isinstance(token, str) or not token):
            raise TypeError("token must be a non-empty str")
        instance = _checked_instance(delivery, instance)
        if instance is not None and heartbeat_ttl is None:
            raise ValueError("a reliable instance needs a heartbeat_ttl: its entry expires")
        ttl_ms = (
            "" if heartbeat_ttl is None else str(checked_ttl_ms(heartbeat_ttl, "heartbeat_ttl"))
        )
        mode = "take_over" if take_over else ("new" if token is None else "renew")
        token = token or secrets.token_urlsafe(32)
        fields = _wire.registration_fields(agent_id, capabilities, metadata or {}, token)
        flat = [item for pair in fields.items() for item in pair]
        event = _wire.register_event(agent_id, capabilities)
        agent_key, beat_key = _wire.agent_key(agent_id), _wire.heartbeat_key(agent_id)
        if instance is not None:
            fields[_wire.DELIVERY_FIELD] = _wire.DELIVERY_RELIABLE
            flat = [item for pair in fields.items() for item in pair]
            self._register_instance(agent_id, instance, token, take_over, heartbeat_ttl,
                                    event, flat)
            return token
        if not self._cluster:
            written, left = self._register(
                keys=[agent_key, beat_key],
                args=[token, mode, ttl_ms, _wire.heartbeat_value(), _wire.SYSTEM_CHANNEL, event,
                      *flat],
            )
            if not written:
                raise _in_use(agent_id, left)
            return token
        # Cluster: the heartbeat key is claimed first (SET NX, atomic on its
        # own slot), then the hash is written on its slot.
        if mode == "new":
            if ttl_ms:
                claimed = self._redis.set(beat_key, _wire.heartbeat_value(), px=int(ttl_ms), nx=True)
            else:
                claimed = not self._redis.exists(beat_key)
            if not claimed:
                raise _in_use(agent_id, self._redis.pttl(beat_key))
        if not self._redis.eval(load_script("write_hash"), 1, agent_key, token, mode, *flat):
            raise _in_use(agent_id, self._redis.pttl(beat_key))
        if ttl_ms and mode != "new":
            self._redis.set(beat_key, _wire.heartbeat_value(), px=int(ttl_ms))
        publish(self._redis, _wire.SYSTEM_CHANNEL, event)
        return token

    def _register_instance(
        self, agent_id: str, instance: str, token: str, take_over: bool,
        heartbeat_ttl: Optional[float], event: str, flat: List[str],
    ) -> None:
        """Join or write the registration of a reliable agent (see :meth:`register`)."""
        # The entry of an instance lives as long as the heartbeat does.
        assert heartbeat_ttl is not None
        ttl_ms = checked_ttl_ms(heartbeat_ttl, "heartbeat_ttl")
        agent_key, beat_key = _wire.agent_key(agent_id), _wire.heartbeat_key(agent_id)
        args = [token, "1" if take_over else "0", ttl_ms, "0", _wire.instance_field(instance),
                _wire.heartbeat_value(), _wire.SYSTEM_CHANNEL, event, _wire.STATUS_ACTIVE,
                *flat]
        if not self._cluster:
            reply = self._instance_register(keys=[agent_key, beat_key], args=args)
        else:
            # The heartbeat key lives in another slot: read before, set after.
            args[3] = "1" if self._redis.exists(beat_key) else "0"
            args[6] = ""
            reply = self._redis.eval(load_script("instance_register"), 1, agent_key, *args)
        if not reply[0]:
            if reply[1] == "instance":
                raise _instance_in_use(agent_id, instance, reply[2])
            raise _in_use(agent_id, reply[2] if reply[2] != -2 else self._redis.pttl(beat_key))
        if self._cluster:
            self._redis.set(beat_key, _wire.heartbeat_value(), px=ttl_ms)
            if reply[1] == "new":
                publish(self._redis, _wire.SYSTEM_CHANNEL, event)

    def deregister(
        self,
        agent_id: str,
        keep_state: bool = True,
        *,
        token: Optional[str] = None,
        instance: Optional[str] = None,
    ) -> bool:
        """Delete the registration and heartbeat keys and announce DEREGISTER.

        Args:
            agent_id: The agent to remove.
            keep_state: Keep ``agent.state:{id}`` (the default), so that the
                agent finds its state again when it restarts.
            token: The token of the run that leaves: a registration held by
                another token is left alone, checked atomically on one server.
                None removes the registration whoever holds it.
            instance: The instance of a reliable agent that leaves: its entry
                goes (when it holds ``token``); the registration, heartbeat
                (and state, without ``keep_state``) go, and DEREGISTER is
                announced, only when no other live instance remains.

        Returns:
            False when the registration (or the instance's entry) belonged to
            another token, or a registration that is not reliable holds the
            id, and was left alone; True otherwise.
        """
        agent_key, beat_key = _wire.agent_key(agent_id), _wire.heartbeat_key(agent_id)
        event = _wire.deregister_event(agent_id)
        if instance is not None:
            _wire.validate_agent_id(instance, "instance")
            args = [token or "", "0" if keep_state else "1", _wire.SYSTEM_CHANNEL, event,
                    _wire.instance_field(instance)]
            if not self._cluster:
                outcome = self._instance_deregister(
                    keys=[agent_key, beat_key, _wire.state_key(agent_id)], args=args)
                return outcome != _LEFT_ALONE
            args[2] = ""
            outcome = self._redis.eval(load_script("instance_deregister"), 1, agent_key, *args)
            if outcome == _REMOVED:
                self._redis.delete(beat_key)
                if not keep_state:
                    self._redis.delete(_wire.state_key(agent_id))
                publish(self._redis, _wire.SYSTEM_CHANNEL, event)
            return outcome != _LEFT_ALONE
        if not self._cluster:
            return bool(self._deregister(
                keys=[agent_key, beat_key, _wire.state_key(agent_id)],
                args=[token or "", "0" if keep_state else "1", _wire.SYSTEM_CHANNEL, event],
            ))
        if not self._redis.eval(load_script("delete_hash"), 1, agent_key, token or ""):
            return False
        self._redis.delete(beat_key)
        if not keep_state:
            self._redis.delete(_wire.state_key(agent_id))
        publish(self._redis, _wire.SYSTEM_CHANNEL, event)
        return True

    def refresh(
        self, agent_id: str, token: str, heartbeat_ttl: float, *, instance: Optional[str] = None
    ) -> str:
        """One heartbeat of the run holding ``token``: renew its heartbeat key.

        Only a registration held by ``token`` is touched: its heartbeat key is
        set with a TTL of ``heartbeat_ttl`` seconds, its status set back to
        ACTIVE if a registry marked it otherwise, and a TTL given by a prune
        pass is removed. Atomic on one server.

        With ``instance`` (of a reliable agent), the entry of that instance
        must hold ``token``: it is renewed for ``heartbeat_ttl`` seconds with
        the heartbeat key, and the entries of other instances past their
        expiry are dropped. The hash is judged by one script, on a cluster
        too.

        Returns:
            ``"ok"``; ``"reactivated"`` (it was not ACTIVE); ``"gone"`` (no
            registration, or no entry of this instance: nothing written,
            register again with ``token``, which joins a live registration);
            ``"taken"`` (another token holds the id or this instance's entry,
            or a registration that is not reliable replaced the instance's:
            nothing written).
        """
        ttl_ms = checked_ttl_ms(heartbeat_ttl, "heartbeat_ttl")
        agent_key, beat_key = _wire.agent_key(agent_id), _wire.heartbeat_key(agent_id)
        args = [token, ttl_ms, _wire.heartbeat_value(), _wire.STATUS_ACTIVE]
        script = "refresh"
        if instance is not None:
            _wire.validate_agent_id(instance, "instance")
            args.append(_wire.instance_field(instance))
            script = "instance_refresh"
        if not self._cluster:
            runner = self._refresh if instance is None else self._instance_refresh
            return str(runner(keys=[agent_key, beat_key], args=args))
        outcome = str(self._redis.eval(load_script(script), 1, agent_key, *args))
        if outcome in (REFRESH_OK, REFRESH_REACTIVATED):
            self._redis.set(beat_key, _wire.heartbeat_value(), px=ttl_ms)
        return outcome

    def prune_dead(self, after: float) -> List[str]:
        """Have Redis remove registrations whose heartbeat stays gone for ``after`` seconds.

        One pass over the registrations. Each one whose heartbeat key is gone
        gets a TTL of ``after`` seconds on its ``agent:{id}`` hash, if it has
        none yet: Redis deletes it when that runs out, on its own clock. Each
        one whose heartbeat is back loses such a TTL (a mas_sync agent also
        removes it on its next beat). So a registration goes ``after``
        seconds after a pass first found it dead, unless it beats again and a
        pass (or its own beat) sees that in time: run passes more often than
        ``after``, or let ``MASService(prune_after=...)`` run them. The state
        ``agent.state:{id}`` is kept. No DEREGISTER is published.

        Returns:
            The ids whose removal this pass scheduled, sorted.

        Raises:
            TypeError, ValueError: ``after`` is not a positive number of
                seconds.
            redis.RedisError: Redis failed during the pass.
        """
        after_ms = checked_ttl_ms(after, "after")
        scheduled: List[str] = []
        for batch in self._id_batches():
            found = self._read_liveness(batch)
            self._persist([item.agent_id for item in found if item.beating and item.ttl_ms >= 0])
            dead = [item for item in found if item.status is not None and not item.beating
                    and item.ttl_ms == -1]
            for item, (_, was_scheduled) in zip(dead, self._condemn_all(dead, False, after_ms)):
                if was_scheduled:
                    scheduled.append(item.agent_id)
        return sorted(scheduled)

    def remove_dead(
        self, older_than: Optional[float] = None, *, dry_run: bool = False
    ) -> List[str]:
        """Remove now the registrations whose heartbeat key is gone, as deregistrations do.

        One pass over the registrations. Each one whose heartbeat key is gone
        (ACTIVE or INACTIVE alike) loses its ``agent:{id}`` hash and its
        counters ``agent:{id}:stats``, and DEREGISTER is published for it;
        its state ``agent.state:{id}`` is kept. Each removal is checked again
        as it is made: on one server a script deletes only while the heartbeat
        key is still missing and the hash still holds the token read (an agent
        that came back, or registered anew, is left alone); on a cluster,
        whose keys lie in other slots, the heartbeat is read just before a
        script that checks the token on the hash.

        Unlike :meth:`prune_dead`, which has Redis remove them later, this
        removes them at once: what ``mas_sync prune`` runs.

        Args:
            older_than: Only those whose last sign of life is older than this
                many seconds: the newest of ``registered_at``, the time of
                their last counters (``agent:{id}:stats``) and the expiry of
                a reliable agent's instances, the first two on the agents'
                clocks, compared with Redis's. None removes every one whose
                heartbeat is gone.
            dry_run: Only say which would go; nothing is written.

        Returns:
            The ids removed (with ``dry_run``: that would be), sorted.

        Raises:
            TypeError, ValueError: ``older_than`` is not a positive number
                of seconds.
            redis.RedisError: Redis failed during the pass.
        """
        limit_ms = None if older_than is None else checked_ttl_ms(older_than, "older_than")
        now_ms = self._server_ms()
        removed: List[str] = []
        for batch in self._id_batches():
            pipe = self._redis.pipeline(transaction=False)
            for agent_id in batch:
                pipe.execute_command("HGETALL", _wire.agent_key(agent_id), **RAW)
                pipe.exists(_wire.heartbeat_key(agent_id))
                pipe.execute_command("HGETALL", _wire.stats_key(agent_id), **RAW)
            replies = pipe.execute(raise_on_error=False)
            for n, agent_id in enumerate(batch):
                fields, beating, stats = replies[3 * n:3 * n + 3]
                if (isinstance(fields, Exception) or isinstance(beating, Exception)
                        or not fields or beating):
                    continue
                if limit_ms is not None:
                    seen_ms = _last_sign_of_life_ms(fields, stats)
                    if now_ms - seen_ms <= limit_ms:
                        continue
                token = fields.get(b"token", b"").decode("utf-8", "replace")
                if dry_run or self._remove_one(agent_id, token):
                    removed.append(agent_id)
        return sorted(removed)

    def _remove_one(self, agent_id: str, token: str) -> bool:
        """Remove one registration judged dead, checked again (see :meth:`remove_dead`)."""
        agent_key, beat_key = _wire.agent_key(agent_id), _wire.heartbeat_key(agent_id)
        event = _wire.deregister_event(agent_id)
        if not self._cluster:
            return bool(self._prune(
                keys=[agent_key, beat_key, _wire.stats_key(agent_id)],
                args=[token, _wire.SYSTEM_CHANNEL, event],
            ))
        if self._redis.exists(beat_key):
            return False
        if not self._redis.eval(load_script("prune"), 1, agent_key, token, "", event):
            return False
        self._redis.delete(_wire.stats_key(agent_id))
        publish(self._redis, _wire.SYSTEM_CHANNEL, event)
        return True

    def get_agent(self, agent_id: str) -> Optional[Dict[str, Any]]:
        """The registration of one agent, or None if it is not registered.

        A registration that cannot be read (see the class) is skipped: None.

        Returns:
            ``{"id", "capabilities", "metadata", "delivery", "instances",
            "status", "registered_at"}``: ``delivery`` is ``"pubsub"`` or
            ``"reliable"``; ``instances`` the live instances of a reliable
            agent (0 when none is live), 1 for a pub/sub agent.
        """
        key = _wire.agent_key(agent_id).encode("utf-8")
        data = self._redis.execute_command("HGETALL", key, **RAW)
        if not data or not data.get(b"status"):
            return None
        try:
            record = _wire.parse_registration(
                key, data.get(b"id"), data.get(b"capabilities"), data.get(b"metadata")
            )
            record["status"] = data[b"status"].decode("utf-8")
        except ValueError as exc:  # UnicodeDecodeError included
            self._log_skip(key, exc)
            if self._on_skip is not None:
                self._on_skip(1)
            return None
        if data.get(_DELIVERY_FIELD) == _RELIABLE:
            record["delivery"] = _wire.DELIVERY_RELIABLE
            # Counted here, on Redis's clock, rather than in a script: EVAL
            # on a key needs write access to it, which a least-privilege
            # agent has to its own registration only (see _acl.py).
            record["instances"] = _wire.live_instances(data, self._server_ms(key))
        else:
            record["delivery"], record["instances"] = "pubsub", 1
        try:
            record["registered_at"] = float(data.get(b"registered_at", b"0"))
        except ValueError:
            record["registered_at"] = 0.0
        return record

    def discover(self, capabilities: Optional[Iterable[str]] = None) -> List[Dict[str, Any]]:
        """The ACTIVE agents having at least one of ``capabilities``.

        Args:
            capabilities: Capabilities to look for; None or empty for every
                ACTIVE agent.

        Returns:
            ``{"id", "capabilities", "metadata", "delivery", "instances"}``
            for each agent, sorted by id: ``delivery`` is ``"pubsub"`` or
            ``"reliable"``; ``instances`` the live instances of a reliable
            agent (their entries not yet expired, on Redis's clock), 1 for a
            pub/sub agent. Registrations that cannot be read are skipped (see
            the class).

        Raises:
            TypeError: ``capabilities`` is a bare string or holds non-strings.
        """
        wanted = _wire.validate_capabilities(capabilities)
        skipped: List[bytes] = []
        if self._cluster:
            found = self._discover_pipelined(self._registration_keys(), set(wanted), skipped)
        else:
            found = self._discover_scripted(wanted, skipped)
        if skipped and self._on_skip is not None:
            self._on_skip(len(skipped))
        found.sort(key=lambda r: r["id"])
        return found

    def is_beating(self, agent_id: str) -> bool:
        """True when the heartbeat key of ``agent_id`` exists."""
        return bool(self._redis.exists(_wire.heartbeat_key(agent_id)))

    def update_heartbeat(self, agent_id: str, ttl: float = 60) -> None:
        """Refresh the heartbeat key of ``agent_id`` with a TTL of ``ttl`` seconds.

        Unconditional, as the async framework beats; an agent of mas_sync uses
        :meth:`refresh`, which checks that the registration is its own.
        """
        self._redis.set(
            _wire.heartbeat_key(agent_id), _wire.heartbeat_value(), px=max(1, int(ttl * 1000))
        )


def _checked_instance(delivery: object, instance: object) -> Optional[str]:
    """The instance name of a reliable registration (its default filled in); None for pub/sub.

    Raises:
        TypeError, ValueError: an unknown delivery, a bad instance name, or
            an instance given to a pub/sub registration.
    """
    if delivery not in DELIVERY_MODES:
        raise ValueError(f"delivery must be 'pubsub' or 'reliable', not {delivery!r}")
    if delivery != _wire.DELIVERY_RELIABLE:
        if instance is not None:
            raise ValueError("instance is only for delivery='reliable'")
        return None
    if instance is None:
        return default_instance()
    return _wire.validate_agent_id(instance, "instance")


def _instance_in_use(agent_id: str, instance: str, left_ms: object) -> AgentIdInUseError:
    expires_in = left_ms / 1000.0 if isinstance(left_ms, int) and left_ms >= 0 else None
    return AgentIdInUseError(
        f"agent id {agent_id!r} is in use as instance {instance!r}: another run holds that"
        f" instance's live entry (it expires in {expires_in or 0:.1f} s unless renewed)."
        f" Give each instance its own name (Agent(..., instance=...)); if that run died,"
        f" wait for its entry to expire, or pass take_over=True to replace it.",
        agent_id=agent_id,
        expires_in=expires_in,
    )


def _in_use(agent_id: str, pttl: object) -> AgentIdInUseError:
    expires_in = pttl / 1000.0 if isinstance(pttl, int) and pttl >= 0 else None
    when = (
        f"its heartbeat expires in {expires_in:.1f} s unless renewed"
        if expires_in is not None else "its heartbeat key has no expiry"
    )
    return AgentIdInUseError(
        f"agent id {agent_id!r} is in use: another run holds a live registration ({when})."
        f" Stop that agent first; if it died, wait for its heartbeat to expire, or pass"
        f" take_over=True (Agent(..., take_over=True)) to replace its registration.",
        agent_id=agent_id,
        expires_in=expires_in,
    )


def _last_sign_of_life_ms(fields: Mapping[bytes, bytes], stats: Any) -> int:
    """The newest sign of life of a registration, in ms (see :meth:`AgentRegistry.remove_dead`).

    ``fields`` and ``stats`` are the registration and counters hashes as
    HGETALL gives them (bytes); what does not parse is passed over.
    """
    newest = 0.0
    try:
        newest = float(fields.get(b"registered_at", b"0")) * 1000
    except ValueError:
        pass
    prefix = _wire.INSTANCE_FIELD_PREFIX.encode("ascii")
    for name, value in fields.items():
        if name.startswith(prefix):
            expiry = value.split(b" ", 1)[0]
            if expiry.isdigit():
                newest = max(newest, float(expiry))
    if isinstance(stats, dict):
        at = combine_stats(stats, 0.0)
        if at is not None and at.at is not None:
            newest = max(newest, at.at * 1000)
    return int(newest)
