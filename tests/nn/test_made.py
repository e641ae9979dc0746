"""MADE: the autoregressive property, the packed parameter and the in-place activation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from nfkit.nn import MADE, periodic_embedding
from nfkit.nn.made import PARAM_MAJOR_MIN_FEATURES


def _jacobian_support(made: MADE, d: int, context: int = 0) -> torch.Tensor:
    """``|∂θ_i / ∂x_j| > 0`` as a ``(D, D)`` boolean matrix (summed over outputs and rows)."""
    x = torch.randn(3, d, dtype=torch.float64)
    c = torch.randn(3, context, dtype=torch.float64) if context else None
    jac = torch.autograd.functional.jacobian(lambda v: made(v, c).sum(0), x)  # (D, P, 3, D)
    return jac.abs().sum((1, 2)) > 0


@settings(max_examples=25, deadline=None)
@given(
    d=st.integers(1, 10),  # from 8: parameter-major output rows
    hidden=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    residual=st.booleans(),
    seed=st.integers(0, 1000),
    period=st.sampled_from([None, 6.0, "mixed"]),
)
def test_outputs_depend_only_on_earlier_inputs(d, hidden, residual, seed, period) -> None:
    """Also with angles read as (cos, sin) pairs (``period``): both inputs of a feature carry
    its rank; ``"mixed"``: every other feature an angle (a per-feature period)."""
    torch.manual_seed(seed)
    if period == "mixed":
        period = tuple(6.0 if i % 2 else None for i in range(d))
    if residual:
        hidden = [hidden[0]] * len(hidden)
    order = torch.randperm(d)
    # tanh: no dead units, so every allowed dependency of a wide enough network is realized.
    made = MADE(
        d, 2, hidden=hidden, order=order, residual=residual, activation=nn.Tanh, period=period
    )
    made = made.double()
    with torch.no_grad():  # the zero-initialized layers would hide a broken mask
        made.theta.normal_()
    allowed = order[None, :] < order[:, None]  # θ_i may see x_j iff order[j] < order[i]
    support = _jacobian_support(made, d)
    assert not (support & ~allowed).any()
    if min(hidden) >= d:  # wide enough: every allowed dependency is realized
        assert (support == allowed).all()


def test_masked_entries_have_no_effect_even_after_training() -> None:
    torch.manual_seed(0)
    made = MADE(4, 3, hidden=(16, 16)).double()
    opt = torch.optim.Adam(made.parameters(), lr=1e-2)
    for _ in range(5):
        loss = made(torch.randn(32, 4, dtype=torch.float64)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.randn(8, 4, dtype=torch.float64)
    before = made(x)
    with torch.no_grad():
        made.theta.add_(torch.randn_like(made.theta) * (1 - made.mask))  # perturb masked entries
    torch.testing.assert_close(made(x), before, rtol=0, atol=0)
    assert not (_jacobian_support(made, 4) & ~torch.ones(4, 4).tril(-1).bool()).any()


def test_one_parameter_tensor_and_identity_start() -> None:
    made = MADE(5, 2, context=3, hidden=(32, 32))
    assert [name for name, _ in made.named_parameters()] == ["theta"]
    assert made.theta.numel() == sum(o * i + o for o, i in made.shapes)
    out = made(torch.randn(7, 5), torch.randn(7, 3))
    assert out.shape == (7, 5, 2)
    assert (out == 0).all()  # zero-initialized output layer


def test_context_reaches_every_output() -> None:
    torch.manual_seed(1)
    made = MADE(3, 1, context=2, hidden=(8,)).double()
    with torch.no_grad():
        made.theta.normal_()
    c = torch.randn(4, 2, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: made(torch.zeros(4, 3).double(), v), c)
    assert (jac.abs().sum((0, 3)) > 0).all()  # (4, 3, 1, 4, 2) → every (output, context) pair


def test_reused_layers_match_a_fresh_pass() -> None:
    made = MADE(4, 2, hidden=(16,))
    with torch.no_grad():
        made.theta.normal_()
    x = torch.randn(5, 4)
    torch.testing.assert_close(made(x, None, made.layers()), made(x))


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh])
@pytest.mark.parametrize("residual", [False, True])
def test_gradients_match_finite_differences(activation, residual) -> None:
    """The in-place ReLU must not corrupt the saved tensors of the backward pass."""
    torch.manual_seed(2)
    made = MADE(3, 2, context=1, hidden=(6, 6), residual=residual, activation=activation)
    made = made.double()
    with torch.no_grad():
        made.theta.normal_()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, 1, dtype=torch.float64, requires_grad=True)
    theta = made.theta

    def f(x: torch.Tensor, c: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(made, {"theta": theta}, (x, c))

    assert torch.autograd.gradcheck(f, (x, c, theta))


@pytest.mark.parametrize("residual", [False, True])
def test_trunk_and_feature_rows_give_each_features_parameters(residual: bool) -> None:
    # The autoregressive inverse applies the output layer to one feature's rows at a time.
    made = MADE(4, 3, context=2, hidden=(16, 16), order=[2, 0, 3, 1], residual=residual)
    with torch.no_grad():
        made.theta.normal_()
    x, c = torch.randn(5, 4), torch.randn(5, 2)
    w, b = made.layers()[-1]
    h = made.trunk(x, c)
    for i in range(4):
        rows = slice(3 * i, 3 * i + 3)
        torch.testing.assert_close(F.linear(h, w[rows], b[rows]), made(x, c)[:, i])


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("context", [0, 2])
@pytest.mark.parametrize("d", [1, 2, 5])
def test_first_is_bias_iff_the_first_features_output_rows_are_masked(
    d: int, context: int, residual: bool
) -> None:
    made = MADE(
        d, 3, context=context, hidden=(6, 6), order=list(range(d))[::-1], residual=residual
    )
    w_mask = made._cut(made.mask)[-1][0]  # output-layer mask (D·P, H), feature-major rows
    first = int(torch.argsort(made.rank)[0])
    rows_masked = bool((w_mask[3 * first : 3 * first + 3] == 0).all())
    assert made.first_is_bias == rows_masked
    assert made.first_is_bias == (context == 0 and d > 1)


def _dense(made: MADE, x: torch.Tensor) -> torch.Tensor:
    """The MADE's output from every masked weight, no column span (the reference)."""
    h = x
    layers = made.layers()
    for k, (w, b) in enumerate(layers):
        h = F.linear(h if k == 0 else torch.relu(h), w, b)
    return h.unflatten(-1, (made.features, made.out_per_feature))


