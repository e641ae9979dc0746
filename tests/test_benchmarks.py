"""``benchmarks/peers.py`` (and the smaller scripts) run end to end (nfkit alone, tiny sizes).

The peers are optional (``bench`` extras); timing figures are not checked here, only that every
metric is produced for the architecture asked for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "benchmarks" / "peers.py"


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(PEERS), "--out", str(tmp_path), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_peers_runs_with_a_chosen_architecture(tmp_path: Path) -> None:
    r = _run(
        tmp_path,
        *("--cells", "synth5-MAF,moons-NSFc", "--libs", "nfkit"),
        *("--hidden", "8,6", "--transforms", "2", "--batch", "32"),
        *("--rounds", "1", "--reps", "1", "--steps", "2", "--fit", "2", "--threads", "1"),
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    stored = json.loads((tmp_path / "peers-full-cpu.json").read_text())
    assert stored["architecture"] == {"transforms": 2, "hidden": [8, 6], "batch": 32}
    cells = {c["cell"]: c for c in stored["results"]}
    assert set(cells) == {"synth5-MAF", "moons-NSFc"}
    maf = cells["synth5-MAF"]
    assert maf["features"] == 5
    # MADE 5 → 8 → 6 → 10 (shift and log-scale per feature), two transforms
    assert maf["params"]["nfkit"] == 2 * ((5 * 8 + 8) + (8 * 6 + 6) + (6 * 10 + 10))
    for c in cells.values():
        assert c["step_ms"]["nfkit"] > 0 and c["step_ms"]["floor"] > 0
        assert c["step_ms"]["mlp"] > 0  # the dense networks with ReLU and Adam
        assert c["log_prob_rows_per_s"]["nfkit"] > 0 and c["sample_per_s"]["nfkit"] > 0
        assert c["memory_mib"]["nfkit"] is not None
        assert isinstance(c["test_ll"]["nfkit"], float)
    md = (tmp_path / "peers-full-cpu.md").read_text()
    assert "Architecture: 2 transforms, hidden widths (8, 6)" in md
    assert "batch 32" in md
    assert "| MLP+Adam | floor |" in md

    # --memory-only re-measures with the sizes stored in the file, not the defaults
    r = _run(tmp_path, "--memory-only", "--cells", "synth5-MAF", "--libs", "nfkit")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (
        "Architecture: 2 transforms, hidden widths (8, 6)"
        in (tmp_path / "peers-full-cpu.md").read_text()
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--cells", "synth1-MAF"), "unknown cell 'synth1-MAF'"),
        (("--cells", "moons-Glow"), "unknown cell 'moons-Glow'"),
        (("--hidden", "64,x"), "expected widths like 64,64, got '64,x'"),
        (("--transforms", "0"), "need hidden widths, transforms and batch >= 1"),
    ],
)
def test_peers_rejects_bad_arguments_in_one_line(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    r = _run(tmp_path, *args, "--libs", "nfkit")
    assert r.returncode != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_ll_trajectory_takes_the_hidden_widths(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "ll_trajectory.py"
    args = [sys.executable, str(script), "--cells", "moons-MAF", "--libs", "nfkit"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    r = subprocess.run([*args, "--hidden", "8,6", "--at", "1,2"], **run)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "hidden widths (8, 6)" in r.stdout
    assert "[moons-MAF] seed 0 nfkit" in r.stdout and "2: train" in r.stdout
    bad = subprocess.run([*args, "--hidden", "0"], **run)
    assert bad.returncode != 0
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "hidden" in lines[0], bad.stderr


def test_fit_adamw_compares_fused_and_per_op_steps(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "fit_adamw.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    args = [sys.executable, str(script), "--rounds", "1", "--steps", "2"]
    r = subprocess.run([*args, "--cells", "moons-MAF"], **run)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    row = next(line for line in r.stdout.splitlines() if line.startswith("| moons-MAF |"))
    cols = [c.strip() for c in row.strip("|").split("|")]
    assert cols[1] == "87,060"  # peers.py's moons MAF: 5 MADEs 2 → 128 → 128 → 4
    assert all(float(c) > 0 for c in cols[2:6]), row
    bad = subprocess.run([*args, "--cells", "moons-Glow"], **run)
    assert bad.returncode != 0 and "unknown cell 'moons-Glow'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_circular_benchmark_writes_every_metric(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "circular.py"
    args = [sys.executable, str(script), "--features", "2", "--libs", "nfkit", "--hidden", "8"]
    args += ["--transforms", "2", "--rounds", "1", "--reps", "1", "--steps", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [*args, "--out", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads((tmp_path / "circular-cpu.json").read_text())["D=2"]["nfkit"]
    assert set(result) == {
        "params",
        "step_ms",
        "log_prob_rows_s",
        "sample_rows_s",
        "test_ll_per_angle",
    }
    assert all(v > 0 for k, v in result.items() if k != "test_ll_per_angle")
    assert "| D=2 | nfkit |" in (tmp_path / "circular-cpu.md").read_text()


def test_discrete_benchmark_writes_every_metric(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "discrete.py"
    args = [sys.executable, str(script), "--models", "maf", "--steps", "3", "--transforms", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([*args, "--hidden", "8", "--out", str(tmp_path)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads((tmp_path / "discrete-digits-cpu.json").read_text())
    assert result["columns"] == 61 and -120 < result["independent"] < -100
    maf = result["models"]["maf"]
    assert maf["bound"] <= maf["log_P_64"] + 0.5  # Jensen: the training bound is below
    assert maf["score_ms"] > maf["one_pass_ms"] > 0 and maf["steps"] == 3
    assert "| maf |" in (tmp_path / "discrete-digits-cpu.md").read_text()


def test_families_benchmark_writes_every_metric(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "families.py"
    args = [sys.executable, str(script), "--features", "2", "--libs", "nfkit", "--hidden", "8"]
    args += ["--transforms", "1", "--rounds", "1", "--reps", "1", "--steps", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([*args, "--out", str(tmp_path)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads((tmp_path / "families-cpu.json").read_text())
    for cell in ("SOSPF D=2", "BPF D=2", "GF D=2"):
        result = results[cell]["nfkit"]
        assert set(result) == {"params", "step_ms", "log_prob_rows_s", "sample_rows_s",
                               "test_ll_per_feature"}  # fmt: skip
        assert all(v > 0 for k, v in result.items() if k != "test_ll_per_feature")
    assert "| GF D=2 | nfkit |" in (tmp_path / "families-cpu.md").read_text()


def test_flow_matching_benchmark_writes_every_metric(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "flow_matching.py"
    args = [sys.executable, str(script), "--cells", "moons", "--budget", "0.3", "--hidden", "8"]
    args += ["--methods", "nfkit-FFJORD-FM,nfkit-NSF-MLE", "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    r = subprocess.run(args, **run)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads((tmp_path / "flow-matching-cpu.json").read_text())["moons"]
    assert set(result) == {"nfkit-FFJORD-FM", "nfkit-NSF-MLE"}
    for r_ in result.values():
        assert r_["steps"] >= 1 and r_["step_ms"] > 0 and r_["test_ll"] < 0
        assert r_["log_prob_rows_per_s"] > 0 and r_["sample_rows_per_s"] > 0
    # FFJORD(2, hidden=(8,), time_features=3): (2 + 7) → 8 → 2
    assert "| moons | nfkit-FFJORD-FM | 98 |" in (tmp_path / "flow-matching-cpu.md").read_text()
    bad = subprocess.run([*args[:-2], "--methods", "nfkit-FFJORD"], **run)
    assert bad.returncode != 0 and "unknown methods ['nfkit-FFJORD']" in bad.stderr
