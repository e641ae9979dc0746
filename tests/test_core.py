"""Core contract: Compose/Inverse semantics, Flow shapes, and one-line errors at the boundary."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import nfkit as nf
from nfkit import transforms as T


def test_compose_order_flatten_and_slicing() -> None:
    a, b, c = T.Affine(shift=1.0), T.Affine(scale=2.0), T.Tanh()
    chain = nf.Compose(nf.Compose(a, b), c)
    assert len(chain) == 3 and list(chain)[0] is a
    x = torch.randn(4, 2)
    z, ladj = chain(x)
    torch.testing.assert_close(z, torch.tanh((x + 1.0) * 2.0))  # t1 applied first
    assert isinstance(chain[:2], nf.Compose) and chain[1] is b
    assert ladj.shape == (4,)


def test_inverse_view_swaps_directions_and_is_not_stored() -> None:
    t = T.Autoregressive(3, T.AffineTransformer(), hidden=(8,))
    inv = t.inv
    assert inv.inv is t
    assert not any(isinstance(m, nf.Inverse) for m in t.modules())
    x = torch.randn(5, 3)
    torch.testing.assert_close(inv.forward(x)[0], t.inverse(x)[0])
    assert "Inverse" in repr(inv)


def test_flow_sample_shapes_with_context() -> None:
    flow = nf.models.MAF(2, context=3, transforms=2, hidden=(8,))
    c = torch.randn(4, 3)
    assert flow.sample(7, c).shape == (7, 4, 2)
    assert flow.sample((2, 5), c).shape == (2, 5, 4, 2)
    assert flow.sample(7, torch.randn(3)).shape == (7, 2)
    x, lp = flow.sample_and_log_prob(6, c)
    assert x.shape == (6, 4, 2) and lp.shape == (6, 4)
    assert flow.log_prob(torch.randn(10, 4, 2), c).shape == (10, 4)


def test_flow_follows_dtype_and_device() -> None:
    flow = nf.models.NSF(2, transforms=1, hidden=(8,), base="student_t").double()
    assert flow.sample(3).dtype == torch.float64
    assert flow.log_prob(torch.randn(3, 2, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda f: f.log_prob(torch.randn(5, 3)),
            "Flow.log_prob: x must have last dim 2, got shape (5, 3)",
        ),
        (
            lambda f: f.log_prob(torch.tensor([[0.0, float("nan")]])),
            "Flow.log_prob: x contains NaN",
        ),
        (
            lambda f: f.log_prob(torch.tensor([[0.0, float("inf")]])),
            "Flow.log_prob: x contains inf",
        ),
        (lambda f: f.log_prob([[0.0, 1.0]]), "Flow.log_prob: x must be a torch.Tensor, got list"),
        (lambda f: f.log_prob(torch.zeros(3, 2, dtype=torch.long)), "floating-point"),
        (lambda f: f.sample(-1), "sample shape must be non-negative"),
        (lambda f: f.sample("ten"), "expected an int or a shape tuple"),
        (lambda f: f.sample((2.5,)), "expected an int or a shape tuple of ints, got (2.5,)"),
        (lambda f: f.sample(3.0), "expected an int or a shape tuple of ints, got 3.0"),
        (lambda f: f.sample(True), "expected an int or a shape tuple of ints, got True"),
        (lambda f: f.log_prob(torch.randn(4, 2), chunk_size=2.0), "chunk_size must be a positive"),
        (
            lambda f: f.log_prob(torch.randn(3, 2, dtype=torch.float64)),
            "Flow.log_prob: x is torch.float64 but the flow is torch.float32; convert one "
            "(x.to(torch.float32) or flow.to(torch.float64))",
        ),
        (
            lambda f: f.double().log_prob(torch.randn(3, 2)),
            "Flow.log_prob: x is torch.float32 but the flow is torch.float64",
        ),
        (
            lambda f: f.log_prob(torch.randn(3, 2, device="meta")),
            "Flow.log_prob: x is on meta but the flow is on cpu; move one",
        ),
    ],
)
def test_flow_rejects_bad_input(call, message: str) -> None:
    flow = nf.models.MAF(2, transforms=1, hidden=(8,))
    with pytest.raises((ValueError, TypeError)) as info:
        call(flow)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_sample_sizes_may_be_numpy_or_tensor_integers() -> None:
    flow = nf.models.MAF(2, transforms=1, hidden=(8,))
    x = torch.randn(10, 2)
    assert flow.sample(np.int64(3)).shape == (3, 2)
    assert flow.sample((np.int32(2), torch.tensor(3))).shape == (2, 3, 2)
    assert flow.sample(torch.Size([4])).shape == (4, 2)
    assert torch.equal(flow.log_prob(x, chunk_size=np.int64(3)), flow.log_prob(x, chunk_size=3))


def test_finite_check_accepts_huge_finite_values() -> None:
    """The one-sum fast path must not reject finite inputs whose sum overflows to inf."""
    flow = nf.models.MAF(2, transforms=1, hidden=(8,))
    x = torch.full((4, 2), 3e38)
    assert torch.isinf(x.sum())
    assert flow.log_prob(x).shape == (4,)
    with pytest.raises(ValueError, match="x contains inf"):
        flow.log_prob(torch.cat([x, torch.tensor([[float("inf"), 0.0]])]))


def test_flow_context_errors() -> None:
    cond = nf.models.NSF(2, context=3, transforms=1, hidden=(8,))
    with pytest.raises(
        ValueError,
        match=r"Flow.log_prob: this flow is conditional and needs a context of last dim 3",
    ):
        cond.log_prob(torch.randn(4, 2))
    with pytest.raises(
        ValueError, match=r"Flow.sample: context must have last dim 3, got shape \(4, 2\)"
    ):
        cond.sample(5, torch.randn(4, 2))
    plain = nf.models.NSF(2, transforms=1, hidden=(8,))
    with pytest.raises(ValueError, match="takes no context"):
        plain.log_prob(torch.randn(4, 2), torch.randn(4, 3))
    with pytest.raises(
        ValueError,
        match=r"Flow.log_prob: x's batch shape \(4,\) and context's \(5,\) do not broadcast",
    ):
        cond.log_prob(torch.randn(4, 2), torch.randn(5, 3))
    assert cond.log_prob(torch.randn(4, 1, 2), torch.randn(5, 3)).shape == (4, 5)
    for call in (
        lambda c: cond.log_prob(torch.randn(4, 2), c),
        lambda c: cond.sample(2, c),
        lambda c: cond.sample_and_log_prob(2, c),
    ):
        with pytest.raises(
            TypeError, match="context is torch.float64 but the flow is torch.float32"
        ):
            call(torch.randn(4, 3, dtype=torch.float64))


def test_out_of_support_input_is_rejected() -> None:
    flow = nf.Flow(nf.Compose(T.Logit(), T.Affine(scale=2.0)), nf.distributions.StandardNormal(2))
    assert torch.isfinite(flow.log_prob(torch.rand(5, 2).clamp(0.01, 0.99))).all()
    with pytest.raises(
        ValueError, match=r"Flow.log_prob: x has values outside the support \(0, 1\) \(e.g. 1.5\)"
    ):
        flow.log_prob(torch.tensor([[0.5, 1.5]]))


def test_an_inner_layer_of_a_chain_checks_the_support_the_layer_before_does_not_give() -> None:
    """A chain's domain is its first layer's: an ``Affine`` in front of a ``Logit`` took any
    value and gave NaN densities for inputs mapped outside (0, 1). The inner layer's input is
    checked; not where the layer before guarantees it (``Sigmoid`` → ``Logit``), nor while
    compiling (no value is read)."""
    base = nf.distributions.StandardNormal(2)
    flow = nf.Flow(nf.Compose(T.Affine(scale=0.5), T.Logit()), base)
    assert flow.transform.domain.is_real and torch.isfinite(flow.log_prob(torch.rand(4, 2))).all()
    message = (
        r"Compose: layer 1 \(Logit\)'s input \(x mapped by the layers before it\) has values "
        r"outside the support \(0, 1\) \(e.g. 1.5\)"
    )
    with pytest.raises(ValueError, match=message):
        flow.log_prob(torch.tensor([[0.5, 3.0]]))
    assert flow.transform._inner_checks == (False, True)
    assert nf.Compose(T.Sigmoid(), T.Logit())._inner_checks == (False, False)
    assert not any(nf.models.NCSF(2, transforms=2, hidden=(8,)).transform._inner_checks)
    compiled = torch.compile(flow.log_prob, backend="eager", fullgraph=True)
    assert torch.isnan(compiled(torch.tensor([[0.5, 3.0]]))).all()
    # a circle's ends are one point: a standardized float32 angle at 360° reaches the circular
    # layer one ulp past π, and is its point π (the check refused it)
    torch.manual_seed(0)
    x = torch.stack([360 * torch.rand(200), torch.randn(200)], 1)
    ncsf = nf.models.NCSF(2, angles=[0], hidden=(8,))
    angles = nf.models.standardize(ncsf, x, bounds=[(0, 360), (None, None)])
    ends = angles.log_prob(torch.tensor([[0.0, 0.5], [360.0, 0.5]]))
    assert torch.isfinite(ends).all() and torch.allclose(ends[0], ends[1])


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: nf.models.MAF(0), "MAF: features must be an integer >= 1, got 0"),
        (lambda: nf.models.MAF(2, hidden=(0,)), "MAF: hidden must be a sequence of positive ints"),
        (lambda: nf.models.NSF(2, transforms=-1), "NSF: transforms must be an integer >= 1"),
        (lambda: nf.models.MAF(2, activation="nope"), "activation must be one of"),
        (lambda: nf.models.Planar(2, direction="up"), "direction must be 'sample' or 'density'"),
        (
            lambda: nf.models.MAF(2, bins=3),
            "nf.models.MAF: got an unexpected keyword argument 'bins'",
        ),
        (
            lambda: T.Coupling(3, T.AffineTransformer(), mask=[True, True, True]),
            "Coupling: mask must be",
        ),
        (lambda: T.Permutation([0, 0, 1]), "Permutation: perm must be a permutation"),
        (lambda: T.RQSplineTransformer(bins=0), "RQSplineTransformer: bins must be an integer"),
        (lambda: nf.models.NSF(2, bins=2.5), "NSF: bins must be an integer >= 1"),
        (lambda: nf.models.NSF(2, bound=float("inf")), "bound must be a finite number > 0"),
        (
            lambda: T.RQSplineTransformer(min_derivative=-1.0),
            "min_derivative must be a finite number >= 0, got -1.0",
        ),
        (
            lambda: T.RQSplineTransformer(bins=600, min_width=0.002),
            "min_width and min_height must be < 1/bins",
        ),
        (lambda: T.Affine(scale=0.0), "Affine: scale must be finite and nonzero"),
        (lambda: T.Affine(shift=float("nan")), "Affine: shift must be finite"),
        (
            lambda: T.LeakyReLU(float("inf")),
            "LeakyReLU: negative_slope must be a finite number > 0, got inf",
        ),
        (lambda: T.LULinear(3, eps=float("nan")), "LULinear: eps must be a finite number >= 0"),
        (lambda: T.LULinear(3, eps=2.0), "LULinear: eps must be < 1, got 2.0"),
        (
            lambda: T.Permutation([1.7, 0.2]),
            "perm must be a permutation of 0..D-1, got [1.7, 0.2]",
        ),
        (lambda: T.Reverse(dim=1), "Reverse: dim counts from the right and must be a negative integer, got 1"),
        (lambda: nf.Flow(T.Tanh(), "normal"), "Flow: base must be"),
        (
            lambda: nf.Flow(
                T.Tanh(),
                torch.distributions.Independent(
                    torch.distributions.Normal(torch.zeros(2), torch.ones(2)), 1
                ),
            ),
            "Flow: base must be an nf.distributions distribution (an nn.Module), got Indep",
        ),
        (
            lambda: T.Coupling(2, T.PerColumnTransformer([T.AffineTransformer()], [0, 0, 0])),
            "Coupling: the transformer is built for 3 columns (its assignment), but features=2",
        ),
        (
            lambda: T.Elementwise(4, T.PerColumnTransformer([T.AffineTransformer()], [0, 0, 0])),
            "Elementwise: the transformer is built for 3 columns",
        ),
        (
            lambda: T.Autoregressive(4, T.PerColumnTransformer([T.AffineTransformer()], [0, 0])),
            "Autoregressive: the transformer is built for 2 columns",
        ),
        (lambda: nf.models.build({"model": "Nope"}), "unknown model 'Nope'"),
        (
            lambda: nf.models.RealNVP(2, max_log_scale=0.0),
            "RealNVP: max_log_scale must be a finite number > 0, got 0.0",
        ),
        (
            lambda: nf.models.MAF(2, scale="exp", max_log_scale=float("inf")),
            "MAF: max_log_scale must be a finite number > 0, got inf",
        ),
        (lambda: nf.models.FFJORD(2, t1=float("inf")), "t1 must be a finite number > 0"),
        (lambda: nf.models.RBIG(2, tol=float("nan")), "RBIG: tol must be a finite number >= 0"),
        (lambda: nf.models.RBIG(2, seed=-1), "RBIG: seed must be an integer >= 0, got -1"),
        (lambda: nf.models.NAF(2, bound=float("inf")), "NAF: bound must be a finite"),
        (lambda: nf.models.UMNN(2, bound=0.0), "UMNN: bound must be a finite number"),
        (
            lambda: nf.models.UMNN(2, integrand=()),
            "UMNN: integrand must be a sequence of positive",
        ),
        (
            lambda: T.DSFTransformer(min_slope=1.0),
            "DSFTransformer: min_slope must be < 1, got 1.0",
        ),
        (
            lambda: nf.models.Glow((3, 8, 8), alpha=0.5),
            "Glow: alpha must lie in (0, 0.5), got 0.5",
        ),
        (lambda: nf.distributions.Uniform(2, low=1, high=0), "Uniform: need finite high > low"),
        (lambda: nf.distributions.StandardNormal("x"), "features must be a positive int or shape"),
        (lambda: nf.distributions.StandardNormal((2, 0)), "got (2, 0)"),
        (lambda: nf.distributions.StandardNormal(2.0), "got 2.0"),
        (lambda: nf.distributions.DiagNormal(2, scale=0.0), "DiagNormal: scale must be positive"),
        (
            lambda: nf.distributions.StudentT(2, df=0.4),
            "StudentT: df must be a finite number > 0.5, got 0.4",
        ),
        (lambda: nf.distributions.GaussianMixture((2, 3)), "features must be an int"),
        (lambda: nf.Compose(), "Compose: needs at least one transform"),
        (lambda: nf.Compose(T.Tanh(), "x"), "Compose: expected Transform objects, got str"),
        (lambda: T.Coupling(1, T.AffineTransformer()), "Coupling: needs features >= 2"),
        (
            lambda: T.Coupling(2, torch.nn.Linear(2, 2)),
            "Coupling: transformer must be a Transformer, got Linear(in_features=2, "
            "out_features=2, bias=True)",
        ),
        (lambda: T.Coupling(2, T.AffineTransformer(), dim=1), "dim counts from the right"),
        (
            lambda: T.Autoregressive(2, torch.nn.Sequential(torch.nn.Tanh(), torch.nn.ReLU())),
            "Autoregressive: transformer must be a Transformer, got Sequential( (0): Tanh() (1): "
            "ReLU() )",
        ),
        (
            lambda: nf.nn.MADE(2, 2, hidden=(8, 4), residual=True),
            "MADE: residual blocks need equal hidden widths, got (8, 4)",
        ),
        (lambda: nf.nn.MADE(3, 2, order=[0, 0, 2]), "MADE: order must be a permutation of 0..2"),
        (lambda: nf.models.Standardized(2, flow="MAF"), "flow must be an inner flow's config"),
        (
            lambda: nf.models.Standardized(2, flow=nf.models.MAF(3).config),
            "Standardized: inner flow must have event shape (2,), got (3,)",
        ),
        (
            lambda: nf.models.Standardized(2, flow=nf.models.MAF(2, context=1).config),
            "Standardized: inner flow takes context of size 1, got 0",
        ),
        (
            lambda: nf.models.standardize(
                nf.Flow(T.Tanh(), nf.distributions.StandardNormal(2)), 0
            ),
            "nf.models.standardize: expected an nf.Flow built by an nf.models factory",
        ),
        (lambda: nf.Flow(T.Tanh(), nf.distributions.StandardNormal(2), context=1.5), "context"),
        (
            lambda: nf.models.RealNVP(2, residual=True, hidden=(8, 4)),
            "RealNVP: residual=True needs equal hidden widths, got (8, 4)",
        ),
        (
            lambda: nf.models.MAF(2, residual=True, hidden=(8, 4)),
            "MAF: residual=True needs equal hidden widths, got (8, 4)",
        ),
        (lambda: T.LogitPreprocess(17, "0.1"), "alpha must lie in (0, 0.5), got '0.1'"),
        (lambda: T.ResidualBlock(2, lipschitz=1.0), "lipschitz must lie in (0, 1), got 1.0"),
        (lambda: T.ResidualBlock(2, roulette_p=True), "roulette_p must lie in (0, 1), got True"),
        (lambda: nf.models.RBIG(2, validation=1), "validation must lie in (0, 1), got 1"),
        (lambda: nf.datasets.digits(test_fraction=0), "test_fraction must lie in (0, 1), got 0"),
        (lambda: T.Permutation(np.int64(0)), "Permutation: features must be an integer >= 1"),
        (lambda: nf.distributions.StandardNormal((2, 1.5)), "got (2, 1.5)"),
        # seeds, event dims, channels and callables named by the class (raw torch or Python
        # errors at construction or at the first call before; a float seed was truncated)
        (lambda: T.Permutation(3, seed="a"), "Permutation: seed must be an int or None, got 'a'"),
        (lambda: T.LULinear(3, seed=1.5), "LULinear: seed must be an int or None, got 1.5"),
        (lambda: T.Householder(3, seed=[1]), "Householder: seed must be an int or None"),
        (lambda: T.Planar(2, seed="a"), "Planar: seed must be an int or None, got 'a'"),
        (lambda: T.Radial(2, seed=1.5), "Radial: seed must be an int or None, got 1.5"),
        (lambda: T.Sylvester(2, seed="x"), "Sylvester: seed must be an int or None, got 'x'"),
        (
            lambda: T.Rotation(3, method="random", seed=2.7),
            "Rotation: seed must be an int or None, got 2.7",
        ),
        (lambda: T.InvConv1x1(0), "InvConv1x1: channels must be an integer >= 1, got 0"),
        (lambda: T.InvConv1x1(3, seed="a"), "InvConv1x1: seed must be an int or None, got 'a'"),
        (lambda: T.Sigmoid(event_dim=2.5), "Sigmoid: event_dim must be an integer >= 0, got 2.5"),
        (lambda: T.Affine(0.0, 2.0, event_dim=-1), "Affine: event_dim must be an integer >= 0"),
        (lambda: T.Tanh(event_dim=None), "Tanh: event_dim must be an integer >= 0, got None"),
        (lambda: T.LogitPreprocess(event_dim=2.5), "LogitPreprocess: event_dim must be an integer"),
        (
            lambda: T.Coupling(3, T.AffineTransformer(), conditioner="x"),
            "Coupling: conditioner must be an nn.Module",
        ),
        (
            lambda: T.Autoregressive(3, T.AffineTransformer(), activation=torch.nn.ReLU()),
            "MADE: activation must be a module class such as nn.ReLU (one made per network), "
            "got ReLU()",
        ),
        (
            lambda: T.PerColumnTransformer(T.AffineTransformer(), [0]),
            "PerColumnTransformer: parts must be a sequence",
        ),
        (
            lambda: T.PerColumnTransformer([T.AffineTransformer()], 3),
            "PerColumnTransformer: assignment must be a sequence, got 3",
        ),
        (lambda: T.alternating_mask(4, parity=2.5), "alternating_mask: parity must be an integer"),
        (lambda: T.alternating_mask(-1), "alternating_mask: features must be an integer >= 1"),
        (lambda: T.MLPConditioner(2, 4, -1, (8,)), "MLPConditioner: context must be an integer"),
    ],
)
def test_constructors_reject_bad_arguments(build, message: str) -> None:
    with pytest.raises((ValueError, TypeError)) as info:
        build()
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("model", ["MAF", "IAF", "RealNVP"])
def test_affine_factories_bound_the_log_scale_and_record_it(model: str) -> None:
    flow = getattr(nf.models, model)(2, transforms=2, hidden=(8,), max_log_scale=0.5)
    assert flow.config["max_log_scale"] == 0.5
    rebuilt = nf.models.build(flow.config)
    for f in (flow, rebuilt):
        assert {m.transformer.max_log_scale for m in f.modules() if hasattr(m, "transformer")} == {
            0.5
        }
    # raw outputs far beyond the bound: no layer's log-det per dimension exceeds B
    nf.testing.perturb_parameters(flow, 50.0)
    x = torch.randn(64, 2)
    with torch.no_grad():
        _, ladj = flow.transform.forward(x) if model != "IAF" else flow.transform.inverse(x)
    assert ladj.abs().max() <= 0.5 * 2 * 2 + 1e-4  # 2 layers × 2 features × B


def test_validation_can_be_switched_off_per_flow() -> None:
    flow = nf.models.MAF(2, transforms=1, hidden=(8,))
    flow.validate = False
    assert torch.isnan(flow.log_prob(torch.tensor([[float("nan"), 0.0]]))).all()


def test_repr_does_not_touch_rng() -> None:
    flow = nf.models.Sylvester(3, layers=2)
    state = torch.random.get_rng_state()
    assert "Sylvester" in repr(flow)
    assert torch.equal(state, torch.random.get_rng_state())


def test_actnorm_initializes_from_data_once_and_persists() -> None:
    t = T.ActNorm(3)
    x = torch.randn(500, 3) * torch.tensor([1.0, 5.0, 0.1]) + 4
    z, _ = t(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    t2 = T.ActNorm(3)
    t2.load_state_dict(t.state_dict())
    assert bool(t2.initialized)
    # In train mode, on other data, the loaded layer keeps its parameters (no second init).
    other = x * 3 - 7
    torch.testing.assert_close(t2(other)[0], t(other)[0])
    torch.testing.assert_close(t2.loc, t.loc)
    fresh = T.ActNorm(3)
    fresh(other)  # a fresh layer does initialize on its first train-mode batch
    assert not torch.allclose(fresh.loc, t.loc)


def test_batchnorm_eval_is_exact_bijection() -> None:
    t = T.BatchNorm(2)
    for _ in range(20):
        t(torch.randn(256, 2) * 3 + 1)
    t.eval()
    x = torch.randn(10, 2)
    z, ladj = t(x)
    xb, ladj_inv = t.inverse(z)
    torch.testing.assert_close(xb, x)
    torch.testing.assert_close(ladj, -ladj_inv)


@pytest.mark.parametrize(
    "build",
    [
        lambda: nf.models.ResidualFlow(3, blocks=1, hidden=(8,)),  # ActNorm before its init
        lambda: nf.models.MAF(3, transforms=2, hidden=(8,), batch_norm=True),
    ],
    ids=["actnorm", "batchnorm"],
)
def test_an_empty_batch_runs_nothing_and_leaves_data_dependent_state_alone(build) -> None:
    """0 rows in train mode: an empty result, and no ActNorm initialization or BatchNorm running
    statistic taken from no data (they were NaN, which every later call then returned)."""
    flow = build()
    state = {k: v.clone() for k, v in flow.state_dict().items()}
    assert flow.log_prob(torch.empty(0, 3)).shape == (0,)
    assert flow.log_prob(torch.empty(2, 0, 3)).shape == (2, 0)
    for k, v in flow.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert flow.sample(0).shape == (0, 3) and flow.sample((2, 0)).shape == (2, 0, 3)
    x, log_p = flow.sample_and_log_prob(0)
    assert x.shape == (0, 3) and log_p.shape == (0,)
    flow.log_prob(torch.randn(64, 3))
    flow.eval()
    assert torch.isfinite(flow.log_prob(torch.randn(5, 3))).all()


def test_log_prob_under_inference_mode_for_transforms_that_differentiate_inside() -> None:
    """FFJORD's trace and a residual series take autograd inside, which ``torch.inference_mode``
    forbids: ``log_prob`` runs them without it (on ordinary copies) and gives the same values."""
    for flow in (
        nf.models.FFJORD(2, hidden=(8,)),
        nf.models.ResidualFlow(2, blocks=1, hidden=(8,), logdet="series").train(),
    ):
        x = torch.randn(4, 2)
        torch.manual_seed(0)
        with torch.no_grad():
            expected = flow.log_prob(x)
        torch.manual_seed(0)
        with torch.inference_mode():
            got = flow.log_prob(x)
        torch.testing.assert_close(got, expected)
    for flow in (  # sample_and_log_prob too (with a context batch), the same draws as no_grad
        nf.models.FFJORD(2, context=1, hidden=(8,)),
        nf.models.ResidualFlow(2, context=1, blocks=1, hidden=(8,), logdet="roulette").train(),
    ):
        c = torch.randn(3, 1)
        torch.manual_seed(1)
        with torch.no_grad():
            expected = flow.sample_and_log_prob((), c)
        torch.manual_seed(1)
        with torch.inference_mode():
            got = flow.sample_and_log_prob((), c)
        torch.testing.assert_close(got, expected)
        assert not got[0].is_inference()


def test_sample_names_a_context_that_is_not_a_tensor() -> None:
    flow = nf.models.MAF(3, context=2, transforms=1, hidden=(8,))
    with pytest.raises(TypeError, match="Flow.sample: context must be a torch.Tensor"):
        flow.sample(3, context=[[0.0, 1.0]])


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_sample_runs_in_inference_mode_but_returns_ordinary_tensors(chunk_size) -> None:
    """``Flow.sample`` runs the inverse under ``torch.inference_mode()`` (fewer per-op costs),
    yet its result is an ordinary tensor: it may enter autograd and be modified in place."""
    flow = nf.models.NSF(2, transforms=2, hidden=(8,))
    first, modes = flow.transform[0], []

    def recording(z, context=None):
        modes.append(torch.is_inference_mode_enabled())
        return type(first).inverse_value(first, z, context)

    first.inverse_value = recording
    x = flow.sample(20, chunk_size=chunk_size)
    assert len(modes) == (1 if chunk_size is None else 3) and all(modes)
    assert not x.is_inference()
    flow.log_prob(x).sum().backward()  # x is saved for backward: an inference tensor fails
    x.add_(1.0)  # in place outside inference mode: an inference tensor fails


def test_transforms_that_differentiate_inside_sample_without_inference_mode() -> None:
    """A transform whose inverse takes autograd internally (FFJORD's trace) declares
    ``autograd_inside``: ``Flow.sample`` then runs under ``no_grad``, and works."""
    assert T.ContinuousFlow.autograd_inside and T.ResidualBlock.autograd_inside
    flow = nf.models.FFJORD(2, blocks=1, hidden=(8,))
    assert nf.core.autograd_inside(flow)
    x = flow.sample(5)
    assert x.shape == (5, 2) and torch.isfinite(x).all() and not x.is_inference()


def test_check_transform_names_a_missing_autograd_inside() -> None:
    """The generic check runs ``inverse_value`` under inference mode, as sampling does, and says
    what to set when a transform differentiates internally without declaring it."""

    class Undeclared(T.ContinuousFlow):
        autograd_inside = False

        def inverse_value(self, z, context=None):  # the solve with the trace: autograd inside
            return self.inverse(z, context)[0]

    t = Undeclared(2, hidden=(8,)).double()
    with pytest.raises(AssertionError, match="must set autograd_inside = True"):
        nf.testing.check_transform(t, torch.randn(4, 2, dtype=torch.float64), jacobian=False)


def test_a_transform_of_another_width_than_the_base_is_refused() -> None:
    """Coupling(3) in front of a 4-feature base dropped a column silently (finite densities
    on a 3-feature slice, 3-column samples); every entry point now names the mismatch, and
    the layers themselves refuse the wrong width."""
    t = nf.transforms

    class FirstThree(nf.Transform):  # built for another width: keeps 3 columns of any input
        def forward(self, x, context=None):
            return x[..., :3], x.new_zeros(x.shape[:-1])

        def inverse(self, z, context=None):
            return z[..., :3], z.new_zeros(z.shape[:-1])

    flow = nf.Flow(FirstThree(), nf.distributions.StandardNormal(4))
    for call, where in (
        (lambda: flow.log_prob(torch.randn(5, 4)), "Flow.log_prob"),
        (lambda: flow.sample(2), "Flow.sample"),
        (lambda: flow.rsample(2), "Flow.rsample"),
        (lambda: flow.sample_and_log_prob(2), "Flow.sample_and_log_prob"),
    ):
        with pytest.raises(ValueError, match=f"{where}: the transform maps .* event shape "
                           r"\(3,\), but the base's is \(4,\)"):  # fmt: skip
            call()
    for d_layer, d_base in ((3, 4), (4, 3)):
        coupling = nf.Flow(t.Coupling(d_layer, t.AffineTransformer()),
                           nf.distributions.StandardNormal(d_base))  # fmt: skip
        with pytest.raises(ValueError, match=f"Coupling: x must have {d_layer} features"):
            coupling.log_prob(torch.randn(5, d_base))
        with pytest.raises(ValueError, match=f"Coupling: x must have {d_layer} features"):
            coupling.sample(2)
    with pytest.raises(ValueError, match=r"Permutation: x must have 3 features along dim -1"):
        t.Permutation(3)(torch.randn(2, 4))


def test_actnorm_inside_an_inverse_initializes_from_data_and_not_from_samples() -> None:
    """IAF style (``Compose(ActNorm, ...).inv``): the data reach ActNorm through its inverse,
    which initializes it (standardized output); sampling in train mode (its forward) no
    longer re-initializes the trained layer from the base's draws."""
    t = nf.transforms
    inner = nf.models.MAF(2, transforms=1, hidden=(8,))
    flow = nf.Flow(nf.Compose(t.ActNorm(2), inner.transform).inv, inner.base)
    (norm,) = [m for m in flow.modules() if isinstance(m, t.ActNorm)]
    x = torch.randn(500, 2) * 3 + 5
    z, _ = norm.inverse(x)  # train mode: the data-dependent init, through the inverse
    assert bool(norm.initialized)
    torch.testing.assert_close(z.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(2), atol=1e-5, rtol=0)
    fresh = nf.Flow(nf.Compose(t.ActNorm(2), inner.transform).inv, inner.base)
    fresh.sample(100)  # train mode, before any data: sampling leaves it uninitialized
    assert not bool([m for m in fresh.modules() if isinstance(m, t.ActNorm)][0].initialized)
    nf.fit(flow, x, steps=30, progress=False, seed=0)
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    flow.train()
    flow.sample(100)
    assert all(torch.equal(before[k], v) for k, v in flow.state_dict().items())
    plain = t.ActNorm(2)
    for _ in range(3):  # a view (.inv builds a new Inverse each time) changes nothing
        _ = plain.inv, nf.Inverse(nf.Inverse(plain))
    alone = nf.Flow(plain, nf.distributions.StandardNormal(2))
    alone.sample(50)  # train mode, no data yet: the draws do not initialize it
    assert not bool(plain.initialized)
    z, _ = plain(torch.randn(10, 2) + 3)  # data through its forward
    assert bool(plain.initialized) and abs(float(z.detach().mean())) < 1e-5


def test_a_vector_layer_on_images_sums_its_log_det_over_the_event() -> None:
    """An elementwise layer (``event_dim = 1``) in a chain or flow on images ``(C, H, W)``: its
    ``ladj`` ``(*batch, C, H)`` is summed over the event, not broadcast into the total."""
    torch.manual_seed(0)
    base = nf.distributions.StandardNormal((2, 3, 3))
    flow = nf.Flow(T.Affine(shift=0.5, scale=1.5), base).double()
    nf.testing.check_flow(flow)
    x = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    expected = base.double().log_prob(1.5 * x + 0.5) + 18 * np.log(1.5)
    torch.testing.assert_close(flow.log_prob(x), expected)
    glow = nf.models.Glow((2, 4, 4), levels=1, steps=1, hidden=(8,)).double().eval()
    pre = nf.Flow(nf.Compose(T.Affine(scale=2.0), glow.transform), glow.base)
    x = torch.randn(4, 2, 4, 4, dtype=torch.float64)
    expected = glow.log_prob(2 * x) + 32 * np.log(2.0)
    torch.testing.assert_close(pre.log_prob(x), expected)
    with pytest.raises(ValueError, match="events of 3 dimensions, but the base's event shape"):
        nf.Flow(glow.transform, nf.distributions.StandardNormal(32))


@pytest.mark.parametrize(
    ("transform", "name"),
    [
        (T.BlockAutoregressive(3, context=2), "BlockAutoregressive"),
        (T.Coupling(3, T.AffineTransformer(), context=2), "Coupling's conditioner"),
        (
            T.Autoregressive(3, T.AffineTransformer(), context=2),
            r"MADE \(an autoregressive conditioner\)",
        ),
        (T.Elementwise(3, T.AffineTransformer(), context=2), "Parameters"),
    ],
)
def test_a_conditional_layer_without_a_context_says_so(transform, name: str) -> None:
    """A conditional layer in a flow built without ``context=``: one line naming the layer,
    in both directions (it ran unconditioned, or failed on a matrix product)."""
    flow = nf.Flow(transform, nf.distributions.StandardNormal(3))
    message = rf"^{name}: this layer is conditional \(a context of 2 features\) and got no context"
    with pytest.raises(ValueError, match=message):
        flow.log_prob(torch.randn(4, 3))
    with pytest.raises(ValueError, match=message):
        flow.sample(4)
    # by hand (no Flow to check the width), a context of another width: one line too (a
    # matrix product's error, or a silent broadcast of a one-wide context)
    wrong = rf"^{name}: expected a context of last dim 2, got shape \(4, 1\)$"
    with pytest.raises(ValueError, match=wrong):
        transform(torch.randn(4, 3), torch.randn(4, 1))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: T.Reverse(3)(torch.randn(5, 4)), r"Reverse: x must have 3 features along dim -1"),
        (lambda: T.Reverse(3).inverse(torch.randn(5, 2)), r"Reverse: z must have 3 features"),
        (
            lambda: T.Affine(shift=torch.zeros(3), scale=torch.ones(3))(torch.zeros(5, 1)),
            r"Affine: x has shape \(5, 1\), but its per-column parameters make it \(5, 3\)",
        ),
        (
            lambda: T.Bounded([0, 0, 0], [1, 1, 1]).inverse(torch.zeros(5, 1)),
            r"Bounded: z has shape \(5, 1\), but its per-column parameters make it \(5, 3\)",
        ),
    ],
)
def test_a_layer_built_for_other_features_refuses_silently_resized_input(call, message) -> None:
    """Reverse(3) reversed 4 columns and Affine/Bounded broadcast one column to three."""
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    ("transform", "x", "z_shape"),
    [
        (T.Squeeze(), torch.randn(0, 2, 4, 4), (0, 8, 2, 2)),
        (T.BlockAutoregressive(3), torch.randn(0, 3), (0, 3)),
        (T.ContinuousFlow(3), torch.randn(0, 3), (0, 3)),
    ],
)
def test_transforms_map_an_empty_batch_to_the_right_shapes(transform, x, z_shape) -> None:
    """At the transform level (under compile or export, where Flow's shortcut for zero rows is
    off): pixel_unshuffle returns an empty input unchanged, a -1 reshape of 0 elements and an
    ODE solver's step control fail."""
    z, ladj = transform(x)
    assert tuple(z.shape) == z_shape and tuple(ladj.shape) == (0,)
    x_back, ladj_back = transform.inverse(z)
    assert x_back.shape == x.shape and tuple(ladj_back.shape) == (0,)