@pytest.mark.parametrize(
    ("order", "span"),
    [
        (None, (0, 4)),
        (list(range(16))[::-1], (12, 16)),
        ([0, 5, *range(1, 5), *range(6, 16)], None),
    ],
)
def test_narrow_made_reads_only_its_live_input_span(order, span) -> None:
    """Hidden degrees stop at the width (4 < D = 16): later-ranked inputs reach no hidden unit."""
    made = MADE(16, 2, hidden=(4, 4), order=order).double()
    assert made.input_span == span
    with torch.no_grad():
        made.theta.normal_()
    x = torch.randn(5, 16, dtype=torch.float64)
    torch.testing.assert_close(made(x), _dense(made, x))


def test_input_span_follows_a_loaded_mask() -> None:
    source = MADE(16, 2, hidden=(4, 4), order=list(range(16))[::-1]).double()
    with torch.no_grad():
        source.theta.normal_()
    target = MADE(16, 2, hidden=(4, 4)).double()
    assert target.input_span == (0, 4)
    target.load_state_dict(source.state_dict())
    assert target.input_span == (12, 16)
    x = torch.randn(5, 16, dtype=torch.float64)
    torch.testing.assert_close(target(x), source(x))
    torch.testing.assert_close(target(x), _dense(target, x))


def test_input_span_cases() -> None:
    assert MADE(4, 2, hidden=(8, 8)).input_span == (0, 3)  # the last-ranked input feeds nothing
    assert MADE(5, 2, hidden=(8, 8)).input_span is None  # 4 of 5 columns: not worth a slice
    assert MADE(16, 2, hidden=(4, 4), context=2).input_span is None  # x's tail dead, c live
    reversed_order = list(range(16))[::-1]  # degrees 0..3 with a context: ranks 0..2 are live
    assert MADE(16, 2, hidden=(4, 4), context=2, order=reversed_order).input_span == (13, 18)
    assert MADE(1, 2).input_span is None  # D = 1: the output is the bias, no live input


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("p", [2, 3])
@pytest.mark.parametrize("d", [PARAM_MAJOR_MIN_FEATURES - 1, PARAM_MAJOR_MIN_FEATURES, 12])
def test_wide_made_stores_theta_parameter_major(d: int, p: int, residual: bool) -> None:
    """From 8 features the output rows are reordered so that each parameter is contiguous over
    the features; values and gradients are those of the feature-major rows. With two parameters
    per feature (an affine transformer) only passes that autograd does not record are."""
    torch.manual_seed(d)
    made = MADE(d, p, context=2, hidden=(16, 16), order=torch.randperm(d), residual=residual)
    made = made.double()
    with torch.no_grad():
        made.theta.normal_()
    x = torch.randn(5, d, dtype=torch.float64, requires_grad=True)
    c = torch.randn(5, 2, dtype=torch.float64)
    theta = made(x, c)
    w, b = made.layers()[-1]
    expected = F.linear(made.trunk(x, c), w, b).unflatten(-1, (d, p))
    torch.testing.assert_close(theta, expected, rtol=0, atol=1e-14)
    wide = d >= PARAM_MAJOR_MIN_FEATURES
    assert theta.transpose(-1, -2).is_contiguous() == (wide and p > 2)
    assert made.parameter_major() == (wide and p > 2)
    cot = torch.randn_like(theta)
    grads = torch.autograd.grad((theta * cot).sum(), (x, made.theta))
    grads_ref = torch.autograd.grad((expected * cot).sum(), (x, made.theta))
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)
    with torch.no_grad():  # evaluation: parameter-major from 8 features whatever P
        assert made.parameter_major() == wide
        theta = made(x, c)
        assert theta.transpose(-1, -2).is_contiguous() == wide
        torch.testing.assert_close(theta, expected.detach(), rtol=0, atol=1e-14)
    made.requires_grad_(False)  # nothing of the MADE's own to record: parameter-major as well
    assert made.parameter_major() == wide


