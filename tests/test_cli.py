"""The nfkit command: every subcommand's success, and one-line errors with a non-zero status."""

from __future__ import annotations

import io
import math
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import nfkit as nf
from nfkit.cli import main

FAST = [
    "--steps",
    "25",
    "--transforms",
    "1",
    "--hidden",
    "8",
    "--model",
    "maf",
    "-q",
    "--seed",
    "0",
]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    g = rng.normal(size=300)
    df = pd.DataFrame({"a": g + 0.2 * rng.normal(size=300), "b": rng.normal(size=300), "g": g})
    df.to_csv(d / "data.csv", index=False)
    return d


def test_help(capsys) -> None:
    r = subprocess.run([sys.executable, "-m", "nfkit", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage: nfkit" in r.stdout and "demo" in r.stdout
    for command in ("fit", "sample", "score", "plot", "demo", "info", "coverage", "export"):
        code, out, _ = _run(capsys, command, "--help")
        assert code == 0 and out.startswith(f"usage: nfkit {command}")


def test_fit_sample_score_plot(capsys, table) -> None:
    model = table / "m.pt"
    code, out, err = _run(capsys, "fit", table / "data.csv", "--out", model, *FAST)
    assert code == 0 and f"saved the model to {model}" in out and model.exists()
    code, out, _ = _run(capsys, "sample", model, "-n", "7", "--seed", "1")
    rows = out.strip().splitlines()
    assert code == 0 and rows[0] == "a,b,g" and len(rows) == 8
    code, out, _ = _run(capsys, "sample", model, "-n", "50", "-o", table / "s.csv")
    assert code == 0 and pd.read_csv(table / "s.csv").shape == (50, 3)
    code, out, _ = _run(capsys, "score", model, table / "s.csv", "-o", table / "scores.csv")
    scores = pd.read_csv(table / "scores.csv")
    assert code == 0 and list(scores.columns) == ["log_density"] and len(scores) == 50
    assert np.isfinite(scores["log_density"]).all()
    # Header-less data with the right number of columns is matched by position.
    pd.read_csv(table / "s.csv").to_csv(table / "nohead.csv", index=False, header=False)
    code, out, _ = _run(capsys, "score", model, table / "nohead.csv")
    assert code == 0 and np.allclose(
        pd.read_csv(pd.io.common.StringIO(out))["log_density"], scores["log_density"]
    )
    # --with-data: the table's own columns (extras too), then the same scores.
    extra = pd.read_csv(table / "s.csv").assign(id=range(50))
    extra.to_csv(table / "extra.csv", index=False)
    code, out, _ = _run(capsys, "score", model, table / "extra.csv", "--with-data")
    joined = pd.read_csv(pd.io.common.StringIO(out))
    assert code == 0 and list(joined.columns) == ["a", "b", "g", "id", "log_density"]
    assert (
        np.allclose(joined["log_density"], scores["log_density"])
        and (joined["id"] == extra["id"]).all()
    )
    code, out, _ = _run(capsys, "score", model, table / "nohead.csv", "--with-data")
    assert code == 0 and out.splitlines()[0] == "a,b,g,log_density"
    # ... as written: pandas' parse made 02134 2134, TRUE True, 2 2.0, and an empty cell NaN
    rows = pd.read_csv(table / "s.csv").head(2)
    text = "zip,flag,n,note," + ",".join(rows.columns) + "\n"
    for (_, r), cells in zip(rows.iterrows(), ("02134,TRUE,2,", "00501,false,7,hi")):
        text += cells + "," + ",".join(repr(float(v)) for v in r) + "\n"
    (table / "ids.csv").write_text(text)
    code, out, _ = _run(capsys, "score", model, table / "ids.csv", "--with-data")
    lines = out.splitlines()
    assert (
        code == 0
        and lines[1].startswith("02134,TRUE,2,,")
        and lines[2].startswith("00501,false,7,hi,")
    )
    joined.to_csv(table / "scored.csv", index=False)
    assert "already has a log_density column" in _error(
        capsys, "score", model, table / "scored.csv", "--with-data"
    )
    # Chunked scoring on a named device gives the one-pass scores (to float32 rounding).
    code, out, _ = _run(
        capsys, "score", model, table / "s.csv", "--chunk-size", "7", "--device", "cpu"
    )
    chunked = pd.read_csv(pd.io.common.StringIO(out))["log_density"]
    assert code == 0 and np.allclose(chunked, scores["log_density"], rtol=0, atol=1e-4)
    code, out, _ = _run(capsys, "sample", model, "-n", "20", "--chunk-size", "6", "--seed", "2")
    assert code == 0 and pd.read_csv(pd.io.common.StringIO(out)).shape == (20, 3)
    # Output tables in the format their suffix names, compressed ones included.
    code, out, _ = _run(
        capsys, "sample", model, "-n", "9", "-o", table / "s.csv.gz", "--seed", "1"
    )
    assert code == 0 and pd.read_csv(table / "s.csv.gz", compression="gzip").shape == (9, 3)
    code, out, _ = _run(capsys, "score", model, table / "s.csv.gz", "-o", table / "sc.tsv.xz")
    assert code == 0 and list(pd.read_csv(table / "sc.tsv.xz", sep="\t").columns) == [
        "log_density"
    ]
    code, out, _ = _run(capsys, "plot", model, "--data", table / "data.csv", "-o", table / "c.png")
    assert code == 0 and (table / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_conditional_round_trip(capsys, table) -> None:
    model = table / "cond.pt"
    code, out, _ = _run(capsys, "fit", table / "data.csv", "--given", "g", "--out", model, *FAST)
    assert code == 0 and "of a, b given g" in out
    code, out, _ = _run(
        capsys, "sample", model, "-n", "20", "--given", "g=1.5", "-o", table / "cs.csv"
    )
    s = pd.read_csv(table / "cs.csv")
    assert code == 0 and list(s.columns) == ["a", "b", "g"] and (s["g"] == 1.5).all()
    code, out, _ = _run(capsys, "score", model, table / "cs.csv")
    assert code == 0 and len(out.strip().splitlines()) == 21
    code, out, _ = _run(capsys, "plot", model, "--given", "g=0", "-o", table / "cd.png")
    assert code == 0 and (table / "cd.png").stat().st_size > 1000
    code, _, err = _run(capsys, "sample", model, "-n", "5")
    assert code == 1 and "conditional on g; pass --given g=VALUE" in err
    code, _, err = _run(capsys, "sample", model, "-n", "5", "--given", "h=1")
    assert code == 1 and "--given must set exactly g" in err
    code, _, err = _run(capsys, "sample", model, "-n", "5", "--given", "g=high")
    assert code == 1 and "--given value of 'g' is not a number: 'high'" in err


def test_sample_for_each_row_of_a_table_of_contexts(capsys, table) -> None:
    """``--given-table``: -n draws per row, in row blocks with a ``row`` column; the draws follow
    each row's context (a tracks g: mean of a at g = ∓1 within 0.5 of ∓1, measured -1.00 and
    0.98); seeded; header-less by position; one-line refusals."""
    model = table / "cond_rows.pt"
    fit = ["fit", table / "data.csv", "--given", "g", "--out", model, *FAST, "--steps", "600",
           "--transforms", "2", "--hidden", "32"]  # fmt: skip
    assert _run(capsys, *fit)[0] == 0
    pd.DataFrame({"g": [-1.0, 1.0], "other": [0, 0]}).to_csv(table / "ctx.csv", index=False)
    out = table / "rows.csv"
    argv = ["sample", model, "-n", "400", "--given-table", table / "ctx.csv", "-o", out]
    code, msg, _ = _run(capsys, *argv, "--seed", "3")
    assert code == 0 and "400 samples for each of the 2 rows of" in msg and "(800 rows)" in msg
    s = pd.read_csv(out)
    assert list(s.columns) == ["row", "a", "b", "g"] and len(s) == 800
    assert (s["row"] == np.repeat([0, 1], 400)).all() and (
        s["g"] == np.repeat([-1.0, 1.0], 400)
    ).all()
    means = s.groupby("row")["a"].mean()
    assert abs(means[0] + 1) < 0.5 and abs(means[1] - 1) < 0.5, means
    first = s.copy()
    assert _run(capsys, *argv, "--seed", "3")[0] == 0
    pd.testing.assert_frame_equal(pd.read_csv(out), first)
    np.savetxt(table / "bare.csv", [[-2.0], [2.0]], delimiter=",")  # header-less: by position
    code, printed, _ = _run(
        capsys, "sample", model, "-n", "2", "--given-table", table / "bare.csv"
    )
    assert code == 0 and len(pd.read_csv(pd.io.common.StringIO(printed))) == 4
    # an -n beyond memory is named before any draw ("internal error (... tried to allocate
    # ... bytes)", or "Overflow when unpacking long long" beyond int64), with the table's rows
    for n, rows in (("100000000000000", ["--given", "g=0"]),
                    ("10" * 12, ["--given-table", table / "bare.csv"])):  # fmt: skip
        code, _, err = _run(capsys, "sample", model, "-n", n, *rows)
        assert code == 1 and err.startswith(f"nfkit: error: -n {n} ") and "GiB of memory" in err
        assert ("× 2 --given-table rows" in err) == ("--given-table" in rows)
        assert err.count("\n") == 1
    assert "--given or --given-table, not both" in _error(capsys, *argv, "--given", "g=1")
    pd.DataFrame({"h": [1.0]}).to_csv(table / "wrong.csv", index=False)
    assert "no column(s) 'g'" in _error(
        capsys, "sample", model, "-n", "2", "--given-table", table / "wrong.csv"
    )
    plain = table / "plain_rows.pt"
    assert _run(capsys, "fit", table / "data.csv", "--out", plain, *FAST)[0] == 0
    assert "not conditional; --given-table is not used" in _error(
        capsys, "sample", plain, "-n", "2", "--given-table", table / "ctx.csv"
    )


def test_export_writes_programs_that_run_without_nfkit(capsys, table, tmp_path) -> None:
    """``nfkit export``: the density program equals the model's log_prob; the sampler maps
    noise through the model; refusals are one line."""
    import torch

    import nfkit as nf

    model = tmp_path / "cond.pt"
    assert _run(capsys, "fit", table / "data.csv", "--given", "g", "--out", model, *FAST)[0] == 0
    code, out, _ = _run(capsys, "export", model, tmp_path / "density.pt2")
    assert code == 0 and "inputs: x (rows, 2), c (rows, 1), float32" in out and "x: a, b;" in out
    flow = nf.load(model)
    x, c = torch.randn(9, 2), torch.randn(9, 1)
    program = torch.export.load(tmp_path / "density.pt2").module()
    torch.testing.assert_close(program(x, c), flow.log_prob(x, c))
    code, out, _ = _run(capsys, "export", model, tmp_path / "sampler.pt2", "--sample")
    assert code == 0 and "z: standard normal noise; output: rows of a, b" in out
    sampler = torch.export.load(tmp_path / "sampler.pt2").module()
    z = torch.randn(9, 2)
    with torch.no_grad():
        expected = flow.transform.inverse_value(z, flow._embed(c))  # c standardized inside
        torch.testing.assert_close(sampler(z, c), expected)
    assert "is also the model" in _error(capsys, "export", model, model)
    counts = pd.DataFrame({"n": np.random.default_rng(0).poisson(3.0, 200), "y": np.arange(200.0)})
    counts.to_csv(tmp_path / "counts.csv", index=False)
    discrete = tmp_path / "counts.pt"
    assert _run(capsys, "fit", tmp_path / "counts.csv", "--out", discrete, *FAST)[0] == 0
    assert "discrete columns scores by averaging" in _error(
        capsys, "export", discrete, tmp_path / "d.pt2"
    )


def test_validation_table_patience_and_weight_decay(capsys, table, tmp_path) -> None:
    """``--val`` scores early stopping on another table (a shifted one scores far worse than
    the held-out split), ``--patience`` ends the run sooner, ``--weight-decay`` reaches AdamW;
    refusals are one line."""
    data = table / "data.csv"
    model = tmp_path / "m.pt"
    base = ["fit", data, "--out", model, "--model", "maf", "--transforms", "1", "--hidden", "8"]
    df = pd.read_csv(data)
    (df + 10.0).to_csv(tmp_path / "shifted.csv", index=False)
    df.to_csv(tmp_path / "same.csv", index=False)

    def val_nll(out: str) -> float:
        return float(out.split("val NLL ")[1].split(" nats")[0])

    code, _, out = _run(capsys, *base, "--steps", "100", "--val", tmp_path / "same.csv")
    assert code == 0 and val_nll(out) < 5, out
    code, _, out = _run(capsys, *base, "--steps", "100", "--val", tmp_path / "shifted.csv")
    assert code == 0 and val_nll(out) > 20, out
    code, _, out = _run(capsys, *base, "--steps", "3000", "--patience", "1", "--lr", "3e-2")
    steps = int(out.split(" steps (")[0].split(" in ")[-1])
    assert code == 0 and steps < 3000, out
    code, _, _ = _run(capsys, *base, "--steps", "20", "--weight-decay", "0.01")
    assert code == 0
    assert "--val-fraction splits the data; with --val every row" in _error(
        capsys, *base, "--val", tmp_path / "same.csv", "--val-fraction", "0.2"
    )
    assert "weight_decay must be a finite number >= 0" in _error(
        capsys, *base, "--weight-decay", "-1"
    )
    df[["a", "g"]].to_csv(tmp_path / "narrow.csv", index=False)
    assert "narrow.csv: no column(s) 'b'" in _error(
        capsys, *base, "--val", tmp_path / "narrow.csv"
    )


def test_model_options_reach_the_factory(capsys, table, tmp_path) -> None:
    import nfkit as nf

    model = tmp_path / "o.pt"
    options = ["--option", "bins=6", "--option", "orders=random", "--option", "batch_norm=true"]
    fast = ["--steps", "3", "--transforms", "2", "--hidden", "8", "-q"]
    code, _, _ = _run(capsys, "fit", table / "data.csv", "--out", model, *fast, *options)
    inner = nf.load(model).config["flow"]
    assert code == 0 and (inner["bins"], inner["orders"], inner["batch_norm"]) == (
        6,
        "random",
        True,
    )
    data = table / "data.csv"
    for option, message in [
        ("bogus=1", "nf.models.NSF: got an unexpected keyword argument 'bogus'"),
        ("bins=2.5", "bins must be an integer >= 1, got 2.5"),
        ("context=2", "'context' is set by nfkit"),
        ("hidden=[8]", "'hidden' has its own flag: --hidden"),
        ("bins", "expected NAME=VALUE like bins=16, got 'bins'"),
    ]:
        assert message in _error(capsys, "fit", data, "--out", model, *fast, "--option", option)
    twice = ["--option", "bins=4", "--option", "bins=5"]
    assert "--option bins is given more than once" in _error(capsys, "fit", data, *fast, *twice)


def test_info_describes_a_saved_model(capsys, table) -> None:
    import json

    import nfkit as nf

    model = table / "info-cond.pt"
    assert _run(capsys, "fit", table / "data.csv", "--given", "g", "--out", model, *FAST)[0] == 0
    code, out, _ = _run(capsys, "info", model)
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].startswith(f"{model}: MAF(features=2, context=1, transforms=1")
    assert "  models: a, b given g" in lines
    count = sum(p.numel() for p in nf.load(model).parameters())
    assert f"  parameters: {count:,} (float32)" in lines
    code, out, _ = _run(capsys, "info", model, "--json")
    shown = json.loads(out)
    assert code == 0 and shown["config"] == nf.load(model).config
    assert shown["nfkit_version"] == nf.__version__ and shown["training"]["seed"] == 0
    image = table / "glow.pt"
    nf.save(nf.models.Glow((1, 4, 4), levels=1, steps=1, hidden=(4,)), image)
    code, out, _ = _run(capsys, "info", image)
    assert code == 0 and "event shape: (1, 4, 4) (not a table model)" in out
    assert "no such file" in _error(capsys, "info", table / "nope.pt")
    assert "is a text file (a table?), not an nfkit model" in _error(
        capsys, "info", table / "data.csv"
    )


def _error(capsys, *argv) -> str:
    code, _, err = _run(capsys, *argv)
    assert code != 0
    assert err.startswith("nfkit: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def test_failure_modes(capsys, table, tmp_path) -> None:
    names = "".join(f"{i},name{i}\n" for i in range(30))  # an identifier, not categories
    (tmp_path / "text.csv").write_text("a,name\n" + names)
    (tmp_path / "nan.csv").write_text("a,b\n1,2\n,3\n4,5\n")
    (tmp_path / "other.csv").write_text("u,v\n1,2\n3,4\n")
    (tmp_path / "junk.pt").write_text("not a model")
    model = table / "m.pt"
    if not model.exists():
        _run(capsys, "fit", table / "data.csv", "--out", model, *FAST)
    assert "nope.csv: no such file" in _error(capsys, "fit", tmp_path / "nope.csv")
    assert "column 'name' has 30 distinct text values in 30 rows, too many for categories" in (
        _error(capsys, "fit", tmp_path / "text.csv")
    )
    assert "missing values in column(s) 'a' (1)" in _error(capsys, "fit", tmp_path / "nan.csv")
    data = table / "data.csv"
    assert "data.csv is a table and " in _error(capsys, "score", data, model)
    assert "the order is nfkit score MODEL DATA" in _error(capsys, "score", data, model)
    assert "the order is nfkit compare DATA MODEL" in _error(capsys, "compare", model, data)
    assert "unknown model 'foo'" in _error(capsys, "fit", table / "data.csv", "--model", "foo")
    assert "--given column(s) 'zz' not found" in _error(
        capsys, "fit", table / "data.csv", "--given", "zz"
    )
    assert "no column(s) 'a', 'b', 'g'" in _error(capsys, "score", model, tmp_path / "other.csv")
    assert "'" + str(
        tmp_path / "junk.pt"
    ) + "' is a text file (a table?), not an nfkit model" in _error(
        capsys, "score", tmp_path / "junk.pt", table / "data.csv"
    )
    assert "--resume continues from --checkpoint PATH" in _error(
        capsys, "fit", table / "data.csv", "--resume"
    )
    same = ["--checkpoint", tmp_path / "m.pt", "--out", tmp_path / "m.pt"]
    assert f"--out {tmp_path / 'm.pt'} is also the --checkpoint; writing it would replace it" in (
        _error(capsys, "fit", table / "data.csv", *same)
    )
    # an output that is one of the command's inputs would replace it: refused, inputs intact
    data = table / "data.csv"
    before = (data.read_bytes(), model.read_bytes())
    assert "is also the data" in _error(capsys, "fit", data, "--out", data)
    assert "is also the data" in _error(capsys, "fit", data, "--checkpoint", data)
    assert "is also the model" in _error(capsys, "sample", model, "-n", "3", "-o", model)
    assert "is also the data" in _error(capsys, "score", model, data, "-o", data)
    assert "is also the model" in _error(capsys, "score", model, data, "-o", model)
    assert "is also the --data" in _error(capsys, "plot", model, "--data", data, "-o", data)
    assert (data.read_bytes(), model.read_bytes()) == before
    assert "is a model file (nf.save), not an nfkit checkpoint" in _error(
        capsys, "fit", table / "data.csv", "--checkpoint", model, "--out", tmp_path / "n.pt"
    )
    (tmp_path / "file").write_text("not a folder")
    assert "cannot write '" + str(tmp_path / "file" / "s.csv") + "'" in _error(
        capsys, "sample", model, "-n", "3", "-o", tmp_path / "file" / "s.csv"
    )
    assert "'a' is given twice in 'a=1,a=2'" in _error(
        capsys, "sample", model, "-n", "2", "--given", "a=1,a=2"
    )
    assert "argument --device: 'cudax' is not a torch device" in _error(
        capsys, "fit", table / "data.csv", "--device", "cudax"
    )
    assert "junk.pt" in _error(capsys, "sample", tmp_path / "junk.pt", "-n", "3")
    # an output format nfkit does not write is refused before the model is even read
    assert "s.xlsx: unknown table file type '.xlsx'" in _error(
        capsys, "sample", tmp_path / "junk.pt", "-n", "3", "-o", tmp_path / "s.xlsx"
    )
    assert "only text tables are read and written compressed, not .npy" in _error(
        capsys, "score", tmp_path / "junk.pt", data, "-o", tmp_path / "s.npy.gz"
    )
    assert not (tmp_path / "s.xlsx").exists()
    assert "argument --steps" in _error(capsys, "fit", table / "data.csv", "--steps", "x")
    assert "-n" in _error(capsys, "sample", model)
    assert "invalid choice" in _error(capsys, "frobnicate")
    assert "not conditional" in _error(capsys, "sample", model, "-n", "2", "--given", "a=1")


def test_demo(capsys, tmp_path) -> None:
    out = tmp_path / "demo"
    code, stdout, _ = _run(
        capsys, "demo", "--out", out, "-n", "400", "--steps", "10", "-q", "--hidden", "8"
    )
    assert code == 0 and f"to {out}/" in stdout
    for name in (
        "model.pt",
        "density.png",
        "layers.png",
        "history.png",
        "data.csv",
        "samples.csv",
    ):
        assert (out / name).stat().st_size > 0, name
    # both --steps and --epochs: refused before anything is written (data.csv was left)
    other = tmp_path / "other"
    assert "give --steps or --epochs, not both" in _error(
        capsys, "demo", "--out", other, "--steps", "5", "--epochs", "1"
    )
    assert not other.exists()


@pytest.mark.parametrize(
    ("raised", "code", "message"),
    [
        (
            RuntimeError("boom\nsecond line"),
            1,
            "nfkit: error: internal error (RuntimeError: boom second line)\n",
        ),
        (KeyboardInterrupt(), 130, "nfkit: interrupted\n"),
        (BrokenPipeError(), 0, ""),  # `nfkit sample ... | head`: the reader left, not an error
    ],
)
def test_unexpected_failures_are_one_line(capsys, monkeypatch, raised, code, message) -> None:
    import nfkit.cli

    def fail(args) -> None:
        raise raised

    monkeypatch.setattr(nfkit.cli, "cmd_sample", fail)
    monkeypatch.delenv("NFKIT_DEBUG", raising=False)
    assert main(["sample", "m.pt", "-n", "3"]) == code
    assert capsys.readouterr().err == message


def test_bounds_keep_samples_inside_the_supports(capsys, tmp_path) -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "share": rng.uniform(0.01, 0.99, 400),
            "price": rng.lognormal(3, 1, 400),
            "z": rng.normal(size=400),
        }
    )
    df.to_csv(tmp_path / "b.csv", index=False)
    model = tmp_path / "b.pt"
    code, _, _ = _run(
        capsys, "fit", tmp_path / "b.csv", "--bounds", "share=0:1,price=0:", "--out", model, *FAST
    )
    assert code == 0
    code, out, _ = _run(capsys, "info", model)
    assert code == 0 and "bounds: 0 < share < 1, 0 < price (zero probability outside)" in out
    code, out, _ = _run(capsys, "sample", model, "-n", "500", "--seed", "0")
    draws = pd.read_csv(pd.io.common.StringIO(out))
    assert code == 0 and draws["share"].between(0, 1, inclusive="neither").all()
    assert (draws["price"] > 0).all()
    assert "--bounds column(s) 'nope' are not modelled columns" in _error(
        capsys, "fit", tmp_path / "b.csv", "--bounds", "nope=0:"
    )
    assert "column 'share' has values outside its bounds (0, 0.5)" in _error(
        capsys, "fit", tmp_path / "b.csv", "--bounds", "share=0:0.5"
    )
    assert "expected NAME=LOW:HIGH pairs" in _error(
        capsys, "fit", tmp_path / "b.csv", "--bounds", "share"
    )


def test_integer_columns_are_modelled_as_discrete(capsys, tmp_path) -> None:
    rng = np.random.default_rng(0)
    age = rng.integers(18, 80, 400)
    df = pd.DataFrame(
        {"age": age, "kids": rng.poisson(1.5, 400), "income": rng.lognormal(10, 0.5, 400)}
    )
    df.to_csv(tmp_path / "t.csv", index=False)
    model = tmp_path / "t.pt"
    code, _, err = _run(
        capsys, "fit", tmp_path / "t.csv", "--bounds", "kids=0:,age=18:79", "--out", model, "--steps", "20",
        "--transforms", "1", "--hidden", "8",
    )  # fmt: skip
    assert code == 0 and "column(s) age, kids hold whole numbers only: modelled as discrete" in err
    assert "have no --bounds" not in err
    code, _, err = _run(capsys, "fit", tmp_path / "t.csv", "--bounds", "kids=0:", "--out",
                        tmp_path / "h.pt", "--steps", "3", "--hidden", "8")  # fmt: skip
    assert code == 0 and "discrete column(s) age have no --bounds" in err
    assert f"the data span --bounds age={age.min()}:{age.max()})" in err
    code, out, _ = _run(capsys, "info", model)
    assert "bounds: 18 <= age <= 79, 0 <= kids" in out and "discrete: age, kids" in out
    code, out, _ = _run(capsys, "sample", model, "-n", "300", "--seed", "0")
    draws = pd.read_csv(pd.io.common.StringIO(out))
    assert code == 0 and draws["age"].dtype == np.int64 and draws["kids"].dtype == np.int64
    assert draws["age"].between(18, 79).all() and (draws["kids"] >= 0).all()
    assert draws["income"].dtype == np.float64
    code, out, _ = _run(capsys, "score", model, tmp_path / "t.csv")
    scores = pd.read_csv(pd.io.common.StringIO(out))["log_density"]
    assert code == 0 and np.isfinite(scores).all()
    code, out, _ = _run(capsys, "score", model, tmp_path / "t.csv", "--draws", "256")
    finer = pd.read_csv(pd.io.common.StringIO(out))["log_density"]
    assert code == 0 and 0 < np.abs(finer - scores).max() < 0.05
    df.assign(age=df["age"] + 0.5).to_csv(tmp_path / "half.csv", index=False)
    assert "discrete x column 'age' has non-integer values (e.g. 70.5)" in _error(
        capsys, "score", model, tmp_path / "half.csv"
    )
    code, _, err = _run(
        capsys, "fit", tmp_path / "t.csv", "--discrete", "none", "--out", tmp_path / "c.pt", *FAST
    )
    assert code == 0 and "discrete" not in err
    code, out, _ = _run(capsys, "info", tmp_path / "c.pt")
    described = [line for line in out.splitlines() if not line.startswith("  training: ")]
    assert "discrete" not in "\n".join(described) and "--discrete none" in out  # (the record)
    assert "--draws is for models with discrete columns" in _error(
        capsys, "score", tmp_path / "c.pt", tmp_path / "t.csv", "--draws", "4"
    )
    assert "--discrete column(s) 'nope' are not modelled columns" in _error(
        capsys, "fit", tmp_path / "t.csv", "--discrete", "nope"
    )
    assert "discrete x column 'income' has non-integer values" in _error(
        capsys, "fit", tmp_path / "t.csv", "--discrete", "income"
    )


def test_text_columns_are_categories(capsys, tmp_path) -> None:
    rng = np.random.default_rng(1)
    region = rng.choice(["north", "south", "east"], 600, p=[0.5, 0.3, 0.2])
    level = {"north": 0.0, "south": 2.0, "east": 4.0}
    df = pd.DataFrame({"region": region, "y": [level[r] for r in region] + rng.normal(size=600)})
    df.to_csv(tmp_path / "r.csv", index=False)
    model = tmp_path / "r.pt"
    code, _, err = _run(capsys, "fit", tmp_path / "r.csv", "--out", model, "--steps", "300",
                        "--transforms", "2", "--hidden", "16", "--seed", "0")  # fmt: skip
    assert code == 0 and "text column(s) region (3) read as categories" in err
    code, out, _ = _run(capsys, "info", model)
    assert "categories of region: east, north, south (codes 0-2)" in out
    assert "discrete: region" in out and "bounds" not in out
    code, out, _ = _run(capsys, "sample", model, "-n", "2000", "--seed", "0")
    draws = pd.read_csv(pd.io.common.StringIO(out))
    assert code == 0 and set(draws["region"]) <= {"north", "south", "east"}
    share = draws["region"].value_counts(normalize=True)
    assert abs(share["north"] - 0.5) < 0.08 and abs(share["east"] - 0.2) < 0.08
    means = draws.groupby("region")["y"].mean()  # the other column follows its category
    assert means["north"] < means["south"] - 1 < means["east"] - 2
    code, out, _ = _run(capsys, "score", model, tmp_path / "r.csv", "--with-data")
    scored = pd.read_csv(pd.io.common.StringIO(out))
    assert code == 0 and len(scored) == 600 and np.isfinite(scored["log_density"]).all()
    assert scored["region"].tolist() == df["region"].tolist()  # labels, not codes
    code, _, _ = _run(
        capsys, "plot", model, "--data", tmp_path / "r.csv", "-o", tmp_path / "r.png"
    )
    assert code == 0 and (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    df.assign(region="west").to_csv(tmp_path / "w.csv", index=False)
    assert "column 'region' has the category 'west', which the model was not fitted on" in (
        _error(capsys, "score", model, tmp_path / "w.csv")
    )
    assert "--bounds column(s) 'region' hold categories" in _error(
        capsys, "fit", tmp_path / "r.csv", "--bounds", "region=0:5"
    )
    # header-less with a word in its first row: that row is the header; the error says so
    df.to_csv(tmp_path / "bare.csv", index=False, header=False)
    message = _error(capsys, "score", model, tmp_path / "bare.csv")
    assert "no column(s) 'region', 'y'" in message and f"(its first row, {df.region[0]}, " in (
        message
    ) and "was read as a header, as it holds text" in message  # fmt: skip
    df.rename(columns={"y": "z"}).to_csv(tmp_path / "z.csv", index=False)  # a real header
    message = _error(capsys, "score", model, tmp_path / "z.csv")
    assert "no column(s) 'y'" in message and "read as a header" not in message
    # a category column as the context: p(y | region), sampled given a label
    conditional = tmp_path / "c.pt"
    code, _, _ = _run(capsys, "fit", tmp_path / "r.csv", "--given", "region", "--out", conditional,
                      *FAST)  # fmt: skip
    code, out, _ = _run(capsys, "sample", conditional, "-n", "3", "--given", "region=east")
    assert code == 0 and list(pd.read_csv(pd.io.common.StringIO(out))["region"]) == ["east"] * 3
    assert "--given region='west' is not a category of the model" in _error(
        capsys, "sample", conditional, "-n", "3", "--given", "region=west"
    )
    code, out, _ = _run(capsys, "score", conditional, tmp_path / "r.csv")
    assert code == 0


def test_compare_ranks_models_on_held_out_rows(capsys, table, tmp_path) -> None:
    rng = np.random.default_rng(5)
    g = rng.normal(size=400)
    held_out = pd.DataFrame(
        {"a": g + 0.2 * rng.normal(size=400), "b": rng.normal(size=400), "g": g}
    )
    held_out.to_csv(tmp_path / "test.csv", index=False)
    good, poor = tmp_path / "good.pt", tmp_path / "poor.pt"
    code, _, _ = _run(capsys, "fit", table / "data.csv", "--out", good, "--steps", "300",
                      "--transforms", "2", "--hidden", "16", "--model", "maf", "-q")  # fmt: skip
    code, _, _ = _run(capsys, "fit", table / "data.csv", "--out", poor, "--steps", "2",
                      "--transforms", "1", "--hidden", "4", "--model", "maf", "-q")  # fmt: skip
    code, out, _ = _run(capsys, "compare", tmp_path / "test.csv", poor, good)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["model", "rows", "log_likelihood", "sem", "difference",
                                "difference_sem"]  # fmt: skip
    assert lines[1].split()[0].endswith("good.pt") and lines[2].split()[0].endswith("poor.pt")
    diff, paired = (float(v) for v in lines[2].split()[4:6])
    assert diff > 3 * paired > 0
    code, _, _ = _run(
        capsys, "compare", tmp_path / "test.csv", good, poor, "-o", tmp_path / "r.csv"
    )
    ranking = pd.read_csv(tmp_path / "r.csv")
    assert code == 0 and abs(ranking["difference"].iloc[1] - diff) < 1e-3
    conditional = tmp_path / "cond.pt"
    _run(capsys, "fit", table / "data.csv", "--given", "g", "--out", conditional, *FAST)
    assert "differ in what each models (a, b, g against a, b)" in _error(
        capsys, "compare", tmp_path / "test.csv", good, conditional
    )
    assert "is given more than once" in _error(
        capsys, "compare", tmp_path / "test.csv", good, good
    )
    # the same columns in another order: by name fine, a header-less table refused (each
    # model read it by position in its own order: one "lost" by 229 nats, exit 0)
    pd.read_csv(table / "data.csv")[["g", "b", "a"]].to_csv(tmp_path / "gba.csv", index=False)
    reordered = tmp_path / "gba.pt"
    _run(capsys, "fit", tmp_path / "gba.csv", "--out", reordered, *FAST)
    code, _, _ = _run(capsys, "compare", tmp_path / "test.csv", good, reordered)
    assert code == 0
    np.save(tmp_path / "test.npy", held_out.to_numpy())
    assert "has no column names, and" in _error(
        capsys, "compare", tmp_path / "test.npy", good, reordered
    )


def test_fit_by_flow_matching(capsys, table) -> None:
    """--objective flow-matching trains ffjord (the default model with it); the summary gives
    the validation flow-matching loss that picked the weights and the validation NLL."""
    model = table / "fm.pt"
    argv = ["fit", table / "data.csv", "--out", model, "--steps", "40", "--hidden", "8"]
    code, out, err = _run(capsys, *argv, "--objective", "flow-matching", "--seed", "0")
    assert code == 0, err
    summary = [line for line in err.splitlines() if line.startswith("trained")]
    assert summary and summary[0].startswith("trained FFJORD on 300 rows in 40 steps (val ")
    assert "flow-matching loss" in summary[0] and " nats, " in summary[0]
    code, out, _ = _run(capsys, "score", model, table / "data.csv")
    scores = np.array(out.split()[1:], dtype=float)
    assert code == 0 and len(scores) == 300 and np.isfinite(scores).all()
    code, _, err = _run(capsys, *argv, "--objective", "flow-matching", "--model", "maf")
    assert code == 1 and "--model ffjord (the default with it), not 'maf'" in err
    assert err.count("\n") == 1, err
    code, _, err = _run(capsys, *argv, "--objective", "flow_matching", "--angles", "a")
    assert code == 1 and "--objective flow-matching trains ffjord" in err
    code, _, err = _run(capsys, *argv, "--objective", "nll")
    assert code == 2 and "expected likelihood or flow-matching, got 'nll'" in err


def test_coverage_of_a_posterior(capsys, tmp_path) -> None:
    """nfkit coverage MODEL DATA: the coverage at each level and a verdict; --plot writes the
    figure; an unconditional model is checked on its rows; swapped arguments are one line."""
    rng = np.random.default_rng(0)
    theta = rng.normal(size=400)
    sims = pd.DataFrame(theta[:, None] + rng.normal(size=(400, 3)), columns=["x0", "x1", "x2"])
    sims.insert(0, "theta", theta)
    sims.to_csv(tmp_path / "sims.csv", index=False)
    sims[:100].to_csv(tmp_path / "held.csv", index=False)
    model = tmp_path / "post.pt"
    fit = ["fit", tmp_path / "sims.csv", "--steps", "30", "--hidden", "8", "-q", "--seed", "0"]
    assert _run(capsys, *fit, "--given", "x0,x1,x2", "--out", model)[0] == 0
    figure = tmp_path / "coverage.png"
    code, out, err = _run(capsys, "coverage", model, tmp_path / "held.csv", "--samples", "50",
                          "--seed", "0", "--plot", figure)  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"coverage of {model} on 100 rows of {tmp_path / 'held.csv'}, 50 draws each"
    assert lines[1] == "level  coverage" and lines[2].startswith("0.1 ")
    assert len(lines) == 2 + 11 + 2 and lines[-1] == f"wrote {figure}" and figure.exists()
    assert lines[-2].startswith("max deviation ") and "(band 0.168; marginal ranks " in lines[-2]
    plain = tmp_path / "plain.pt"  # an unconditional model: its calibration on held-out rows
    assert _run(capsys, *fit, "--out", plain)[0] == 0
    code, out, err = _run(capsys, "coverage", plain, tmp_path / "held.csv", "--samples", "50")
    assert code == 0 and out.startswith(f"coverage of {plain} on 100 rows"), err
    code, _, err = _run(capsys, "coverage", tmp_path / "held.csv", model)
    assert code == 1 and "the order is nfkit coverage MODEL DATA" in err


def test_tables_float32_would_get_wrong(capsys, tmp_path) -> None:
    """Columns in another order than the model's (pandas hands out a negatively strided view);
    whole numbers beyond float32's 2**24 and values far above their spread (the model then
    computes in float64); values inside a bound that float32 rounds onto it, and samples that
    would round onto it; repeated options, which add up."""
    rng = np.random.default_rng(0)
    base = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300)})
    base.to_csv(tmp_path / "ab.csv", index=False)
    base[["b", "a"]].to_csv(tmp_path / "ba.csv", index=False)
    model = tmp_path / "ab.pt"
    assert _run(capsys, "fit", tmp_path / "ab.csv", "--out", model, *FAST)[0] == 0
    scores = []
    for name in ("ab.csv", "ba.csv"):
        code, out, _ = _run(capsys, "score", model, tmp_path / name)
        assert code == 0
        scores.append(pd.read_csv(pd.io.common.StringIO(out))["log_density"])
    pd.testing.assert_series_equal(scores[0], scores[1])

    ids = pd.DataFrame({"k": 30_000_001 + rng.integers(0, 20, 400)})  # float32: even numbers
    ids.to_csv(tmp_path / "k.csv", index=False)
    code, _, err = _run(capsys, "fit", tmp_path / "k.csv", "--out", tmp_path / "k.pt",
                        "--steps", "25", "--hidden", "8", "--seed", "0")  # fmt: skip
    assert code == 0 and "float32 would blur column(s) k" in err
    code, out, _ = _run(capsys, "info", tmp_path / "k.pt")
    assert "(float64)" in out
    code, out, _ = _run(capsys, "sample", tmp_path / "k.pt", "-n", "400", "--seed", "0")
    draws = pd.read_csv(pd.io.common.StringIO(out))["k"]
    assert code == 0 and (draws % 2 == 1).mean() > 0.2  # odd numbers too
    offset = pd.DataFrame({"t": 1e12 + 1000 * rng.normal(size=300)})  # not constant
    offset.to_csv(tmp_path / "t.csv", index=False)
    assert _run(capsys, "fit", tmp_path / "t.csv", "--out", tmp_path / "t.pt", *FAST)[0] == 0

    share = pd.DataFrame({"share": rng.beta(0.3, 0.3, 300).clip(1e-6, 1 - 1e-6)})
    share.to_csv(tmp_path / "s.csv", index=False)
    bounded = tmp_path / "s.pt"
    code, _, _ = _run(capsys, "fit", tmp_path / "s.csv", "--bounds", "share=0:1", "--out",
                      bounded, "--steps", "200", "--hidden", "16", "--seed", "0")  # fmt: skip
    code, out, _ = _run(capsys, "sample", bounded, "-n", "20000", "--seed", "0",
                        "-o", tmp_path / "draws.csv")  # fmt: skip
    draws = pd.read_csv(tmp_path / "draws.csv")["share"]
    assert code == 0 and draws.between(0, 1, inclusive="neither").all()
    assert _run(capsys, "score", bounded, tmp_path / "draws.csv")[0] == 0  # none refused
    pd.DataFrame({"share": [0.999999999, 1e-12]}).to_csv(tmp_path / "near.csv", index=False)
    code, out, _ = _run(capsys, "score", bounded, tmp_path / "near.csv")  # float32 model
    assert code == 0 and np.isfinite(pd.read_csv(pd.io.common.StringIO(out))["log_density"]).all()
    share.iloc[0] = 0.999999999  # inside (0, 1), but 1 in float32: fitted in float64
    share.to_csv(tmp_path / "s2.csv", index=False)
    code, _, err = _run(capsys, "fit", tmp_path / "s2.csv", "--bounds", "share=0:1", "--out",
                        tmp_path / "s2.pt", *FAST[:-3])  # fmt: skip
    assert code == 0 and "float32 would blur column(s) share" in err

    three = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    three["c"] = three["a"] + three["b"] + 0.1 * rng.normal(size=200)
    three.to_csv(tmp_path / "abc.csv", index=False)
    both = tmp_path / "both.pt"
    code, out, _ = _run(capsys, "fit", tmp_path / "abc.csv", "--given", "a", "--given", "b",
                        "--bounds", "c=-50:", "--bounds", "c=-60:", "--out", both, *FAST)  # fmt: skip
    assert code != 0  # c twice
    code, out, _ = _run(capsys, "fit", tmp_path / "abc.csv", "--given", "a", "--given", "b",
                        "--out", both, *FAST)  # fmt: skip
    assert code == 0 and "the model of c given a, b" in out
    code, out, _ = _run(capsys, "sample", both, "-n", "2", "--given", "a=1", "--given", "b=2")
    assert code == 0 and pd.read_csv(pd.io.common.StringIO(out))[["a", "b"]].values.tolist() == [
        [1.0, 2.0], [1.0, 2.0]]  # fmt: skip
    assert "--given names 'a' twice" in _error(
        capsys, "fit", tmp_path / "abc.csv", "--given", "a,a"
    )
    assert "--given names no column: ','" in _error(
        capsys, "fit", tmp_path / "abc.csv", "--given", ","
    )


