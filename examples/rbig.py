"""Gaussianization: RBIG on a table, layer by layer, as the first stage of a trained flow, and
its gradient-trained counterpart GF.

Rotation-based iterative Gaussianization (Laparra, Camps-Valls & Malo 2011, arXiv:1602.00229)
alternates a marginal Gaussianization of every column with a rotation, fitted greedily without
gradients, until the held-out likelihood stops improving. Its fitted transform is differentiable,
so it can be frozen and used as the first stage of a gradient-trained flow. A Gaussianization
flow (GF; Meng et al. 2020, arXiv:2003.01941) has the same structure, learned kernel marginals
and learned rotations, trained end to end by gradient.

Run: ``python examples/rbig.py [OUT_DIR] [--quick]``; writes ``rbig_layers.png`` and
``rbig_flow.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import nfkit as nf


def test_nll(flow: nf.Flow, x: torch.Tensor) -> float:
    with torch.no_grad():
        return -flow.log_prob(x).mean().item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=".", help="directory for the figures")
    parser.add_argument("--quick", action="store_true", help="small run (CI)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    # A two-column table (x, y): a pinwheel, split into training and test rows.
    n = 2000 if args.quick else 10_000
    table = nf.datasets.pinwheel(n, seed=args.seed)
    train, test = table[: n * 4 // 5], table[n * 4 // 5 :]

    # 1. RBIG alone: no gradients, layers added until the held-out gain stalls.
    rbig = nf.models.RBIG(2, layers=20 if args.quick else 100, bins=32).fit(train)
    kept = rbig.config["layers"]
    print(f"RBIG kept {kept} layers; test NLL {test_nll(rbig, test):.3f} nats")

    # 2. RBIG as a frozen first stage, followed by a trained coupling spline flow, against the
    #    same spline flow trained alone for the same number of steps.
    steps = 60 if args.quick else 1500

    def spline() -> nf.Flow:
        return nf.models.NSF(2, transforms=4, bins=8, hidden=(64, 64), coupling=True)

    alone = spline()
    nf.fit(alone, train, steps=steps, batch_size=512, lr=2e-3, progress=False, seed=args.seed)
    stage = rbig.transform.requires_grad_(False)
    head = spline()
    combined = nf.Flow(nf.Compose(stage, head.transform), head.base)
    nf.fit(combined, train, steps=steps, batch_size=512, lr=2e-3, progress=False, seed=args.seed)
    # 3. GF: Gaussianize-and-rotate layers like RBIG's, trained together by gradient.
    gf = nf.models.GF(2, transforms=12, components=8)
    nf.fit(gf, train, steps=steps, batch_size=512, lr=2e-3, progress=False, seed=args.seed)
    scores = {
        f"RBIG ({kept} layers, no training)": test_nll(rbig, test),
        f"NSF ({steps} steps)": test_nll(alone, test),
        f"RBIG + NSF ({steps} steps)": test_nll(combined, test),
        f"GF (12 layers, {steps} steps)": test_nll(gf, test),
    }
    for name, nll in scores.items():
        print(f"{name:32s} test NLL {nll:.3f} nats")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Layer by layer, in the destructive direction: the table pushed through the first k layers.
    layers = list(rbig.transform)  # (marginal, rotation) pairs
    ks = sorted({0, 1, 2, 4, min(8, kept), kept})
    fig, axes = plt.subplots(1, len(ks), figsize=(2.2 * len(ks), 2.4), dpi=80)
    with torch.no_grad():
        for ax, k in zip(axes, ks):
            y = nf.Compose(*layers[: 2 * k])(test)[0] if k else test
            ax.scatter(*y.T, s=0.8, alpha=0.5, c=test[:, 0], cmap="viridis")
            ax.set_title(
                "the table" if k == 0 else f"after {k} RBIG layer{'s' * (k > 1)}", fontsize=8
            )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    fig.savefig(out / "rbig_layers.png")
    plt.close(fig)

    lim, m = 4.0, 150 if not args.quick else 50
    g = torch.linspace(-lim, lim, m)
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    fig, axes = plt.subplots(1, 5, figsize=(13.5, 2.9), dpi=80)
    axes[0].plot(range(1, len(rbig.gains) + 1), rbig.gains, marker=".", color="k")
    axes[0].axhline(0, color="0.6", lw=0.8)
    axes[0].set_xlabel("layer")
    axes[0].set_title("held-out gain per RBIG layer (nats)", fontsize=8)
    with torch.no_grad():
        for ax, (name, flow) in zip(
            axes[1:], [(k, f) for k, f in zip(scores, (rbig, alone, combined, gf))]
        ):
            density = flow.log_prob(grid).exp().reshape(m, m)
            vmax = density.flatten().quantile(0.99).item()  # a few sharp peaks would hide the rest
            ax.imshow(density, origin="lower", extent=(-lim, lim, -lim, lim), cmap="viridis",
                      vmax=vmax)  # fmt: skip
            ax.set_title(f"{name}\ntest NLL {scores[name]:.3f}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out / "rbig_flow.png")
    plt.close(fig)
    print(f"wrote {out / 'rbig_layers.png'} and {out / 'rbig_flow.png'}")


if __name__ == "__main__":
    main()
