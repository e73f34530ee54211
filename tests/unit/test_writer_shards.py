"""WriterShards: a process's daily-aggregate shards follow its own write rate, so none takes more than its share."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict

import pytest

from core.clock import FixedClock
from core.writer_shards import WriterShards


def writes_per_shard_and_second(
    shards: WriterShards, clock: FixedClock, rate: float, seconds: float
) -> dict[str, Counter[int]]:
    """Writes of one tenant at ``rate`` a second, evenly spaced: each shard's writes by whole second."""
    seen: dict[str, Counter[int]] = defaultdict(Counter)
    start = clock.t
    for _ in range(int(rate * seconds)):
        seen[shards.shard("t1")][int(clock.t - start)] += 1
        clock.t += 1 / rate
    return seen


def test_a_quiet_process_writes_one_aggregate_shard_of_its_own() -> None:
    clock = FixedClock()
    shards = WriterShards("w1", clock=clock.now)
    seen = writes_per_shard_and_second(shards, clock, rate=0.2, seconds=60)
    assert set(seen) == {"w10"}


@pytest.mark.parametrize("rate", [3.0, 40.0, 400.0])
def test_a_busy_process_spreads_so_that_no_shard_takes_more_than_its_share(rate: float) -> None:
    clock = FixedClock()
    shards = WriterShards("w1", writes_per_shard_s=0.5, window_s=2.0, clock=clock.now)
    seen = writes_per_shard_and_second(shards, clock, rate=rate, seconds=20)
    busiest = max(n for per_second in seen.values() for n in per_second.values())
    assert busiest <= 1  # half a write a second on average: never two in one second
    assert len(seen) <= rate / 0.5 + 1  # and no more shards than the rate needs


def test_shards_shrink_when_the_rate_falls() -> None:
    clock = FixedClock()
    shards = WriterShards("w1", clock=clock.now)
    writes_per_shard_and_second(shards, clock, rate=50.0, seconds=4)
    clock.t += 10.0
    later = writes_per_shard_and_second(shards, clock, rate=0.4, seconds=20)
    assert len(later) == 1


def test_tenants_are_counted_apart_and_writers_are_named_apart() -> None:
    clock = FixedClock()
    shards = WriterShards("w1", clock=clock.now)
    writes_per_shard_and_second(shards, clock, rate=100.0, seconds=3)
    assert shards.shard("t2") == "w10"  # a quiet tenant of a busy process: one shard
    assert WriterShards().writer != WriterShards().writer  # random per process


def test_many_threads_count_every_write() -> None:
    clock = FixedClock()
    shards = WriterShards("w1", writes_per_shard_s=1.0, window_s=1000.0, clock=clock.now)
    names: Counter[str] = Counter()
    lock = threading.Lock()

    def write() -> None:
        for _ in range(500):
            name = shards.shard("t1")
            with lock:
                names[name] += 1

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(names.values()) == 4000
    assert set(names) == {"w10", "w11", "w12", "w13"}  # 4,000 writes in a 1,000 s window: 4 shards of 1/s


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        WriterShards(writes_per_shard_s=0)
