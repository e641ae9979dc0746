"""``nf.nn.DeepSet``: invariant to the elements' order, any number of elements, batch shapes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nfkit as nf


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 7), m=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_any_order_of_the_elements_gives_the_same_summary(n: int, m: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = nf.nn.DeepSet(m, 4, hidden=(8, 8)).double()
    x = torch.randn(5, n * m, generator=g, dtype=torch.float64)
    order = torch.randperm(n, generator=g)
    shuffled = x.unflatten(-1, (n, m))[:, order].flatten(-2)
    torch.testing.assert_close(net(shuffled), net(x), rtol=1e-12, atol=1e-12)


def test_shapes_sizes_and_errors() -> None:
    torch.manual_seed(0)
    net = nf.nn.DeepSet(2, 3, hidden=(8,))
    assert net(torch.randn(4, 6, 10)).shape == (4, 6, 3)  # batch dims kept
    assert net(torch.randn(7, 2)).shape == (7, 3)  # one element
    # the mean pools: a set and the same set twice give the same summary
    x = torch.randn(4, 6)
    torch.testing.assert_close(net(torch.cat([x, x], -1)), net(x))
    with pytest.raises(ValueError, match=r"last dim \(5\) must hold whole elements of 2"):
        net(torch.randn(4, 5))
    net(torch.randn(4, 6)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 6), m=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_a_padded_set_pools_its_present_elements_wherever_the_padding_sits(
    n: int, m: int, seed: int
) -> None:
    """``padded``: absent elements (all NaN) may sit anywhere; the summary is that of the
    present ones in any order, for a row of the same capacity."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = nf.nn.DeepSet(m, 3, hidden=(8,), padded=True).double()
    k = int(torch.randint(0, n + 1, (), generator=g))  # present elements, 0 … n
    present = torch.randn(4, k, m, generator=g, dtype=torch.float64)
    compact = torch.cat([present, torch.full((4, n - k, m), torch.nan).double()], 1)
    slots = torch.randperm(n, generator=g)  # the same elements and padding, shuffled
    shuffled = compact[:, slots]
    out = net(compact.flatten(-2))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(net(shuffled.flatten(-2)), out, rtol=1e-12, atol=1e-12)


def test_padding_counts_and_passes_no_nan_to_the_gradients() -> None:
    torch.manual_seed(0)
    net = nf.nn.DeepSet(2, 3, hidden=(8,), padded=True)
    assert "padded=True" in repr(net)
    x = torch.randn(4, 6)
    padded = torch.cat([x, torch.full((4, 2), torch.nan)], -1)  # a fourth slot, empty
    # the number present is read: the same elements in a larger row summarize differently
    assert not torch.allclose(net(padded), net(x))
    empty = torch.full((1, 8), torch.nan)
    assert torch.isfinite(net(empty)).all()  # no element at all: ρ(0, 0)
    net(torch.cat([padded, empty])).sum().backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in net.parameters())
    plain = nf.nn.DeepSet(2, 3, hidden=(8,))  # without padding NaN propagates, as in any net
    assert torch.isnan(plain(padded)).all()


class _DesignAndSet(torch.nn.Module):
    """Column 0 a design variable, columns 1..5 a padded set: a set summary that is not the
    whole context."""

    def __init__(self) -> None:
        super().__init__()
        self.set = nf.nn.DeepSet(1, 4, hidden=(8,), padded=True)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return torch.cat([c[..., :1], self.set(c[..., 1:])], -1)


def test_nan_passes_only_into_a_padded_set_that_reads_the_raw_context() -> None:
    """Any padded DeepSet inside the embedding switched off the finite check of the whole
    context: a NaN in the design column gave NaN densities and samples silently, and a width
    that is not whole elements failed inside the check with torch's unflatten error."""
    coupling = nf.transforms.Coupling(2, nf.transforms.AffineTransformer(), context=5)
    flow = nf.Flow(coupling, nf.distributions.StandardNormal(2), embedding=_DesignAndSet(),
                   context=6)  # fmt: skip
    c = torch.randn(2, 6)
    c[:, 0] = float("nan")
    with pytest.raises(ValueError, match="context contains NaN values"):
        flow.log_prob(torch.randn(2, 2), c)
    parts = (
        nf.transforms.Coupling(2, nf.transforms.AffineTransformer(), context=4),
        nf.distributions.StandardNormal(2),
    )
    with pytest.raises(
        ValueError, match="sets of 2-feature elements, but the flow's context of 7"
    ):
        nf.Flow(*parts, embedding=nf.nn.DeepSet(2, 4, padded=True), context=7)
    whole_set = nf.Flow(  # (a set behind another module: checked when the context comes)
        *parts,
        embedding=torch.nn.Sequential(
            nf.models.standardized.ContextStandardize(7), nf.nn.DeepSet(2, 4, padded=True)
        ),
        context=7,
    )
    with pytest.raises(ValueError, match=r"last dim \(7\) must hold whole set elements of 2"):
        whole_set.log_prob(torch.randn(2, 2), torch.randn(2, 7))
    padded = torch.randn(2, 8)
    padded[0, 4:] = float("nan")  # the standardization's scaling keeps the padding's layout
    scaled = nf.Flow(
        whole_set.transform,
        whole_set.base,
        embedding=torch.nn.Sequential(
            nf.models.standardized.ContextStandardize(8), nf.nn.DeepSet(2, 4, padded=True)
        ),
        context=8,
    )
    assert torch.isfinite(scaled.log_prob(torch.randn(2, 2), padded)).all()


def test_an_embedding_of_another_input_width_is_refused_when_the_flow_is_built() -> None:
    # (it passed, and every call then failed inside the network with torch's matmul error)
    coupling = nf.transforms.Coupling(2, nf.transforms.AffineTransformer(), context=4)
    base = nf.distributions.StandardNormal(2)
    for embedding in (nf.nn.MLP(10, 4, (16,)), torch.nn.Sequential(torch.nn.Linear(10, 4))):
        with pytest.raises(
            ValueError, match="the embedding reads 10 features, but the flow's context is 8"
        ):
            nf.Flow(coupling, base, embedding=embedding, context=8)
        flow = nf.Flow(coupling, base, embedding=embedding, context=10)
        assert flow.log_prob(torch.randn(3, 2), torch.randn(3, 10)).shape == (3,)


def test_a_set_of_no_slots_and_an_embedding_that_is_no_module_are_refused() -> None:
    with pytest.raises(ValueError, match=r"DeepSet: the last dim \(0\) .* at least one"):
        nf.nn.DeepSet(2, 4)(torch.randn(3, 0))  # a mean over no element: NaN
    coupling = nf.transforms.Coupling(2, nf.transforms.AffineTransformer(), context=1)
    with pytest.raises(TypeError, match="Flow: embedding must be an nn.Module .*got function"):
        nf.Flow(coupling, nf.distributions.StandardNormal(2), embedding=lambda c: c, context=5)