def test_compiled_made_stays_parameter_major(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``torch.compile`` an affine MADE's training pass keeps the parameter-major rows
    (inductor fuses the reorder)."""
    made = MADE(PARAM_MAJOR_MIN_FEATURES, 2)
    assert not made.parameter_major()  # eager, autograd on
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert made.parameter_major()
    assert not MADE(PARAM_MAJOR_MIN_FEATURES - 1, 2).parameter_major()


def test_settles_follow_a_loaded_order() -> None:
    """``settles`` (the feature of each rank, used by the autoregressive inverse) is derived from
    the persistent ``rank``: loading another order recomputes it."""
    source = MADE(5, 2, order=[3, 0, 4, 1, 2])
    target = MADE(5, 2)
    assert target.settles.tolist() == [0, 1, 2, 3, 4]
    target.load_state_dict(source.state_dict())
    assert target.settles.tolist() == [1, 3, 4, 0, 2] == torch.argsort(source.rank).tolist()
    assert "settles" not in target.state_dict()


def test_periodic_inputs_make_a_periodic_network() -> None:
    """``period``: θ(x) = θ(x + period e_j) for every feature j, and the embedding is the
    (cos, sin) pair of each angle."""
    torch.manual_seed(0)
    made = MADE(3, 2, hidden=(8,), period=4.0, context=1).double()
    with torch.no_grad():
        made.theta.normal_()
    x, c = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    for j in range(3):
        shifted = x.clone()
        shifted[:, j] += 4.0
        torch.testing.assert_close(made(shifted, c), made(x, c), rtol=0, atol=1e-12)
    embedded = periodic_embedding(x, 4.0)
    angle = x * torch.pi / 2
    torch.testing.assert_close(embedded, torch.cat([angle.cos(), angle.sin()], -1))
    with pytest.raises(ValueError, match="MADE: period"):
        MADE(3, 2, period=0.0)


def test_per_feature_periods_embed_only_the_angles() -> None:
    """A tuple ``period`` (None for an ordinary number): the network is periodic in the angles
    only, and the embedding is ``[cos or x per feature, sines of the angles]``; a tuple without
    angles or with one period for all is the plain form."""
    torch.manual_seed(0)
    period = (None, 4.0, None, 2.0)
    made = MADE(4, 2, hidden=(16,), period=period).double()
    with torch.no_grad():
        made.theta.normal_()
    x = torch.randn(5, 4, dtype=torch.float64)
    for j, p in enumerate(period):
        shifted = x.clone()
        shifted[:, j] += 4.0 if p is None else p
        moved = (made(shifted) - made(x)).abs().max().item()
        assert (moved > 1e-6) if p is None and j < 3 else (moved < 1e-12), (j, moved)
    w = torch.tensor([0.0, torch.pi / 2, 0.0, torch.pi], dtype=torch.float64)
    expected = torch.cat(
        [torch.where(w > 0, torch.cos(x * w), x), torch.sin(x[:, [1, 3]] * w[[1, 3]])], -1
    )
    torch.testing.assert_close(periodic_embedding(x, period), expected, rtol=0, atol=0)
    assert made.period == period
    assert MADE(2, 1, period=(None, None)).period is None
    assert MADE(2, 1, period=(3.0, 3.0)).period == 3.0
    with pytest.raises(ValueError, match="one entry per input"):
        MADE(3, 2, period=(1.0, None))


def test_refusals_are_one_line() -> None:
    """A narrow first layer reads a slice of the input, so a MADE of 3 features once took 2,
    3 or 5 columns alike; a float order was truncated; a negative context failed in zeros()."""
    made = MADE(3, 2, hidden=(8,))
    assert made(torch.zeros(4, 3)).shape == (4, 3, 2)
    for width in (2, 5):
        with pytest.raises(ValueError, match=rf"MADE: x must have 3 features along dim -1, got shape \(4, {width}\)"):
            made(torch.zeros(4, width))
    with pytest.raises(ValueError, match=r"MADE: order must be a permutation of 0..2, got \[0.2, 1.7, 2.1\]"):
        MADE(3, 2, order=[0.2, 1.7, 2.1])
    assert MADE(3, 2, order=torch.tensor([2, 0, 1])).rank.tolist() == [2, 0, 1]
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match=f"MADE: context must be an integer >= 0, got {bad}"):
            MADE(3, 2, context=bad)
