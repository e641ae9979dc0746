"""nf.tables: reading data files (text, .npy, .parquet) and checking tables, with one-line errors."""

from __future__ import annotations

import importlib.util
import sys
import warnings
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nfkit as nf
from nfkit.tables import DataError, TableNote, as_tensor


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
        ("a,b\n1,2\n1,2,3,4\n", "cannot parse as a table"),
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
    note = r"t.csv: dropped 1 of 4 rows for missing values in column\(s\) 'a' \(1\)"
    with pytest.warns(TableNote, match=note):  # the user hears of the dropped rows
        df = nf.datasets.load(p, drop_missing=True, drop_constant=True)
    assert list(df.columns) == ["a", "b"] and len(df) == 3
    with pytest.warns(TableNote, match=note):
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
    with pytest.raises(DataError, match="unknown table file type '.xlsx'"):
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
        nf.tables.clean_table(pd.DataFrame(index=range(3)), "x")


_WRITTEN = ["t.csv", "t.tsv", "t.txt", "t.csv.gz", "t.tsv.bz2", "t.txt.xz", "t.csv.zip", "t.npy"]
_ZSTD = pytest.mark.skipif(importlib.util.find_spec("zstandard") is None, reason="the zst extra")


@pytest.mark.parametrize(
    "name",
    [
        *_WRITTEN,
        pytest.param("t.csv.zst", marks=_ZSTD),
        pytest.param(
            "t.parquet",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("pyarrow") is None, reason="the parquet extra"
            ),
        ),
    ],
)
def test_write_table_reads_back(tmp_path, name: str) -> None:
    """``write_table`` writes the format its suffix names; ``read_table`` reads it back."""
    df = _moons_frame(30)
    nf.tables.write_table(df, tmp_path / "out" / name)  # folders are created
    got = nf.tables.read_table(tmp_path / "out" / name)
    expected = ["x0", "x1"] if name.endswith(".npy") else ["a", "b"]
    assert list(got.columns) == expected
    np.testing.assert_array_equal(got.to_numpy(), df.to_numpy())
    assert [p.name for p in (tmp_path / "out").iterdir()] == [name]  # no temporary file left


def test_compressed_text_is_sniffed_like_plain_text(tmp_path) -> None:
    """Separator, decimal comma and index column are found through the compression."""
    df = _moons_frame(30)
    df.to_csv(tmp_path / "t.csv.gz", sep=";", decimal=",")  # with pandas' index column
    with pytest.warns(TableNote, match="dropped the unnamed first column"):
        got = nf.tables.read_table(tmp_path / "t.csv.gz")
    np.testing.assert_array_equal(got.to_numpy(), df.to_numpy())


@_ZSTD
def test_zstandard_tables_are_sniffed_and_corrupt_ones_refused(tmp_path) -> None:
    """A ``.zst`` table (zstandard) is read like the other compressions: separator and decimal
    comma sniffed through it; a file that is not zstandard data is a one-line error."""
    import zstandard

    text = "a;b\n1,5;2\n3,25;4\n"
    (tmp_path / "t.csv.zst").write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
    got = nf.tables.read_table(tmp_path / "t.csv.zst")
    np.testing.assert_array_equal(got.to_numpy(), [[1.5, 2.0], [3.25, 4.0]])
    (tmp_path / "bad.csv.zst").write_text("not zstandard")
    with pytest.raises(DataError, match="bad.csv.zst: cannot decompress as zstd") as info:
        nf.tables.read_table(tmp_path / "bad.csv.zst")
    assert "\n" not in str(info.value)


