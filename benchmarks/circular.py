r"""Flows on the torus: nfkit's ``NCSF`` beside zuko's ``NCSF``, interleaved round by round.

    python benchmarks/circular.py --features 2,16 --rounds 7 --steps 500

Data: a mixture of two wrapped normals on ``[-π, π]^D`` (one centred at ``+3``, so half its
mass lies across the seam at ``±π``; correlated coordinates), 16,000 training and 4,000 test
angles. Both libraries get ``--transforms`` autoregressive layers, MADE hidden ``--hidden``,
ReLU, ``--bins`` bins, batch 512, Adam (lr 1e-3). zuko's circular spline is a regular spline
(end derivatives 1) after a half-turn shift (``3K - 1`` parameters per angle, the MADE reading
the ``D`` angles); nfkit's has a learned end derivative and a learned rotation (``3K + 1``), and
its MADE reads each angle as ``(cos, sin)`` (``2 D`` inputs), so the parameter counts differ by
``2 D (h_L + 1) + D h_1`` per layer, ``h_1`` and ``h_L`` the first and last hidden widths
(``D = 2``, hidden (128, 128): 772; printed). Reported: the training step (median ms over rounds), ``log_prob``
and ``sample`` throughput (4096 rows, no grad), and the test log-likelihood per angle after
``--steps`` steps from seed 0. Results as Markdown and JSON under ``--out``.
"""

from __future__ import annotations

import argparse
import math

import torch
from side_by_side import Built, measure, parser, report

import nfkit as nf


def torus_data(d: int, n: int, seed: int) -> torch.Tensor:
    """A two-component mixture of correlated wrapped normals on ``[-π, π]^d`` (float32)."""
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(2, (n, 1), generator=g)
    centre = torch.where(which == 0, torch.tensor(3.0), torch.tensor(-1.0))
    shared = torch.randn(n, 1, generator=g)
    x = centre + 0.4 * shared + 0.3 * torch.randn(n, d, generator=g)
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


def build(lib: str, d: int, args: argparse.Namespace) -> Built:
    """``(module, log_prob, sample)`` of one library's NCSF."""
    hidden = tuple(args.hidden)
    if lib == "nfkit":
        flow = nf.models.NCSF(d, transforms=args.transforms, bins=args.bins, hidden=hidden)
        return flow, flow.log_prob, flow.sample
    import zuko

    zflow = zuko.flows.NCSF(d, transforms=args.transforms, bins=args.bins, hidden_features=hidden)
    return zflow, lambda x: zflow().log_prob(x), lambda n: zflow().sample((n,))


def run_cell(d: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    train, test = torus_data(d, 16_000, 0), torus_data(d, 4_000, 1)
    return measure(lambda lib: build(lib, d, args), train, test, args, unit="angle")


def main() -> None:
    p = parser(__doc__.split("\n")[0], transforms=5, hidden="128,128")
    p.add_argument("--bins", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = {f"D={d}": run_cell(int(d), args) for d in args.features.split(",")}
    details = f", {args.bins} bins"
    report(results, "NCSF on the torus", args, unit="angle", name="circular-cpu", details=details)


if __name__ == "__main__":
    main()
