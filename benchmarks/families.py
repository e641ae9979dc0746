r"""Families nfkit shares with zuko: ``SOSPF``, ``BPF``, ``GF`` and ``GMM`` beside zuko's, interleaved.

    python benchmarks/families.py --features 2,16 --rounds 7 --steps 500

Data: a standardized two-component mixture of correlated Gaussians in ``ℝ^D`` (16,000 training
and 4,000 test rows). Both libraries get ``--transforms`` autoregressive layers, MADE hidden
``--hidden``, ReLU, batch 512, Adam (lr 1e-3), and zuko's defaults for the polynomials: SOSPF
with 3 squared polynomials of degree 4, BPF of degree 16 on [-5, 5]. GF (no conditioner
network): ``--transforms`` elementwise layers of 8 kernels per feature with a learned rotation
between layers (zuko: Gaussian kernels and ``exp`` of a skew-symmetric matrix; nfkit: logistic
kernels and ``D`` Householder reflections). GMM: 8 components with full covariances. The
parameter counts are printed, and a cell whose counts differ stops the run. Reported
(``side_by_side.measure``): the training step (median ms), ``log_prob`` and ``sample``
throughput (4096 rows, no grad; both libraries sample by root finding) and the test
log-likelihood per feature after ``--steps`` steps from seed 0. Results as Markdown and JSON
under ``--out``.
"""

from __future__ import annotations

import argparse
import json

import torch
from side_by_side import Built, measure, parser, report

import nfkit as nf


def mixture_data(d: int, n: int, seed: int) -> torch.Tensor:
    """Two correlated Gaussian clusters in ``ℝ^d``, standardized with the training statistics."""
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(2, (n, 1), generator=g).float()
    shared = torch.randn(n, 1, generator=g)
    x = 2.5 * (2 * which - 1) + 0.8 * shared + 0.5 * torch.randn(n, d, generator=g)
    return x / (2.5**2 + 0.8**2 + 0.5**2) ** 0.5  # about unit variance per column


def build(lib: str, family: str, d: int, args: argparse.Namespace) -> Built:
    """``(module, log_prob, sample)`` of one library's flow of the family."""
    hidden = tuple(args.hidden)
    options: dict = {
        "SOSPF": {"degree": 4, "polynomials": 3},
        "BPF": {"degree": 16},
        "GF": {"components": 8},
        "GMM": {"components": 8},
    }[family]
    if family != "GMM":  # a mixture has no layers
        options["transforms"] = args.transforms
    networks = family not in ("GF", "GMM")  # no conditioner network without a context
    if lib == "nfkit":
        make = getattr(nf.models, family)
        flow = make(d, **options, **({"hidden": hidden} if networks else {}))
        return flow, flow.log_prob, flow.sample
    import zuko

    make = getattr(zuko.flows, family)
    zflow = make(d, **options, **({"hidden_features": hidden} if networks else {}))
    return zflow, lambda x: zflow().log_prob(x), lambda n: zflow().sample((n,))


def main() -> None:
    p = parser(__doc__.split("\n")[0], transforms=3, hidden="64,64")
    p.add_argument("--families", default="SOSPF,BPF,GF,GMM")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for family in args.families.split(","):
        for d in (int(v) for v in args.features.split(",")):
            train, test = mixture_data(d, 16_000, 0), mixture_data(d, 4_000, 1)
            cell = measure(lambda lib, f=family, d=d: build(lib, f, d, args), train, test, args)
            counts = {lib: r["params"] for lib, r in cell.items()}
            if len(set(counts.values())) > 1:  # the architectures must match, not only run
                raise SystemExit(f"families.py: {family} D={d}: parameter counts differ: {counts}")
            results[f"{family} D={d}"] = cell
            print(family, d, json.dumps(results[f"{family} D={d}"]), flush=True)
    report(results, "Flow families", args, unit="feature", name="families-cpu")


if __name__ == "__main__":
    main()
