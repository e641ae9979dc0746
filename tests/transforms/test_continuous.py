"""Specific tests of the continuous flows (FFJORD): trace estimators, adjoint, normalization."""

from __future__ import annotations

import pytest
import torch

import nfkit as nf
from nfkit.testing import perturb_parameters
from nfkit.transforms import ContinuousFlow


def _flow(d: int = 3, context: int = 0, seed: int = 0, **kwargs: object) -> ContinuousFlow:
    torch.manual_seed(seed)
    t = ContinuousFlow(d, context=context, hidden=(16,), **kwargs).double()
    return perturb_parameters(t, 0.5, seed)  # type: ignore[return-value]


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(noise: str) -> None:
    """Mean of the Hutchinson log-det over many noise draws ≈ the exact log-det."""
    t = _flow(trace="hutchinson", noise=noise, atol=1e-8, rtol=1e-8)
    x = torch.randn(3, 3, dtype=torch.float64)
    with torch.no_grad():  # the trace needs no graph of its own
        t.eval()  # eval mode: exact trace, deterministic
        _, exact = t(x)
        _, again = t(x)
        assert torch.equal(exact, again)
        t.train()
        n = 1500  # every row of the batch gets its own noise draw
        _, draws = t(x.repeat_interleave(n, 0))
    draws = draws.reshape(3, n)
    mean, sem = draws.mean(1), draws.std(1) / n**0.5
    assert (draws.std(1) > 1e-3).all(), "the estimator should be stochastic in train mode"
    assert ((mean - exact).abs() < 4 * sem + 1e-6).all(), (mean, exact, sem)


def test_hutchinson_noise_fixed_within_a_solve() -> None:
    """With the same noise over the solve, forward then inverse cancel for each draw's z."""
    t = _flow(trace="hutchinson", atol=1e-9, rtol=1e-9).train()
    x = torch.randn(5, 3, dtype=torch.float64)
    z, _ = t(x)
    x_back, _ = t.inverse(z)
    torch.testing.assert_close(x_back, x, atol=1e-7, rtol=0)


def test_adjoint_matches_direct_backprop() -> None:
    """odeint_adjoint and back-propagation through the solver give the same gradients."""
    direct = _flow(d=2, context=2, atol=1e-9, rtol=1e-9)
    adjoint = _flow(d=2, context=2, atol=1e-9, rtol=1e-9, adjoint=True)
    adjoint.load_state_dict(direct.state_dict())
    x = torch.randn(4, 2, dtype=torch.float64)
    c = torch.randn(4, 2, dtype=torch.float64)
    grads = []
    for t in (direct, adjoint):
        xr, cr = x.clone().requires_grad_(True), c.clone().requires_grad_(True)
        z, ladj = t(xr, cr)
        loss = (z * z).sum() + ladj.sum()
        grads.append(torch.autograd.grad(loss, [xr, cr, *t.parameters()]))
    for g_direct, g_adjoint in zip(*grads):
        torch.testing.assert_close(g_adjoint, g_direct, atol=1e-6, rtol=1e-6)


