"""Coupling: the split follows the mask, also a mask loaded from a state dict."""

from __future__ import annotations

import pytest
import torch

import nfkit as nf
from nfkit.transforms import AffineTransformer, Coupling


def test_loaded_mask_sets_the_split() -> None:
    source = Coupling(4, AffineTransformer(), mask=[True, False, True, False], hidden=(8,))
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    target = Coupling(4, AffineTransformer(), mask=[False, True, False, True], hidden=(8,))
    target.load_state_dict(source.state_dict())
    assert target.idx_b.tolist() == [0, 2] and target.idx_a.tolist() == [1, 3]
    x = torch.randn(5, 4)
    z, ladj = target(x)
    z_ref, ladj_ref = source(x)
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(ladj, ladj_ref)
    torch.testing.assert_close(z[:, [1, 3]], x[:, [1, 3]])  # the identity part is the loaded one


def test_a_custom_conditioner_of_the_wrong_width_is_refused() -> None:
    """A conditioner returning P values instead of n_b · P broadcast one set of parameters to
    every transformed column, silently."""
    from torch import nn

    class Narrow(nn.Module):
        def forward(self, x_a, context=None):
            return torch.zeros(*x_a.shape[:-1], 2)  # P = 2, for n_b = 2 columns: needs 4

    t = nf.transforms.Coupling(4, nf.transforms.AffineTransformer(), conditioner=Narrow())
    with pytest.raises(ValueError, match=r"Coupling: the conditioner's output must have 4 "):
        t(torch.randn(3, 4))
    with pytest.raises(ValueError, match="Coupling: needs features >= 2"):
        nf.transforms.Coupling(1, nf.transforms.AffineTransformer(), conditioner=Narrow())
    # images: the default MLP would read the width (a matmul error, or W = n_a ran silently)
    with pytest.raises(ValueError, match=r"^Coupling: dim=-3 needs a conditioner \(e.g. nf.nn"):
        nf.transforms.Coupling(4, nf.transforms.AdditiveTransformer(), dim=-3)
    with pytest.raises(ValueError, match="reflections must be an integer >= 1, got 0"):
        nf.transforms.Householder(3, reflections=0)


def test_context_and_mask_refusals_are_one_line() -> None:
    """A negative or non-integer context was built (or failed inside the MLP); masks of 0.5s
    or 2s were read as booleans, a string failed in torch.as_tensor."""
    from nfkit.transforms import AffineTransformer, Coupling

    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match=f"Coupling: context must be an integer >= 0, got {bad}"):
            Coupling(3, AffineTransformer(), context=bad)
    for mask in ([1, 0, 2], [0.5, 0.0, 1.0], "abc", torch.tensor([0.3, 0.0, 7.0])):
        with pytest.raises(ValueError, match=r"Coupling: mask must be a boolean \(3,\)"):
            Coupling(3, AffineTransformer(), mask=mask)
    for mask in ([True, False, True], [1, 0, 1], torch.tensor([1.0, 0.0, 1.0])):
        assert Coupling(3, AffineTransformer(), mask=mask).mask.tolist() == [True, False, True]
