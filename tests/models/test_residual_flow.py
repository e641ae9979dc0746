"""The ``ResidualFlow`` factory: sampling under inference mode, broadcast contexts, its errors
and the fixed-point budget it passes to its blocks."""

from __future__ import annotations

import pytest
import torch

import nfkit as nf
from nfkit.transforms import ResidualBlock


@pytest.mark.parametrize("logdet", ["series", "roulette"])
def test_samples_under_inference_mode_with_a_series_logdet(logdet: str) -> None:
    """Sampling needs no log-det: a train-mode flow with a series estimator (autograd inside)
    samples under the caller's ``torch.inference_mode()`` (it raised "element 0 of tensors does
    not require grad")."""
    flow = nf.models.ResidualFlow(2, blocks=2, hidden=(8,), logdet=logdet).train()
    with torch.inference_mode():
        x = flow.sample(4)
        lp = flow.log_prob(torch.randn(4, 2))
    assert x.shape == (4, 2) and torch.isfinite(x).all() and lp.shape == (4,)


@pytest.mark.parametrize("logdet", ["series", "roulette"])
def test_series_logdet_with_a_context_batch_larger_than_x(logdet: str) -> None:
    """x ``(1, D)`` or ``(D,)`` against a context ``(5, C)``: one density per context row, in
    train mode (series / roulette) as in eval mode (exact)."""
    flow = nf.models.ResidualFlow(2, context=3, blocks=1, hidden=(8,), logdet=logdet)
    x, c = torch.randn(1, 2), torch.randn(5, 3)
    flow.eval()
    assert flow.log_prob(x, c).shape == (5,)
    flow.train()
    for xi in (x, x[0]):
        lp = flow.log_prob(xi, c)
        assert lp.shape == (5,) and torch.isfinite(lp).all()
        lp.sum().backward()


def test_errors_name_the_factory() -> None:
    with pytest.raises(ValueError, match=r"^ResidualFlow: lipschitz must lie in \(0, 1\)"):
        nf.models.ResidualFlow(2, lipschitz=1.5)
    with pytest.raises(ValueError, match="^ResidualFlow: logdet must be one of"):
        nf.models.ResidualFlow(2, logdet="trace")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^ResidualFlow: base must be one of"):
        nf.models.ResidualFlow(2, base="foo")
    with pytest.raises(ValueError, match="^ResidualFlow: max_iter must be"):
        nf.models.ResidualFlow(2, max_iter=0)


def test_max_iter_reaches_every_block_and_the_config() -> None:
    flow = nf.models.ResidualFlow(2, blocks=2, hidden=(8,), max_iter=3)
    blocks = [m for m in flow.modules() if isinstance(m, ResidualBlock)]
    assert [b.max_iter for b in blocks] == [3, 3] and flow.config["max_iter"] == 3
    assert nf.models.build(flow.config).transform[1].max_iter == 3
    with pytest.raises(nf.NotConvergedError, match="did not converge in 3 steps"):
        flow.eval().sample(5)
    default = nf.models.ResidualFlow(2, blocks=1, hidden=(8,))
    assert default.transform[1].max_iter is None  # sized from lipschitz and the first step