def test_given_category_labels_keep_their_text(capsys, tmp_path) -> None:
    """A category label that looks like a number (a zip code, 02134) is matched as written."""
    rng = np.random.default_rng(0)
    zips = rng.choice(["02134", "10001", "A1B2"], 300)
    df = pd.DataFrame({"zip": zips, "y": rng.normal(size=300)})
    df.to_csv(tmp_path / "z.csv", index=False)
    model = tmp_path / "z.pt"
    code, _, _ = _run(capsys, "fit", tmp_path / "z.csv", "--given", "zip", "--out", model, *FAST)
    assert code == 0
    code, out, _ = _run(capsys, "sample", model, "-n", "2", "--given", "zip=02134")
    (tmp_path / "z2.csv").write_text("zip,y,id\n02134,0.1,a\n10001,0.2,b\n")  # labels look numeric
    code2, scored, _ = _run(capsys, "score", model, tmp_path / "z2.csv", "--with-data")
    scored = pd.read_csv(pd.io.common.StringIO(scored), dtype={"zip": str, "id": str})
    assert code2 == 0 and scored["zip"].tolist() == ["02134", "10001"]  # as written, not 2134
    assert scored["id"].tolist() == ["a", "b"] and np.isfinite(scored["log_density"]).all()
    assert code == 0 and pd.read_csv(pd.io.common.StringIO(out), dtype=str)["zip"].tolist() == [
        "02134", "02134"]  # fmt: skip


