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