def test_a_missing_zstandard_is_named(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard raises ImportError
    (tmp_path / "t.csv.zst").write_bytes(b"anything")
    for action in (
        lambda: nf.tables.read_table(tmp_path / "t.csv.zst"),
        lambda: nf.tables.write_table(_moons_frame(3), tmp_path / "o.csv.zst"),
    ):
        with pytest.raises(
            DataError, match=r"need the zstandard package: pip install 'nfkit\[zst\]'"
        ):
            action()
    assert not (tmp_path / "o.csv.zst").exists()


def test_format_refusals_are_one_line(tmp_path) -> None:
    (tmp_path / "bad.csv.gz").write_text("not gzip")
    with zipfile.ZipFile(tmp_path / "two.csv.zip", "w") as z:
        z.writestr("a.csv", "a\n1\n2\n")
        z.writestr("b.csv", "b\n1\n2\n")
    cases = [
        (tmp_path / "bad.csv.gz", "bad.csv.gz: cannot decompress as gzip"),
        (tmp_path / "two.csv.zip", "two.csv.zip: a .zip table must hold one file, found 2"),
        (_csv(tmp_path, "a\n1\n", "a.npy.gz"), "a.npy.gz: only text tables are read and "),
        (_csv(tmp_path, "a\n1\n", "a.gz"), r"a.gz: unknown table file type '.gz'"),
        (_csv(tmp_path, "a\n1\n", "data"), r"data: unknown table file type '\(none\)'"),
    ]
    for path, pattern in cases:
        with pytest.raises(DataError, match=pattern) as info:
            nf.tables.read_table(path)
        assert "\n" not in str(info.value)
    for name in ("s.xlsx", "s.npy.bz2"):
        with pytest.raises(DataError, match=name):
            nf.tables.write_table(_moons_frame(3), tmp_path / name)
        assert not (tmp_path / name).exists()


def _moons_frame(n: int = 40) -> pd.DataFrame:
    x = nf.datasets.two_moons(n, seed=0).double().numpy()
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1]})


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("comma.csv", lambda df, p: df.to_csv(p, index=False)),
        ("semicolon.csv", lambda df, p: df.to_csv(p, index=False, sep=";")),
        ("pipe.csv", lambda df, p: df.to_csv(p, index=False, sep="|")),
        ("tabs.tsv", lambda df, p: df.to_csv(p, index=False, sep="\t")),
        ("tabs.txt", lambda df, p: df.to_csv(p, index=False, sep="\t")),
        ("decimal-comma.csv", lambda df, p: df.to_csv(p, index=False, sep=";", decimal=",")),
        ("with-index.csv", lambda df, p: df.to_csv(p)),  # pandas' default writes the index
        (  # the row numbers of a shuffled or filtered frame
            "shuffled-index.csv",
            lambda df, p: df.set_axis(3 * np.random.default_rng(0).permutation(len(df))).to_csv(p),
        ),
        (
            "label-index.csv",
            lambda df, p: df.set_axis([f"r{i}" for i in range(len(df))]).to_csv(p),
        ),
        (
            "date-index.csv",
            lambda df, p: df.set_axis(pd.date_range("2026-01-01", periods=len(df))).to_csv(p),
        ),
        ("bom.csv", lambda df, p: df.to_csv(p, index=False, encoding="utf-8-sig")),
        ("crlf.csv", lambda df, p: df.to_csv(p, index=False, lineterminator="\r\n")),
        ("quoted.csv", lambda df, p: df.to_csv(p, index=False, quoting=1)),  # csv.QUOTE_ALL
        (
            "trailing.csv",
            lambda df, p: p.write_text(
                "a,b,\n" + "".join(f"{float(u)!r},{float(v)!r},\n" for u, v in df.to_numpy())
            ),
        ),
        (
            "savetxt.txt",
            lambda df, p: np.savetxt(p, df.to_numpy(), header="a b", comments=""),
        ),
        ("savetxt-comment.txt", lambda df, p: np.savetxt(p, df.to_numpy(), header="a b")),
        (
            "savetxt-comma.csv",
            lambda df, p: np.savetxt(p, df.to_numpy(), delimiter=",", header="a,b"),
        ),
    ],
)
def test_text_tables_in_common_dialects_read_the_same(tmp_path, name: str, write) -> None:
    """Separator, decimal mark, header, BOM, line ends, quoting, a pandas index column and a
    trailing separator are all found from the file: every dialect gives the same table."""
    df = _moons_frame()
    path = tmp_path / name
    write(df, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TableNote)
        got = nf.tables.read_table(path)
    notes = [str(w.message) for w in caught if w.category is TableNote]
    assert len(notes) == ("index" in name), notes  # a dropped index column is announced
    assert all("dropped the unnamed first column, a row index" in n for n in notes)
    assert list(got.columns) == ["a", "b"], name
    np.testing.assert_allclose(got.to_numpy(), df.to_numpy(), rtol=1e-12, err_msg=name)


def test_headerless_whitespace_table(tmp_path) -> None:
    x = np.random.default_rng(0).normal(size=(30, 3))
    np.savetxt(tmp_path / "x.txt", x)  # space-separated, no header
    got = nf.tables.read_table(tmp_path / "x.txt")
    assert list(got.columns) == ["x0", "x1", "x2"]
    np.testing.assert_allclose(got.to_numpy(), x, rtol=1e-12)
    # a comment that is not a header (no names, or not one per column) is skipped
    for comment in ("made by a script", "a b"):
        np.savetxt(tmp_path / "c.txt", x, header=comment)
        got = nf.tables.read_table(tmp_path / "c.txt")
        assert list(got.columns) == ["x0", "x1", "x2"], comment
        np.testing.assert_allclose(got.to_numpy(), x, rtol=1e-12)
    # a comment above a header row: the row names the columns
    (tmp_path / "h.csv").write_text("# exported by a tool\nu,v,w\n1,2,3\n4,5,7\n")
    got = nf.tables.read_table(tmp_path / "h.csv")
    assert list(got.columns) == ["u", "v", "w"] and got.to_numpy().tolist()[1] == [4, 5, 7]


def test_an_unnamed_first_column_that_is_not_an_index_is_data(tmp_path) -> None:
    (tmp_path / "t.csv").write_text(",a\n5,1\n3,2\n5,4\n")  # repeated values
    got = nf.tables.read_table(tmp_path / "t.csv")
    assert got.shape == (3, 2) and got.iloc[:, 0].tolist() == [5.0, 3.0, 5.0]
    (tmp_path / "f.csv").write_text(",a\n0.5,1\n0.25,2\n0.125,4\n")  # distinct floats
    got = nf.tables.read_table(tmp_path / "f.csv")
    assert got.shape == (3, 2) and got.iloc[:, 0].tolist() == [0.5, 0.25, 0.125]


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        # every row one field longer than the header: pandas had made the first field the index
        # and modelled the rest under shifted names, silently
        ("a;b\n0,5;1,5;2\n1,5;2,5;3\n", r"rows have more fields than the header's 2"),
        ("a,b\n1,2,3\n4,5,6\n7,8,9\n", r"rows have more fields than the header's 2"),
        ("a b\n1 2\n3 4 5\n", "t.csv: cannot parse as a table"),
    ],
)
def test_rows_longer_than_the_header_are_an_error(tmp_path, text: str, pattern: str) -> None:
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(DataError, match=pattern) as info:
        nf.tables.read_table(tmp_path / "t.csv")
    assert "\n" not in str(info.value) and str(info.value).startswith(str(tmp_path / "t.csv"))