def test_model_and_program_paths_are_checked_before_any_work(capsys, table, tmp_path) -> None:
    data = table / "data.csv"
    assert "--out " + str(tmp_path) + " is a folder" in _error(
        capsys, "fit", data, "--out", tmp_path
    )
    assert "expected a .pt or .pth file name" in _error(
        capsys, "fit", data, "--out", tmp_path / "model.csv"
    )
    (tmp_path / "keep.csv").write_text("a,b\n1,2\n")
    assert "--samples must be at least 20 draws per row" in _error(
        capsys, "coverage", table / "m.pt", data, "--samples", "1"
    )
    assert "-n must be at least 100 data points, got 5" in _error(
        capsys, "demo", "--out", tmp_path / "d", "-n", "5"
    )
    assert not (tmp_path / "d").exists()
    assert "expected a .pt2 file name" in _error(
        capsys, "export", table / "m.pt", tmp_path / "keep.csv"
    )
    assert (tmp_path / "keep.csv").read_text() == "a,b\n1,2\n"
    code, _, err = _run(capsys, "fit", data, "--device", "meta")
    assert code == 2 and "device 'meta' holds no values" in err


def test_npy_output_is_refused_up_front_for_text(capsys, table, tmp_path) -> None:
    data, model = table / "data.csv", tmp_path / "m.pt"
    assert _run(capsys, "fit", data, "--out", model, *FAST)[0] == 0
    assert "the ranking names the models; use .csv" in _error(
        capsys, "compare", data, model, "-o", tmp_path / "r.npy"
    )
    assert _run(capsys, "score", model, data, "--with-data", "-o", tmp_path / "s.npy")[0] == 0
    labelled = pd.DataFrame({"kind": ["x", "y"] * 100, "v": np.arange(200.0)})
    labelled.to_csv(tmp_path / "k.csv", index=False)
    assert _run(capsys, "fit", tmp_path / "k.csv", "--out", tmp_path / "k.pt", *FAST)[0] == 0
    for argv in (("sample", tmp_path / "k.pt", "-n", "3"),
                 ("score", tmp_path / "k.pt", tmp_path / "k.csv", "--with-data")):  # fmt: skip
        assert "a .npy file holds numbers only" in _error(capsys, *argv, "-o", tmp_path / "o.npy")
    assert not (tmp_path / "o.npy").exists()


