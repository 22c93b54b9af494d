"""Suite-wide settings: one intra-op thread per test.

The models in the tests are tiny; with two threads on a two-core machine (shared with anything else
running) thread hand-off costs more than the arithmetic, e.g. a small conv goes from ~0.05 ms to tens of
ms. Tests that measure threading set their own count.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
