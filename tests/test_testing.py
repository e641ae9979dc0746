"""The conformance checks must fail: each deliberately broken transform or flow is caught.

``check_transform`` and ``check_flow`` carry the generic test over every transform and factory,
so a check that cannot fail would pass broken code everywhere. Each case below breaks one
property of a correct map (``z = 2x + 1`` per coordinate, ``ladj = D log 2``) and asserts the
checker names it.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import nfkit as nf
from nfkit.testing import check_flow, check_transform


class Doubling(nf.Transform):
    """``z = 2x + 1``; each keyword breaks one property."""

    def __init__(self, **broken: bool) -> None:
        super().__init__()
        self.broken = broken

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = 2 * x + 1
        ladj = torch.full(x.shape[:-1], x.shape[-1] * math.log(2.0), dtype=x.dtype)
        if self.broken.get("ladj"):
            ladj = ladj * 0.5
        if self.broken.get("ladj_shape"):
            ladj = ladj[..., None].expand(x.shape)
        if self.broken.get("z_shape"):
            z = z[:1]
        if self.broken.get("nan"):
            z = z * float("nan")
        if self.broken.get("sum_over_dim_1"):  # right at (n, D) alone
            ladj = (math.log(2.0) * torch.ones_like(x)).sum(1)
        return z, ladj

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = (z - 1) / (3 if self.broken.get("inverse") else 2)
        ladj = torch.full(z.shape[:-1], -z.shape[-1] * math.log(2.0), dtype=z.dtype)
        if self.broken.get("symmetry"):
            ladj = -ladj
        if self.broken.get("inverse_sum_over_dim_1"):  # right at (n, D) alone
            ladj = (-math.log(2.0) * torch.ones_like(z)).sum(1)
        return x, ladj

    def inverse_value(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        x = self.inverse(z, context)[0]
        return x + 1e-3 if self.broken.get("inverse_value") else x


X = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_the_unbroken_map_passes() -> None:
    report = check_transform(Doubling(), X)
    assert report["inverse_error"] < 1e-12 and report["ladj_error"] < 1e-12


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("ladj", "ladj vs autograd log|det J| differs by up to 1.04"),
        ("inverse", r"inverse\(forward\(x\)\) differs"),
        ("symmetry", r"ladj\(inverse\) \+ ladj\(forward\) differs"),
        ("ladj_shape", r"ladj has shape \(6, 3\), expected \(6,\)"),
        ("z_shape", r"z has shape \(1, 3\), expected batch \(6,\) \+ event"),
        ("inverse_value", r"inverse_value\(z\) vs inverse\(z\)\[0\] differs"),
        ("nan", r"inverse\(forward\(x\)\) has non-finite values"),
    ],
)
def test_check_transform_catches(broken: str, message: str) -> None:
    with pytest.raises(AssertionError, match=f"^Doubling: {message}"):
        check_transform(Doubling(**{broken: True}), X)


def test_check_transform_tries_other_batch_shapes() -> None:
    """A log-det summed over ``dim=1`` instead of the event is right at ``(n, D)`` alone."""
    with pytest.raises(
        AssertionError,
        match=r"^Doubling: at batch shape \(2, 4\) ladj has shape \(2, 3\), expected",
    ):
        check_transform(Doubling(sum_over_dim_1=True), torch.randn(8, 3, dtype=torch.float64))
    with pytest.raises(  # the inverse's too (sample_and_log_prob at other shapes: 3.6 nats off)
        AssertionError,
        match=r"^Doubling: at batch shape \(2, 4\) the inverse gives x of shape \(2, 4, 3\) "
        r"and ladj of shape \(2, 3\)",
    ):
        check_transform(
            Doubling(inverse_sum_over_dim_1=True), torch.randn(8, 3, dtype=torch.float64)
        )


class _MixesRows(nf.Transform):
    """``z_n = x_n + (x_{n+1} - x_{n-1}) / 2`` along the last batch dim, claiming ladj 0: not a
    per-event map (three rows: log|det| 1.12). The Jacobian test sums each output over the
    batch, where the cross terms cancel."""

    def _m(self, n: int) -> Tensor:
        s = torch.roll(torch.eye(n, dtype=torch.float64), 1, 0)
        return torch.eye(n, dtype=torch.float64) + (s - s.T) / 2

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return torch.einsum("ij,...jd->...id", self._m(x.shape[-2]), x), x.new_zeros(x.shape[:-1])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        m = torch.linalg.inv(self._m(z.shape[-2]))
        return torch.einsum("ij,...jd->...id", m, z), z.new_zeros(z.shape[:-1])


def test_check_transform_flattens_several_batch_dims_to_rows() -> None:
    """At x of shape (2, 3, 2) the row-mixing map passed every check (the batch-shape checks
    ran for one batch dim only); flattened to rows, its values change."""
    x = torch.randn(2, 3, 2, dtype=torch.float64)
    with pytest.raises(AssertionError, match=r"^_MixesRows: z of the batch flattened to rows"):
        check_transform(_MixesRows(), x)
    check_transform(Doubling(), x)  # a per-event map passes
    context = torch.randn(3, 1, dtype=torch.float64)  # broadcast against x's (2, 3)
    check_transform(SinhScaling(), x, context)
    rows = torch.randn(6, 3, dtype=torch.float64)  # a (1, C) context broadcast over the rows
    check_transform(SinhScaling(), rows, torch.randn(1, 1, dtype=torch.float64))


class _SinhWithWrongBackward(torch.autograd.Function):
    """``sinh`` whose hand-written backward uses a wrong derivative ``cosh x + 0.05 x²``."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(x)
        return torch.sinh(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # noqa: ANN001
        (x,) = ctx.saved_tensors
        return g * _wrong_slope(x)


def _wrong_slope(x: Tensor) -> Tensor:
    return torch.cosh(x) + 0.05 * x * x


class _Sinh(nf.Transform):
    """A log-det built to match the wrong backward: (c)'s autograd Jacobian agrees with it."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return _SinhWithWrongBackward.apply(x), _wrong_slope(x).log().sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = torch.asinh(z)
        return x, -_wrong_slope(x).log().sum(-1)


def test_check_transform_catches_a_wrong_hand_written_backward() -> None:
    """The forward value's gradient in x against central differences: (c) reads autograd's
    Jacobian, so a wrong backward with a log-det to match passed (0.15 nats off)."""
    x = 2 * torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(
        AssertionError, match=r"^_Sinh: the forward value's gradient with respect to x differs"
    ):
        check_transform(_Sinh(), x)
    with pytest.raises(AssertionError, match="forward value's gradient with respect to x"):
        check_flow(_flow(_Sinh()))


class Scaling(nf.Transform):
    """``z = x · e^s + t`` with trainable ``s, t``; ``detach`` cuts one value from its
    parameter's graph, right in value, wrong in gradient."""

    def __init__(self, detach: str = "") -> None:
        super().__init__()
        self.s = nn.Parameter(torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64))
        self.t = nn.Parameter(torch.tensor([0.5, 1.0, -1.0], dtype=torch.float64))
        self.detach = detach

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        s = self.s.detach() if self.detach == "ladj" else self.s
        return x * torch.exp(self.s) + self.t, s.sum().expand(x.shape[:-1])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        t = self.t.detach() if self.detach == "inverse" else self.t
        x = (z - t) * torch.exp(-self.s)
        if self.detach == "reshape":  # a batch flattened: right only for rows (n, D)
            x = x.reshape(-1, x.shape[-1])
        return x, -self.s.sum().expand(z.shape[:-1])

    def inverse_value(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        if self.detach == "inverse_value":  # what Flow.rsample differentiates
            return (z - self.t.detach()) * torch.exp(-self.s)
        return self.inverse(z, context)[0]


@pytest.mark.parametrize("seed", range(20))
def test_check_transform_catches_a_value_cut_from_its_parameters(seed: int) -> None:
    """Right values, a cut graph: a log-det or an inverse whose value is right but carries no
    gradient to a parameter (nf.fit then trains the wrong objective). Caught by the
    parameter check (f), which the value checks cannot do, at any input (with a tolerance of
    1e-3 of the directional derivative, the cut inverse passed at 27% of inputs)."""
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    report = check_transform(Scaling(), x)
    assert report["parameter_gradient_error"] < 1e-8
    for part, what in (("ladj", "forward log-det"), ("inverse", "inverse value")):
        with pytest.raises(AssertionError, match=f"^Scaling: the {what}'s gradient with "
                           "respect to the parameters differs"):  # fmt: skip
            check_transform(Scaling(detach=part), x)
        check_transform(Scaling(detach=part), x, parameters=False)  # the values are right
    with pytest.raises(AssertionError, match="the inverse_value's gradient with respect to the"):
        check_transform(Scaling(detach="inverse_value"), x)
    with pytest.raises(AssertionError, match=r"at batch shape \(2, 3\) the inverse gives x of"):
        check_transform(Scaling(detach="reshape"), x)


class SinhScaling(nf.Transform):
    """``z = sinh(x) · e^{a c}`` per coordinate, ``c`` the context's first entry: ``ladj = Σ log
    cosh(x) + D a c``. ``cut`` builds the log-det from ``x.detach()`` or ``context.detach()``:
    right in value, no gradient to a layer in front or to an embedding network."""

    def __init__(self, cut: str = "") -> None:
        super().__init__()
        self.a, self.cut = 0.7, cut
        self.context_features = 1

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        assert context is not None
        c = context[..., :1]
        xl = x.detach() if self.cut == "x" else x
        cl = c.detach() if self.cut == "context" else c
        ladj = torch.log(torch.cosh(xl)).sum(-1) + x.shape[-1] * self.a * cl[..., 0]
        return torch.sinh(x) * torch.exp(self.a * c), ladj

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        assert context is not None
        c = context[..., :1]
        x = torch.asinh(z * torch.exp(-self.a * c))
        return x, -(torch.log(torch.cosh(x)).sum(-1) + z.shape[-1] * self.a * c[..., 0])


def test_check_transform_catches_a_log_det_cut_from_its_input_or_context() -> None:
    """A log-det built from ``x.detach()`` or ``context.detach()`` passed every check: the
    values are right, and the parameter check moves only parameters. The input check (f)
    differentiates in ``x``, ``z`` and the context too."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, dtype=torch.float64, generator=g)
    c = torch.randn(6, 2, dtype=torch.float64, generator=g)
    assert check_transform(SinhScaling(), x, c)["input_gradient_error"] < 1e-8
    for cut in ("x", "context"):
        with pytest.raises(
            AssertionError, match=f"forward log-det's gradient with respect to {cut}"
        ):
            check_transform(SinhScaling(cut), x, c)


def test_check_transform_hints_at_float64_and_checks_the_inverse_ladj_shape() -> None:
    with pytest.raises(AssertionError, match="use float64 inputs"):
        check_transform(Doubling(ladj=True), X.float())

    class Unsummed(Doubling):
        def inverse(self, z, context=None):
            x, ladj = super().inverse(z, context)
            return x, ladj[..., None].expand(z.shape) / z.shape[-1]

    with pytest.raises(AssertionError, match=r"ladj of the inverse has shape \(6, 3\), expected"):
        check_transform(Unsummed(), X)


def test_check_transform_wants_the_context_batch() -> None:
    """A conditional transform's ``ladj`` has the broadcast batch of ``x`` and the context;
    one that ignores a context of batch (4, 1) against x of (6,) is caught."""
    with pytest.raises(AssertionError, match=r"ladj has shape \(6,\), expected \(4, 6\)"):
        check_transform(Doubling(), X, torch.randn(4, 1, 2, dtype=torch.float64))


def _flow(transform: nf.Transform) -> nf.Flow:
    return nf.Flow(transform, nf.distributions.StandardNormal(3)).double()


def test_check_flow_passes_a_correct_flow() -> None:
    check_flow(_flow(Doubling()))


def test_check_flow_catches_a_wrong_density() -> None:
    """A flow whose density is off by a constant factor (ladj halved on the density side)."""
    with pytest.raises(AssertionError, match="log_prob"):
        check_flow(_flow(Doubling(ladj=True)))


class _Unused(nf.Transform):
    """Correct, but with a parameter that no output depends on."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Doubling()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.inner(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.inner.inverse(z, context)


class _DetachedInverse(nf.Transform):
    """``z = x e^s`` with a learned ``s``, but the inverse (sampling) detaches ``s``."""

    def __init__(self) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.tensor(0.3))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x * self.s.exp(), (x.shape[-1] * self.s).expand(x.shape[:-1])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        s = self.s.detach()
        return z * (-s).exp(), (-z.shape[-1] * s).expand(z.shape[:-1])