def test_score_can_skip_incomplete_rows(capsys, table, tmp_path) -> None:
    model = tmp_path / "m.pt"
    assert _run(capsys, "fit", table / "data.csv", "--out", model, *FAST)[0] == 0
    (tmp_path / "inc.csv").write_text("a,b,g,id\n0.1,0.2,0,x\n,0.3,0,y\n1,1,1,z\n")
    assert "missing values in column(s) 'a' (1); --skip-incomplete scores those rows NaN" in (
        _error(capsys, "score", model, tmp_path / "inc.csv")
    )
    code, out, err = _run(capsys, "score", model, tmp_path / "inc.csv", "--skip-incomplete",
                          "--with-data")  # fmt: skip
    scored = pd.read_csv(pd.io.common.StringIO(out))
    assert code == 0 and "1 incomplete row(s) scored NaN" in err
    assert scored["id"].tolist() == ["x", "y", "z"]
    assert np.isnan(scored["log_density"][1]) and np.isfinite(scored["log_density"][[0, 2]]).all()
    full = pd.read_csv(tmp_path / "inc.csv").drop(index=1).drop(columns="id")
    full.to_csv(tmp_path / "full.csv", index=False)
    code, out, _ = _run(capsys, "score", model, tmp_path / "full.csv")
    expected = pd.read_csv(pd.io.common.StringIO(out))["log_density"].to_numpy()
    np.testing.assert_allclose(scored["log_density"][[0, 2]].to_numpy(), expected)


