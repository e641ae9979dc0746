"""``benchmarks/peers.py`` (and the smaller scripts) run end to end (nfkit alone, tiny sizes).

The peers are optional (``bench`` extras); timing figures are not checked here, only that every
metric is produced for the architecture asked for.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "benchmarks" / "peers.py"


@pytest.fixture
def peers(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A fresh copy of ``benchmarks/peers.py`` (its sizes are module globals), at tiny sizes."""
    spec = importlib.util.spec_from_file_location("peers_under_test", PEERS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    module.configure((8, 6), 2, 32)
    return module


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


def test_peers_runs_with_a_chosen_architecture(tmp_path: Path, peers: ModuleType) -> None:
    # memory is measured by the --memory-only run below (one child process per cell and library)
    r = _run(
        tmp_path,
        *("--cells", "synth5-MAF,moons-NSFc", "--libs", "nfkit", "--no-memory"),
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
        assert "nfkit" not in c["memory_mib"]
        assert isinstance(c["test_ll"]["nfkit"], float)
    md = (tmp_path / "peers-full-cpu.md").read_text()
    assert "Architecture: 2 transforms, hidden widths (8, 6)" in md
    assert "batch 32" in md
    assert "| MLP+Adam | floor |" in md
    assert "after the same fixed budget of 2 Adam steps" in md  # the budget is stated
    assert all(c["test_ll_steps"] == 2 for c in cells.values())

    # --memory-only re-measures with the sizes stored in the file, not the defaults, and
    # writes a new file beside it (stored results are never overwritten)
    r = _run(tmp_path, "--memory-only", "--cells", "synth5-MAF", "--libs", "nfkit")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "peers-full-cpu.md").read_text() == md
    remeasured = (tmp_path / "peers-full-cpu-2.md").read_text()
    assert "Architecture: 2 transforms, hidden widths (8, 6)" in remeasured
    assert "Memory column of peers-full-cpu.json re-measured by" in remeasured
    stored = json.loads((tmp_path / "peers-full-cpu-2.json").read_text())
    memory = {c["cell"]: c["memory_mib"] for c in stored["results"]}
    assert memory["synth5-MAF"]["nfkit"] > 0 and memory["moons-NSFc"] == {}  # the cell asked
    with pytest.raises(SystemExit, match="cannot read results file"):  # one line, no traceback
        peers.main(["--memory-only", "--libs", "nfkit", "--out", str(tmp_path),
                    "--results", str(tmp_path / "no")])  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--cells", "synth1-MAF"), "unknown cell 'synth1-MAF'"),
        (("--cells", "moons-Glow"), "unknown cell 'moons-Glow'"),
        (("--hidden", "64,x"), "expected widths like 64,64, got '64,x'"),
        (("--transforms", "0"), "need hidden widths, transforms and batch >= 1"),
        (
            ("--hidden", "128,64", "--cells", "moons-MAF", "--libs", "nfkit,nflows"),
            "nflows' MADE keeps one hidden width, got --hidden 128,64",
        ),
    ],
)
def test_peers_rejects_bad_arguments_in_one_line(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    r = _run(tmp_path, "--libs", "nfkit", *args)
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


def test_normflows_realnvp_matches_nfkit_and_is_a_density(peers: ModuleType) -> None:
    pytest.importorskip("normflows")
    for d in (2, 5, 64):
        counts = {}
        for lib in ("nfkit", "normflows"):
            torch.manual_seed(0)
            counts[lib] = peers.n_params(peers.build(lib, "RealNVP", d).module)
        assert counts["normflows"] == counts["nfkit"], (d, counts)
    torch.manual_seed(0)
    m = peers.build("normflows", "RealNVP", 2)
    with torch.no_grad():
        for p in m.module.parameters():
            p.normal_(std=0.1)  # away from the identity it starts at
        g = torch.linspace(-10, 10, 401)
        density = m.log_prob(torch.cartesian_prod(g, g)).exp()
        x = m.sample(64)
    assert abs(float(density.sum() * (g[1] - g[0]) ** 2) - 1) < 1e-3
    assert x.shape == (64, 2) and torch.isfinite(m.log_prob(x)).all()


def test_zuko_coupling_transforms_the_features_nfkit_does(peers: ModuleType) -> None:
    """zuko's ``mask`` marks the conditioning features (nfkit's the transformed ones): its own
    RealNVP alternated the mirror image of nfkit's and, for odd D, had other parameter counts."""
    pytest.importorskip("zuko")
    for d in (3, 5, 6):
        for model in ("RealNVP", "NSFc"):
            counts = {lib: peers.n_params(peers.build(lib, model, d).module)
                      for lib in ("nfkit", "zuko")}  # fmt: skip
            assert counts["zuko"] == counts["nfkit"], (d, model, counts)
            flow = peers.build("zuko", model, d).module
            for i, layer in enumerate(flow.transform.transforms):
                assert torch.equal(layer.mask, ~peers._alternating(d, i)), (d, model, i)


def test_nflows_and_normflows_made_depth_follows_the_hidden_widths(peers: ModuleType) -> None:
    """nflows' MADE has ``num_blocks + 1`` hidden layers: one block gave two layers whatever
    ``--hidden`` said (a one-layer or three-layer run stopped on unequal parameter counts)."""
    pytest.importorskip("nflows")
    pytest.importorskip("normflows")
    for hidden in ((8,), (8, 8, 8)):
        peers.configure(hidden, 2, 32)
        for model in ("MAF", "NSF"):
            counts = {lib: peers.n_params(peers.build(lib, model, 3).module)
                      for lib in ("nfkit", "nflows", "normflows")}  # fmt: skip
            assert len(set(counts.values())) == 1, (hidden, model, counts)


def test_floor_takes_the_input_gradients_of_every_network_after_the_first(
    peers: ModuleType,
) -> None:
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountOps(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: Counter[str] = Counter()

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
            self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    nets = [(4, 8, 6)] * 3  # three networks of two layers
    step, mlp_step, _ = peers.floor_fns(nets, True, "cpu")
    for fn in (step, mlp_step):
        fn()
        with CountOps() as count:
            fn()
        assert count.ops["addmm"] == 6  # forward
        # backward: 6 weight gradients, the input gradient of the second layer of each network
        # and of the first layer of every network after the first (an input that requires grad)
        assert count.ops["mm"] == 6 + 3 + 2


def test_peers_runs_without_nfkit_and_marks_it_not_run(peers: ModuleType) -> None:
    pytest.importorskip("zuko")
    pytest.importorskip("normflows")
    args = argparse.Namespace(libs=["zuko", "normflows"], device="cpu", compile=False)
    args.rounds, args.reps, args.memory, args.steps, args.fit = 1, 1, False, 2, 2
    result = peers.run_cell("moons-RealNVP", args)
    assert set(result["params"]) == {"zuko", "normflows"}
    assert len(set(result["params"].values())) == 1
    assert result["step_ms"]["floor"] > 0 and result["step_ms"]["normflows"] > 0
    assert math.isfinite(result["test_ll"]["normflows"])
    assert result["fit"] is None  # nf.fit trains nfkit, which this run left out
    md = peers.markdown([result], peers.machine("cpu"), "peers.py --libs zuko,normflows")
    row = next(line for line in md.splitlines() if line.startswith("| moons-RealNVP |"))
    assert "| not run |" in row and "no matching architecture" not in md


def test_memory_child_sees_the_whole_training_step(tmp_path: Path) -> None:
    # synth256 MAF, the default sizes: gradients and Adam's two moments alone are 3 x 577k
    # floats (6.6 MiB); before the heap was trimmed the child read 4.9 MiB
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(PEERS), "--_memory", "synth256-MAF", "nfkit", "--threads", "1"]
    r = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert float(r.stdout.strip().splitlines()[-1]) > 3 * 577_280 * 4 / 2**20


def test_families_benchmark_stops_on_unequal_parameter_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("zuko")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    path = ROOT / "benchmarks" / "families.py"
    spec = importlib.util.spec_from_file_location("families_under_test", path)
    assert spec is not None and spec.loader is not None
    families = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(families)
    argv = "--features 2 --families GMM --libs nfkit,zuko --rounds 1 --reps 1 --steps 1 --out"
    monkeypatch.setattr(sys, "argv", ["families.py", *argv.split(), str(tmp_path)])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # this process's threads stay
    families.main()  # both libraries' 8-component GMMs: 48 parameters each
    stored = json.loads((tmp_path / "families-cpu.json").read_text())["GMM D=2"]
    assert {lib: r["params"] for lib, r in stored.items()} == {"nfkit": 48, "zuko": 48}
    real = families.build  # zuko's flow of another family: unequal counts stop the run
    monkeypatch.setattr(
        families, "build", lambda lib, f, d, a: real(lib, "GF" if lib == "zuko" else f, d, a)
    )
    with pytest.raises(
        SystemExit, match=r"GMM D=2: parameter counts differ: \{'nfkit': 48, 'zuko': 104\}"
    ):
        families.main()


def test_peers_refuses_an_unknown_library_in_one_line(tmp_path: Path, peers: ModuleType) -> None:
    with pytest.raises(SystemExit, match=r"unknown --libs \['zuk'\]; choose from"):
        peers.main(["--libs", "nfkit, zuk", "--cells", "moons-MAF", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()  # refused before anything is written
    with pytest.raises(SystemExit, match="--libs names no library"):
        peers.main(["--libs", " , ", "--out", str(tmp_path / "o")])


def test_timed_steps_draw_no_data(peers: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    # The floor and MLP+Adam draw no batch; neither may a library's timed step: it cycles
    # through batches drawn beforehand (the same ones for every library).
    data = torch.randn(100, 2)
    first, second = peers.timed_batches(data, "cpu"), peers.timed_batches(data, "cpu")
    ready = [first() for _ in range(peers.TIMED_BATCHES)]
    assert all(torch.equal(a, second()) for a in ready)  # the same batches for every library
    assert first() is ready[0]  # cycled, not drawn again
    m = peers.build("nfkit", "MAF", 2)
    step = peers.train_step_fn(m, first)

    def no_draws(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a timed step drew data")

    monkeypatch.setattr(torch, "randint", no_draws)
    before = [p.detach().clone() for p in m.module.parameters()]
    step()
    assert any(not torch.equal(a, p) for a, p in zip(before, m.module.parameters()))  # it trained