def test_the_cli_reads_a_semicolon_table(tmp_path, capsys) -> None:
    from nfkit.cli import main

    _moons_frame(200).to_csv(tmp_path / "t.csv", index=False, sep=";", decimal=",")
    code = main(["fit", str(tmp_path / "t.csv"), "--steps", "3", "--out", str(tmp_path / "m.pt")])
    assert code == 0
    _moons_frame(200).sample(frac=1, random_state=0).to_csv(tmp_path / "i.csv")  # with index
    code = main(["fit", str(tmp_path / "i.csv"), "--steps", "3", "--out", str(tmp_path / "i.pt")])
    err = capsys.readouterr().err
    assert code == 0 and "nfkit: note: " in err and "dropped the unnamed first column" in err
    scores = tmp_path / "s.csv"
    assert main(["score", str(tmp_path / "m.pt"), str(tmp_path / "t.csv"), "-o", str(scores)]) == 0
    assert len(nf.tables.read_table(scores, allow_constant=True)) == 200


_DIALECTS = {
    "comma": {},
    "semicolon": {"sep": ";"},
    "tab": {"sep": "\t"},
    "pipe": {"sep": "|"},
    "decimal-comma": {"sep": ";", "decimal": ","},
    "index": {"index": True},
}


@settings(deadline=None, max_examples=60)
@given(
    data=st.data(),
    rows=st.integers(2, 12),
    cols=st.integers(1, 4),
    dialect=st.sampled_from(sorted(_DIALECTS)),
    header=st.booleans(),
)
def test_any_table_reads_back_as_written(
    tmp_path_factory, data, rows: int, cols: int, dialect: str, header: bool
) -> None:
    """Property: a table written by pandas in any dialect reads back exactly (values and names)."""
    if dialect == "decimal-comma" and cols == 1:
        cols = 2  # one column of "0,5" is ambiguous: a comma-separated pair of integers
    values = data.draw(
        st.lists(
            st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False),
            min_size=rows * cols,
            max_size=rows * cols,
        )
    )
    names = [f"c{'abcd'[i]}" for i in range(cols)]
    df = pd.DataFrame(np.array(values).reshape(rows, cols), columns=names)
    path = tmp_path_factory.mktemp("t") / "t.csv"
    kwargs = {"index": False, **_DIALECTS[dialect]}
    if dialect == "index" and not header:
        kwargs["index"] = False  # without a header an index column is just data
    df.to_csv(path, header=header, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TableNote)
        got = nf.tables.read_table(path, allow_constant=True)
    assert list(got.columns) == (names if header else [f"x{i}" for i in range(cols)])
    np.testing.assert_array_equal(got.to_numpy(), df.to_numpy())


def test_parquet_without_pyarrow_is_one_line(tmp_path, monkeypatch) -> None:
    """Without the parquet extra, writing (and reading) .parquet names the extra to install,
    and the output check refuses before any work."""
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match=r"s.parquet: writing .parquet files needs pyarrow"):
        nf.tables.check_table_path(tmp_path / "s.parquet", writing=True)
    with pytest.raises(DataError, match=r"needs pyarrow \(pip install 'nfkit\[parquet\]'\)"):
        nf.tables.write_table(_moons_frame(3), tmp_path / "s.parquet")
    assert not (tmp_path / "s.parquet").exists()
    nf.tables.check_table_path(tmp_path / "s.csv.gz", writing=True)  # text needs no extra


