"""The local executor: results in item order, whatever process ran them; worker processes
allocate Arrow memory from the C library's malloc (forge.executor.start_worker)."""

import os

import pyarrow as pa

from forge.executor import Executor


def where_and_how(item: int) -> tuple[int, int, str]:
    return item * item, os.getpid(), pa.default_memory_pool().backend_name


def test_local_workers_keep_item_order_and_use_the_system_allocator():
    seen = []
    results = Executor("local", 2).map(where_and_how, list(range(6)), done=seen.append)
    assert [r[0] for r in results] == [0, 1, 4, 9, 16, 25]
    assert sorted(seen) == sorted(results)  # done saw each result once
    pids = {r[1] for r in results}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2  # spawned workers did the work
    assert {r[2] for r in results} == {"system"}
    # this process keeps Arrow's default: only forge's own workers are switched
    assert pa.default_memory_pool().backend_name != "system"
    # one worker: everything here, nothing spawned
    assert {r[1] for r in Executor("local", 1).map(where_and_how, [1, 2])} == {os.getpid()}
