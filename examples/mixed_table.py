"""A table of mixed types: a text column, integer columns and a positive real one.

A survey-like table (region: text; age: whole years 18–79; children: a count; income: positive)
is read with its text column as categories, and modelled twice by the same flow: once with the
integer columns as discrete (uniform dequantization, ``nf.models.DequantizedFlow``) and the
region's codes as a discrete column with its range, once treating every column as continuous. The
discrete model's samples are integers with the data's frequencies (its scores are probabilities
of the integers); the continuous one spreads mass between and below the integers.

Run: ``python examples/mixed_table.py [OUT_DIR] [--quick]``; writes ``mixed_table.png``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import nfkit as nf


def survey(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """``n`` rows: region (text), age (18–79), children (0, 1, ...), income (> 0)."""
    region = rng.choice(["north", "south", "east"], n, p=[0.5, 0.3, 0.2])
    age = rng.integers(18, 80, n)
    rate = np.clip((age - 18) / 20, 0, 1.5) * np.where(region == "south", 1.6, 1.0)
    children = rng.poisson(rate)
    level = pd.Series(region).map({"north": 10.0, "south": 10.3, "east": 10.8}).to_numpy()
    income = np.exp(level + 0.01 * (age - 18) + rng.normal(0, 0.35, n))
    return pd.DataFrame({"region": region, "age": age, "children": children, "income": income})


def fit(table: pd.DataFrame, *, discrete: bool, steps: int, seed: int) -> nf.Flow:
    """An NSF behind the standardization; the integer and category columns discrete or not."""
    torch.manual_seed(seed)
    x = torch.tensor(table.to_numpy(), dtype=torch.float32)
    k = len(table.attrs["categories"]["region"])
    if discrete:  # region's codes 0 … K-1, ages 18 … 79, counts from 0; income positive
        bounds = [(0, k - 1), (18, 79), (0, None), (0, None)]
        options = {"discrete": [0, 1, 2], "bounds": bounds}
    else:
        options = {"bounds": [(None, None), (None, None), (None, None), (0, None)]}
    flow = nf.models.standardize(
        nf.models.NSF(4, transforms=4, hidden=(64, 64)), x, columns=list(table.columns), **options
    )
    nf.fit(flow, x, steps=steps, progress=False, seed=seed)
    return flow


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=".", help="directory for the figure")
    parser.add_argument("--quick", action="store_true", help="small run (CI)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:  # a CSV file, as a user's table would be
        survey(4000 if args.quick else 20_000, rng).to_csv(Path(tmp) / "survey.csv", index=False)
        table = nf.tables.read_table(Path(tmp) / "survey.csv", categories=True)  # region: 0, 1, 2
    labels = table.attrs["categories"]["region"]
    steps = 150 if args.quick else 3000

    flows = {
        "discrete": fit(table, discrete=True, steps=steps, seed=args.seed),
        "continuous": fit(table, discrete=False, steps=steps, seed=args.seed),
    }
    with torch.no_grad():
        draws = {name: flow.sample(len(table)).double().numpy() for name, flow in flows.items()}
    kids = table["children"].to_numpy()
    print(f"data: children 0: {np.mean(kids == 0):.3f}, 1: {np.mean(kids == 1):.3f}")
    for name, s in draws.items():
        whole = np.mean(s[:, 1:3] == np.round(s[:, 1:3]))
        print(
            f"{name:10s} samples: integer ages and counts {whole:.0%}, children 0: "
            f"{np.mean(s[:, 2] == 0):.3f}, 1: {np.mean(s[:, 2] == 1):.3f}, "
            f"below 0: {np.mean(s[:, 2] < 0):.3f}"
        )
    decoded = pd.Categorical.from_codes(draws["discrete"][:, 0].astype(int), labels)
    share = pd.Series(decoded).value_counts(normalize=True)
    print("discrete model's regions:", ", ".join(f"{r} {share[r]:.3f}" for r in labels))
    with torch.no_grad():  # log P(region, age, children) × p(income): one row per region
        rows = torch.tensor([[i, 40.0, 1.0, 40_000.0] for i in range(len(labels))])
        for label, lp in zip(labels, flows["discrete"].eval().log_prob(rows).tolist()):
            print(f"log P(region={label}, age=40, children=1) p(income=40000): {lp:.3f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    ax = axes[0]
    bins = np.arange(-1.5, 7.5, 0.25)
    ax.hist(kids, bins=bins, density=True, color="0.6", label="data")
    for (name, s), colour in zip(draws.items(), ("C1", "C0")):
        ax.hist(s[:, 2], bins=bins, density=True, histtype="step", lw=1.6, color=colour,
                label=f"{name} model")  # fmt: skip
    ax.set(xlabel="children", ylabel="density (bins of 0.25)", title="a count")
    ax.legend(frameon=False)
    ax = axes[1]
    ax.hist(table["age"], bins=np.arange(15, 83, 1), density=True, color="0.6", label="data")
    for (name, s), colour in zip(draws.items(), ("C1", "C0")):
        ax.hist(s[:, 1], bins=np.arange(15, 83, 1), density=True, histtype="step", lw=1.2,
                color=colour, label=f"{name} model")  # fmt: skip
    ax.set(xlabel="age", title="whole years, 18–79")
    ax = axes[2]
    for i, label in enumerate(labels):
        sel = draws["discrete"][:, 0] == i
        ax.hist(np.log10(draws["discrete"][sel, 3]), bins=50, density=True, histtype="step",
                lw=1.4, label=f"{label} (model)")  # fmt: skip
    ax.set(xlabel="log10 income", title="income by region (discrete model)")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(out / "mixed_table.png", dpi=90)
    print(f"wrote {out / 'mixed_table.png'}")


if __name__ == "__main__":
    main()
