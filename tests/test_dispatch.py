"""OrderedPool on its own: order per key, parallelism, bounds, drain and close."""

from __future__ import annotations

import threading
import time
from typing import List, Tuple

from mas_sync._workers import OrderedPool
from mas_sync.testing import wait_until


def make_pool(handler, workers: int = 4, pending: int = 100) -> OrderedPool:
    pool = OrderedPool("mas-test-pool", handler, workers, pending)
    return pool


def finish(pool: OrderedPool) -> None:
    pool.close()
    assert pool.join(time.monotonic() + 5) == []


def test_items_of_one_key_run_in_order_and_keys_in_parallel() -> None:
    seen: List[Tuple[str, int]] = []
    lock = threading.Lock()
    gate = threading.Barrier(3, timeout=5)

    def handler(item: Tuple[str, int]) -> None:
        if item[1] == 0:
            gate.wait()  # three keys must be running at once to pass
        with lock:
            seen.append(item)

    pool = make_pool(handler, workers=3)
    for n in range(20):
        for key in "abc":
            assert pool.submit(key, (key, n))
    pool.open()
    assert pool.drain(5)
    for key in "abc":
        assert [n for k, n in seen if k == key] == list(range(20))
    finish(pool)


def test_nothing_runs_before_open() -> None:
    opened = threading.Event()
    ran: List[Tuple[int, bool]] = []  # (item, whether open() had been called)
    both = threading.Event()

    def handler(item: int) -> None:
        ran.append((item, opened.is_set()))
        if len(ran) == 2:
            both.set()

    pool = make_pool(handler)
    assert pool.submit("k", 1)
    # Queued with no worker; an open pool starts one within submit().
    assert (pool.pending, pool.threads()) == (1, [])
    # However late an early run would come, the handler records it as early.
    assert not both.wait(0.5)
    assert pool.submit("k", 2)  # a late item, still before open()
    assert (pool.pending, pool.threads(), ran) == (2, [], [])
    opened.set()
    pool.open()
    assert both.wait(5)
    assert ran == [(1, True), (2, True)]
    finish(pool)


def test_submit_refuses_beyond_max_pending_and_after_close() -> None:
    release = threading.Event()
    pool = make_pool(lambda item: release.wait(5), workers=1, pending=3)
    pool.open()
    assert pool.submit("k", 0)
    wait_until(lambda: pool.pending == 0, 5)  # the worker holds item 0
    assert all(pool.submit("k", n) for n in (1, 2, 3))
    assert not pool.submit("k", 4)
    release.set()
    assert pool.drain(5)
    finish(pool)
    assert not pool.submit("k", 5)


def test_close_drops_what_is_queued() -> None:
    release = threading.Event()
    pool = make_pool(lambda item: release.wait(5), workers=1)
    pool.open()
    for n in range(5):
        pool.submit("k", n)
    wait_until(lambda: pool.pending == 4, 5)
    assert not pool.drain(0.05)
    assert pool.close() == 4
    release.set()
    assert pool.join(time.monotonic() + 5) == []


def test_workers_start_lazily_up_to_the_bound() -> None:
    release = threading.Event()
    pool = make_pool(lambda item: release.wait(5), workers=2)
    pool.open()
    assert pool.threads() == []
    for key in "abcdef":
        pool.submit(key, 0)
    wait_until(lambda: len(pool.threads()) == 2, 5)
    release.set()
    assert pool.drain(5)
    assert len(pool.threads()) == 2
    assert all(t.daemon and t.name.startswith("mas-test-pool-worker-") for t in pool.threads())
    finish(pool)


def test_a_raising_handler_does_not_kill_the_worker(caplog) -> None:
    done = threading.Event()

    def handler(item: int) -> None:
        if item == 0:
            raise RuntimeError("first fails")
        done.set()

    pool = make_pool(handler, workers=1)
    pool.open()
    pool.submit("k", 0)
    pool.submit("k", 1)
    assert done.wait(5)
    assert "handler raised" in caplog.text
    finish(pool)