def test_log_prob_or_minus_inf_scores_impossible_rows_minus_inf() -> None:
    """``Flow.in_support`` per row; ``nf.log_prob_or_minus_inf`` equals ``log_prob`` inside and
    is -inf outside (all rows outside too); NaN is still an error."""
    torch.manual_seed(0)
    x = torch.rand(300, 2, dtype=torch.float64) * 3
    flow = nf.models.standardize(
        nf.models.MAF(2, transforms=1, hidden=(8,)).double(), x, bounds=(0, None)
    )
    q = torch.tensor([[1.0, 1.0], [-1.0, 2.0], [2.0, 0.5]], dtype=torch.float64)
    assert flow.in_support(q).tolist() == [True, False, True]
    lp = nf.log_prob_or_minus_inf(flow, q)
    torch.testing.assert_close(lp[[0, 2]], flow.log_prob(q[[0, 2]]))
    assert lp[1] == -math.inf
    assert nf.log_prob_or_minus_inf(flow, -q[1:2].abs()).tolist() == [-math.inf]
    with pytest.raises(ValueError, match="contains NaN"):
        nf.log_prob_or_minus_inf(flow, torch.full((1, 2), math.nan, dtype=torch.float64))


def test_support_of_a_hand_built_chain_includes_its_inner_checked_layers() -> None:
    """``Affine(scale=0.5)`` then ``Logit``: support (0, 2). ``in_support`` read the first
    layer's domain only, so 3.0 was "inside", ``log_prob_or_minus_inf`` raised the chain's
    inner error and an exported density gave NaN, not -inf."""
    flow = nf.Flow(
        nf.Compose(T.Affine(shift=0.0, scale=0.5), T.Logit()), nf.distributions.StandardNormal(1)
    )
    x = torch.tensor([[1.0], [3.0], [-0.5]])
    assert flow.in_support(x).tolist() == [True, False, False]
    lp = nf.log_prob_or_minus_inf(flow, x)
    torch.testing.assert_close(lp[0], flow.log_prob(x[:1])[0])
    assert lp[1:].tolist() == [-math.inf, -math.inf]
    assert nf.export(flow).module()(x)[1:].tolist() == [-math.inf, -math.inf]
    # a conditional layer before the checked one: the context maps x on the way
    cond = nf.Flow(
        nf.Compose(T.Elementwise(1, T.AffineTransformer(), context=2), T.Logit()),
        nf.distributions.StandardNormal(1),
    )
    c = torch.randn(3, 2)
    z = cond.transform.transforms[0](x, c)[0]
    assert cond.in_support(x, c).tolist() == ((z > 0) & (z < 1)).flatten().tolist()


