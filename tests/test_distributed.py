"""DDP: two CPU processes (gloo, launched by torchrun) match single-process training."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import nfkit as nf

pytestmark = [
    pytest.mark.skipif(
        not torch.distributed.is_available(), reason="torch.distributed is not available"
    ),
    # one xdist worker runs this module's torchrun launches one after another (pyproject:
    # --dist loadgroup): two at once put four gloo processes on a two-core machine
    pytest.mark.xdist_group("torchrun"),
]

SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    import torch
    import nfkit as nf
    from nfkit.distributed import init_from_env, is_main_process, shutdown

    init_from_env(device="cpu")  # gloo on CPU, also on a machine with GPUs
    builds, folder = json.loads(open(sys.argv[1]).read()), sys.argv[2]
    for k, build in enumerate(builds):  # one launch for every build: torchrun starts in seconds
        torch.manual_seed(0)
        scope = {"nf": nf, "torch": torch, "weights": None}
        exec(build, scope)
        flow, rows = scope["flow"], []
        scope["hooked"].register_forward_pre_hook(
            lambda m, args, rows=rows: rows.append(args[0].shape[0])
        )
        x = nf.datasets.two_moons(600, seed=0).double()
        history = nf.fit(flow, x, steps=30, batch_size=64, lr=1e-2, eval_every=10, seed=1,
                         progress=False, checkpoint=f"{folder}/ckpt{k}.pt",
                         objective=scope["objective"], weights=scope["weights"])
        if is_main_process():
            torch.save({"state": flow.state_dict(), "train": history.train_loss,
                        "val": history.val_loss, "val_nll": history.val_nll, "rows": rows[:4]},
                       f"{folder}/ddp{k}.pt")
    shutdown()
    """
)

