r"""Glow and multiscale RealNVP on scikit-learn's 8x8 digits, in bits per dimension.

Pixels take 17 levels (0..16). Every model sees uniformly dequantized pixels ``x + u`` in
[0, 17] (fresh noise in every batch) and starts with ``LogitPreprocess(17, 0.05)``, so all test
bits/dim below are the same quantity, ``-E_u log2 p(x + u) / 64``:

* Gaussian: a full-covariance Gaussian fitted (closed form) in logit space;
* RealNVP (vector): ``nf.models.RealNVP(64)`` on the flattened images;
* Glow: ``nf.models.Glow((1, 8, 8), levels=2, ...)``;
* Multiscale RealNVP: ``nf.models.MultiscaleRealNVP((1, 8, 8), levels=2, ...)``.

Usage::

    python examples/glow_digits.py            # full run: table + docs/img/glow_digits_samples.png
    python examples/glow_digits.py OUT --quick  # tiny run (< 30 s), figure written into OUT
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

import nfkit as nf

LEVELS = 17
ALPHA = 0.05
SHAPE = (1, 8, 8)


def load_digits_split(seed: int = 0, test: int = 360) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer pixels ``(n, 1, 8, 8)`` in 0..16, split by a fixed permutation (seed 0)."""
    from sklearn.datasets import load_digits

    x = torch.as_tensor(load_digits().images, dtype=torch.float32).unsqueeze(1)
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))]
    return x[test:], x[:test]


def test_bpd(flow: nf.Flow, x: torch.Tensor, draws: int = 8) -> float:
    """Test bits/dim averaged over ``draws`` fixed dequantization draws."""
    flow.eval()
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        bpd = nf.metrics.bits_per_dim(flow, x, levels=LEVELS, samples=draws, generator=g)
    return bpd.item()


def gaussian_bpd(train: torch.Tensor, test: torch.Tensor, draws: int = 8) -> float:
    """Full-covariance Gaussian in logit space (fitted on dequantized train data), in bpd."""
    pre = nf.transforms.LogitPreprocess(LEVELS, ALPHA, event_dim=1).double()
    g = torch.Generator().manual_seed(0)
    fit = torch.cat(
        [
            train.flatten(1).double()
            + torch.rand(train.flatten(1).shape, generator=g, dtype=torch.float64)
            for _ in range(draws)
        ]
    )
    y, _ = pre(fit)
    mean, cov = y.mean(0), torch.cov(y.T) + 1e-6 * torch.eye(y.shape[1], dtype=torch.float64)
    gauss = torch.distributions.MultivariateNormal(mean, cov)
    g = torch.Generator().manual_seed(123)
    total = 0.0
    for _ in range(draws):
        u = torch.rand(test.flatten(1).shape, generator=g, dtype=torch.float64)
        y, ladj = pre(test.flatten(1).double() + u)
        total += (gauss.log_prob(y) + ladj).mean().item()
    return -total / draws / (64 * math.log(2))


class _Flat(nf.Transform):
    """``(*, 1, 8, 8) ↔ (*, 64)``: lets a vector flow score images (ladj 0)."""

    event_dim = 3

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None):
        return x.flatten(-3), x.new_zeros(x.shape[:-3])

    def inverse(self, z: torch.Tensor, context: torch.Tensor | None = None):
        return z.unflatten(-1, SHAPE), z.new_zeros(z.shape[:-1])


def vector_realnvp(quick: bool) -> nf.Flow:
    inner = nf.models.RealNVP(
        64, transforms=2 if quick else 8, hidden=(32,) if quick else (256, 256)
    )
    pre, flat = nf.transforms.LogitPreprocess(LEVELS, ALPHA), _Flat()
    transform = nf.Compose(pre, flat, inner.transform, flat.inv)
    return nf.Flow(transform, nf.distributions.StandardNormal(SHAPE))


def make_models(quick: bool) -> dict[str, nf.Flow]:
    common = {"levels": 2, "pixel_levels": LEVELS, "alpha": ALPHA}
    if quick:
        glow = nf.models.Glow(SHAPE, steps=1, hidden=(8, 8), **common)
        msr = nf.models.MultiscaleRealNVP(SHAPE, steps=1, hidden=8, blocks=1, **common)
    else:
        glow = nf.models.Glow(SHAPE, steps=4, hidden=(48, 48), **common)
        msr = nf.models.MultiscaleRealNVP(SHAPE, steps=2, hidden=32, blocks=1, **common)
    return {
        "RealNVP (vector, 64-d)": vector_realnvp(quick),
        "Glow": glow,
        "Multiscale RealNVP": msr,
    }


def train(
    flow: nf.Flow, data: torch.Tensor, steps: int, batch: int = 128, lr: float = 1e-3
) -> None:
    """Plain Adam on freshly dequantized batches (cosine-decayed learning rate)."""
    flow.train()
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        idx = torch.randint(len(data), (batch,), generator=g)
        x = nf.transforms.dequantize(data[idx], generator=g)
        loss = -flow.log_prob(x).mean() / (64 * math.log(2))  # bits/dim of the batch
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 50.0)
        opt.step()
        sched.step()
        if step % max(1, steps // 5) == 0 or step == steps - 1:
            print(f"  step {step:5d}  train bpd {loss.item():.3f}", flush=True)


def save_samples(flow: nf.Flow, test: torch.Tensor, path: Path, temperature: float = 0.8) -> None:
    """An 8x8 grid: top row real test digits, then Glow samples at the given temperature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flow.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        z = temperature * flow.base.sample((56,))
        x, _ = flow.transform.inverse(z)
    images = torch.cat([test[:8], x.clamp(0, LEVELS - 1e-3)]).squeeze(1) / LEVELS
    fig, axes = plt.subplots(8, 8, figsize=(4, 4))
    for ax, img in zip(axes.flat, images):
        ax.imshow(img.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.axis("off")
    fig.suptitle(f"top row: test digits; below: Glow samples (T = {temperature})", fontsize=7)
    fig.tight_layout(pad=0.2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"samples written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", nargs="?", default="docs/img", help="folder for the figure")
    parser.add_argument("--quick", action="store_true", help="tiny models, a few steps (< 30 s)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per model")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads or args.quick:
        # Small convolutions gain nothing from threads, and lose a lot on a busy machine.
        torch.set_num_threads(args.threads or 1)
    steps = args.steps or (30 if args.quick else 2000)
    torch.manual_seed(0)
    train_x, test_x = load_digits_split()
    if args.quick:
        train_x = train_x[:256]
    print(f"digits: {len(train_x)} train / {len(test_x)} test images, {LEVELS} levels")
    rows = [("Gaussian (full covariance, logit space)", gaussian_bpd(train_x, test_x), 0, 0.0)]
    models = make_models(args.quick)
    for name, flow in models.items():
        n_params = sum(p.numel() for p in flow.parameters())
        print(f"{name}: {n_params} parameters, {steps} steps")
        t0 = time.time()
        train(flow, train_x, steps)
        rows.append((name, test_bpd(flow, test_x), n_params, time.time() - t0))
    print("\n| model | test bits/dim | parameters | train time (s) |\n|---|---|---|---|")
    for name, bpd, n_params, seconds in rows:
        print(f"| {name} | {bpd:.3f} | {n_params} | {seconds:.0f} |")
    save_samples(models["Glow"], test_x, Path(args.out) / "glow_digits_samples.png")


if __name__ == "__main__":
    main()