def test_a_flow_with_a_context_that_no_layer_reads_is_refused() -> None:
    """``Flow(..., context=2)`` around unconditional layers ignored the context silently (every
    context gave the same density); a user's own module may read it, so it is not judged."""
    layer = T.Autoregressive(3, T.AffineTransformer())
    with pytest.raises(ValueError, match=r"context=2, but no layer and not the base reads"):
        nf.Flow(layer, nf.distributions.StandardNormal(3), context=2)

    class Shift(nf.Transform):  # reads the context; nothing marks it
        def forward(self, x, context=None):
            return x + context[..., :1], x.new_zeros(x.shape[:-1])

        def inverse(self, z, context=None):
            return z - context[..., :1], z.new_zeros(z.shape[:-1])

    flow = nf.Flow(Shift(), nf.distributions.StandardNormal(3), context=2)
    assert flow.log_prob(torch.zeros(4, 3), torch.ones(4, 2)).shape == (4,)


class _Flatten(nf.Transform):
    """``(*, 1, 2, 2) ↔ (*, 4)``: a layer that changes the event's rank (ladj 0)."""

    event_dim = 3

    def forward(self, x, context=None):
        return x.flatten(-3), x.new_zeros(x.shape[:-3])

    def inverse(self, z, context=None):
        return z.unflatten(-1, (1, 2, 2)), z.new_zeros(z.shape[:-1])


