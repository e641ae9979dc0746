r"""Train and test log-likelihood along the fixed Adam budget of ``peers.py``, per library.

    python benchmarks/ll_trajectory.py --cells digits-MAF,digits-RealNVP --at 100,250,500
    python benchmarks/ll_trajectory.py --cells digits-MAF --libs nfkit --scale sigmoid
    python benchmarks/ll_trajectory.py --cells digits-MAF --libs nfkit --max-log-scale 1 --fit 1500
    python benchmarks/ll_trajectory.py --cells moons-MAF --at 500 --seeds 0,1,2,3,4,5,6,7,8
    python benchmarks/ll_trajectory.py --cells moons-RealNVP --hidden 256,256

Same data, architectures, batches and optimizer as ``peers.py``'s fixed-budget column; prints
the mean train LL (first 1000 rows), the mean, median and 1% quantile of the per-row test LL at
each checkpoint. It shows whether a gap at the end of the budget is under- or over-fitting.
``--seeds`` repeats each cell with other data splits and initializations (``peers.py`` uses
seed 0; the batches stay the same) and prints each library's mean test LL at the last checkpoint
over the seeds. ``--fit N`` also trains nfkit with ``nf.fit(steps=N)`` (early stopping) per seed;
``--scale`` and ``--max-log-scale`` set nfkit's affine log-scale (MAF, RealNVP); ``--hidden``
every network's hidden widths (as in ``peers.py``).
"""

from __future__ import annotations

import argparse
import math

import peers
import torch

import nfkit as nf


def _ints(text: str) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]``; argparse reports anything else in one line."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def _positive(text: str) -> float:
    """A float > 0; argparse reports anything else in one line."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _build(lib: str, model: str, d: int, args: argparse.Namespace) -> peers.Model:
    """``peers.build``, except nfkit's affine models take ``--scale``/``--max-log-scale``."""
    options = {"scale": args.scale, "max_log_scale": args.max_log_scale}
    options = {k: v for k, v in options.items() if v is not None}
    if lib != "nfkit" or not options or model not in ("MAF", "RealNVP"):
        return peers.build(lib, model, d)
    flow = getattr(nf.models, model)(
        d, transforms=peers.TRANSFORMS, hidden=peers.HIDDEN, **options
    )
    return peers.Model(flow, flow.log_prob, flow.sample, model == "MAF", [])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", default="digits-MAF")
    p.add_argument("--libs", default=",".join(peers.LIBS))
    p.add_argument("--at", type=_ints, default="100,250,500", help="checkpoints (steps)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--scale",
        choices=["softsign", "exp", "sigmoid"],
        default=None,
        help="nfkit MAF/RealNVP affine scale",
    )
    p.add_argument(
        "--max-log-scale",
        type=_positive,
        default=None,
        help="nfkit MAF/RealNVP bound on the log-scale per layer (default: the factory's, 5)",
    )
    p.add_argument(
        "--fit", type=int, default=0, help="also train nfkit with nf.fit(steps=FIT) per seed"
    )
    p.add_argument("--seeds", type=_ints, default="0", help="data-split and initialization seeds")
    p.add_argument(
        "--hidden", type=_ints, default="128,128", help="hidden widths of every network"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    peers.configure(tuple(args.hidden), peers.TRANSFORMS, peers.BATCH)
    print(
        f"{peers.TRANSFORMS} transforms, hidden widths {peers.HIDDEN}, batch {peers.BATCH}, "
        "Adam lr 1e-3",
        flush=True,
    )
    checkpoints, seeds = sorted(args.at), args.seeds
    for cell in args.cells.split(","):
        data, model = cell.split("-")
        final: dict[str, list[float]] = {}
        for seed in seeds:
            train, test = peers.load_data(data, seed)
            for lib in args.libs.split(","):
                torch.manual_seed(seed)
                try:
                    m = _build(lib, model, train.shape[1], args)
                except NotImplementedError:  # no matching architecture in that library
                    continue
                step = peers.train_step_fn(m, peers.drawn_batches(train, "cpu"))
                torch.manual_seed(0)
                row = []
                for s in range(1, checkpoints[-1] + 1):
                    step()
                    if s in checkpoints:
                        m.module.eval()
                        with torch.no_grad():
                            ll, tr = m.log_prob(test), m.log_prob(train[:1000])
                        m.module.train()
                        q = torch.quantile(ll, torch.tensor([0.01, 0.5]))
                        row.append(
                            f"{s}: train {tr.mean():.2f} test {ll.mean():.2f} "
                            f"(median {q[1]:.2f}, 1% {q[0]:.1f})"
                        )
                final.setdefault(lib, []).append(float(ll.mean()))
                print(f"[{cell}] seed {seed} {lib:9s} " + " | ".join(row), flush=True)
                if lib == "nfkit" and args.fit:
                    torch.manual_seed(seed)
                    m = _build(lib, model, train.shape[1], args)
                    nf.fit(m.module, train, steps=args.fit, progress=False, seed=0)
                    ll_fit = peers.mean_ll(m, test, "cpu")
                    print(
                        f"[{cell}] seed {seed} nfkit nf.fit(steps={args.fit}): test {ll_fit:.3f}"
                    )
        if len(seeds) > 1:
            for lib, lls in final.items():
                print(
                    f"[{cell}] {lib:9s} test LL at {checkpoints[-1]} over seeds {','.join(map(str, seeds))}: "
                    f"mean {sum(lls) / len(lls):.3f} (" + ", ".join(f"{v:.3f}" for v in lls) + ")",
                    flush=True,
                )


if __name__ == "__main__":
    main()