BUILDS = {  # each sets `flow`, `hooked` (a module whose input rows are counted) and `objective`
    "MAF": (
        "flow = nf.models.MAF(2, transforms=2, hidden=(16, 16)).double()\n"
        "hooked, objective = flow.transform, 'likelihood'"
    ),
    # weighted rows: each rank weights its shard by the weights of the whole training set
    "MAF weighted": (
        "flow = nf.models.MAF(2, transforms=2, hidden=(16, 16)).double()\n"
        "hooked, objective = flow.transform, 'likelihood'\n"
        "weights = torch.linspace(0.0, 2.0, 600, dtype=torch.float64)"
    ),
    "ActNorm+NSF": (
        "inner = nf.models.NSF(2, transforms=1, hidden=(16,), bins=4)\n"
        "flow = nf.Flow(nf.Compose(nf.transforms.ActNorm(2), inner.transform), inner.base).double()\n"
        "hooked, objective = flow.transform, 'likelihood'"
    ),
    # BatchNorm: the global batch's statistics, all-reduced (each rank used its shard's)
    "MAF batch norm": (
        "flow = nf.models.MAF(2, transforms=2, hidden=(16, 16), batch_norm=True).double()\n"
        "hooked, objective = flow.transform, 'likelihood'"
    ),
    # flow matching: every rank takes its shard of the global batch's draws
    "FFJORD flow matching": (
        "flow = nf.models.standardize(nf.models.FFJORD(2, hidden=(16,)).double(), "
        "nf.datasets.two_moons(600, seed=0).double())\n"
        "(hooked,) = [m.net for m in flow.modules() if isinstance(m, nf.transforms.ContinuousFlow)]\n"
        "objective = 'flow_matching'"
    ),
}


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 ARGS`` on CPU; asserts it exited with 0.

    Launched again (up to twice) when a worker died by a signal inside gloo (SIGABRT: an
    uncaught ``gloo::IoException`` when a loopback TCP connection resets, or "terminate called
    without an active exception"; a transport flake seen once in a loaded full-suite run, not in
    16 launches under load since, and once more in a full run under Python 3.13 with two xdist
    workers, not in 3 repeats of the module). A Python error in
    a worker fails at once: it exits with status 1, and if a peer aborted first (its connection
    closed as the failing worker tore down), the worker's traceback (nfkit or worker frames) is
    in the output.
    """
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
        "--nproc-per-node", "2", *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for attempt in range(3):
        run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        codes = re.findall(r"exitcode\s*:\s*(-?\d+)", run.stderr)  # torchrun's failure report
        python_error = re.search(r"nfkit[/\\]|worker\.py\", line", run.stderr)  # a worker's frames
        crashed = "-6" in codes and set(codes) <= {"-6", "-15"} and not python_error
        if run.returncode == 0 or not crashed or attempt == 2:
            break
    assert run.returncode == 0, run.stderr[:3000] + "\n...\n" + run.stderr[-2000:]
    return run


def _single(build: str, tmp_path) -> dict:
    scope: dict = {"nf": nf, "torch": torch, "weights": None}
    torch.manual_seed(0)
    exec(build, scope)
    flow = scope["flow"]
    x = nf.datasets.two_moons(600, seed=0).double()
    history = nf.fit(
        flow, x, steps=30, batch_size=64, lr=1e-2, eval_every=10, seed=1, progress=False,
        objective=scope["objective"], weights=scope["weights"],
    )  # fmt: skip
    return {
        "state": flow.state_dict(),
        "train": history.train_loss,
        "val": history.val_loss,
        "val_nll": history.val_nll,
    }


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> Path:
    """Every build of :data:`BUILDS` trained by two processes in one torchrun launch: the folder
    of ``ddp<k>.pt`` (rank 0's results) and ``ckpt<k>.pt`` (its checkpoints)."""
    folder = tmp_path_factory.mktemp("ddp")
    (folder / "builds.json").write_text(json.dumps(list(BUILDS.values())))
    (folder / "worker.py").write_text(SCRIPT)
    _torchrun(str(folder / "worker.py"), str(folder / "builds.json"), str(folder))
    return folder


@pytest.mark.parametrize("name", list(BUILDS))
def test_ddp_two_processes_match_single_process(name: str, ddp_runs: Path, tmp_path) -> None:
    k = list(BUILDS).index(name)
    ddp = torch.load(ddp_runs / f"ddp{k}.pt", weights_only=True)
    assert ddp["rows"][-2:] == [32, 32], ddp["rows"]  # each rank trains on half the global batch
    ref = _single(BUILDS[name], tmp_path)
    # Same global batches: identical up to the rounding of the gradient all-reduce (float64).
    # Behind a BatchNorm, the shift of the layer before it has a gradient of exactly 0 but for
    # rounding, which Adam turns into steps of its own (the losses of the two runs part from
    # the third step, by ~1e-7; weights by ~2e-5): 1e-3 and 1e-6, against 0.12 and 3e-2 at the
    # first step when each rank normalized by its own shard's statistics.
    state_tol, loss_tol = (1e-3, 1e-6) if "batch norm" in name else (1e-9, 1e-9)
    for key, value in ref["state"].items():
        torch.testing.assert_close(
            ddp["state"][key], value, atol=state_tol, rtol=0, msg=lambda m, key=key: f"{key}: {m}"
        )
    torch.testing.assert_close(
        torch.tensor(ddp["train"]), torch.tensor(ref["train"]), atol=loss_tol, rtol=0
    )
    torch.testing.assert_close(
        torch.tensor(ddp["val"]), torch.tensor(ref["val"]), atol=loss_tol, rtol=0
    )
    assert (ddp["val_nll"] is None) == (ref["val_nll"] is None) == (name != "FFJORD flow matching")
    if ref["val_nll"] is not None:
        assert ddp["val_nll"] == pytest.approx(ref["val_nll"], rel=1e-9)
    assert (ddp_runs / f"ckpt{k}.pt").exists()
    assert not list(ddp_runs.glob(f".ckpt{k}.pt.*.tmp"))  # rank 0 wrote it atomically


def test_batch_must_divide_over_ranks(monkeypatch) -> None:
    monkeypatch.setattr(nf.train, "rank_and_world", lambda: (0, 3))
    flow = nf.models.MAF(2, transforms=1, hidden=(8,))
    with pytest.raises(
        ValueError, match=r"batch_size \(64\) which the 3 processes .* divisible by 3$"
    ):
        nf.fit(flow, torch.randn(200, 2), steps=2, batch_size=64, progress=False)


def test_init_from_env_outside_torchrun_is_one_line(monkeypatch) -> None:
    from nfkit.distributed import init_from_env

    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="launch with torchrun"):
        init_from_env()


@pytest.mark.parametrize(
    ("env", "backend", "message"),
    [
        ({"RANK": "0", "WORLD_SIZE": "abc"}, None, "WORLD_SIZE must be an integer >= 1 (torchrun sets it), got 'abc'"),
        ({"RANK": "x", "WORLD_SIZE": "2"}, None, "RANK must be an integer >= 0 (torchrun sets it), got 'x'"),
        ({"RANK": "3", "WORLD_SIZE": "2"}, None, "RANK=3 must be below WORLD_SIZE=2"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, "nccl", "the nccl backend needs GPUs; on cpu use gloo"),
    ],
)
def test_init_from_env_names_a_bad_variable_or_backend(monkeypatch, env, backend, message) -> None:
    """A malformed torchrun variable was parsed by torch ("invalid literal for int()"), a rank
    beyond the world size waited ~10 minutes in the rendezvous, nccl on CPU failed inside
    torch: one line each, before any process group is made."""
    import torch.distributed as dist

    from nfkit import distributed

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: pytest.fail("initialized"))
    with pytest.raises((RuntimeError, ValueError)) as info:
        distributed.init_from_env(backend=backend, device="cpu")
    assert str(info.value) == f"nfkit.distributed: {message}"