def test_score_names_a_row_outside_the_support_or_scores_it_minus_inf(capsys, tmp_path) -> None:
    """The first impossible row is named (its number in the table, how many there are); with
    ``--impossible=-inf`` each is scored -inf and the others as usual."""
    rng = np.random.default_rng(0)
    pd.DataFrame({"price": rng.gamma(2, size=300), "qty": rng.poisson(3, size=300)}).to_csv(
        tmp_path / "train.csv", index=False
    )
    (tmp_path / "new.csv").write_text("price,qty\n1.0,1\n-5.0,2\n2.0,3.5\n0.5,2\n")
    model = tmp_path / "m.pt"
    assert _run(capsys, "fit", tmp_path / "train.csv", "--bounds", "price=0:", "--out", model,
                *FAST)[0] == 0  # fmt: skip
    error = _error(capsys, "score", model, tmp_path / "new.csv")
    assert "new.csv: row 2 (of 2 outside the model's support): " in error
    assert "column 'price' has values outside the support" in error
    assert "--impossible=-inf scores such rows -inf" in error
    code, out, err = _run(capsys, "score", model, tmp_path / "new.csv", "--impossible=-inf")
    scores = pd.read_csv(pd.io.common.StringIO(out))["log_density"].to_numpy()
    assert code == 0 and "2 row(s) outside the model's support scored -inf" in err
    assert np.isneginf(scores[[1, 2]]).all() and np.isfinite(scores[[0, 3]]).all()
    # with --out, the summary line's mean is over the finite rows (it was -inf)
    out_file = tmp_path / "scores.csv"
    code, out, _ = _run(capsys, "score", model, tmp_path / "new.csv", "--impossible=-inf",
                        "--out", out_file)  # fmt: skip
    mean = pd.read_csv(out_file)["log_density"].to_numpy()[[0, 3]].mean()
    assert code == 0 and f"(mean {mean:.4f} nats of 2 finite row(s))" in out


def test_resume_refuses_another_seed(capsys, table, tmp_path) -> None:
    """As nf.fit refuses it: the checkpoint's batch order and noise come from its seed."""
    ckpt = tmp_path / "ck.pt"
    run = ["fit", table / "data.csv", "--checkpoint", ckpt, "--out", tmp_path / "m.pt", *FAST]
    assert _run(capsys, *run, "--seed", "3")[0] == 0
    assert "was made with --seed 3; got --seed 4: resume with its seed" in _error(
        capsys, *run, "--resume", "--seed", "4"
    )
    assert _run(capsys, *run, "--resume", "--seed", "3")[0] == 0  # its own seed


def test_fit_drops_the_named_columns(capsys, tmp_path) -> None:
    """``--drop id,name``: identifiers and free text are left out of the model (scored tables
    may keep them); unknown names and clashes with --given are one line."""
    rng = np.random.default_rng(0)
    pd.DataFrame({"id": np.arange(300), "name": [f"n{i}" for i in range(300)],
                  "a": rng.normal(size=300), "b": rng.normal(size=300)}).to_csv(
        tmp_path / "ids.csv", index=False)  # fmt: skip
    model = tmp_path / "m.pt"
    assert _run(capsys, "fit", tmp_path / "ids.csv", "--drop", "id,name", "--out", model,
                *FAST)[0] == 0  # fmt: skip
    from nfkit.io import load_with_header

    flow, header = load_with_header(model)
    assert flow.config["columns"] == ["a", "b"] and header["training"]["dropped"] == "id,name"
    code, out, _ = _run(capsys, "score", model, tmp_path / "ids.csv")
    assert code == 0 and len(pd.read_csv(pd.io.common.StringIO(out))) == 300
    assert "--drop column(s) 'idx' not found; columns are 'id', 'name', 'a', 'b'" in _error(
        capsys, "fit", tmp_path / "ids.csv", "--drop", "idx", "--out", model, *FAST
    )
    assert "--drop column(s) 'a' are --given too" in _error(
        capsys, "fit", tmp_path / "ids.csv", "--drop", "a,name,id", "--given", "a", "--out",
        model, *FAST,
    )  # fmt: skip


def test_repeated_column_options_add_up_and_seeds_are_in_range(capsys, tmp_path) -> None:
    """``--drop a --drop b`` and ``--discrete a --discrete b`` add up (the last one won);
    ``--impossible neg-inf`` spells -inf; a seed outside 0 … 2**32 - 1 is refused (torch
    reduced it modulo 2**32)."""
    rng = np.random.default_rng(0)
    pd.DataFrame({"id": np.arange(200), "name": [f"n{i}" for i in range(200)],
                  "k": rng.poisson(3, 200), "j": rng.poisson(5, 200),
                  "a": rng.normal(size=200)}).to_csv(tmp_path / "t.csv", index=False)  # fmt: skip
    model = tmp_path / "m.pt"
    code = _run(capsys, "fit", tmp_path / "t.csv", "--drop", "id", "--drop", "name",
                "--discrete", "k", "--discrete", "j", "--out", model, *FAST)[0]  # fmt: skip
    from nfkit.io import load

    flow = load(model)
    assert code == 0 and flow.config["columns"] == ["k", "j", "a"]
    assert sorted(flow.config["discrete"]) == [0, 1]
    assert "--drop names 'id' twice" in _error(
        capsys, "fit", tmp_path / "t.csv", "--drop", "id", "--drop", "id,name", "--out", model,
        *FAST,
    )  # fmt: skip
    (tmp_path / "bad.csv").write_text("id,name,k,j,a\n0,x,1.5,2,0.1\n")
    code, out, err = _run(capsys, "score", model, tmp_path / "bad.csv", "--impossible", "neg-inf")
    assert code == 0 and "1 row(s) outside the model's support scored -inf" in err
    assert "expected a seed in 0 … 4294967295, got '-1'" in _error(
        capsys, "fit", tmp_path / "t.csv", "--drop", "id,name", "--out", model, *FAST, "--seed=-1"
    )


