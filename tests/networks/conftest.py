"""Shared by the network tests: one thread and a fixed seed per test."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread_and_seed():
    """Tiny networks run fastest on one thread and do not stall when the CPU is shared; a fixed seed per test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