@pytest.mark.parametrize(
    ("device", "gpus", "local_rank", "per_node", "expected"),
    [
        ("cpu", 2, 0, 2, "gloo on cpu"),  # CPU asked for: gloo, also beside GPUs
        (None, 0, 1, 2, "gloo on cpu"),
        (None, 2, 1, 2, "nccl on cuda:1"),  # each rank its own GPU
        ("cuda", 2, 0, 2, "nccl on cuda:0"),
        ("cuda", 1, 1, 2, "local rank 1 has no GPU of its own (1 visible): start at most 1"),
        ("cuda:1", 2, 0, 2, "device 'cuda:1' would put this node's 2 processes on one GPU"),
        ("cuda:1", 2, 0, 1, "nccl on cuda:1"),  # one process per node: its GPU as named
    ],
)
def test_init_from_env_picks_each_ranks_device(
    monkeypatch, device: str | None, gpus: int, local_rank: int, per_node: int, expected: str
) -> None:
    """Without a GPU per local rank, a one-line refusal naming the count, not CUDA's
    "invalid device ordinal" from inside torch."""
    import torch.distributed as dist

    from nfkit import distributed

    chosen: list[str] = []
    monkeypatch.setenv("RANK", str(local_rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(per_node))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(str(d)))
    monkeypatch.setattr(distributed, "check_device", lambda where, d: torch.device(d))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: chosen.insert(0, backend))
    try:
        dev = distributed.init_from_env(device=device)
    except ValueError as e:
        assert expected in str(e) and "\n" not in str(e) and not chosen, str(e)
        return
    assert f"{chosen[0]} on {dev}" == expected
    assert chosen[1:] == ([str(dev)] if dev.type == "cuda" else [])


def test_cli_fit_distributed_under_torchrun(tmp_path) -> None:
    data = tmp_path / "moons.csv"
    x = nf.datasets.two_moons(400, seed=0).numpy()
    data.write_text("a,b\n" + "\n".join(f"{u},{v}" for u, v in x))
    out = tmp_path / "model.pt"
    run = _torchrun(
        "-m", "nfkit", "fit", str(data), "--distributed", "--steps", "20", "--batch-size", "64",
        "--out", str(out), "-q", "--device", "cpu",
    )  # fmt: skip
    assert run.stdout.count("saved the model") == 1  # rank 0 only
    flow = nf.load(out)
    assert torch.isfinite(flow.log_prob(torch.as_tensor(x[:5], dtype=torch.float32))).all()