def _piped(monkeypatch, capsys, data: str, *argv: str) -> tuple[int, str, str]:
    """``nfkit ARGV`` in this process with ``data`` on standard input."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data.encode())))
    return _run(capsys, *argv)


def test_a_table_from_standard_input(table, tmp_path, monkeypatch, capsys) -> None:
    """``-`` reads the table from standard input (a pipe); messages name it ``<stdin>``. One
    command runs through a real pipe in a new process, the others in this one."""
    data = (table / "data.csv").read_text()
    model = tmp_path / "m.pt"
    code, _, err = _piped(monkeypatch, capsys, data, "fit", "-", "--out", model, *FAST)
    assert code == 0 and model.exists(), err
    from nfkit.io import load_with_header

    assert load_with_header(model)[1]["training"]["data"] == "<stdin>"
    # a --val table from standard input is recorded as `-`, not as its deleted temporary copy
    code, _, err = _piped(
        monkeypatch, capsys, data, "fit", table / "data.csv", "--val", "-", "--out", model, *FAST
    )
    assert code == 0, err
    assert load_with_header(model)[1]["training"]["options"]["--val"] == "-"
    piped = subprocess.run([sys.executable, "-m", "nfkit", "score", model, "-"], input=data,
                           text=True, capture_output=True, timeout=300)  # fmt: skip
    code, direct, _ = _run(capsys, "score", model, table / "data.csv")
    assert piped.returncode == 0 == code and piped.stdout == direct
    code, _, err = _piped(monkeypatch, capsys, "a,b\n", "score", model, "-")
    assert code == 1 and err.startswith("nfkit: error: <stdin>: ")
    code, _, err = _piped(monkeypatch, capsys, data, "fit", "-", "--val", "-")
    assert code == 1 and "only one table can come from standard input" in err
    code, out, _ = _piped(monkeypatch, capsys, data, "coverage", model, "-", "--samples", "20")
    assert code == 0 and " rows of <stdin>, 20 draws each" in out


def test_commands_reviewed_in_session_29(capsys, table, tmp_path) -> None:
    """``demo --epochs`` ran into its default --steps ("give steps or epochs, not both"); a
    header-less table whose reader-given names x0, x1 met a model column x0 was matched by
    name ("no column 'theta'"); compare and coverage suggested --drop-missing, which they lack,
    and named no file or row for a row outside the support; info showed Python reprs of
    --bounds and --option."""
    assert _run(capsys, "demo", "--epochs", "1", "-n", "300", "--out", tmp_path / "d")[0] == 0
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"theta": rng.gamma(2.0, size=300), "x0": rng.normal(size=300)})
    frame.to_csv(tmp_path / "t.csv", index=False)
    model, other = tmp_path / "m.pt", tmp_path / "m2.pt"
    fit = ["fit", tmp_path / "t.csv", "--bounds", "theta=0:", "--option", "orders=random", *FAST]
    assert _run(capsys, *fit, "--out", model)[0] == 0
    assert _run(capsys, *fit, "--out", other, "--transforms", "2")[0] == 0
    frame[:5].to_csv(tmp_path / "named.csv", index=False)
    frame[:5].to_csv(tmp_path / "bare.csv", index=False, header=False)
    by_name = _run(capsys, "score", model, tmp_path / "named.csv")[1]
    assert _run(capsys, "score", model, tmp_path / "bare.csv")[1] == by_name  # by position
    (tmp_path / "gap.csv").write_text("theta,x0\n1.0,\n2.0,0.5\n3.0,0.1\n")
    for command in (
        ["compare", tmp_path / "gap.csv", model, other],
        ["coverage", model, tmp_path / "gap.csv"],
    ):
        error = _error(capsys, *command)
        assert error.endswith("missing values in column(s) 'x0' (1); fill or remove those rows\n")
    (tmp_path / "neg.csv").write_text("theta,x0\n1.0,0.0\n-2.0,0.5\n")
    for command in (
        ["compare", tmp_path / "neg.csv", model, other],
        ["coverage", model, tmp_path / "neg.csv"],
    ):
        assert "neg.csv: row 2 (of 1 outside the model's support): " in _error(capsys, *command)
    code, out, _ = _run(capsys, "info", model)
    assert code == 0 and "--bounds theta=0:, " in out and "--option orders=random" in out


def test_fit_weights_column(capsys, tmp_path) -> None:
    """``--weights w``: the column weights the rows and is not modelled; rows of weight 0 (here
    outliers) take no part, in the standardization either; a --val table's w weights it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    w = np.ones(400)
    x[:40] += 1000.0
    w[:40] = 0.0
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "w": w}).to_csv(tmp_path / "t.csv", index=False)
    pd.DataFrame({"a": x[40:, 0], "b": x[40:, 1]}).to_csv(tmp_path / "clean.csv", index=False)
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1]}).to_csv(tmp_path / "all.csv", index=False)
    fast = ["--steps", "60", "--transforms", "1", "--hidden", "8", "--model", "maf", "-q",
            "--seed", "0"]  # fmt: skip
    code, out, _ = _run(capsys, "fit", tmp_path / "t.csv", "--weights", "w", "--out",
                        tmp_path / "w.pt", *fast)  # fmt: skip
    assert code == 0, out
    code, out, _ = _run(capsys, "fit", tmp_path / "all.csv", "--out", tmp_path / "p.pt", *fast)
    assert code == 0, out
    code, out, _ = _run(capsys, "sample", tmp_path / "w.pt", "-n", "3")
    assert code == 0 and out.splitlines()[0] == "a,b"  # w is not a model column
    scores = {}
    for name in ("w", "p"):
        code, out, _ = _run(capsys, "score", tmp_path / f"{name}.pt", tmp_path / "clean.csv")
        assert code == 0
        scores[name] = np.mean([float(v) for v in out.split()[1:]])
    assert scores["w"] > -3.5 and scores["p"] < scores["w"] - 3, scores
    # a --val table: its w column weights the early-stopping score
    pd.DataFrame({"a": x[:80, 0], "b": x[:80, 1], "w": w[:80]}).to_csv(tmp_path / "v.csv",
                                                                       index=False)  # fmt: skip
    code, _, err = _run(capsys, "fit", tmp_path / "t.csv", "--weights", "w", "--val",
                        tmp_path / "v.csv", "--out", tmp_path / "v.pt", *fast[:-3],
                        "--seed", "0")  # fmt: skip
    assert code == 0 and "(weighted by w; 40 of them weight 0, taking no part)" in err, err
    assert float(err.split("val NLL ")[1].split()[0]) < 5  # the outliers of v.csv weigh 0
    # a row of weight 0 outside a bounded column's support: not checked (nf.fit refused it)
    pd.DataFrame({"a": np.r_[-3.0, np.abs(x[40:100, 0])], "b": x[39:100, 1],
                  "w": np.r_[0.0, w[40:100]]}).to_csv(tmp_path / "b.csv", index=False)  # fmt: skip
    code, out, err = _run(capsys, "fit", tmp_path / "b.csv", "--weights", "w", "--bounds",
                          "a=0:", "--out", tmp_path / "b.pt", *fast)  # fmt: skip
    assert code == 0, out + err


@pytest.mark.parametrize(
    ("column", "extra", "message"),
    [
        ("zz", [], "--weights column 'zz' not found; columns are 'a', 'b', 'w'"),
        ("w", ["--given", "w"], "--weights column 'w' is --given too"),
        ("neg", [], "--weights column 'neg' has 1 negative value(s) (first: -1)"),
        ("zero", [], "--weights column 'zero' is all zero"),
    ],
)
def test_fit_bad_weights_are_one_line(capsys, tmp_path, column, extra, message) -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.normal(size=50), "b": rng.normal(size=50), "w": 1.0})
    if column != "zz":
        df["neg"], df["zero"] = 1.0, 0.0
        df.loc[3, "neg"] = -1.0
        df = df if column != "w" else df[["a", "b", "w"]]
    else:
        df = df[["a", "b", "w"]]
    df.to_csv(tmp_path / "t.csv", index=False)
    code, out, err = _run(capsys, "fit", tmp_path / "t.csv", "--weights", column, *extra,
                          "--out", tmp_path / "m.pt", *FAST)  # fmt: skip
    assert code != 0 and message in err and err.count("\n") == 1, err


def test_sample_notes_a_given_value_far_outside_the_training_data(capsys, table) -> None:
    """``--given g=1e30`` (or such rows of ``--given-table``) gets a one-line note that the
    model extrapolates; a value inside the data does not."""
    model = table / "cond-far.pt"
    code, _, _ = _run(capsys, "fit", table / "data.csv", "--given", "g", "--out", model, *FAST)
    assert code == 0
    code, out, err = _run(capsys, "sample", model, "-n", "2", "--given", "g=1e30")
    assert code == 0 and len(out.splitlines()) == 3
    assert "nfkit: note: given value(s) far outside the training data: g (" in err
    assert err.count("\n") == 1 and "extrapolates" in err
    code, _, err = _run(capsys, "sample", model, "-n", "2", "--given", "g=0.5")
    assert code == 0 and err == ""
    (table / "far.csv").write_text("g\n0.1\n-400\n1e30\n")
    code, _, err = _run(capsys, "sample", model, "-n", "1", "--given-table", table / "far.csv")
    assert code == 0 and "in 2 of 3 rows of" in err and "far.csv" in err


