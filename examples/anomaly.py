"""Anomaly detection on a table with the scikit-learn estimator ``nf.FlowDensity``.

A table of sensor readings (four columns tied together by a hidden operating point) is modelled
by a flow; rows with a low log-density are flagged. The injected anomalies have typical values in
every column, only their combination is wrong, so per-column thresholds cannot find them; the
flow is compared with scikit-learn's ``IsolationForest`` and a Gaussian mixture.

Run: ``python examples/anomaly.py [OUT_DIR] [--quick]``; writes ``anomaly.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture

import nfkit as nf


def sensors(n: int, rng: np.random.Generator, anomalous: bool = False) -> pd.DataFrame:
    """``n`` rows of (temperature, pressure, flow, vibration); anomalous rows mix operating points."""
    t = rng.uniform(0, 1, n)
    t2 = rng.uniform(0, 1, n) if anomalous else t  # pressure from another operating point
    temperature = 20 + 15 * t + rng.normal(0, 0.6, n)
    pressure = 1 + 0.6 * np.sin(2 * np.pi * t2) + rng.normal(0, 0.05, n)
    flow = 3 * pressure * (1 + t) + rng.normal(0, 0.1, n)
    vibration = np.exp(0.3 * rng.normal(0, 1, n) + t)
    return pd.DataFrame(
        {"temperature": temperature, "pressure": pressure, "flow": flow, "vibration": vibration}
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=".", help="directory for the figure")
    parser.add_argument("--quick", action="store_true", help="small run (CI)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)

    train = sensors(2000 if args.quick else 20_000, rng)
    normal, anomalies = sensors(1000, rng), sensors(50, rng, anomalous=True)
    test = pd.concat([normal, anomalies], ignore_index=True)
    label = np.r_[np.zeros(len(normal)), np.ones(len(anomalies))]  # 1 = anomaly

    est = nf.FlowDensity(
        "nsf",
        transforms=4,
        hidden=(64, 64),
        steps=60 if args.quick else 1500,
        batch_size=256,
        lr=2e-3,
        random_state=args.seed,
    )
    est.fit(train)  # the flow standardizes the columns itself; scores are in the table's units
    scores = {
        "flow (FlowDensity)": est.score_samples(test),
        "Gaussian mixture (8)": GaussianMixture(8, random_state=args.seed)
        .fit(train)
        .score_samples(test),
        "IsolationForest": IsolationForest(random_state=args.seed).fit(train).score_samples(test),
    }
    threshold = np.quantile(est.score_samples(train), 0.01)  # flag the 1% least likely
    flagged = scores["flow (FlowDensity)"] < threshold
    print(f"mean test log-density of normal rows: {est.score(normal):.3f}")
    print(
        f"flow, 1% threshold: flagged {flagged.sum()} rows, {flagged[label == 1].sum()} of "
        f"{len(anomalies)} anomalies, {flagged[label == 0].sum()} false alarms"
    )
    for name, s in scores.items():
        print(f"ROC AUC {name:22s} {roc_auc_score(label, -s):.3f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
    ax = axes[0]
    ax.scatter(normal["temperature"], normal["pressure"], s=3, color="0.6", label="normal rows")
    ax.scatter(
        anomalies["temperature"], anomalies["pressure"], s=12, marker="x", color="C3",
        label="anomalies",
    )  # fmt: skip
    ax.scatter(
        test["temperature"][flagged], test["pressure"][flagged], s=60, facecolor="none",
        edgecolor="k", lw=0.8, label="flagged by the flow",
    )  # fmt: skip
    ax.set_xlabel("temperature")
    ax.set_ylabel("pressure")
    ax.legend(fontsize=7, frameon=False, loc="lower left")
    ax = axes[1]
    s = scores["flow (FlowDensity)"]
    bins = np.linspace(max(s.min(), np.quantile(s, 0.001) - 5), s.max(), 60)
    ax.hist(np.clip(s[label == 0], bins[0], None), bins=bins, color="0.6", label="normal rows")
    ax.hist(np.clip(s[label == 1], bins[0], None), bins=bins, color="C3", label="anomalies")
    ax.axvline(threshold, color="k", ls="--", lw=1, label="1% threshold")
    ax.set_xlabel("log p(row)  (score_samples)")
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(out / "anomaly.png")
    print(f"wrote {out / 'anomaly.png'}")


if __name__ == "__main__":
    main()