def test_cli_distributed_outside_torchrun_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    from nfkit.cli import main

    monkeypatch.delenv("RANK", raising=False)
    data = tmp_path / "d.csv"
    data.write_text("a,b\n1,2\n3,5\n4,4\n")
    assert main(["fit", str(data), "--distributed", "--steps", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("nfkit: error: ") and "torchrun" in err and "\n" not in err


CHECKS = textwrap.dedent(
    """
    import sys
    import torch
    import nfkit as nf
    from nfkit.distributed import init_from_env, rank_and_world, shutdown

    init_from_env(device="cpu")
    rank = rank_and_world()[0]
    out = {}
    x = nf.datasets.two_moons(600, seed=0).double()

    # seed=None: each rank drew its own seed (here: its own RNG state); rank 0's is used
    torch.manual_seed(100 + rank)
    flow = nf.models.MAF(2, transforms=1, hidden=(8,)).double()
    seen = set()
    flow.transform.register_forward_pre_hook(
        lambda m, args: seen.update(map(tuple, args[0].tolist())) if m.training else None
    )
    nf.fit(flow, x, steps=40, batch_size=64, val_fraction=0.1, progress=False)
    every = [None, None]
    torch.distributed.all_gather_object(every, seen)
    out["rows seen"] = len(every[0] | every[1])

    # different data on each rank: refused on every rank (it hung, or trained on mismatches)
    try:
        nf.fit(nf.models.MAF(2, transforms=1, hidden=(8,)).double(), x[: 500 - 100 * rank],
               steps=5, progress=False)
    except ValueError as e:
        out["mismatch"] = str(e)

    # a batch capped by the training rows that the ranks cannot share
    try:
        nf.fit(nf.models.MAF(2, transforms=1, hidden=(8,)).double(), x[:437], steps=2,
               val_fraction=0.1, progress=False)
    except ValueError as e:
        out["capped"] = str(e)

    # fit settings or held-out rows that differ between ranks: refused on each (other steps
    # hung, another val_fraction aborted inside gloo, val= on one rank trained on two sets)
    small = nf.models.MAF(2, transforms=1, hidden=(8,)).double
    for name, kwargs in (("steps", {"steps": 6 + rank}),
                         ("val_fraction", {"val_fraction": 0.1 * rank}),
                         ("val", {"val": x[:50]} if rank else {})):
        try:
            nf.fit(small(), x[:200], batch_size=64, progress=False, seed=1,
                   **{"steps": 6, **kwargs})
        except ValueError as e:
            out[name] = str(e)
    try:  # fewer training rows than processes
        nf.fit(small(), x[:1], steps=2, val_fraction=0, progress=False)
    except ValueError as e:
        out["one row"] = str(e)

    # resuming gives each rank its own noise stream back (dequantized column: torch's RNG)
    xd = x.clone()
    xd[:, 1] = (xd[:, 1] * 3).round()
    def run(checkpoint, stop=None):
        torch.manual_seed(0)
        flow = nf.models.standardize(nf.models.MAF(2, transforms=1, hidden=(8,)), xd, discrete=[1])
        flow = flow.double()
        calls = []
        def interrupt(module, args):
            calls.append(1)
            if stop is not None and len(calls) > stop:
                raise KeyboardInterrupt
        handle = flow.register_forward_pre_hook(interrupt)
        try:
            history = nf.fit(flow, xd, steps=20, batch_size=64, eval_every=5, seed=1,
                             val_fraction=0, progress=False, checkpoint=checkpoint, resume=True)
        except KeyboardInterrupt:
            return None
        handle.remove()
        return history.train_loss
    out["full"] = run(sys.argv[2] + ".full")
    run(sys.argv[2] + ".part", stop=12)  # stopped in step 13: the checkpoint of step 10 stays
    out["resumed"] = run(sys.argv[2] + ".part")

    # ranks that disagree on the checkpoint: refused on each (a checkpoint= on rank 0 only hung
    # the other rank; a rank that could not see the file started afresh against a resumed one)
    for name, path in (("one rank", None if rank else sys.argv[2] + ".part"),
                       ("unseen", sys.argv[2] + (".part" if rank == 0 else ".missing"))):
        try:
            nf.fit(nf.models.MAF(2, transforms=1, hidden=(8,)).double(), xd, steps=20,
                   batch_size=64, eval_every=5, seed=1, val_fraction=0, progress=False,
                   checkpoint=path, resume=path is not None)
        except ValueError as e:
            out[name] = str(e)
    if rank == 0:
        torch.save(out, sys.argv[1])
    shutdown()
    """
)


def test_ddp_seed_data_batch_and_resume_checks(tmp_path) -> None:
    """Under torchrun: without a seed every rank uses rank 0's (the splits differed: rank 1
    trained on rank 0's validation rows); different data on the ranks is refused on each; a
    batch capped by the rows that the ranks cannot share says so; a resumed run gives every
    rank its own noise stream back (rank 0's was put on every rank)."""
    script = tmp_path / "checks.py"
    script.write_text(CHECKS)
    out = tmp_path / "out.pt"
    _torchrun(str(script), str(out), str(tmp_path / "ck.pt"))
    found = torch.load(out, weights_only=False)
    assert found["rows seen"] == 540  # the 90% of 600 rows both ranks train on, no more
    assert (
        "the processes were given different training data (rank 0: 500 rows, rank 1: 400"
        in (found["mismatch"])
    )
    assert found["capped"] == (
        "nf.fit: the batch is the 393 training rows (fewer than batch_size=512), which the 2 "
        "processes of a distributed run cannot share equally; give a batch_size divisible by 2 "
        "and at most 393"
    )
    assert "were given different settings (steps=7 on rank 1, 6 here)" in found["steps"]
    assert "were given different settings (val_fraction=0.1 on rank 1, 0.0 here)" in (
        found["val_fraction"]
    )
    assert "have different training rows (rank 1 and here; val= or val_weights=" in found["val"]
    assert found["one row"] == (
        "nf.fit: 1 training row(s) cannot be shared by the 2 processes of a distributed run: run "
        "fewer processes (or give more data)"
    )
    assert found["full"] == found["resumed"] and len(found["full"]) == 20
    assert "disagree on the checkpoint (rank 0: step 20, rank 1: no checkpoint)" in found["one rank"]
    assert "disagree on the checkpoint (rank 0: step 20, rank 1: fresh)" in found["unseen"]
