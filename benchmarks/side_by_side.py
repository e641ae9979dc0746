r"""Shared by the side-by-side benchmarks (``circular.py``, ``families.py``): one cell of
libraries trained and timed in the same process, interleaved round by round.

``measure(build, train, test, args)`` builds each library's model with ``build(lib)`` (a
``(module, log_prob, sample)`` triple), times the training step (batch 512, Adam, lr 1e-3;
median ms over ``rounds`` rounds of ``reps`` steps, the libraries' order alternating by round),
``log_prob`` and ``sample`` throughput (4096 rows, no grad), and the test log-likelihood per
feature after ``steps`` fixed-budget steps from seed 0 on the same batches for every library.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

Built = tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor], Callable[[int], Any]]


def parser(description: str, *, transforms: int, hidden: str) -> argparse.ArgumentParser:
    """The options every side-by-side script takes (each adds its own)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--features", default="2,16", help="comma-separated D values")
    p.add_argument("--libs", default="nfkit,zuko")
    p.add_argument("--transforms", type=int, default=transforms)
    p.add_argument("--hidden", type=lambda s: [int(v) for v in s.split(",")], default=hidden)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--reps", type=int, default=10, help="timed steps per round (median)")
    p.add_argument("--steps", type=int, default=500, help="training steps for the test LL")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return p


def seconds(fn: Callable[[], Any], reps: int) -> float:
    """Median wall time of ``reps`` calls of ``fn``."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _step(log_prob: Callable, opt: torch.optim.Optimizer, batch: torch.Tensor) -> None:
    loss = -log_prob(batch).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def measure(
    build: Callable[[str], Built],
    train: torch.Tensor,
    test: torch.Tensor,
    args: argparse.Namespace,
    *,
    unit: str = "feature",
) -> dict[str, dict[str, float]]:
    """The metrics of one cell for every library of ``args.libs`` (see the module docstring),
    with the ``rounds``, ``reps`` and ``steps`` of :func:`parser`."""
    libs, rounds, reps, steps = args.libs.split(","), args.rounds, args.reps, args.steps
    ll_key = f"test_ll_per_{unit}"
    batch = train[:512]
    models, optimizers, out = {}, {}, {}
    for lib in libs:
        torch.manual_seed(0)
        models[lib] = build(lib)
        optimizers[lib] = torch.optim.Adam(models[lib][0].parameters(), lr=1e-3)
        out[lib] = {"params": sum(p.numel() for p in models[lib][0].parameters())}
    steps_ms: dict[str, list[float]] = {lib: [] for lib in libs}
    for r in range(rounds):
        for lib in libs if r % 2 == 0 else libs[::-1]:
            log_prob, opt = models[lib][1], optimizers[lib]
            _step(log_prob, opt, batch)  # warm-up
            timed = seconds(lambda f=log_prob, o=opt: _step(f, o, batch), reps)
            steps_ms[lib].append(timed * 1e3)
    for lib in libs:
        _, log_prob, sample = models[lib]
        out[lib]["step_ms"] = statistics.median(steps_ms[lib])
        with torch.no_grad():
            rows = test[:4096]  # the rows scored (4000 in circular.py and families.py)
            out[lib]["log_prob_rows_s"] = len(rows) / seconds(lambda f=log_prob, x=rows: f(x), 5)
            out[lib]["sample_rows_s"] = 4096 / seconds(lambda f=sample: f(4096), 5)
    for lib in libs:  # fixed budget from seed 0, each library on the same batches
        torch.manual_seed(0)
        module, log_prob, _ = build(lib)
        opt = torch.optim.Adam(module.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(steps):
            _step(log_prob, opt, train[torch.randint(len(train), (512,), generator=g)])
        with torch.no_grad():
            out[lib][ll_key] = log_prob(test).mean().item() / test.shape[-1]
    return out


def report(
    results: dict[str, dict[str, dict[str, float]]],
    what: str,
    args: argparse.Namespace,
    *,
    unit: str,
    name: str,
    details: str = "",
) -> str:
    """The cells as a Markdown table (printed, and written with the JSON as ``args.out/name.*``),
    titled by ``what`` and the options of :func:`parser`; the log-likelihood is per ``unit``."""
    libs = args.libs.split(",")
    title = (
        f"{what} ({', '.join(libs)}; {args.transforms} transforms, hidden {tuple(args.hidden)}"
        f"{details}, batch 512, {args.threads} thread(s))"
    )
    ll_key, ll_label = f"test_ll_per_{unit}", f"test LL per {unit} after {args.steps} steps"
    lines = [
        f"# {title}",
        "",
        f"| cell | library | parameters | step, ms | log_prob, rows/s | sample, rows/s | {ll_label} |",
        "|---|---|---|---|---|---|---|",
    ]
    for cell, per_lib in results.items():
        for lib, r in per_lib.items():
            lines.append(
                f"| {cell} | {lib} | {r['params']:,} | {r['step_ms']:.2f} | "
                f"{r['log_prob_rows_s']:,.0f} | {r['sample_rows_s']:,.0f} | {r[ll_key]:.4f} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.md").write_text(text)
    (folder / f"{name}.json").write_text(json.dumps({"args": vars(args), **results}, indent=2))
    return text