class _NoisyRepr(Doubling):
    def extra_repr(self) -> str:
        return f"noise={torch.rand(()).item():.3f}"  # draws from the global RNG


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (_Unused(), r"parameters without gradient from log_prob: \['transform.unused'\]"),
        (_DetachedInverse(), "rsample carries no gradient to the parameters"),
        (_NoisyRepr(), "repr changed the global RNG state"),
    ],
)
def test_check_flow_catches(transform: nf.Transform, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_flow(_flow(transform), jacobian=False)  # the flow's own checks
    with pytest.raises(AssertionError):  # check_transform too (perhaps first)
        check_flow(_flow(transform))


def test_check_flow_leaves_the_flow_alone_and_checks_batch_coupled_layers_in_eval() -> None:
    """A fresh flow with ActNorm (train mode, waiting for its data-dependent init) passes, and
    is left waiting: the check had initialized it from the base's draws (a later nf.fit then
    skipped the init) and failed, blaming sample_and_log_prob."""
    torch.manual_seed(0)
    T = nf.transforms
    flow = nf.Flow(
        nf.Compose(T.ActNorm(2), T.Coupling(2, T.AffineTransformer(), hidden=(4,))),
        nf.distributions.StandardNormal(2),
    ).double()
    check_flow(flow)
    actnorm = flow.transform.transforms[0]
    assert flow.training and actnorm._needs_init and not bool(actnorm.initialized)
    assert all(p.grad is None for p in flow.parameters())


def test_check_flow_checks_its_transform() -> None:
    """An ``inverse_value`` 1e-3 off passes the flow's own checks; check_transform sees it."""
    flow = _flow(Doubling(inverse_value=True))
    check_flow(flow, jacobian=False)
    with pytest.raises(AssertionError, match=r"inverse_value\(z\) vs inverse\(z\)\[0\]"):
        check_flow(flow)
