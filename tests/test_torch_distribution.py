"""``nf.FlowDistribution`` / ``flow.distribution(context)``: a flow as a torch distribution."""

from __future__ import annotations

import pytest
import torch
from torch import distributions as td

import nfkit as nf


def _flow(context: int = 0) -> nf.Flow:
    torch.manual_seed(0)
    flow = nf.models.NSF(2, context=context, transforms=2, hidden=(8,), bins=4).double()
    nf.testing.perturb_parameters(flow, 0.2)
    return flow


def test_the_view_gives_the_flows_densities_and_draws_in_torchs_shapes() -> None:
    flow = _flow(context=3)
    c = torch.randn(5, 3, dtype=torch.float64)
    q = flow.distribution(c)
    assert isinstance(q, td.Distribution) and isinstance(q, nf.FlowDistribution)
    assert (q.batch_shape, q.event_shape) == ((5,), (2,)) and q.has_rsample
    x = torch.randn(4, 5, 2, dtype=torch.float64)
    torch.testing.assert_close(q.log_prob(x), flow.log_prob(x, c), rtol=0, atol=0)
    assert q.rsample((4,)).shape == (4, 5, 2) and q.sample().shape == (5, 2)
    torch.manual_seed(1)
    draws = q.sample((3,))
    torch.manual_seed(1)
    torch.testing.assert_close(draws, flow.sample(3, c))
    assert q.expand((7, 5)).sample((2,)).shape == (2, 7, 5, 2)
    assert "FlowDistribution(NSF, batch_shape=(5,), event_shape=(2,))" == repr(q)
    u = _flow().distribution()
    assert u.batch_shape == () and u.sample((6,)).shape == (6, 2)
    wide = u.expand((3,))  # an unconditional flow over a batch: one draw per batch entry
    assert wide.sample((4,)).shape == (4, 3, 2) and wide.log_prob(wide.sample()).shape == (3,)
    point = torch.zeros(2, dtype=torch.float64)  # one value scored at every batch entry
    torch.testing.assert_close(wide.log_prob(point), u.log_prob(point).expand(3))
    with pytest.raises(ValueError, match="FlowDistribution: context must have last dim 3"):
        flow.distribution(torch.randn(5, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expand: \(2,\) does not extend the batch shape \(3,\)"):
        wide.expand((2,))
    with pytest.raises(ValueError, match=r"expand: \(4,\) does not extend the batch shape \(5,\)"):
        q.expand((4,))
    with pytest.raises(ValueError, match="batch_shape is for an unconditional flow"):
        nf.FlowDistribution(flow, c, batch_shape=(5,))
    with pytest.raises(TypeError, match="FlowDistribution: expected an nf.Flow, got Linear"):
        nf.FlowDistribution(torch.nn.Linear(2, 2))


def test_rsample_carries_gradients_for_a_hand_written_elbo() -> None:
    """The reverse KL to N(1, 0.5²) by hand, through torch's distribution interface alone."""
    flow = _flow()
    target = td.Independent(td.Normal(torch.ones(2).double(), 0.5), 1)
    q = flow.distribution()
    x = q.rsample((256,))
    loss = (q.log_prob(x) - target.log_prob(x)).mean()
    loss.backward()
    grads = [p.grad for p in flow.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_torch_transforms_and_supports_compose_with_it() -> None:
    flow = _flow()
    positive = td.TransformedDistribution(flow.distribution(), [td.ExpTransform()])
    y = torch.rand(9, 2, dtype=torch.float64) + 0.1
    expected = flow.log_prob(y.log()) - y.log().sum(-1)
    torch.testing.assert_close(positive.log_prob(y), expected)
    assert flow.distribution().support.check(torch.randn(3, 2)).all()

    g = torch.Generator().manual_seed(0)
    x = torch.stack([3 * torch.rand(200, generator=g), 1 + torch.rand(200, generator=g)], -1)
    for bounds, kind in (
        ([(0.0, 3.0), (1.0, 2.0)], td.constraints.interval),
        ([(0.0, None), (1.0, None)], td.constraints.greater_than),
        ([(None, 3.0), (None, 2.0)], td.constraints.less_than),
    ):
        bounded = nf.models.standardize(
            nf.models.MAF(2, transforms=1, hidden=(8,)), x, bounds=bounds
        )
        support = bounded.distribution().support
        assert isinstance(support.base_constraint, kind)
        inside = td.biject_to(support)(torch.randn(50, 2))  # torch's own map onto the support
        assert support.check(inside).all()
        assert torch.isfinite(bounded.log_prob(inside)).all()
        assert not support.check(torch.tensor([[-1.0, 1.5], [1.0, 9.0]])).all()
    # a mix (one positive column beside a real one, a two-sided one beside a real one): one
    # constraint per column (it was greater_than([0, -inf]) and biject_to gave -inf and NaN)
    for bounds in ([(0.0, None), (None, None)], [(0.0, 3.0), (None, None)]):
        mixed = nf.models.standardize(
            nf.models.MAF(2, transforms=1, hidden=(8,)), x, bounds=bounds
        )
        support = mixed.distribution().support
        assert isinstance(support.base_constraint, td.constraints._Cat)
        inside = td.biject_to(support)(torch.randn(50, 2) * 3)
        assert torch.isfinite(inside).all() and support.check(inside).all()
        assert torch.isfinite(mixed.log_prob(inside)).all()
        assert not support.check(torch.tensor([[-1.0, 0.0]])).all()


def test_a_dequantized_flow_has_samples_but_no_reparameterized_ones() -> None:
    counts = torch.poisson(torch.full((300, 1), 3.0), generator=torch.Generator().manual_seed(0))
    flow = nf.models.standardize(
        nf.models.MAF(1, transforms=1, hidden=(8,)), counts, bounds=[(0, None)], discrete=[0]
    )
    q = flow.distribution()
    assert not q.has_rsample
    draws = q.sample((20,))
    assert draws.shape == (20, 1) and torch.equal(draws, draws.floor())
    with pytest.raises(TypeError, match="no reparameterized samples; use sample"):
        q.rsample((2,))


@pytest.mark.parametrize("bounds", [(0, None), (0, 12), (None, None)])
def test_a_dequantized_flows_support_is_its_integers(bounds) -> None:
    """Integer columns: the integers ``log_prob`` takes (``greater_than(0)`` left out 0, the
    lowest count, and 8% of the flow's own draws; ``(0, 12)`` gave ``interval(0, 13)``)."""
    g = torch.Generator().manual_seed(0)
    counts = torch.poisson(torch.full((300, 2), 3.0), generator=g)
    flow = nf.models.standardize(
        nf.models.MAF(2, transforms=1, hidden=(8,)), counts, bounds=bounds, discrete=[0]
    ).eval()
    support = flow.distribution().support
    assert bool(support.check(flow.distribution().sample((500,))).all())
    for value, inside in ((0.0, True), (12.0, True), (12.5, False), (13.0, bounds[1] is None)):
        assert bool(support.check(torch.tensor([value, 0.5]))) == inside, value
        assert bool(flow.in_support(torch.tensor([[value, 0.5]]))) == inside, value


def test_expanded_log_prob_of_a_value_that_does_not_broadcast_is_one_line() -> None:
    d = nf.FlowDistribution(nf.models.MAF(2, transforms=1, hidden=(8,))).expand((4,))
    with pytest.raises(ValueError, match=r"value's batch shape \(3,\) does not broadcast with "
                       r"the batch shape \(4,\)") as info:  # fmt: skip
        d.log_prob(torch.zeros(3, 2))
    assert "\n" not in str(info.value)


def test_validate_args_false_scores_values_outside_the_support_minus_inf() -> None:
    """As torch's own distributions do (``Uniform(0, 1, validate_args=False).log_prob(2)`` is
    ``-inf``); it was always refused and the argument was a TypeError: SBI code that scores
    proposals outside a bounded prior stopped."""
    x = torch.rand(200, 2) * 2 + 1
    flow = nf.models.standardize(
        nf.models.MAF(2, transforms=1, hidden=(8,)), x, bounds=[(1.0, 3.0)] * 2
    )
    values = torch.tensor([[2.0, 1.5], [5.0, 2.0], [1.2, 0.0]])
    with pytest.raises(ValueError, match=r"outside the support \(1, 3\)"):
        flow.distribution().log_prob(values)  # torch's default: validation on
    lax = flow.distribution(validate_args=False)
    scores = lax.log_prob(values)
    torch.testing.assert_close(scores[0], flow.log_prob(values[:1])[0])
    assert scores[1:].tolist() == [float("-inf")] * 2
    assert lax.expand((4, 3)).log_prob(values[1]).eq(float("-inf")).all()  # expand keeps it
    with pytest.raises(ValueError, match="contains NaN"):  # NaN is an error either way
        lax.log_prob(torch.tensor([[float("nan"), 2.0]]))
    # torch's global default is not followed: importing zuko switches it off
    before = td.Distribution._validate_args
    td.Distribution.set_default_validate_args(False)
    try:
        with pytest.raises(ValueError, match="outside the support"):
            flow.distribution().log_prob(values)
    finally:
        td.Distribution.set_default_validate_args(before)
    with pytest.raises(TypeError, match="validate_args must be True, False or None"):
        nf.FlowDistribution(flow, validate_args="no")
