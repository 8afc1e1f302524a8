"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is faster on a shared 2-core machine and avoids spinning.

    Workflow tests are unaffected: their jobs run in subprocesses that set threads from the rules.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
