"""2-D density estimation: a coupling spline flow fitted to two moons, and its layers at work.

Run: ``python examples/density_2d.py [OUT_DIR] [--quick]``. Writes ``density_2d.png`` (data,
learned density, samples) and ``density_2d_layers.png`` (a Gaussian reshaped layer by layer into
the data) to ``OUT_DIR``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import nfkit as nf


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=".", help="directory for the figures")
    parser.add_argument("--quick", action="store_true", help="small run (CI)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    x = nf.datasets.two_moons(4096, seed=args.seed)  # (4096, 2)
    # Coupling NSF: both directions are one network pass per layer.
    flow = nf.models.NSF(2, transforms=6, bins=8, bound=4.0, hidden=(64, 64), coupling=True)
    steps = 40 if args.quick else 3000
    opt = torch.optim.Adam(flow.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for step in range(steps):
        batch = x[torch.randint(len(x), (512,))]
        loss = -flow.log_prob(batch).mean()  # maximum likelihood
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0 or step == steps - 1:
            print(f"step {step:5d}  nll {loss.item():.3f}")
    flow.eval()
    with torch.no_grad():
        print(f"mean log-likelihood of the data: {flow.log_prob(x).mean().item():.3f} nats")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lim = (-4.0, 4.0, -2.5, 2.5)
    n = 60 if args.quick else 200
    gx, gy = torch.meshgrid(
        torch.linspace(lim[0], lim[1], n), torch.linspace(lim[2], lim[3], n), indexing="xy"
    )
    grid = torch.stack([gx, gy], -1).reshape(-1, 2)
    with torch.no_grad():
        density = flow.log_prob(grid).exp().reshape(n, n)
        samples = flow.sample(4096)

    fig, axes = plt.subplots(1, 3, figsize=(10, 3.3), dpi=80)
    axes[0].scatter(*x[:2000].T, s=1, alpha=0.5, color="k")
    axes[0].set_title("data (two moons)")
    axes[1].imshow(density, origin="lower", extent=lim, cmap="viridis", aspect="auto")
    axes[1].set_title("learned density exp(log_prob)")
    axes[2].scatter(*samples[:2000].T, s=1, alpha=0.5, color="C1")
    axes[2].set_title("flow.sample(...)")
    for ax in axes:
        ax.set_xlim(lim[0], lim[1])
        ax.set_ylim(lim[2], lim[3])
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out / "density_2d.png")
    plt.close(fig)

    # Layer by layer: sampling runs the layers' inverses from the last to the first. Colour the
    # base points by their angle so one can follow them through the flow.
    z = flow.base.sample((3000,))
    colour = torch.atan2(z[:, 1], z[:, 0])
    stages = [("z ~ N(0, I)", z)]
    layers = list(flow.transform)
    with torch.no_grad():
        h = z
        for i in reversed(range(len(layers))):
            h, _ = layers[i].inverse(h)
            stages.append((f"after inverse of layer {i + 1}", h))
    fig, axes = plt.subplots(1, len(stages), figsize=(2.1 * len(stages), 2.3), dpi=80)
    for ax, (title, pts) in zip(axes, stages):
        ax.scatter(*pts.T, s=0.6, c=colour, cmap="hsv", alpha=0.7)
        ax.set_title(title, fontsize=8)
        ax.set_xlim(-3.5, 3.5)
        ax.set_ylim(-3.5, 3.5)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(out / "density_2d_layers.png")
    plt.close(fig)
    print(f"wrote {out / 'density_2d.png'} and {out / 'density_2d_layers.png'}")


if __name__ == "__main__":
    main()
