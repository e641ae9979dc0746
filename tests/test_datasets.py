"""nf.datasets: toy generators, digits, and the table readers with their one-line errors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
import torch

import nfkit as nf
from nfkit.io import DataError


@pytest.mark.parametrize("name", list(nf.datasets.TOYS))
def test_toys_shape_seed(name: str) -> None:
    make = getattr(nf.datasets, name)
    x = make(300, seed=1)
    assert x.shape == (300, 2) and x.dtype == torch.get_default_dtype()
    assert torch.isfinite(x).all() and x.std(0).min() > 0.1
    torch.testing.assert_close(x, make(300, seed=1))
    assert not torch.equal(x, make(300, seed=2))
    before = torch.get_rng_state()
    make(10, seed=3)
    assert torch.equal(before, torch.get_rng_state()), "a seeded toy touched the global RNG"
    with pytest.raises(ValueError, match=f"{name}: noise"):
        make(10, noise=-1.0)
    with pytest.raises(ValueError, match="n must be"):
        make(0)
    # NumPy integers are integers; a float seed is refused, not rounded
    torch.testing.assert_close(x, make(np.int64(300), seed=np.int64(1)))
    with pytest.raises(TypeError, match=r"seed must be an int or None, got 1\.5"):
        make(10, seed=1.5)


def test_digits() -> None:
    train, test = nf.datasets.digits(seed=0)
    assert train.shape[1] == test.shape[1] == 64 and len(train) + len(test) == 1797
    assert 0 < train.min() and train.max() < 1
    # Dequantized: multiplying by 17 and flooring gives the original integer pixels back.
    v = torch.floor(train * 17)
    assert v.min() >= 0 and v.max() <= 16


def _csv(tmp_path, text: str, name: str = "t.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_header_detection(tmp_path) -> None:
    df = nf.datasets.load(_csv(tmp_path, "a,b\n1,2\n3,5\n4,1\n"))
    assert list(df.columns) == ["a", "b"] and df.shape == (3, 2)
    df = nf.datasets.load(_csv(tmp_path, "1,2\n3,5\n4,1\n"))
    assert list(df.columns) == ["x0", "x1"] and df.shape == (3, 2)
    assert df.dtypes.tolist() == [np.float64, np.float64]
    df = nf.datasets.load(_csv(tmp_path, "a,b\n1,2\n3,5\n4,1\n"), columns=["b"])
    assert list(df.columns) == ["b"]


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("a,name\n1,x\n2,y\n", r"t.csv: column 'name' is not numeric \(e.g. 'x'\)"),
        ("a,b\n1,2\n,3\n4,\n5,\n", r"missing values in column\(s\) 'a' \(1\), 'b' \(2\)"),
        ("a,b\n1,7\n2,7\n3,7\n", r"column\(s\) 'b' are constant"),
        ("a,b\n1,inf\n2,3\n", r"infinite values in column\(s\) 'b' \(1\)"),
        ("a,b\n1,2\n", "at least 2 data rows"),
        ("", "file is empty"),
        ("a,b\n1,2\n1,2,3,4\n", "cannot parse as CSV"),
        ("a,a\n1,2\n3,4\n", r"t.csv: duplicate column name\(s\) 'a'"),
        ("a,b\n", "needs at least 2 data rows, got 0"),
    ],
)
def test_csv_errors_one_line(tmp_path, text: str, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern) as info:
        nf.datasets.load(_csv(tmp_path, text))
    assert "\n" not in str(info.value) and "t.csv" in str(info.value)


def test_csv_drop_options(tmp_path) -> None:
    p = _csv(tmp_path, "a,b,c\n1,2,7\n,3,7\n4,1,7\n5,0,7\n")
    df = nf.datasets.load(p, drop_missing=True, drop_constant=True)
    assert list(df.columns) == ["a", "b"] and len(df) == 3
    assert nf.datasets.load(p, drop_missing=True, allow_constant=True).shape == (3, 3)


def test_other_formats_and_file_errors(tmp_path) -> None:
    x = np.random.default_rng(0).normal(size=(20, 3))
    np.save(tmp_path / "a.npy", x)
    df = nf.datasets.load(tmp_path / "a.npy")
    assert list(df.columns) == ["x0", "x1", "x2"] and np.allclose(df.to_numpy(), x)
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    with pytest.raises(DataError, match="s.npy: expected an array of real numbers, got dtype <U1"):
        nf.datasets.load(tmp_path / "s.npy")
    np.save(tmp_path / "c.npy", x + 1j)  # numeric, but casting would drop the imaginary part
    with pytest.raises(DataError, match="c.npy: expected an array of real numbers, got dtype co"):
        nf.datasets.load(tmp_path / "c.npy")
    with pytest.raises(TypeError, match="nf.fit: data must hold real numbers, got a NumPy array"):
        nf.fit(nf.models.MAF(3, transforms=1, hidden=(4,)), x + 1j, steps=1, progress=False)
    with pytest.raises(FileNotFoundError, match="nope.csv: no such file"):
        nf.datasets.load(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="unknown file type '.xlsx'"):
        nf.datasets.load(_csv(tmp_path, "1", "a.xlsx"))
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81\x82")
    with pytest.raises(DataError, match="bin.csv"):
        nf.datasets.load(tmp_path / "bin.csv")
    pytest.importorskip("pyarrow")
    pd.DataFrame({"u": x[:, 0], "v": x[:, 1], "w": ["s"] * 20}).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(DataError, match="p.parquet: column 'w' is not numeric"):
        nf.datasets.load(tmp_path / "p.parquet")
    df = nf.datasets.load(tmp_path / "p.parquet", columns=["u", "v"])
    assert df.shape == (20, 2)


def test_file_errors_are_one_line(tmp_path) -> None:
    """The reader's remaining refusals: each names the file and the problem."""
    x = np.random.default_rng(0).normal(size=(20, 2))
    np.savez(tmp_path / "two.npz", a=x, b=x)
    (tmp_path / "two.npz").rename(tmp_path / "two.npy")  # an archive behind a .npy name
    np.save(tmp_path / "cube.npy", np.zeros((4, 3, 2)))
    (tmp_path / "junk.parquet").write_text("not parquet")
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "h.csv").write_text("a,b\n")
    cases = [
        (tmp_path / "two.npy", {}, "two.npy: expected one array, got an archive of several"),
        (
            tmp_path / "cube.npy",
            {},
            r"cube.npy: expected a 1-D or 2-D array, got shape \(4, 3, 2\)",
        ),
        (tmp_path / "folder.csv", {}, "folder.csv: is a directory, not a data file"),
        (tmp_path / "h.csv", {"allow_constant": True}, "h.csv: no data rows"),
    ]
    if importlib.util.find_spec("pyarrow") is not None:  # the parquet reader is an extra
        cases.append((tmp_path / "junk.parquet", {}, "junk.parquet: cannot read as parquet"))
    for path, kwargs, pattern in cases:
        with pytest.raises(DataError, match=pattern) as info:
            nf.datasets.load(path, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="x: no columns"):
        nf.io.clean_table(pd.DataFrame(index=range(3)), "x")