def test_a_chain_through_a_reshaping_layer_keeps_its_log_det_per_row() -> None:
    """Images flattened for a vector flow and back: every layer's log-det is already per row
    (examples/glow_digits.py's vector RealNVP); both directions, and sampling."""
    torch.manual_seed(0)
    inner = nf.testing.perturb_parameters(nf.models.RealNVP(4, transforms=2, hidden=(8,)), 0.3)
    flat = _Flatten()
    chain = nf.Compose(T.Affine(scale=2.0), flat, inner.transform, flat.inv)
    flow = nf.Flow(chain, nf.distributions.StandardNormal((1, 2, 2))).double()
    nf.testing.check_flow(flow)
    x = torch.randn(5, 1, 2, 2, dtype=torch.float64)
    expected = inner.double().log_prob(2 * x.flatten(-3)) + 4 * np.log(2.0)
    torch.testing.assert_close(flow.log_prob(x), expected)


class _ScaleWithScalarLogDet(nf.Transform):
    """A layer whose log-det does not depend on x, returned 0-dim (it broadcasts)."""

    def __init__(self) -> None:
        super().__init__()
        self.s = torch.nn.Parameter(torch.tensor([0.5, -0.2, 0.1]))

    def forward(self, x, context=None):
        return x * self.s.exp(), self.s.sum()

    def inverse(self, z, context=None):
        return z * (-self.s).exp(), -self.s.sum()


