r"""Shared by the side-by-side benchmarks (``circular.py``, ``families.py``): one cell of
libraries trained and timed in the same process, interleaved round by round.

``measure(build, train, test, libs, ...)`` builds each library's model with ``build(lib)`` (a
``(module, log_prob, sample)`` triple), times the training step (batch 512, Adam, lr 1e-3;
median ms over ``rounds`` rounds of ``reps`` steps, the libraries' order alternating by round),
``log_prob`` and ``sample`` throughput (4096 rows, no grad), and the test log-likelihood per
feature after ``steps`` fixed-budget steps from seed 0 on the same batches for every library.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

Built = tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor], Callable[[int], Any]]


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
    libs: list[str],
    *,
    rounds: int,
    reps: int,
    steps: int,
    ll_key: str = "test_ll_per_feature",
) -> dict[str, dict[str, float]]:
    """The metrics of one cell for every library (see the module docstring)."""
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
            out[lib]["log_prob_rows_s"] = 4096 / seconds(lambda f=log_prob: f(test[:4096]), 5)
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
    title: str,
    *,
    ll_key: str,
    ll_label: str,
    out: str | Path,
    name: str,
    args: dict[str, Any],
) -> str:
    """The cells as a Markdown table (printed, and written with the JSON as ``out/name.*``)."""
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
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.md").write_text(text)
    (folder / f"{name}.json").write_text(json.dumps({"args": args, **results}, indent=2))
    return text
