"""Freed model-sized tensors go back to the operating system at once (glibc).

glibc serves a large allocation with its own ``mmap`` and returns it to the system when freed,
but each such free raises the size from which it does so (up to 32 MiB): soon most of a
model's tensors come from the heap instead, which fragments and does not shrink. A process that
decodes one update after another (the coordinator's round loop) then keeps growing by a
fraction of the model per node although it holds no more tensors (bench/coordinator_memory.py,
`small`, 16 nodes: 4.05x to 4.36x the fp32 model from run to run, instead of 3.61x). Setting
the threshold fixes it: every block of 1 MiB or more is mapped on allocation and unmapped on
free. The cost is the kernel's page faults on every fresh block: the bench's round loop takes
2.8 s instead of 8.5 s for 32 `small` updates, seconds per round at 1b next to a node's
minutes of training.

A node needs it as much: without it the second round in one process (the saved AdamW state
loaded, the next weights received) peaks at 7.4x-7.6x the fp32 model instead of 5.6x
(bench/node_memory.py, `small`), with no measurable cost per inner step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter (malloc.h)."""
THRESHOLD_BYTES = 1 << 20


@functools.cache  # once per process: finding the C library runs ldconfig
def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold at 1 MiB; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to set
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES))
