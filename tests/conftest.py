"""Shared fixtures: a seeded RNG, default dtype restored after each test, and the cases path."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
# Test tensors are tiny: one thread avoids oversubscription, which slows them down many-fold.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_restore():
    dtype = torch.get_default_dtype()
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(dtype)
