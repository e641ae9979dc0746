"""The bracketed Newton solver's two calling forms: separate ``f``/``df`` and ``joint=True``."""

from __future__ import annotations

import torch

from nfkit._numerics import monotone_solve


def _map(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return x + a * torch.tanh(3 * x)  # increasing for a > -1/3, steep near 0


def test_joint_matches_separate_value_and_slope() -> None:
    a = torch.tensor([0.5, 2.0, 10.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([-3.0, 0.1, 7.0], dtype=torch.float64, requires_grad=True)
    lo, hi = torch.full_like(y, -20.0), torch.full_like(y, 20.0)

    def slope(x: torch.Tensor) -> torch.Tensor:
        return 1 + 3 * a / torch.cosh(3 * x) ** 2

    separate = monotone_solve(lambda x: _map(x, a), y, lo, hi, df=slope)
    joint = monotone_solve(lambda x: (_map(x, a), slope(x)), y, lo, hi, joint=True)
    torch.testing.assert_close(joint, separate, atol=1e-12, rtol=0)
    torch.testing.assert_close(_map(joint, a), y, atol=1e-10, rtol=0)
    # implicit-function gradients: dx/dy = 1/f'(x), dx/da = -tanh(3x)/f'(x)
    grads = torch.autograd.grad(joint.sum(), (y, a))
    x = joint.detach()
    torch.testing.assert_close(grads[0], 1 / slope(x).detach())
    torch.testing.assert_close(grads[1], -torch.tanh(3 * x) / slope(x).detach())
