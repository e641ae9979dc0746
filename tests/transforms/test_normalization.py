"""BatchNorm and ActNorm beyond the generic test."""

from __future__ import annotations

import pytest
import torch

import nfkit as nf
from nfkit import transforms as T


def test_batchnorm_refuses_a_one_row_train_batch_and_keeps_its_running_statistics() -> None:
    """One row has variance 0 (a density of the same constant for any x, and the running
    variance pulled towards 0): refused, as torch's BatchNorm1d refuses it; eval mode scores it."""
    flow = nf.models.RealNVP(2, batch_norm=True, transforms=2, hidden=(8,))
    bn = next(m for m in flow.modules() if isinstance(m, T.BatchNorm))
    with pytest.raises(ValueError, match="at least 2 rows"):
        flow.log_prob(torch.randn(2))
    assert torch.equal(bn.running_var, torch.ones(2))
    assert flow.eval().log_prob(torch.randn(2)).shape == ()
