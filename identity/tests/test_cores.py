"""Small batches decided on one core (identity.cores): the caller and Polars' pool threads are pinned to
the caller's core inside the block only, each thread gets back the CPUs it had, whoever leaves first."""

import os
import threading

import polars as pl
import pytest

from identity import cores, resolution

pytestmark = pytest.mark.skipif(
    not cores._usable or len(os.sched_getaffinity(0)) < 2, reason="needs Linux thread affinity and two CPUs")


def _pool() -> list[int]:
    pl.DataFrame({"a": [1, 2]}).join(pl.DataFrame({"a": [2]}), on="a")  # the pool exists once used
    threads = cores.pool_threads()
    assert threads, "Polars' pool threads are named polars-N"
    return threads


def _masks(tids: list[int]) -> dict[int, set[int]]:
    return {tid: os.sched_getaffinity(tid) for tid in tids}


def test_inside_the_block_the_caller_and_the_pool_share_the_callers_core_and_get_their_cpus_back():
    pool = _pool()
    me = threading.get_native_id()
    before = _masks([me, *pool])
    with cores.one_core():
        inside = _masks([me, *pool])
        cpu = cores.current_cpu()
    assert all(mask == {cpu} for mask in inside.values()), inside
    assert _masks([me, *pool]) == before


def test_an_error_inside_the_block_still_sets_the_threads_free():
    pool = _pool()
    before = _masks([threading.get_native_id(), *pool])
    with pytest.raises(ZeroDivisionError), cores.one_core():
        _ = 1 / 0
    assert _masks([threading.get_native_id(), *pool]) == before


def test_the_last_caller_out_restores_not_the_first():
    pool = _pool()
    before = _masks(pool)
    entered, leave = threading.Event(), threading.Event()

    def other():
        with cores.one_core():
            entered.set()
            leave.wait(5)

    thread = threading.Thread(target=other)
    thread.start()
    assert entered.wait(5)
    with cores.one_core():  # nested in time with the other caller, and itself re-entered
        with cores.one_core():
            pass
        assert all(len(mask) == 1 for mask in _masks(pool).values())
    assert all(len(mask) == 1 for mask in _masks(pool).values()), "the other caller is still inside"
    leave.set()
    thread.join(5)
    assert _masks(pool) == before


def test_disabled_or_not_asked_the_block_pins_nothing(settings):
    pool = _pool()
    before = _masks([threading.get_native_id(), *pool])
    with cores.one_core(enabled=False):
        assert _masks([threading.get_native_id(), *pool]) == before
    settings.CT4_SMALL_BATCH_ONE_CORE = False
    with cores.one_core():
        assert _masks([threading.get_native_id(), *pool]) == before


@pytest.mark.parametrize(("leads", "pinned"), [(1, True), (resolution.SCORE_ONCE_MAX_LEADS, True),
                                               (resolution.SCORE_ONCE_MAX_LEADS + 1, False)])
def test_a_small_batch_is_decided_on_one_core_a_bigger_one_on_every_core(monkeypatch, leads, pinned):
    seen = []
    monkeypatch.setattr(resolution, "_decide_frame", lambda *args: seen.append(os.sched_getaffinity(0)))
    resolution.leads_decide_frame(pl.DataFrame({"lead_i": range(leads)}), context=None)
    assert (len(seen[0]) == 1) == pinned