def test_text_columns_as_categories(tmp_path) -> None:
    """``categories=True`` codes text columns in sorted order and records the labels; a dict
    codes with a model's labels (numbers in the file read as labels too) and refuses others."""
    from nfkit.tables import clean_table, read_table

    path = tmp_path / "t.csv"
    path.write_text("a,region,flag\n1, west,x\n2,east,y\n3,west,x\n4,north,x\n")
    df = read_table(path, categories=True)
    assert df["region"].tolist() == [2.0, 0.0, 2.0, 1.0] and df["a"].tolist() == [1, 2, 3, 4]
    assert df.attrs["categories"] == {"region": ["east", "north", "west"], "flag": ["x", "y"]}
    scored = clean_table(
        pd.DataFrame({"region": ["north"], "code": [2]}),
        "s.csv",
        allow_constant=True,
        categories={"region": ["east", "north", "west"], "code": ["1", "2", "x"]},
    )
    assert scored.iloc[0].tolist() == [1.0, 1.0]
    with pytest.raises(DataError, match="column 'region' has the category 'south', which the"):
        clean_table(pd.DataFrame({"region": ["south"]}), "s.csv", allow_constant=True,
                    categories={"region": ["east", "north", "west"]})  # fmt: skip
    ids = pd.DataFrame({"id": [f"n{i}" for i in range(60)], "a": np.arange(60.0)})
    with pytest.raises(DataError, match="'id' has 60 distinct text values in 60 rows"):
        clean_table(ids, "ids.csv", categories=True)
    with pytest.raises(DataError, match=r"column 'region' is not numeric \(e.g. 'west'\)"):
        read_table(path)
    flags = clean_table(pd.DataFrame({"ok": [True, False, True]}), "f.csv", categories=True)
    assert flags["ok"].tolist() == [1.0, 0.0, 1.0]  # booleans: two categories, False first
    assert flags.attrs["categories"] == {"ok": ["False", "True"]}
    read_back = clean_table(pd.DataFrame({"ok": ["True", "True"]}), "f.csv", allow_constant=True,
                            categories={"ok": ["False", "True"]})  # fmt: skip
    assert read_back["ok"].tolist() == [1.0, 1.0]
    constant = pd.DataFrame({"k": ["z"] * 4, "flag": ["x", "y", "x", "x"], "a": [1.0, 2, 3, 4]})
    dropped = clean_table(constant, "c.csv", categories=True, drop_constant=True)
    assert list(dropped.columns) == ["flag", "a"]
    assert dropped.attrs["categories"] == {"flag": ["x", "y"]}


def test_ordered_categorical_keeps_its_order(tmp_path) -> None:
    """An ordered pandas categorical (an ordinal scale; parquet keeps it) is coded in its
    declared order, every declared level included; an unordered one is sorted."""
    from nfkit.tables import clean_table

    size = pd.Categorical(["low", "high", "low", "high"], categories=["low", "medium", "high"],
                          ordered=True)  # fmt: skip
    df = clean_table(pd.DataFrame({"size": size, "a": [1.0, 2, 3, 4]}), "t", categories=True)
    assert df["size"].tolist() == [0.0, 2.0, 0.0, 2.0]
    assert df.attrs["categories"] == {"size": ["low", "medium", "high"]}
    plain = clean_table(pd.DataFrame({"size": size.as_unordered(), "a": [1.0, 2, 3, 4]}), "t",
                        categories=True)  # fmt: skip
    assert plain.attrs["categories"] == {"size": ["high", "low"]}
    levels = pd.Categorical([3, 1, 2, 1], categories=[3, 2, 1], ordered=True)  # numbers, reversed
    coded = clean_table(pd.DataFrame({"n": levels, "a": [1.0, 2, 3, 4]}), "t", categories=True)
    assert coded["n"].tolist() == [0.0, 2.0, 1.0, 2.0]
    assert coded.attrs["categories"] == {"n": ["3", "2", "1"]}


