"""Data tests run on one thread: their tensors are small, and two threads on a shared two-core
machine made torch and BLAS up to 30× slower (oversubscription), not faster."""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)
