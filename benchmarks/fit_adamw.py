r"""``nf.fit``'s optimizer: torch's fused AdamW against its per-op loop, interleaved A/B.

    python benchmarks/fit_adamw.py --cells moons-MAF,digits-MAF,moons-NSF --rounds 9 --steps 300

For each cell (``peers.py``'s data and nfkit architecture) every round runs ``nf.fit`` for
``--steps`` steps (no early stopping, batch 512) once with the fused kernel and once with
torch's per-op loop (``nfkit.train._fused_adamw`` patched to ``None``), alternating which goes
first, and prints the median ms per step of each, with the test log-likelihood of round 0.
It also times one optimizer step alone on the flow's parameters with random gradients
(``torch.optim.Adam``, per-op and fused). Timings on a shared machine move between rounds:
compare the two columns of one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import peers
import torch

import nfkit as nf
import nfkit.train


def optimizer_step_us(params: list[torch.nn.Parameter], fused: bool) -> float:
    """One ``torch.optim.Adam`` step on copies of ``params`` with fixed random gradients (µs)."""
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p in copies:
        p.grad = torch.randn_like(p)
    opt = torch.optim.Adam(copies, lr=1e-3, fused=True if fused else None)
    for _ in range(20):  # warm-up: state allocation
        opt.step()
    return peers._clock(opt.step, 2000, "cpu") * 1e6


def fit_ms_per_step(
    model: str, train: torch.Tensor, steps: int, fused: bool
) -> tuple[float, nf.Flow]:
    """``nf.fit`` for ``steps`` steps from seed 0 (fused or per-op AdamW): ms per step."""
    torch.manual_seed(0)
    flow = peers.build("nfkit", model, train.shape[1]).module
    kept = nfkit.train._fused_adamw
    if not fused:
        nfkit.train._fused_adamw = lambda params: None
    try:
        t0 = time.perf_counter()
        nf.fit(
            flow,
            train,
            steps=steps,
            patience=10**9,
            batch_size=peers.BATCH,
            progress=False,
            seed=0,
        )
        return (time.perf_counter() - t0) / steps * 1e3, flow
    finally:
        nfkit.train._fused_adamw = kept


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default="moons-MAF,digits-MAF,moons-NSF")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or args.threads < 1:
        parser.error("--rounds, --steps and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds of {args.steps} steps"
    )
    print(
        "| cell | params | Adam step per-op, µs | fused, µs | nf.fit per-op, ms/step | fused, ms/step | change | test LL per-op / fused |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for cell in args.cells.split(","):
        data, _, model = cell.partition("-")
        if model not in peers.MODELS or not peers.features(data):
            parser.error(
                f"unknown cell {cell!r}; data {list(peers.DATA)} or synth<D>, models {peers.MODELS}"
            )
        train, test = peers.load_data(data)
        times: dict[bool, list[float]] = {False: [], True: []}
        ll: dict[bool, float] = {}
        fit_ms_per_step(model, train, 2, True)  # warm-up, untimed: first-call costs
        for r in range(args.rounds):
            for fused in (False, True) if r % 2 == 0 else (True, False):
                ms, flow = fit_ms_per_step(model, train, args.steps, fused)
                times[fused].append(ms)
                if r == 0:
                    with torch.no_grad():
                        ll[fused] = flow.log_prob(test).mean().item()
        params = [p for p in flow.parameters() if p.requires_grad]
        per_op, fused_ms = statistics.median(times[False]), statistics.median(times[True])
        print(
            f"| {cell} | {sum(p.numel() for p in params):,} | {optimizer_step_us(params, False):.0f} "
            f"| {optimizer_step_us(params, True):.0f} | {per_op:.2f} | {fused_ms:.2f} "
            f"| {100 * (fused_ms / per_op - 1):+.1f}% | {ll[False]:.3f} / {ll[True]:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
