"""Torch's intra-op thread count, fixed for a block: training and timings must not follow the machine's load."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with n intra-op threads, then restore the previous count.

    Left to itself torch starts one thread per core; on a host whose cores are busy those threads
    wait for each other, and a pretraining run was measured 15x slower that way.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