def test_chain_log_dets_keep_the_batch_with_scalar_log_dets_and_broadcast_contexts() -> None:
    """A 0-dim log-det broadcasts (it must not make the chain sum the others over the batch),
    and an elementwise layer before a conditional image flow sums over its event, not down to
    the context's broadcast batch; both against row-by-row evaluation."""
    torch.manual_seed(0)
    flow = nf.Flow(
        nf.Compose(_ScaleWithScalarLogDet(), T.Affine(0.0, 2.0)),
        nf.distributions.StandardNormal(3),
    )
    x = torch.randn(4, 3)
    rows = torch.cat([flow.log_prob(r[None]) for r in x])
    torch.testing.assert_close(flow.log_prob(x), rows)
    glow = nf.models.Glow((2, 4, 4), context=3, levels=1, steps=1, hidden=(8,))
    scale = T.Affine(torch.zeros(4), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    image = nf.Flow(nf.Compose(scale, glow.transform), glow.base, context=3).eval()
    x, c = torch.rand(2, 2, 4, 4), torch.randn(2, 1, 3)
    each = torch.stack(
        [torch.cat([image.log_prob(x[j : j + 1], c[i]) for j in range(2)]) for i in range(2)]
    )
    torch.testing.assert_close(image.log_prob(x, c), each)


def test_a_context_width_of_any_integer_type_and_foreign_conditioners_are_read() -> None:
    """A NumPy width reads a context; a module from outside nfkit's and torch.nn's (a scripted
    or a user's module) is not judged."""
    layer = T.Autoregressive(4, T.AffineTransformer(), context=np.int64(2))
    nf.Flow(layer, nf.distributions.StandardNormal(4), context=2)
    traced = torch.fx.symbolic_trace(torch.nn.Linear(4, 4))  # an FX module hides its code
    assert nf.core._reads_context([traced]) is None


def test_an_unconditional_coupling_before_a_conditional_base_ignores_the_context() -> None:
    """The context is meant for the base; the unconditional conditioner had concatenated it
    (a matrix-product error)."""
    base = nf.distributions.GaussianMixture(4, context=2, components=3)
    flow = nf.Flow(T.Coupling(4, T.AffineTransformer(), hidden=(8,)), base, context=2)
    assert flow.log_prob(torch.randn(5, 4), torch.randn(5, 2)).shape == (5,)
    assert flow.sample(3, torch.randn(2)).shape == (3, 4)


def test_log_prob_or_minus_inf_checks_the_context_when_every_row_is_outside() -> None:
    """With no row inside the support it returned -inf at once: a context of the wrong width,
    a missing or NaN one passed silently, and batches that do not broadcast raised torch's
    error."""
    torch.manual_seed(0)
    theta, c = torch.rand(100, 1) + 0.1, torch.randn(100, 2)
    inner = nf.models.MAF(1, context=2, transforms=1, hidden=(8,))
    flow = nf.models.standardize(inner, theta, c, bounds=[(0, None)])
    outside = -torch.ones(2, 1)
    for context, message in (
        (torch.randn(2, 5), "context must have last dim 2"),
        (None, "needs a context of last dim 2"),
        (torch.full((2, 2), math.nan), "context contains NaN"),
        (torch.randn(3, 2), r"batch shape \(2,\) and context's \(3,\) do not broadcast"),
    ):
        with pytest.raises(ValueError, match=message):
            nf.log_prob_or_minus_inf(flow, outside, context)
    assert torch.isneginf(nf.log_prob_or_minus_inf(flow, outside, torch.randn(2, 2))).all()


def test_a_conditional_base_must_read_the_flows_context() -> None:
    """A mixture base built with another context width than the flow's: the flow was built,
    then could be used neither with a context nor without one (or blamed the user's correct
    context in an internal module's name)."""
    D, M = nf.distributions, nf.models
    for make, message in (
        (lambda: M.MAF(2, transforms=1, hidden=(8,), base=D.GaussianMixture(2, 3, context=3)),
         "the base reads a context of 3 features, but the flow's context is 0"),
        (lambda: M.NSF(2, context=3, transforms=1, hidden=(8,),
                       base=D.GaussianMixture(2, 3, context=4)),
         "the base reads a context of 4 features, but the flow's context is 3"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            make()
    flow = M.NSF(2, context=3, transforms=1, hidden=(8,), base=D.GaussianMixture(2, 3, context=3))
    assert flow.log_prob(torch.randn(4, 2), torch.randn(4, 3)).shape == (4,)
