"""RBIG as a model: fitted greedily by standardize, FlowDensity and the command line, never by
gradient from its identity start; its stopping test on tiny or constant data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import nfkit as nf
from nfkit.cli import main


def _correlated(n: int = 1500) -> torch.Tensor:
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.stack([z[:, 0], 0.95 * z[:, 0] + math.sqrt(1 - 0.95**2) * z[:, 1]], 1)
    return x * torch.tensor([3.0, 0.5], dtype=torch.float64) + 10.0


def test_standardize_fits_an_unfitted_rbig_on_the_standardized_rows() -> None:
    """standardize(RBIG) fits it (it stayed a product of identity layers: the columns'
    dependence was lost) on the standardized rows; the same as fitting it by hand there."""
    x = _correlated()
    flow = nf.models.standardize(nf.models.RBIG(2).double(), x)
    std = (x - x.mean(0)) / x.std(0)
    by_hand = nf.models.RBIG(2).fit(std)
    assert flow.config["flow"]["layers"] == by_hand.config["layers"] >= 1
    expected = by_hand.log_prob(std) - torch.log(x.std(0)).sum()
    torch.testing.assert_close(flow.log_prob(x), expected)
    again = nf.models.build(flow.config).double()  # the fitted count, then the weights
    again.load_state_dict(flow.state_dict())
    torch.testing.assert_close(again.log_prob(x), flow.log_prob(x))


def test_flow_density_rbig_models_the_dependence() -> None:
    x = _correlated().numpy()
    est = nf.FlowDensity("rbig", random_state=0).fit(x)
    sample = est.sample(3000, random_state=0)
    assert abs(np.corrcoef(sample.T)[0, 1] - 0.95) < 0.02
    assert est.history_.steps == 0  # no gradient training
    independent = nf.FlowDensity("rbig", random_state=0).fit(x[:, :1]).score(x[:, :1]) + (
        nf.FlowDensity("rbig", random_state=0).fit(x[:, 1:]).score(x[:, 1:])
    )
    assert est.score(x) > independent + 1.0  # log(1/sqrt(1 - 0.95²)) = 1.16 nats of dependence
    with pytest.raises(ValueError, match="rbig is fitted greedily, without sample weights"):
        nf.FlowDensity("rbig").fit(x, sample_weight=np.ones(len(x)))


def test_cli_fit_rbig(capsys, tmp_path) -> None:
    x = _correlated(800).numpy()
    pd.DataFrame(x, columns=["a", "b"]).to_csv(tmp_path / "t.csv", index=False)
    code = main(
        ["fit", str(tmp_path / "t.csv"), "--model", "rbig", "--out", str(tmp_path / "r.pt")]
    )
    _, err = capsys.readouterr()
    assert code == 0 and "fitted RBIG on 800 rows greedily" in err
    flow = nf.load(tmp_path / "r.pt")
    draws = flow.sample(3000).double().numpy()
    assert abs(np.corrcoef(draws.T)[0, 1] - 0.95) < 0.02


def test_nf_fit_refuses_an_unfitted_rbig() -> None:
    with pytest.raises(ValueError, match=r"nf.fit: an RBIG flow is fitted by flow.fit\(x\)"):
        nf.fit(nf.models.RBIG(2), torch.randn(100, 2), steps=2, progress=False)
    fitted = nf.models.RBIG(2).fit(torch.randn(200, 2))
    nf.fit(fitted, torch.randn(200, 2), steps=2, progress=False)  # fine-tuning: allowed


def test_rbig_stops_at_a_broken_down_gain_and_refuses_constant_columns() -> None:
    """Five rows: the held-out gains run to -inf and NaN (NaN won the argmax and kept 5
    layers, -inf densities at training rows); a constant column named, not "NaN or inf"."""
    torch.manual_seed(0)
    rbig = nf.models.RBIG(3).fit(torch.randn(5, 3))
    assert not any(math.isnan(g) for g in rbig.gains) and rbig.config["layers"] == 1
    assert torch.isfinite(rbig.log_prob(torch.randn(5, 3))).all()
    x = torch.randn(50, 2)
    x[:, 1] = 3.0
    with pytest.raises(ValueError, match="RBIG.fit: column.s. 1 of x are constant in float32"):
        nf.models.RBIG(2).fit(x)
