"""Angles: a density on the torus (a Ramachandran-like table of two dihedral angles, in degrees).

Backbone dihedral angles (φ, ψ) of a protein are points on a torus: 180° and -180° are the same
angle. The table here is synthetic, three wrapped normal clusters placed like the right-handed
helix, the β-sheet and the left-handed helix regions, the β cluster straddling ψ = ±180°. A
circular spline flow (``nf.models.NCSF`` with ``bound=180``) models it on the torus; a real-line
spline flow (``nf.models.NSF`` behind a standardization) must cut the torus at ±180° and put the
β cluster's two halves at opposite edges of its domain.

A third column, a length whose mean follows ψ (as a backbone distance follows its dihedral),
makes a table of angles beside an ordinary number: ``NCSF(3, angles=[0, 1])`` keeps the angles
on the torus and models the length on the real line (standardized), against ``NSF`` on all three.

Run: ``python examples/angles.py [OUT_DIR] [--quick]``; writes ``angles.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import nfkit as nf

# (φ, ψ) centres in degrees, spreads, weights: helix, β-sheet (across ψ = ±180°), left helix.
CLUSTERS = [((-63.0, -43.0), (12.0, 12.0), 0.5), ((-120.0, 170.0), (20.0, 18.0), 0.35),
            ((60.0, 45.0), (10.0, 12.0), 0.15)]  # fmt: skip


def dihedrals(n: int, seed: int) -> torch.Tensor:
    """``n`` (φ, ψ) pairs in degrees on [-180, 180)², drawn from the three wrapped clusters."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.tensor([w for _, _, w in CLUSTERS])
    which = torch.multinomial(weights, n, replacement=True, generator=g)
    centre = torch.tensor([c for c, _, _ in CLUSTERS])[which]
    spread = torch.tensor([s for _, s, _ in CLUSTERS])[which]
    x = centre + spread * torch.randn(n, 2, generator=g)
    return torch.remainder(x + 180, 360) - 180


def with_length(angles: torch.Tensor, seed: int) -> torch.Tensor:
    """The (φ, ψ) table with a third column: a length ``3.3 + 0.4 cos ψ`` plus noise (0.1)."""
    g = torch.Generator().manual_seed(seed)
    psi = torch.deg2rad(angles[:, 1])
    length = 3.3 + 0.4 * torch.cos(psi) + 0.1 * torch.randn(len(angles), generator=g)
    return torch.cat([angles, length[:, None]], -1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=".", help="directory for the figure")
    parser.add_argument("--quick", action="store_true", help="small run (CI)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    n, steps = (2000, 60) if args.quick else (10_000, 2000)
    train, test = dihedrals(n, args.seed), dihedrals(n // 4, args.seed + 1)
    torch.manual_seed(args.seed)
    torus = nf.models.NCSF(2, bound=180.0, transforms=4, hidden=(64, 64))
    plane = nf.models.standardize(nf.models.NSF(2, transforms=4, hidden=(64, 64)), train)
    scores = {}
    for name, flow in (("NCSF (torus)", torus), ("NSF (plane, cut at ±180°)", plane)):
        nf.fit(flow, train, steps=steps, progress=False, seed=args.seed)
        with torch.no_grad():
            scores[name] = flow.log_prob(test).mean().item()
        with torch.no_grad():
            off = (flow.sample(20_000).abs() > 180).any(-1).float().mean().item()
        print(
            f"{name}: test log-likelihood {scores[name]:.3f} nats per (φ, ψ) pair (degrees); "
            f"{100 * off:.1f}% of its samples off the torus"
        )

    # Angles beside a length: the angles on the torus, the length standardized on the real line.
    train3, test3 = with_length(train, args.seed), with_length(test, args.seed + 1)
    torch.manual_seed(args.seed)
    mixed = nf.models.standardize(
        nf.models.NCSF(3, angles=[0, 1], bound=180.0, transforms=4, hidden=(64, 64)), train3
    )
    flat = nf.models.standardize(nf.models.NSF(3, transforms=4, hidden=(64, 64)), train3)
    for name, flow in (("NCSF (φ, ψ on the torus, length real)", mixed), ("NSF (all real)", flat)):
        nf.fit(flow, train3, steps=steps, progress=False, seed=args.seed)
        with torch.no_grad():
            score = flow.log_prob(test3).mean().item()
            off = (flow.sample(20_000)[:, :2].abs() > 180).any(-1).float().mean().item()
        print(
            f"{name}: test log-likelihood {score:.3f} nats per (φ, ψ, length) row; "
            f"{100 * off:.1f}% of its samples off the torus"
        )

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.6))
    FigureCanvasAgg(fig)
    grid = torch.linspace(-180, 180, 181)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    points = torch.stack([gx, gy], -1).reshape(-1, 2)
    for k, (name, flow) in enumerate((("NCSF (torus)", torus), ("NSF (plane)", plane))):
        ax = fig.add_subplot(1, 2, k + 1)
        with torch.no_grad():
            density = flow.log_prob(points).exp().reshape(181, 181)
        ax.imshow(density.numpy(), origin="lower", extent=(-180, 180, -180, 180), cmap="magma")
        ax.scatter(*test[:400].T.numpy(), s=1, c="#9ecae1", alpha=0.5)
        label = next(v for key, v in scores.items() if key.startswith(name.split(" (")[0]))
        ax.set_title(f"{name}: test LL {label:.2f}", fontsize=10)
        ax.set_xlabel("φ (degrees)")
        ax.set_ylabel("ψ (degrees)")
    fig.suptitle("Dihedral angles: density on the torus against density on the plane")
    fig.tight_layout()
    fig.savefig(out / "angles.png", dpi=110)
    print(f"wrote {out / 'angles.png'}")


if __name__ == "__main__":
    main()
