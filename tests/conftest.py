"""Shared fixtures: a seeded RNG, default dtype restored after each test, the cases path, and
hypothesis' profile."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from hypothesis import settings

sys.path.insert(0, os.path.dirname(__file__))
# Test tensors are tiny: one thread avoids oversubscription, which slows them down many-fold.
torch.set_num_threads(1)

# Properties: 40 examples, no deadline (first calls compile kernels). Locally each run draws new
# examples (bugs have been found that way); under CI (the CI environment variable, which
# .ci/run sets) the examples are derandomized, so a gate's verdict does not depend on the draw.
settings.register_profile("dev", deadline=None, max_examples=40)
settings.register_profile(
    "ci", parent=settings.get_profile("dev"), derandomize=True, database=None
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True)
def _seed_and_restore():
    dtype = torch.get_default_dtype()
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(dtype)
