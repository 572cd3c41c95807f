"""Run by tests/test_cuda.py in a process of its own (a failure here may be an illegal address, which ends the CUDA
context): NOTE [tables on other streams] (csrc/cuda/bindings_cuda.cpp) on a GPU.

A table is built and cached on the default stream, then a launch on a side stream uses it while that stream sleeps,
so the launch is still queued when enough other tables are cached to evict it and the default stream allocates and
fills memory of its size. Without the stream record the allocator could hand the table's memory to those
allocations before the sleeping launch reads it. Prints "ok" when the launch updated the parameter as it should.

Usage: python stream_reuse_run.py BACKEND (cuda or triton)
"""

from __future__ import annotations

import sys

import torch

from fusedopt.backends import get_backend

MORE_TABLES_THAN_CACHED = 80  # both caches hold 64 (kMaxCachedTables, _TABLE_CACHE_SIZE)


def main(backend_name: str) -> None:
    backend = get_backend(backend_name)
    param, grad = torch.randn(1000, device="cuda"), torch.randn(1000, device="cuda")
    backend.stream([param], [grad], [])  # the roofline launch (param += grad): builds and caches the table here
    expected = param + 2 * grad
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(1_000_000_000)  # about half a second: the launch below stays queued meanwhile
        backend.stream([param], [grad], [])
    for i in range(MORE_TABLES_THAN_CACHED):
        others = [torch.randn(17 + i, device="cuda")], [torch.randn(17 + i, device="cuda")]
        backend.stream(*others, [])
    # The freed tables' sizes: small blocks of the allocator's 512-byte granularity.
    junk = [torch.full((512 * (1 + i % 4),), 0xFF, dtype=torch.uint8, device="cuda") for i in range(2000)]
    assert not side.query(), "the side stream finished before the tables were evicted: the check proves nothing"
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    del junk
    torch.testing.assert_close(param, expected, rtol=0, atol=0)
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1])
