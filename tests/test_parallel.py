import os

from sampref_bench.utilities.parallel import map_with_progress


def square_and_pid(x):
    return x * x, os.getpid()


def test_pool_keeps_order_and_uses_workers():
    jobs = [(i,) for i in range(9)]
    out = map_with_progress(square_and_pid, jobs, 2, "t", progress=False, min_serial_s=0.0)
    assert [v for v, _ in out] == [i * i for i in range(9)]
    assert out[0][1] == os.getpid() and any(pid != os.getpid() for _, pid in out[1:])


def test_small_work_stays_in_process():
    out = map_with_progress(square_and_pid, [(i,) for i in range(9)], 2, "t", progress=False)
    assert {pid for _, pid in out} == {os.getpid()}
