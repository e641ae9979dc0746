"""Coupling: the split follows the mask, also a mask loaded from a state dict."""

from __future__ import annotations

import torch

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