def test_fixed_step_solver_round_trip() -> None:
    t = _flow(solver="rk4", steps=32, time_dependent=False)
    x = torch.randn(6, 3, dtype=torch.float64)
    z, ladj = t(x)
    x_back, ladj_inv = t.inverse(z)
    torch.testing.assert_close(x_back, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(ladj_inv, -ladj, atol=1e-5, rtol=0)


def test_ffjord_takes_a_fixed_step_count() -> None:
    """``FFJORD(solver="rk4", steps=K)``: the count reaches every block and the config (so a
    saved model keeps it); sampling with it matches the adaptive solver's to the steps' error."""
    torch.manual_seed(0)
    flow = nf.models.FFJORD(2, blocks=2, hidden=(8,), solver="rk4", steps=12).double()
    nf.testing.perturb_parameters(flow, 0.3)
    assert [b.steps for b in flow.transform] == [12, 12] and flow.config["steps"] == 12
    assert nf.models.build(flow.config).transform[0].steps == 12
    adaptive = nf.models.build({**flow.config, "solver": "dopri5"}).double()
    adaptive.load_state_dict(flow.state_dict())
    z = torch.randn(50, 2, dtype=torch.float64)
    with torch.no_grad():
        fixed_x, exact_x = flow.transform.inverse_value(z), adaptive.transform.inverse_value(z)
    torch.testing.assert_close(fixed_x, exact_x, atol=1e-3, rtol=0)  # measured 2.1e-4


def test_a_sampling_solver_of_its_own_leaves_the_density_exact() -> None:
    """``sample_solver``/``sample_steps`` change sampling only: ``log_prob`` (and the
    ``inverse`` with its log-det) keep the adaptive solver, sampling the fixed steps; both are in
    the config. A fixed-step euler ``log_prob`` would be off (the audit's 1.04–1.08 mass)."""
    torch.manual_seed(0)
    kwargs = dict(hidden=(8,), atol=1e-8, rtol=1e-8)
    flow = nf.models.FFJORD(2, sample_solver="euler", sample_steps=4, **kwargs).double()
    nf.testing.perturb_parameters(flow, 0.5)
    adaptive = nf.models.FFJORD(2, **kwargs).double()
    adaptive.load_state_dict(flow.state_dict())
    euler = nf.models.FFJORD(2, solver="euler", steps=4, **kwargs).double()
    euler.load_state_dict(flow.state_dict())
    assert flow.config["sample_solver"] == "euler" and flow.config["sample_steps"] == 4
    assert "sample_solver='euler'" in repr(flow.transform[0])
    x, z = torch.randn(20, 2, dtype=torch.float64), torch.randn(20, 2, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(flow.log_prob(x), adaptive.log_prob(x))
        assert (flow.log_prob(x) - euler.log_prob(x)).abs().max() > 1e-3
        fast = flow.transform.inverse_value(z)
        torch.testing.assert_close(fast, euler.transform.inverse_value(z))
        assert (fast - adaptive.transform.inverse_value(z)).abs().max() > 1e-4
    with pytest.raises(ValueError, match="sample_solver must be None or one of"):
        nf.models.FFJORD(2, sample_solver="heun")


def test_ffjord_density_integrates_to_one() -> None:
    """A random 2-D FFJORD (default tolerances, exact trace) has total mass 1 on a grid."""
    torch.manual_seed(0)
    flow = perturb_parameters(nf.models.FFJORD(2, hidden=(16,)).double(), 0.5).eval()
    g = torch.linspace(-9, 9, 181, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    with torch.no_grad():
        p = flow.log_prob(torch.stack([xx, yy], -1).reshape(-1, 2)).exp().reshape(181, 181)
    mass = torch.trapezoid(torch.trapezoid(p, g, dim=1), g).item()
    assert abs(mass - 1.0) < 1e-2, mass


def test_ffjord_trains_with_hutchinson() -> None:
    """A few Adam steps with the stochastic trace lower the (exact) negative log-likelihood."""
    torch.manual_seed(0)
    flow = nf.models.FFJORD(2, hidden=(16,), trace="hutchinson", atol=1e-4, rtol=1e-4)
    x = torch.randn(256, 2) * torch.tensor([0.5, 2.0]) + 1.0
    flow.eval()
    with torch.no_grad():
        before = -flow.log_prob(x).mean().item()
    opt = torch.optim.Adam(flow.parameters(), lr=2e-2)
    flow.train()
    for _ in range(15):
        opt.zero_grad()
        loss = -flow.log_prob(x).mean()
        loss.backward()
        opt.step()
    flow.eval()
    with torch.no_grad():
        after = -flow.log_prob(x).mean().item()
    assert after < before - 0.1, (before, after)


def test_config_rebuilds_and_errors() -> None:
    flow = nf.models.FFJORD(2, context=1, hidden=(4,), trace="hutchinson", adjoint=True)
    assert flow.config["trace"] == "hutchinson" and flow.config["adjoint"] is True
    assert isinstance(nf.models.build(flow.config).transform[0], ContinuousFlow)
    with pytest.raises(ValueError, match="trace must be"):
        ContinuousFlow(2, trace="exactly")
    with pytest.raises(ValueError, match="solver must be one of"):
        ContinuousFlow(2, solver="leapfrog")
    with pytest.raises(ValueError, match="atol must be a finite number > 0"):
        ContinuousFlow(2, atol=0.0)
    with pytest.raises(ValueError, match="expected last dim 2"):
        ContinuousFlow(2)(torch.randn(3, 4))
    with pytest.raises(ValueError, match="this layer is conditional .a context of 1 features"):
        ContinuousFlow(2, context=1)(torch.randn(3, 2))


def test_an_unconditional_block_ignores_a_context_in_a_conditional_chain() -> None:
    """Every layer of a Compose receives the context; an unconditional ODE block refused it
    ("expected no context"), so it could not sit in a conditional flow as other layers do."""
    torch.manual_seed(0)
    cond = nf.models.MAF(2, context=3, transforms=1, hidden=(8,)).transform
    ode = ContinuousFlow(2, hidden=(8,))
    flow = nf.Flow(nf.Compose(ode, cond), nf.distributions.StandardNormal(2), context=3).double()
    x, c = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    z, ladj = ode(x)
    torch.testing.assert_close(ode(x, c)[0], z)
    expected = cond(z, c)
    torch.testing.assert_close(
        flow.log_prob(x, c),
        flow.base.log_prob(expected[0]) + ladj + expected[1],
    )
    assert flow.sample(5, c).shape == (5, 4, 2)


def test_sample_solver_set_on_a_trained_flow_is_checked_and_saved(tmp_path) -> None:
    """The documented way to change sampling's solver after training (set the layer's
    attributes) is checked when set and survives nf.save/nf.load, also inside standardize."""
    flow = nf.models.standardize(nf.models.FFJORD(2, hidden=(8,)), torch.randn(100, 2))
    (layer,) = [m for m in flow.modules() if isinstance(m, nf.transforms.ContinuousFlow)]
    layer.sample_solver, layer.sample_steps = "rk4", 4
    loaded = nf.load(nf.save(flow, tmp_path / "m.pt"))
    (again,) = [m for m in loaded.modules() if isinstance(m, nf.transforms.ContinuousFlow)]
    assert (again.sample_solver, again.sample_steps) == ("rk4", 4)
    with pytest.raises(ValueError, match="sample_solver must be None or one of"):
        layer.sample_solver = "rk-4"
    with pytest.raises(ValueError, match="sample_steps must be"):
        layer.sample_steps = 0


@pytest.mark.parametrize(("solver", "stages"), [("euler", 1), ("midpoint", 2), ("rk4", 4)])
@pytest.mark.parametrize(
    ("dtype", "steps", "t1"), [(torch.float32, 10, 0.3), (torch.float64, 49, 1.0)]
)
def test_fixed_step_solvers_take_exactly_steps_steps(
    solver: str, stages: int, dtype: torch.dtype, steps: int, t1: float
) -> None:
    """``steps=K``: K steps of ``t1 / K`` in both directions (a step size rounded up to one
    more, degenerate step of 3e-8 in float32)."""
    layer = ContinuousFlow(2, hidden=(8,), solver=solver, steps=steps, t1=t1).to(dtype)
    times: list[float] = []
    velocity = layer.velocity

    def counted(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        times.append(float(t))
        return velocity(x, t, c)

    layer.velocity = counted  # type: ignore[method-assign]
    with torch.no_grad():
        layer.inverse_value(torch.randn(3, 2, dtype=dtype))
        assert len(times) == stages * steps and min(times) >= 0
        times.clear()
        layer(torch.randn(3, 2, dtype=dtype))
    assert len(times) == stages * steps
    if solver == "euler":
        torch.testing.assert_close(
            torch.tensor(times, dtype=torch.float64),
            torch.linspace(0, t1, steps + 1, dtype=torch.float64)[:-1],
            atol=1e-6,
            rtol=0,
        )


def test_fixed_step_adjoint_matches_direct_backprop() -> None:
    """The adjoint's backward solve runs on the same fixed grid (its gradient is the continuous
    adjoint's, so it differs from the discrete map's by the steps' error, 1.4e-5 here)."""
    direct = _flow(d=2, solver="rk4", steps=16)
    adjoint = _flow(d=2, solver="rk4", steps=16, adjoint=True)
    adjoint.load_state_dict(direct.state_dict())
    x = torch.randn(4, 2, dtype=torch.float64)
    grads = []
    for t in (direct, adjoint):
        z, ladj = t(x)
        grads.append(torch.autograd.grad((z * z).sum() + ladj.sum(), list(t.parameters())))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_non_finite_parameters_give_a_one_line_error() -> None:
    """NaN weights (a diverged training step): the adaptive solver's step size underflows;
    nfkit names the cause instead of torchdiffeq's ``AssertionError: underflow in dt 0.0``."""
    flow = nf.models.FFJORD(2, hidden=(8,)).eval()
    with torch.no_grad():
        list(flow.parameters())[-1].fill_(float("nan"))
    cause = (
        r"the dopri5 solve failed \(its step size underflowed to 0\): "
        "the field's parameters hold NaN or inf$"
    )
    with pytest.raises(ValueError, match="^ContinuousFlow.forward: " + cause):
        flow.log_prob(torch.randn(3, 2))
    with pytest.raises(ValueError, match="^ContinuousFlow.inverse_value: " + cause):
        flow.sample(3)
    with pytest.raises(ValueError, match="the input or the context holds NaN or inf$"):
        ContinuousFlow(2, hidden=(8,))(torch.tensor([[float("nan"), 0.0]]))


def test_a_solve_past_max_steps_stops_with_a_one_line_error() -> None:
    """A stiff field (large weights, tight tolerances): the adaptive solve stops at
    ``max_steps`` tries and says so, instead of running on; the setting is in the config."""
    flow = nf.models.FFJORD(2, hidden=(8,), atol=1e-9, rtol=1e-9, max_steps=5).double().eval()
    assert flow.config["max_steps"] == 5
    nf.testing.perturb_parameters(flow, 3.0)
    with pytest.raises(
        ValueError,
        match=r"^ContinuousFlow.forward: the dopri5 solve failed \(more than max_steps=5 "
        r"steps\): the field is too stiff or blows up \(.*raise max_steps",
    ):
        flow.log_prob(torch.randn(3, 2, dtype=torch.float64))
    flow.transform[0].max_steps = 100_000
    assert flow.log_prob(torch.randn(3, 2, dtype=torch.float64)).isfinite().all()
    with pytest.raises(ValueError, match="^FFJORD: max_steps must be"):
        nf.models.FFJORD(2, max_steps=0)


def test_context_of_the_wrong_width_and_factory_errors_are_named() -> None:
    with pytest.raises(
        ValueError,
        match=r"^ContinuousFlow.forward: expected a context of last dim 2, got shape \(3, 1\)$",
    ):
        ContinuousFlow(2, context=2)(torch.randn(3, 2), torch.randn(3, 1))
    with pytest.raises(ValueError, match="^ContinuousFlow.inverse_value: expected a context"):
        ContinuousFlow(2, context=2).inverse_value(torch.randn(3, 2), torch.randn(3, 3))
    with pytest.raises(ValueError, match="^FFJORD: base must be one of"):
        nf.models.FFJORD(2, base="foo")
    with pytest.raises(ValueError, match="^FFJORD: solver must be one of"):
        nf.models.FFJORD(2, solver="leapfrog")
    with pytest.raises(ValueError, match="^FFJORD: sample_steps has 3 entries for 2 blocks$"):
        nf.models.FFJORD(2, blocks=2, sample_steps=[4, 4, 4])


def test_sampling_settings_per_block() -> None:
    flow = nf.models.FFJORD(
        2, blocks=2, hidden=(8,), sample_solver=[None, "rk4"], sample_steps=(None, 4)
    )
    assert [(b.sample_solver, b.sample_steps) for b in flow.transform] == [
        (None, None),
        ("rk4", 4),
    ]
    assert flow.config["sample_solver"] == [None, "rk4"] and flow.config["sample_steps"] == [
        None,
        4,
    ]
    again = nf.models.build(flow.config)
    assert [(b.sample_solver, b.sample_steps) for b in again.transform] == [
        (None, None),
        ("rk4", 4),
    ]


def test_chunked_log_prob_agrees_to_the_solver_tolerance() -> None:
    """The adaptive step control spans the batch, so chunks differ from one pass (documented),
    but only to the solver's tolerance (1.3e-4 with the defaults; exactly 0 with a fixed step)."""
    torch.manual_seed(0)
    flow = nf.models.FFJORD(2, hidden=(16,)).double().eval()
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0, 0.7)
        x = torch.randn(3000, 2, dtype=torch.float64)
        gap = (flow.log_prob(x, chunk_size=None) - flow.log_prob(x, chunk_size=500)).abs().max()
        assert 0 < gap < 1e-3
        for block in flow.transform:
            block.solver = "rk4"
        gap = (flow.log_prob(x, chunk_size=None) - flow.log_prob(x, chunk_size=500)).abs().max()
        assert gap < 1e-12
    assert "agree to the solver's tolerance, not bitwise" in " ".join(
        nf.models.FFJORD.__doc__.split()
    )


def test_time_features_keep_float64_digits_after_double() -> None:
    """Built in float32 then ``.double()``: the Fourier frequencies (a buffer not saved) equal a
    float64 build's (they kept float32's rounding, 1.7e-7 off, and log_prob 1e-8)."""
    a = nf.models.FFJORD(2, hidden=(8,), time_features=3, solver="rk4", steps=4).double()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        b = nf.models.build(a.config)
    finally:
        torch.set_default_dtype(default)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.transform[0].frequencies, b.transform[0].frequencies)
    x = torch.randn(4, 2, dtype=torch.float64)
    assert torch.equal(a.log_prob(x), b.log_prob(x))


def test_an_adjoint_backward_solve_past_max_steps_is_one_line_in_fit() -> None:
    """The forward solve's failures were one line, but with ``adjoint=True`` the backward solve
    runs inside ``loss.backward()``, where torchdiffeq's ``AssertionError`` escaped ``nf.fit``
    as a raw traceback. A hand-written loop still gets that assertion (documented)."""
    torch.manual_seed(0)
    flow = nf.models.FFJORD(2, hidden=(16,), adjoint=True, max_steps=15)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(torch.randn_like(p) * 2)  # a stiff field: the backward solve needs more
    x = torch.randn(200, 2)
    with pytest.raises(AssertionError, match="max_num_steps exceeded"):
        (-flow.log_prob(x[:64]).mean()).backward()  # the forward solve fits in 15 steps
    with pytest.raises(ValueError, match=r"nf.fit: the adjoint ODE solve of the backward pass "
                       r"failed \(more than max_steps steps\) at step 1"):  # fmt: skip
        nf.fit(flow, x, steps=2, progress=False)