@given(
    labels=st.lists(
        st.text(st.characters(categories=("L", "N"), max_codepoint=0x2FF), min_size=1, max_size=6),
        min_size=2,
        max_size=6,
        unique=True,
    ),
    data=st.data(),
)
def test_category_codes_round_trip(tmp_path_factory, labels: list[str], data) -> None:
    """Property: a text column written to CSV reads back as codes of its sorted labels, and the
    codes map back to the very values (whatever the labels: digits, letters, accents); scoring
    a file with the recorded labels gives the same codes, even if it holds fewer of them."""
    labels = ["x" + labels[0], *labels[1:]]  # one label that is text: not a number column
    rows = data.draw(st.lists(st.sampled_from(labels), min_size=3, max_size=20))
    # at least two labels (not a constant column), and over 10% of the cells text: not a column
    # of numbers with a few bad cells; "NA", "None", "nan" among the labels are labels
    rows = [*[labels[0]] * (1 + len(rows) // 8), labels[1], *rows]
    path = tmp_path_factory.mktemp("cat") / "t.csv"
    pd.DataFrame({"c": rows, "v": np.arange(len(rows), dtype=float)}).to_csv(path, index=False)
    table = nf.tables.read_table(path, categories=True)
    known = table.attrs["categories"]["c"]
    assert known == sorted(set(known)) and set(known) <= {str(label) for label in labels}
    decoded = [known[int(code)] for code in table["c"]]
    written = pd.read_csv(path, dtype=str, keep_default_na=False)["c"].str.strip()
    assert decoded == written.tolist()
    again = nf.tables.read_table(path, categories={"c": known}, allow_constant=True)
    assert again["c"].tolist() == table["c"].tolist()


def test_na_words_are_labels_in_text_columns_and_missing_in_number_columns(tmp_path) -> None:
    """An empty cell is missing in any column; pandas' missing-value words (``NA``, ``None``,
    ``N/A``, ``null``, ...) only in a column of numbers: in a text column they are labels
    (``NA`` = North America), not rows to drop."""
    path = _csv(tmp_path, "x,region,plan\n1,NA,None\n2,EU,Basic\n,AS,Pro\n4,NA,Pro\n5,EU,None\n")
    with pytest.raises(DataError, match=r"missing values in column\(s\) 'x' \(1\); drop") as info:
        nf.tables.read_table(path, categories=True)
    assert "region" not in str(info.value) and "plan" not in str(info.value)
    with pytest.warns(TableNote, match=r"t.csv: dropped 1 of 5 rows for missing values in column"):
        df = nf.tables.read_table(path, categories=True, drop_missing=True)
    cats = {"region": ["AS", "EU", "NA"], "plan": ["Basic", "None", "Pro"]}
    assert df.attrs["categories"] == cats  # learned before the incomplete row is dropped
    assert df["region"].tolist() == [2, 1, 2, 1] and df["plan"].tolist() == [1, 0, 2, 1]
    # in a column of numbers they are missing (R writes NA, also in its ";" decimal-comma files)
    path = _csv(tmp_path, "a,b\n1,NA\n2,N/A\n3,None\n4,null\n5,nan\n6,#N/A\n7,3\n8,4\n")
    with pytest.raises(DataError, match=r"missing values in column\(s\) 'b' \(6\)"):
        nf.tables.read_table(path)
    path = _csv(tmp_path, '"a";"b"\n1,5;NA\n2,25;3\nNA;4,5\n3;5\n')
    with pytest.warns(TableNote, match="dropped 2 of 4 rows"):
        df = nf.tables.read_table(path, drop_missing=True)
    assert df.to_numpy().tolist() == [[2.25, 3.0], [3.0, 5.0]]
    pytest.importorskip("pyarrow")  # parquet keeps real nulls: "NA" there is text
    frame = pd.DataFrame({"x": [1.0, 2.0, None, 4.0], "r": ["NA", "EU", "NA", "AS"]})
    frame.to_parquet(tmp_path / "p.parquet")
    with pytest.warns(TableNote, match="dropped 1 of 4 rows"):
        df = nf.tables.read_table(tmp_path / "p.parquet", categories=True, drop_missing=True)
    assert df.attrs["categories"] == {"r": ["AS", "EU", "NA"]} and df["r"].tolist() == [2, 1, 0]


def test_only_the_comment_lines_at_the_top_are_skipped(tmp_path) -> None:
    """``#`` comment lines at the top are skipped; a ``#`` further down is data (it had turned
    on pandas' ``comment="#"``, cutting fields and lines short)."""
    teams = ["red #1", "red #2", "blue #1", "blue #2"] * 3
    rows = "".join(f"{i},{i % 5},{t}\n" for i, t in enumerate(teams))
    path = _csv(tmp_path, "# source: survey 2024\n\n# second comment\nx,y,team\n" + rows)
    df = nf.tables.read_table(path, categories=True)
    assert df.attrs["categories"] == {"team": ["blue #1", "blue #2", "red #1", "red #2"]}
    assert df.shape == (12, 3) and df["y"].tolist() == [i % 5 for i in range(12)]
    rows = "".join(f"{i},item #{i % 3},{i * 2}\n" for i in range(9))  # "#" in a middle field
    df = nf.tables.read_table(_csv(tmp_path, "# exported\nx,label,y\n" + rows), categories=True)
    assert df["y"].tolist() == [i * 2 for i in range(9)]
    assert df.attrs["categories"] == {"label": ["item #0", "item #1", "item #2"]}


def test_a_few_bad_cells_in_a_number_column_are_named(tmp_path) -> None:
    """A column of numbers with a few cells that are not (at least 90% numbers, the others at
    most 5 cells or 5%) is an error naming the cells and their first data rows, not a column of
    categories (``1 … 5`` and ``?``) nor free text; mostly text stays categories."""
    prices = [f"{0.5 + i / 7:.2f}" for i in range(60)]
    prices[40] = "-"
    path = _csv(tmp_path, "x,price\n" + "".join(f"{i},{p}\n" for i, p in enumerate(prices)))
    for categories in (True, False):
        with pytest.raises(DataError) as info:
            nf.tables.read_table(path, categories=categories)
        assert str(info.value) == (
            f"{path}: column 'price' holds numbers but 1 cell is not a number: '-' (data row "
            "41); fix or blank those cells (a blank cell is missing; drop_missing=True / "
            "--drop-missing drops its row)"
        )
    ratings = [str(1 + i % 5) for i in range(30)]
    ratings[4] = ratings[17] = "?"
    ratings[9] = "-"
    path = _csv(tmp_path, "x,rating\n" + "".join(f"{i},{r}\n" for i, r in enumerate(ratings)))
    with pytest.raises(DataError, match=r"'rating' holds numbers but 3 cells are not numbers: "
                       r"'\?' \(data row 5\), '-' \(data row 10\); fix or blank"):  # fmt: skip
        nf.tables.read_table(path, categories=True)
    big = "".join(f'{i},"{1000 + 997 * i:,}"\n' for i in range(20))  # quoted, as spreadsheets do
    with pytest.raises(DataError, match=r"'b' holds numbers but 20 cells are written with "
                       r"thousands separators: '1,000' \(data row 1\), .*\('1000', not '1,000'\)"):  # fmt: skip
        nf.tables.read_table(_csv(tmp_path, "a,b\n" + big + "20,5\n"), categories=True)
    comma = "".join(f"{i},5;{i}\n" for i in range(20)) + "?;3\n"  # a decimal-comma file
    with pytest.raises(DataError, match=r"column 'x' holds numbers but 1 cell is not a number: "
                       r"'\?' \(data row 21\)") as info:  # fmt: skip
        nf.tables.read_table(_csv(tmp_path, "x;y\n" + comma), categories=True)
    assert "\n" not in str(info.value)
    # the threshold: 1 of 10 cells is a bad cell; 2 of 10 (or 6 of 100) make text categories
    levels = [str(1 + i % 4) for i in range(10)]
    frame = pd.DataFrame({"level": [*levels[:9], "top"], "v": np.arange(10.0)})
    with pytest.raises(DataError, match=r"'level' holds numbers but 1 cell is not a number: "
                       r"'top' \(data row 10\)"):  # fmt: skip
        nf.tables.clean_table(frame, "f.csv", categories=True)
    frame["level"] = [*levels[:8], "top", "top"]
    df = nf.tables.clean_table(frame, "f.csv", categories=True)
    assert df.attrs["categories"] == {"level": ["1", "2", "3", "4", "top"]}
    frame = pd.DataFrame(
        {"g": [*(str(i % 9) for i in range(94)), *["K"] * 6], "v": np.arange(100.0)}
    )
    assert (
        nf.tables.clean_table(frame, "f.csv", categories=True).attrs["categories"]["g"][-1] == "K"
    )


def test_as_tensor_takes_negatively_strided_views() -> None:
    """``df[["b", "a"]]`` (pandas 3) and ``x[:, ::-1]`` are views with negative strides, which
    ``torch.tensor`` refuses: ``as_tensor`` (behind ``nf.fit`` and the CLI) copies them."""
    x = np.arange(12.0).reshape(6, 2)
    frame = pd.DataFrame(x, columns=["a", "b"])
    for reversed_view in (frame[["b", "a"]], x[:, ::-1]):
        t = as_tensor(reversed_view, "w")
        assert t.tolist() == x[:, ::-1].tolist()
    history = nf.fit(nf.models.MAF(2, transforms=1, hidden=(8,)), frame[["b", "a"]], steps=2,
                     progress=False)  # fmt: skip
    assert history.steps == 2


def test_clean_table_can_keep_the_row_labels(tmp_path) -> None:
    """``keep_index=True``: the rows kept keep their labels (to pair them with other columns
    cleaned apart, as ``nfkit fit --weights`` does); by default they are renumbered."""
    frame = pd.DataFrame({"a": [1.0, None, 3.0, 4.0], "b": [5.0, 6.0, 7.0, 9.0]})
    with pytest.warns(TableNote):
        kept = nf.tables.clean_table(frame, "t.csv", drop_missing=True, keep_index=True)
    assert kept.index.tolist() == [0, 2, 3] and kept["b"].tolist() == [5.0, 7.0, 9.0]
    with pytest.warns(TableNote):
        renumbered = nf.tables.clean_table(frame, "t.csv", drop_missing=True)
    assert renumbered.index.tolist() == [0, 1, 2]


def test_parquet_rows_are_read_in_file_order_whatever_index_is_stored(tmp_path) -> None:
    """pandas stores a DataFrame's index with a .parquet file: the reader numbers the rows
    ``0 … n-1`` in file order (it had kept the stored labels, 7, 2, 5, which the command line
    then paired with the wrong rows); a named index is a column, as ``to_csv`` writes it."""
    pytest.importorskip("pyarrow")
    frame = pd.DataFrame({"id": np.arange(10), "x": np.arange(10) / 4})
    frame.iloc[[7, 2, 5]].to_parquet(tmp_path / "f.parquet")
    got = nf.tables.read_raw_table(tmp_path / "f.parquet")
    assert got.index.tolist() == [0, 1, 2] and list(got.columns) == ["id", "x"]
    assert got["id"].tolist() == [7, 2, 5]
    frame.set_index("id").iloc[::-1].to_parquet(tmp_path / "n.parquet")
    got = nf.tables.read_table(tmp_path / "n.parquet")
    assert list(got.columns) == ["id", "x"] and got["id"].tolist() == list(range(9, -1, -1))
    frame.set_index("id").assign(id=1).to_parquet(tmp_path / "c.parquet")
    with pytest.raises(DataError, match=r"c.parquet: its stored pandas index 'id' is also a"):
        nf.tables.read_raw_table(tmp_path / "c.parquet")


@pytest.mark.parametrize(
    ("text", "keep"),
    [
        ("region,y\nNA,1.5\nNA,2.5\n", ["region"]),  # had been all missing
        ("region,y\nNA,1.5\n02134,2.5\n", ["region"]),  # had been 2134.0 and missing
        ("NA,1.5\n02134,2.5\n", [0]),  # header-less: by position
        ("# region,y\nNA,1.5\n02134,2.5\n", ["region"]),  # names in a comment
    ],
)
def test_text_columns_are_read_as_written_in_every_layout(tmp_path, text, keep) -> None:
    """``read_raw_table(text=...)`` keeps the named columns (or, header-less, those at the
    given positions) as written: ``NA`` and ``02134`` are labels, not missing or numbers."""
    got = nf.tables.read_raw_table(_csv(tmp_path, text), text=keep)
    labels = [line.split(",")[0] for line in text.splitlines() if not line.startswith("#")]
    assert got.iloc[:, 0].tolist() == labels[-2:] and got.iloc[:, 1].tolist() == [1.5, 2.5]


def test_a_comment_above_a_header_row_does_not_name_the_columns(tmp_path) -> None:
    """A ``#`` comment with the separator in it (``# exported by logger, v2``) above a header
    row is a comment: it had named the columns 'exported by logger' and 'v2' and made the
    header a data row. Without a header row its names are the header, also over text."""
    path = _csv(tmp_path, "# exported by logger, v2\nheight,weight\n171.3,69.3\n176.4,70.5\n")
    got = nf.tables.read_table(path)
    assert list(got.columns) == ["height", "weight"]
    assert got.to_numpy().tolist() == [[171.3, 69.3], [176.4, 70.5]]
    path = _csv(tmp_path, "# team,score\nred,1.5\nblue,2.5\nred,3\n")
    got = nf.tables.read_table(path, categories=True)
    assert list(got.columns) == ["team", "score"] and got["score"].tolist() == [1.5, 2.5, 3.0]


def test_decimal_commas_outside_semicolon_files(tmp_path) -> None:
    """A decimal comma that cannot be a thousands separator (``0,126``, ``-0,536``, ``2,5``)
    is read as one in a tab-separated file (it had been refused with advice to drop the
    'thousands separators', which gave 126 for 0.126); ``1,250`` alone stays ambiguous."""
    got = nf.tables.read_table(_csv(tmp_path, "x\ty\n0,126\t-0,536\n0,640\t2,5\n", "t.tsv"))
    assert got.to_numpy().tolist() == [[0.126, -0.536], [0.64, 2.5]]
    with pytest.raises(DataError, match=r"thousands separators: '1,250' \(data row 1\)"):
        nf.tables.read_table(_csv(tmp_path, "x\ty\n1,250\t1\n2,500\t2\n3,750\t4\n", "a.tsv"))


def test_as_tensor_converts_integers_exactly_and_refuses_complex_tensors() -> None:
    """An integer tensor goes straight to the dtype asked for (16777217 had been rounded to
    16777216 through float32 first), float64 by default as for NumPy integers; a complex
    tensor is refused as a complex array is (its imaginary part had been dropped)."""
    import torch

    t = as_tensor(torch.tensor([[16777217, 3]]), "w", dtype=torch.float64)
    assert t.dtype == torch.float64 and t.tolist() == [[16777217.0, 3.0]]
    assert as_tensor(torch.tensor([[16777217, 1]]), "w").tolist() == [[16777217.0, 1.0]]
    assert as_tensor(np.array([[16777217, 1]]), "w").dtype == torch.float64
    with pytest.raises(TypeError, match=r"w: data must hold real numbers, got a torch.complex64"):
        as_tensor(torch.tensor([[1 + 5j, 2 + 0j]]), "w")


def test_decimals_read_back_exactly(tmp_path) -> None:
    """Shortest round-trip decimals (what ``to_csv`` writes) parse to the same doubles; pandas
    2's default converter read these one ulp off."""
    values = [0.33510375022888184, 90072.74735239055, -0.02369617484509945, 2.2438955307006836]
    (tmp_path / "t.csv").write_text("a\n" + "\n".join(map(repr, values)) + "\n")
    assert nf.tables.read_table(tmp_path / "t.csv")["a"].tolist() == values


@pytest.mark.parametrize(
    ("version", "exact_by_default"),
    [("2.3.3", False), ("3.0.6", False), ("3.1.0rc1", True), ("3.1.1", True), ("10.0", True)],
)
def test_exact_decimals_asked_for_below_pandas_3_1(version: str, exact_by_default: bool) -> None:
    """CI's pandas parses exactly by default; older ones (seen: 2.3.3, 3.0.6) get Python's
    converter, which ``test_decimals_read_back_exactly`` checks under such a pandas."""
    from nfkit.tables import _exact_floats

    assert _exact_floats(version) == (
        {} if exact_by_default else {"float_precision": "round_trip"}
    )


@pytest.mark.parametrize("dialect", ["NA cells", "decimal comma"])
def test_text_cells_parsed_as_numbers_read_back_exactly(tmp_path, dialect: str) -> None:
    """Columns that go through ``to_numbers`` (missing-value words, a decimal comma) keep the
    shortest round-trip decimals exactly too (pandas 2's ``to_numeric`` was one ulp off)."""
    values = [0.33510375022888184, 90072.74735239055, -0.02369617484509945, 2.2438955307006836]
    if dialect == "NA cells":
        text = "a,b\n" + "\n".join(f"{v!r},{i}" for i, v in enumerate(values)) + "\nNA,9\n"
    else:
        text = "a;b\n" + "\n".join(f"{v!r};{i}".replace(".", ",") for i, v in enumerate(values))
    (tmp_path / "t.csv").write_text(text + "\n")
    if dialect == "NA cells":
        with pytest.warns(TableNote, match="dropped 1 of 5 rows for missing values in column"):
            got = nf.tables.read_table(tmp_path / "t.csv", drop_missing=True)["a"].tolist()
    else:
        got = nf.tables.read_table(tmp_path / "t.csv")["a"].tolist()
    assert got == values


def test_a_symbolic_link_loop_is_named(tmp_path) -> None:
    """Named by the read itself (Python 3.13's ``Path.resolve`` no longer raises on a loop)."""
    import os

    os.symlink(tmp_path / "b.csv", tmp_path / "a.csv")
    os.symlink(tmp_path / "a.csv", tmp_path / "b.csv")
    with pytest.raises(DataError, match=r"a\.csv: a symbolic link loop; it leads to no file$"):
        nf.tables.read_table(tmp_path / "a.csv")


@pytest.mark.parametrize("marker", ["#N/A", "None", "<NA>", "NULL", "-nan"])
def test_a_missing_value_marker_in_a_header_less_first_row_is_no_header(tmp_path, marker) -> None:
    """The reader takes every one of these as missing; the header sniff took only nan/na/n/a/
    null, so a first data row holding '#N/A' became the column names (a row lost, data as names)."""
    rows = [["0.5", marker, "1.5"], ["0.25", "2.0", "-1.0"], ["1.0", "3.0", "0.0"]]
    (tmp_path / "t.csv").write_text("".join(",".join(r) + "\n" for r in rows))
    with pytest.warns(
        TableNote, match=r"dropped 1 of 3 rows for missing values in column\(s\) 'x1'"
    ):
        df = nf.io.read_table(tmp_path / "t.csv", drop_missing=True)  # the marker's row
    assert len(df) == 2 and list(df.columns) == ["x0", "x1", "x2"], df


def test_values_beyond_the_target_dtype_are_named_not_called_inf() -> None:
    """1e39 is finite in the table and inf in float32: the cast made it inf after the check,
    and scoring said "x contains inf values" of a file holding none, naming no column."""
    df = pd.DataFrame({"a": [10.0, 1e39], "b": [-5.0, -5.0]})
    with pytest.raises(
        ValueError, match=r"^w: data column 'a' has values beyond the range of float32 .*1e\+39"
    ):
        nf.io.as_tensor(df, "w", dtype=torch.float32)
    assert nf.io.as_tensor(df, "w", dtype=torch.float64)[1, 0] == 1e39


def test_quoted_decimal_commas_in_a_comma_separated_file_are_numbers(tmp_path) -> None:
    """A spreadsheet in a decimal-comma locale writing a comma-separated file quotes its
    numbers ("70,5"): they became categories (or "an identifier?"). Whole numbers beside them
    stay numbers; a column of thousands groups alone ("1,250") is not read as decimals."""
    (tmp_path / "lo.csv").write_text(
        'weight,score,count\n"70,5","4,5","1,250"\n"68","3,0","2,500"\n"71,25","5","3,750"\n'
    )
    with pytest.raises(nf.io.DataError, match="count"):  # thousands separators: refused by name
        nf.io.read_table(tmp_path / "lo.csv")
    df = nf.io.read_table(tmp_path / "lo.csv", columns=["weight", "score"])
    assert df.to_numpy().tolist() == [[70.5, 4.5], [68.0, 3.0], [71.25, 5.0]]


def test_a_header_less_whitespace_table_with_decimal_commas(tmp_path) -> None:
    """"-0,8 0,2" splits on ',' into three fields on every line ("-0", "8 0", "2"): the comma
    was taken as the separator, the first row as a header and the middle column as 39
    categories, with exit 0. Comma files with text holding spaces keep the comma."""
    (tmp_path / "w.txt").write_text("-0,8 0,2\n-1,7 0,7\n1,25 -3,5\n0,5 2,0\n")
    df = nf.io.read_table(tmp_path / "w.txt")
    assert list(df.columns) == ["x0", "x1"]
    assert df.to_numpy().tolist() == [[-0.8, 0.2], [-1.7, 0.7], [1.25, -3.5], [0.5, 2.0]]
    (tmp_path / "c.csv").write_text("city,n\nNew York,3\nSan Jose,5\nLima,2\n")
    assert nf.io.read_table(tmp_path / "c.csv", categories=True).shape == (3, 2)
    (tmp_path / "s.csv").write_text("1, 2, 3\n4, 5, 6\n")
    assert nf.io.read_table(tmp_path / "s.csv").to_numpy().tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sep=;\na;b\n1,5;2\n2,5;3\n", [[1.5, 2.0], [2.5, 3.0]]),  # Excel, decimal commas
        ("\ufeffSEP=,\r\na,b\r\n1.5,2\r\n2.5,3\r\n", [[1.5, 2.0], [2.5, 3.0]]),
        ("sep=\t\na\tb\n1.5\t2\n2.5\t3\n", [[1.5, 2.0], [2.5, 3.0]]),
        ("# units: m\nsep=|\na|b\n1.5|2\n2.5|3\n", [[1.5, 2.0], [2.5, 3.0]]),
    ],
)
def test_spreadsheet_separator_line(tmp_path, text: str, expected: list) -> None:
    """Excel's first line ``sep=;`` names the separator and is no row: it had been read as the
    header (column ``sep=``), the real header as data and every column as categories, exit 0."""
    (tmp_path / "t.csv").write_text(text, encoding="utf-8", newline="")
    got = nf.tables.read_table(tmp_path / "t.csv")
    assert list(got.columns) == ["a", "b"] and got.to_numpy().tolist() == expected