def test_outputs_that_cannot_be_written_are_refused_before_any_work(
    capsys, table, tmp_path
) -> None:
    """A model path in a place that takes no file (here under a regular file), a figure of an
    unknown format: refused before training or sampling, not after."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert "--out " + str(blocker / "m.pt") + ": cannot write there" in _error(
        capsys, "fit", table / "data.csv", "--out", blocker / "m.pt", *FAST
    )
    assert "--checkpoint " + str(blocker / "c.pt") + ": cannot write there" in _error(
        capsys, "fit", table / "data.csv", "--checkpoint", blocker / "c.pt", "--out",
        tmp_path / "m.pt", *FAST,
    )  # fmt: skip
    model = tmp_path / "m.pt"
    assert _run(capsys, "fit", table / "data.csv", "--out", model, *FAST)[0] == 0
    assert "--plot p.xyz: unknown figure format '.xyz'" in _error(
        capsys, "coverage", model, table / "data.csv", "--plot", "p.xyz"
    )
    assert "-o p.xyz: unknown figure format '.xyz'" in _error(capsys, "plot", model, "-o", "p.xyz")


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no named pipes")
def test_pipes_loops_and_huge_fields_are_one_line(capsys, table, tmp_path) -> None:
    import os

    model = tmp_path / "m.pt"
    assert _run(capsys, "fit", table / "data.csv", "--out", model, *FAST)[0] == 0
    os.mkfifo(tmp_path / "pipe.csv")  # read twice (sniff, then pandas): it hung
    assert "is not a regular file (a pipe or a device)" in _error(
        capsys, "score", model, tmp_path / "pipe.csv"
    )
    os.symlink(tmp_path / "loop2", tmp_path / "loop1")
    os.symlink(tmp_path / "loop1", tmp_path / "loop2")
    assert "a symbolic link loop" in _error(capsys, "fit", tmp_path / "loop1", "--out", model)
    (tmp_path / "big.csv").write_text("a,b\n1," + "x" * 200_000 + "\n")
    assert "cannot be read as a table (field larger than field limit" in _error(
        capsys, "fit", tmp_path / "big.csv", "--out", tmp_path / "b.pt"
    )


def test_sigterm_cleans_up_like_ctrl_c(tmp_path) -> None:
    """SIGTERM (timeout, SLURM) ends a fit with status 143 through the same cleanups as Ctrl-C:
    the checkpoint stays readable and no temporary file is left."""
    import os
    import signal
    import time

    rng = np.random.default_rng(0)
    pd.DataFrame(rng.normal(size=(2000, 3)), columns=list("abc")).to_csv(tmp_path / "t.csv",
                                                                          index=False)  # fmt: skip
    ckpt = tmp_path / "ck.pt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nfkit", "fit", str(tmp_path / "t.csv"), "--out",
         str(tmp_path / "m.pt"), "--steps", "1000000", "--checkpoint", str(ckpt), "-q",
         "--hidden", "8", "--transforms", "1", "--model", "maf"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    deadline = time.time() + 60
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "nfkit: terminated" in err, err
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    import nfkit.io

    assert nfkit.io.safe_torch_load(ckpt, "test")["format"] == "nfkit-checkpoint"


def test_coverage_of_a_discrete_column_breaks_rank_ties(capsys, tmp_path) -> None:
    """A yes/no column: most draws equal the truth, and counting only those below made an
    exact model's marginal ranks non-uniform ("biased" every time); ties are now broken at
    random, and a verdict names the column."""
    rng = np.random.default_rng(0)
    flag = rng.integers(0, 2, 3000)
    df = pd.DataFrame({"flag": flag, "y": rng.normal(size=3000) + flag})
    df[:2000].to_csv(tmp_path / "t.csv", index=False)
    df[2000:].to_csv(tmp_path / "test.csv", index=False)
    model = tmp_path / "m.pt"
    assert _run(capsys, "fit", tmp_path / "t.csv", "--out", model, "--steps", "300", "-q",
                "--seed", "0")[0] == 0  # fmt: skip
    code, out, _ = _run(capsys, "coverage", model, tmp_path / "test.csv", "--seed", "0")
    assert code == 0 and out.strip().endswith("calibrated"), out


def test_fit_notes_identifiers_and_prints_exact_bounds(capsys, tmp_path) -> None:
    """A whole number unique to every row gets a note (an identifier?); the discrete range
    suggested for --bounds is exact (1234567, not 1.23457e+06, which excluded the minimum)."""
    rng = np.random.default_rng(0)
    pd.DataFrame({"id": np.arange(100000, 100100), "visits": rng.integers(1234567, 1234570, 100),
                  "y": rng.normal(size=100)}).to_csv(tmp_path / "t.csv", index=False)  # fmt: skip
    code, _, err = _run(capsys, "fit", tmp_path / "t.csv", "--out", tmp_path / "m.pt", *FAST[:-3])
    assert code == 0 and "column(s) 'id' hold a different whole number in every row" in err
    assert "visits=1234567:1234569" in err and "e+06" not in err


def test_a_header_named_x0_is_matched_by_name(capsys, tmp_path) -> None:
    """A table whose header is x0, x1, ... (a simulator's outputs) is matched by name; the
    "unnamed columns" message is for a header-less file."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(200, 3)), columns=["x0", "x1", "theta"])
    df.to_csv(tmp_path / "t.csv", index=False)
    model = tmp_path / "m.pt"
    assert _run(capsys, "fit", tmp_path / "t.csv", "--out", model, *FAST)[0] == 0
    df[["x0", "x1"]].to_csv(tmp_path / "obs.csv", index=False)
    assert "no column(s) 'theta'" in _error(capsys, "score", model, tmp_path / "obs.csv")


def test_fit_reports_and_keeps_its_seed(capsys, table, tmp_path) -> None:
    """Without --seed, the seed drawn is in the summary (not under -q) and in the file, with a
    record of the run that info shows; --seed with it repeats the run exactly."""
    import hashlib
    import json
    import re

    import torch

    import nfkit as nf

    data = table / "data.csv"
    short = ["--steps", "25", "--transforms", "1", "--hidden", "8", "--model", "maf"]
    code, _, err = _run(capsys, "fit", data, "--out", tmp_path / "a.pt", *short)
    found = re.search(r"^trained MAF on 300 rows in (\d+) steps \(.*, seed (\d+)\)$", err, re.M)
    assert code == 0 and found, err
    steps, seed = found.groups()
    code, _, err = _run(capsys, "fit", data, "--out", tmp_path / "b.pt", *short, "--seed", seed)
    assert code == 0 and f", seed {seed})" in err
    a, b = nf.load(tmp_path / "a.pt").state_dict(), nf.load(tmp_path / "b.pt").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    code, _, err = _run(capsys, "fit", data, "--out", tmp_path / "q.pt", *short, "-q")
    assert code == 0 and err == ""
    code, out, _ = _run(capsys, "info", tmp_path / "q.pt")
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    lines = out.splitlines()
    assert code == 0 and f"  saved by: nfkit {nf.__version__}" in lines
    training = next(line for line in lines if line.startswith("  training: "))
    assert re.fullmatch(
        rf"  training: nfkit fit on data.csv \(300 rows, sha256 {digest}\), \d+ steps, batch "
        rf"size 512, lr 0.001, seed \d+, nfkit {re.escape(nf.__version__)}, torch "
        rf"{re.escape(torch.__version__)}, --model maf, --steps 25, --transforms 1, --hidden 8",
        training,
    ), training
    code, out, _ = _run(capsys, "info", tmp_path / "b.pt", "--json")
    record = json.loads(out)["training"]
    assert record == {
        "command": "nfkit fit",
        "data": "data.csv",
        "data_sha256": digest,
        "rows": 300,
        "seed": int(seed),
        "steps": int(steps),
        "batch_size": 512,
        "lr": 0.001,
        "nfkit_version": nf.__version__,
        "torch_version": torch.__version__,
        # the options given (not the defaults): with the data and seed, what repeats the run
        "options": {"--model": "maf", "--steps": 25, "--transforms": 1, "--hidden": [8]},
    }
    nf.save(nf.load(tmp_path / "b.pt"), tmp_path / "plain.pt")  # no record: no line
    code, out, _ = _run(capsys, "info", tmp_path / "plain.pt")
    assert code == 0 and "  training: " not in out and "  saved by: " in out


def test_fit_from_python_leaves_the_global_rng_alone(capsys, table, tmp_path) -> None:
    import torch

    for seed in (["--seed", "3"], []):
        torch.manual_seed(1)
        expected = torch.randn(3)
        torch.manual_seed(1)
        argv = ["fit", table / "data.csv", "--out", tmp_path / "m.pt", *FAST[:-2], *seed]
        assert _run(capsys, *argv)[0] == 0
        assert torch.equal(torch.randn(3), expected)


def test_fit_weights_stay_with_their_rows_after_dropped_rows(
    capsys, tmp_path, monkeypatch
) -> None:
    """``--weights w --drop-missing``: each kept row trains with its own weight (w = 10a + 5),
    when a data cell or a weight cell is missing, in the data and in a ``--val`` table (every
    row after a dropped one had had the previous row's weight: a=3 weighed 25, not 35)."""
    import nfkit as nf

    def table(path, missing_a: int, missing_w: int) -> None:
        a = np.arange(12.0)
        df = pd.DataFrame({"a": a, "b": np.sin(a) + 0.1 * a, "w": 10 * a + 5}).astype(object)
        df.loc[missing_a, "a"] = df.loc[missing_w, "w"] = ""
        df.to_csv(path, index=False)

    table(tmp_path / "t.csv", 2, 5)
    table(tmp_path / "v.csv", 4, 7)
    seen = {}
    fit = nf.fit

    def spy(flow, x, **kw):
        seen.update(kw, x=x)
        return fit(flow, x, **{**kw, "steps": 1})

    monkeypatch.setattr(nf, "fit", spy)
    code, _, err = _run(capsys, "fit", tmp_path / "t.csv", "--weights", "w", "--drop-missing",
                        "--val", tmp_path / "v.csv", "--out", tmp_path / "m.pt", *FAST)  # fmt: skip
    assert code == 0, err
    for x, w, dropped in ((seen["x"], seen["weights"], {2, 5}),
                          (seen["val"], seen["val_weights"], {4, 7})):  # fmt: skip
        assert x[:, 0].tolist() == [a for a in range(12) if a not in dropped]
        assert w.tolist() == [10 * a + 5 for a in x[:, 0].tolist()]


def test_parquet_with_a_stored_index_pairs_each_row(capsys, table, tmp_path) -> None:
    """A .parquet file written from a re-ordered or filtered DataFrame (pandas stores its index)
    is read in file order: ``score --with-data`` puts each score beside its own row (it had put
    them in index order), a filtered file scores (it was 'internal error (KeyError)'),
    ``sample --given-table`` takes its rows, a named index is a column."""
    pytest.importorskip("pyarrow")
    model = tmp_path / "m.pt"
    assert _run(capsys, "fit", table / "data.csv", "--given", "g", "--out", model, *FAST)[0] == 0
    frame = pd.read_csv(table / "data.csv").head(10).assign(id=range(10))
    for name, part in (("rev", frame.iloc[::-1]), ("filt", frame.iloc[[7, 2, 5]])):
        part.to_parquet(tmp_path / f"{name}.parquet")  # the index is stored with the table
        part.to_csv(tmp_path / f"{name}.csv", index=False)  # the same rows, no index
        code, out, err = _run(capsys, "score", model, tmp_path / f"{name}.csv")
        expected = pd.read_csv(pd.io.common.StringIO(out))["log_density"]
        code, out, err = _run(capsys, "score", model, tmp_path / f"{name}.parquet", "--with-data")
        scored = pd.read_csv(pd.io.common.StringIO(out))
        assert code == 0, err
        assert scored["id"].tolist() == part["id"].tolist()
        np.testing.assert_allclose(scored["log_density"], expected, rtol=1e-6)
    code, out, err = _run(capsys, "sample", model, "-n", "1", "--given-table",
                          tmp_path / "filt.parquet")  # fmt: skip
    drawn = pd.read_csv(pd.io.common.StringIO(out))
    assert code == 0 and drawn["g"].tolist() == frame["g"].iloc[[7, 2, 5]].tolist(), err
    frame.set_index("id").iloc[::-1].to_parquet(tmp_path / "named.parquet")
    code, out, _ = _run(capsys, "score", model, tmp_path / "named.parquet", "--with-data")
    scored = pd.read_csv(pd.io.common.StringIO(out))
    assert code == 0 and list(scored.columns) == ["id", "a", "b", "g", "log_density"]
    assert scored["id"].tolist() == list(range(9, -1, -1))


def test_category_labels_are_read_as_written_in_every_layout(capsys, tmp_path) -> None:
    """A category column is read as written in any table scored: all its labels ``NA`` (had
    been 'missing values'), ``NA`` beside ``02134`` (had been read as the number 2134), in a
    header-less file (by position) and under a ``# region,y`` comment header."""
    rng = np.random.default_rng(0)
    region = rng.choice(["02134", "EU", "NA"], 300)
    y = pd.Series(region).map({"02134": 0.0, "EU": 3.0, "NA": 6.0}) + rng.normal(size=300)
    pd.DataFrame({"region": region, "y": y}).to_csv(tmp_path / "r.csv", index=False)
    model = tmp_path / "r.pt"
    assert _run(capsys, "fit", tmp_path / "r.csv", "--given", "region", "--out", model,
                *FAST)[0] == 0  # fmt: skip
    rows = ["NA,5.5", "02134,0.5", "NA,6.5"]
    (tmp_path / "ref.csv").write_text("region,y\n" + "\n".join([*rows, "EU,3.0"]) + "\n")
    code, out, _ = _run(capsys, "score", model, tmp_path / "ref.csv")
    expected = [float(v) for v in out.split()[1:4]]
    files = {
        "na.csv": "region,y\nNA,5.5\nNA,6.5\n",
        "mixed.csv": "region,y\n" + "\n".join(rows) + "\n",
        "bare.csv": "\n".join(rows) + "\n",
        "comment.csv": "# region,y\n" + "\n".join(rows) + "\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        code, out, err = _run(capsys, "score", model, tmp_path / name)
        want = [expected[0], expected[2]] if name == "na.csv" else expected
        assert code == 0, (name, err)
        np.testing.assert_allclose([float(v) for v in out.split()[1:]], want, rtol=1e-6)


def test_sample_writes_integer_givens_and_a_row_column_that_does_not_clash(
    capsys, tmp_path
) -> None:
    """``sample`` writes an integer given value as written (``2001``, it had been ``2001.0``),
    and a model column named ``row`` moves the row number to ``_row`` (it had been 'internal
    error (cannot insert row, already exists)')."""
    rng = np.random.default_rng(0)
    year = rng.integers(2000, 2010, 300)
    frame = pd.DataFrame({"row": 0.1 * (year - 2005) + rng.normal(size=300), "year": year})
    frame.to_csv(tmp_path / "t.csv", index=False)
    model = tmp_path / "m.pt"
    assert _run(capsys, "fit", tmp_path / "t.csv", "--given", "year", "--out", model,
                *FAST)[0] == 0  # fmt: skip
    code, out, _ = _run(capsys, "sample", model, "-n", "2", "--given", "year=2001")
    assert code == 0 and [line.split(",")[1] for line in out.split()] == ["year", "2001", "2001"]
    (tmp_path / "ctx.csv").write_text("year\n2001\n2007\n")
    code, out, err = _run(
        capsys, "sample", model, "-n", "2", "--given-table", tmp_path / "ctx.csv"
    )
    lines = [line.split(",") for line in out.split()]
    assert code == 0 and lines[0] == ["_row", "row", "year"], err
    assert [(r[0], r[2]) for r in lines[1:]] == [("0", "2001")] * 2 + [("1", "2007")] * 2


def test_cli_review_of_every_model_route(capsys, tmp_path) -> None:
    """``--discrete auto`` as documented (it merged with its own default into "auto,auto");
    auto/none beside names refused (the last won); ``plot --data`` and ``fit --val`` name a row
    outside the support (plot drew it, fit's message named neither file nor row); bounds
    errors name the column."""
    g = np.random.default_rng(0)
    n = 120
    frame = pd.DataFrame({"p": g.gamma(2.0, size=n) + 0.1, "k": g.poisson(3.0, size=n)})
    frame.to_csv(tmp_path / "t.csv", index=False)
    bad = frame.iloc[:6].copy()
    bad.loc[4, "p"] = -1.0
    bad.to_csv(tmp_path / "bad.csv", index=False)
    fast = ["--steps", "3", "--transforms", "1", "--hidden", "8", "-q", "--seed", "0"]
    model = tmp_path / "m.pt"
    code, out, err = _run(capsys, "fit", tmp_path / "t.csv", "--discrete", "auto", "--bounds",
                          "p=0:", "--out", model, *fast)  # fmt: skip
    assert code == 0, err
    assert nf.load(model).config["discrete"] == [1]  # k, as without the option
    err = _error(capsys, "fit", tmp_path / "t.csv", "--discrete", "k", "--discrete", "none")
    assert "--discrete given as 'k' and 'none': give one" in err
    err = _error(capsys, "plot", model, "--data", tmp_path / "bad.csv", "-o", tmp_path / "f.png")
    assert "bad.csv: row 5 (of 1 outside the model's support)" in err
    err = _error(capsys, "fit", tmp_path / "t.csv", "--bounds", "p=0:", "--val",
                 tmp_path / "bad.csv", "--out", tmp_path / "v.pt", *fast)  # fmt: skip
    assert "bad.csv: row 5 (of 1 outside the model's support)" in err
    err = _error(capsys, "fit", tmp_path / "t.csv", "--bounds", "p=5:1", "--out", model, *fast)
    assert "bounds of column 'p' need low < high" in err
    err = _error(capsys, "fit", tmp_path / "t.csv", "--bounds", "k=0.5:", "--out", model, *fast)
    assert "bounds of discrete column 'k' must be whole numbers" in err


def test_a_column_beyond_the_exact_integers_is_not_taken_for_counts(capsys, tmp_path) -> None:
    """Every float above 2**53 (2**24 in float32) is whole: a column of stellar masses (~2e30
    kg) was modelled as discrete and sampled as int64's minimum, -9223372036854775808."""
    rng = np.random.default_rng(0)
    pd.DataFrame({"mass_kg": rng.uniform(1, 4, 200) * 1e30, "radius": rng.uniform(0.8, 1.6, 200)}
                 ).to_csv(tmp_path / "stars.csv", index=False)  # fmt: skip
    code, _, err = _run(capsys, "fit", tmp_path / "stars.csv", "--out", tmp_path / "s.pt", *FAST)
    assert code == 0 and "whole numbers only" not in err, err
    code, out, _ = _run(capsys, "sample", tmp_path / "s.pt", "-n", "50", "--seed", "0")
    masses = pd.read_csv(io.StringIO(out))["mass_kg"]
    assert code == 0 and 1e30 < masses.median() < 4e30 and masses.nunique() == 50, masses


def test_a_true_false_column_is_read_alike_by_fit_and_the_commands_after(capsys, tmp_path) -> None:
    """R and Excel write TRUE/FALSE: pandas reads them as booleans when fitting (labels 'False'
    and 'True'), while score, --val, --given read category columns as written: every command
    after fit refused the training file ("the category 'FALSE', which the model was not fitted
    on")."""
    rng = np.random.default_rng(1)
    flag = np.where(rng.random(200) < 0.3, "TRUE", "FALSE")
    pd.DataFrame({"x": rng.normal(size=200).round(3), "flag": flag}).to_csv(
        tmp_path / "b.csv", index=False
    )
    model, given = tmp_path / "b.pt", tmp_path / "g.pt"
    assert _run(capsys, "fit", tmp_path / "b.csv", "--out", model, *FAST)[0] == 0
    code, out, err = _run(capsys, "score", model, tmp_path / "b.csv")
    assert code == 0 and len(out.split()) == 201, err
    val = ("--val", tmp_path / "b.csv", "--out", tmp_path / "v.pt")
    assert _run(capsys, "fit", tmp_path / "b.csv", *val, *FAST)[0] == 0
    assert (
        _run(capsys, "fit", tmp_path / "b.csv", "--given", "flag", "--out", given, *FAST)[0] == 0
    )
    for spelling in ("TRUE", "true", "True"):
        code, out, err = _run(capsys, "sample", given, "-n", "2", "--given", f"flag={spelling}")
        assert code == 0 and out.splitlines()[1].endswith(",True"), (spelling, out, err)


def test_score_with_data_to_npy_refuses_a_text_column_before_scoring(
    capsys, table, tmp_path
) -> None:
    """--with-data writes the table's own columns as written: a TRUE/FALSE or text column
    cannot go into a .npy (numbers only); it failed after scoring with numpy's "could not
    convert string to float: 'TRUE'"."""
    model = tmp_path / "m.pt"
    assert _run(capsys, "fit", table / "data.csv", "--out", model, *FAST)[0] == 0
    df = pd.read_csv(table / "data.csv")
    df.assign(flag=np.where(np.arange(len(df)) % 2 == 0, "TRUE", "FALSE")).to_csv(
        tmp_path / "t.csv", index=False
    )
    code, _, err = _run(capsys, "score", model, tmp_path / "t.csv", "--with-data", "-o",
                        tmp_path / "s.npy")  # fmt: skip
    assert code != 0 and "a .npy file holds numbers only" in err and "'flag'" in err, err
    assert not (tmp_path / "s.npy").exists()
    df.to_csv(tmp_path / "n.csv", index=False)  # numbers only: written
    code, _, err = _run(capsys, "score", model, tmp_path / "n.csv", "--with-data", "-o",
                        tmp_path / "n.npy")  # fmt: skip
    assert code == 0 and np.load(tmp_path / "n.npy").shape == (len(df), df.shape[1] + 1), err


def test_a_column_of_1e200_is_standardized_without_overflow(capsys, tmp_path) -> None:
    """The squares of 1e200 overflow float64: the column's std was inf, every standardized
    value 0 and the fit stopped on a non-finite loss, after numpy's multi-line overflow
    warnings (the float32 probe's cast)."""
    rng = np.random.default_rng(0)
    pd.DataFrame({"a": rng.uniform(1, 3, 100) * 1e200, "b": rng.normal(size=100)}).to_csv(
        tmp_path / "h.csv", index=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        code, _, err = _run(capsys, "fit", tmp_path / "h.csv", "--out", tmp_path / "h.pt", *FAST)
    assert code == 0, err
    log_scale = nf.load(tmp_path / "h.pt").transform.transforms[0].log_abs_scale  # -log std
    assert bool(torch.isfinite(log_scale).all()), log_scale
    assert 1e199 < math.exp(-float(log_scale[0])) < 1e201, log_scale


def test_a_column_of_1e_300_is_modelled_in_float64_not_as_zeros(capsys, tmp_path) -> None:
    """float32 flushes 1e-300 to 0: the column became zeros, whole numbers, modelled as
    counts (bounds 7.1e-301:1.2e-300, samples 0 and -1)."""
    rng = np.random.default_rng(0)
    pd.DataFrame({"a": rng.uniform(1, 3, 200) * 1e-300, "b": rng.normal(size=200)}).to_csv(
        tmp_path / "t.csv", index=False
    )
    fast = [a for a in FAST if a != "-q"]  # (the notes)
    code, _, err = _run(capsys, "fit", tmp_path / "t.csv", "--out", tmp_path / "t.pt", *fast)
    assert code == 0 and "values below 1e-38" in err and "whole numbers only" not in err, err
    assert nf.load(tmp_path / "t.pt").log_prob(torch.zeros(1, 2, dtype=torch.float64)).dtype == (
        torch.float64
    )
    code, out, _ = _run(capsys, "sample", tmp_path / "t.pt", "-n", "20", "--seed", "0")
    a = pd.read_csv(io.StringIO(out))["a"]
    assert code == 0 and 5e-301 < a.median() < 5e-300 and a.nunique() == 20, a


def test_fit_records_range_ends_exactly_and_refuses_a_second_weights_column(
    capsys, tmp_path
) -> None:
    """The record's --bounds/--angles ends were rounded by :g (π to 3.14159, inside the data:
    the recorded options failed; 1234567 to 1234570); --weights given twice kept the last and
    modelled the first; a --discrete conflict printed None for `none`."""
    from nfkit.io import load_with_header

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"phi": rng.uniform(-np.pi, np.pi, 200), "v": rng.uniform(1, 1234566, 200),
                       "w": 1.0, "w2": 2.0})  # fmt: skip
    df.to_csv(tmp_path / "t.csv", index=False)
    model = tmp_path / "m.pt"
    ncsf = [*FAST, "--model", "ncsf"]  # (the last --model wins: argparse's rule for a mode)
    code, _, err = _run(capsys, "fit", tmp_path / "t.csv", "--angles", "phi=-pi:pi", "--bounds",
                        "v=0:1234567", "--drop", "w,w2", "--out", model, *ncsf)  # fmt: skip
    assert code == 0, err
    options = load_with_header(model)[1]["training"]["options"]
    assert options["--bounds"] == "v=0:1234567"
    assert options["--angles"] == f"phi={-math.pi!r}:{math.pi!r}"
    code, _, err = _run(capsys, "fit", tmp_path / "t.csv", "--angles", options["--angles"],
                        "--bounds", options["--bounds"], "--drop", "w,w2", "--out", model, *ncsf)  # fmt: skip
    assert code == 0, err  # the recorded options repeat the run
    message = _error(capsys, "fit", tmp_path / "t.csv", "--weights", "w", "--weights", "w2",
                     "--out", tmp_path / "n.pt", *FAST)  # fmt: skip
    assert "--weights given as 'w' and 'w2': give one" in message
    assert not (tmp_path / "n.pt").exists()
    message = _error(capsys, "fit", tmp_path / "t.csv", "--discrete", "auto", "--discrete",
                     "none", *FAST)  # fmt: skip
    assert "--discrete given as 'auto' and 'none': give one" in message
