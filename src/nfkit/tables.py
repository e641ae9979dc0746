r"""Tables: reading and writing numeric data files (CSV/TSV/text, compressed or not, ``.npy``,
``.parquet``) and checking them.

Every problem is a :class:`DataError` with one line naming the file and the problem.
:func:`read_table` is what ``nfkit fit``/``score`` and ``nf.datasets.load`` read files with, and
:func:`write_table` what ``nfkit sample``/``score`` write with (the format named by the suffix);
:func:`as_tensor` turns a Tensor, NumPy array or DataFrame into the float tensor ``nf.fit`` trains on.
"""

from __future__ import annotations

import bz2
import csv
import errno
import gzip
import io
import lzma
import math
import os
import re
import stat
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nfkit._checks import one_line

__all__ = [
    "read_table",
    "read_raw_table",
    "float32_blurred_columns",
    "write_table",
    "check_table_path",
    "clean_table",
    "as_tensor",
    "DataError",
    "TableNote",
]


class DataError(ValueError):
    """A data file or table that cannot be used; the message is one line naming the problem."""


class TableNote(UserWarning):
    """Something the reader did to a table that its user should hear of (a dropped row-index
    column, rows dropped for missing values); ``nfkit`` prints these as ``nfkit: note: ...``."""


# --------------------------------------------------------------------------- file formats

_TEXT_SUFFIXES = (".csv", ".tsv", ".txt")
_SUFFIXES = (*_TEXT_SUFFIXES, ".npy", ".parquet")
_COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zip": "zip", ".zst": "zstd"}


def _table_format(path: Path) -> tuple[str, str | None]:
    """``(suffix, compression)`` of a table file from its name: ``data.csv.gz`` gives
    ``(".csv", "gzip")``. An unknown suffix, or compression of a binary format, is a
    :class:`DataError`."""
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    compression = _COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    suffix = (suffixes[-2] if len(suffixes) == 2 else "") if compression else path.suffix.lower()
    if suffix not in _SUFFIXES:
        known = ", ".join(_SUFFIXES)
        named = "".join(suffixes[-2:]) if compression else suffix
        raise DataError(
            f"{path}: unknown table file type {named or '(none)'!r}; expected {known}, "
            "or a text table compressed as .gz, .bz2, .xz, .zst or .zip (data.csv.gz)"
        )
    if compression and suffix not in _TEXT_SUFFIXES:
        raise DataError(f"{path}: only text tables are read and written compressed, not {suffix}")
    return suffix, compression


def check_table_path(path: str | os.PathLike[str], *, writing: bool = False) -> None:
    """Raise :class:`DataError` unless ``path`` names a table format nfkit reads (writes, with
    ``writing=True``, which also checks that ``pyarrow`` is there for ``.parquet``): so that a
    command fails before its work, not after."""
    suffix, _ = _table_format(Path(path))
    if writing and suffix == ".parquet":
        _pyarrow(Path(path), "writing")


def _pyarrow(path: Path, doing: str) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path}: {doing} .parquet files needs pyarrow (pip install 'nfkit[parquet]')"
        ) from None
    return pq


def write_table(df: Any, path: str | os.PathLike[str]) -> Path:
    """Write a DataFrame atomically (a temporary file, then a rename) in the format its suffix
    names: ``.csv``/``.txt`` (commas), ``.tsv`` (tabs), each also compressed as ``.gz``,
    ``.bz2``, ``.xz``, ``.zst`` (needs ``zstandard``) or ``.zip``; ``.parquet`` (needs ``pyarrow``; column names kept); ``.npy``
    (a float64 array, names dropped). The row index is not written. What :func:`read_table`
    reads back as the same table."""
    from nfkit.io import atomic_write

    path = Path(path)
    suffix, compression = _table_format(path)
    if suffix == ".parquet":
        pq = _pyarrow(path, "writing")
        import pyarrow as pa

        table = pa.Table.from_pandas(df, preserve_index=False)
        return atomic_write(path, lambda f: pq.write_table(table, f))
    if suffix == ".npy":
        array = df.to_numpy(dtype=np.float64)
        return atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))
    options: Any = compression
    if compression == "zstd":
        _zstandard(path)  # a clear error when it is missing
    if compression == "zip":  # one member, named as the file without ".zip"
        options = {"method": "zip", "archive_name": path.stem}
    sep = "\t" if suffix == ".tsv" else ","
    return atomic_write(path, lambda f: df.to_csv(f, index=False, sep=sep, compression=options))


# --------------------------------------------------------------------------- text tables

_SEPARATORS = ("\t", ";", "|", ",")  # tried in this order; "," last: it is also a decimal mark
_EXCEL_SEP = re.compile(r" *sep=(\t|[^\s\w.\"']) *", re.IGNORECASE)  # spreadsheets' first line
_DECIMAL_COMMA = re.compile(r"\s*[-+]?(\d+,\d*|,\d+)([eE][-+]?\d+)?\s*")
# a whole number or one with a decimal comma and digits after it (never "1," as in "1, 2")
_PLAIN_OR_COMMA = re.compile(r"[-+]?(\d+,\d+|\d+)([eE][-+]?\d+)?")
# a number with thousands separators: 13,210 or 1,234.5 (decimal point), 1.234,5 (decimal comma);
# never a first group of 0 (0,126 is a decimal comma)
_GROUPED = r"[-+]?(?:[1-9]\d{0,2}(?:,\d{3})+(?:\.\d*)?|[1-9]\d{0,2}(?:\.\d{3})+(?:,\d*)?)"


# Below pandas 3.1, read_csv's default decimal converter ("high") is not correctly rounded:
# 0.33510375022888184, as to_csv writes it, reads back one ulp off (seen with 2.3.3 and 3.0.6);
# "round_trip" is Python's exact one. pandas 3.1 parses exactly by default and deprecates the
# option.
def _exact_floats(pandas_version: str) -> dict[str, str]:
    """``read_csv``'s keyword for correctly rounded decimals under this pandas version."""
    major, minor = (int(re.match(r"\d+", p)[0]) for p in pandas_version.split(".")[:2])
    return {"float_precision": "round_trip"} if (major, minor) < (3, 1) else {}


def to_numbers(cells: Any) -> Any:
    """``pd.to_numeric(cells, errors="coerce")``, correctly rounded under every pandas: below
    3.1 its converter is one ulp off for some decimals (as ``read_csv``'s), so there the cells
    it reads as numbers are parsed again by Python's ``float``."""
    import pandas as pd

    numbers = pd.to_numeric(cells, errors="coerce")
    if not _exact_floats(pd.__version__) or numbers.dtype.kind != "f" or cells.dtype.kind != "O":
        return numbers  # exact already, or no text cells to parse
    numbers, read = numbers.copy(), numbers.notna()
    exact = cells[read].map(_float_or_nan)
    numbers[read] = exact.where(exact.notna(), numbers[read])
    return numbers


def _float_or_nan(cell: Any) -> float:
    try:
        return float(cell)
    except (TypeError, ValueError):
        return math.nan


# pandas' default missing-value strings (read_csv's na_values); a text table's empty cell is
# missing in any column, these only in a column of numbers (see _resolve_na)
_NA_TOKENS = frozenset(
    {"#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN"}
    | {"<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
)


@dataclass(frozen=True)
class _TextFormat:
    """How a text table is written: the separator (None: runs of whitespace), the decimal mark,
    whether there is a header, its names as written, how many lines the ``#`` comment lines at
    the top take (``skiprows``), and whether the names come from the first comment (else from
    the first row)."""

    sep: str | None
    decimal: str
    header: bool
    names: list[str]
    skip: int = 0
    names_in_comment: bool = False


def _fields(line: str, sep: str | None) -> list[str]:
    """One line's fields: split by ``sep`` with CSV quoting, or by runs of whitespace (None)."""
    if sep is None:
        return line.split()
    return next(csv.reader([line], delimiter=sep), [])


def _open_text(path: Path, compression: str | None) -> Any:
    """A UTF-8 text stream of a file, decompressed (a byte-order mark dropped). A ``.zip``
    archive must hold one file."""
    text = {"encoding": "utf-8-sig", "newline": ""}
    if compression == "zip":
        archive = zipfile.ZipFile(path)
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) != 1:
            archive.close()
            raise DataError(f"{path}: a .zip table must hold one file, found {len(members)}")
        return io.TextIOWrapper(archive.open(members[0]), **text)
    if compression == "zstd":
        return _zstandard(path).open(path, "rt", **text)
    opener = {None: open, "gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}[compression]
    return opener(path, "rt", **text)


def _decompression_errors() -> tuple[type[BaseException], ...]:
    """What a corrupt compressed file raises (``zstandard``'s error when it is installed)."""
    errors: tuple[type[BaseException], ...] = (
        OSError,
        EOFError,
        lzma.LZMAError,
        zipfile.BadZipFile,
    )
    try:
        import zstandard
    except ImportError:
        return errors
    return (*errors, zstandard.ZstdError)


def _zstandard(path: Path) -> Any:
    """The ``zstandard`` module (an optional dependency: ``pip install 'nfkit[zst]'``)."""
    try:
        import zstandard
    except ImportError:
        raise DataError(
            f"{path}: .zst tables need the zstandard package: pip install 'nfkit[zst]'"
        ) from None
    return zstandard


def _sample_lines(
    path: Path, compression: str | None, limit: int = 50
) -> tuple[list[str], list[str], int, str | None]:
    """The ``#`` comment lines at the top of a UTF-8 text file (a byte-order mark dropped), the
    first ``limit`` non-blank lines after them, how many lines the comments take, blank lines
    among them included (what ``read_csv(skiprows=)`` skips), and the separator named by a
    spreadsheet's ``sep=;`` line before the table (skipped too; None without one). A ``#``
    further down is data."""
    comments: list[str] = []
    lines: list[str] = []
    skip = 0
    named: str | None = None
    with _open_text(path, compression) as f:
        for number, line in enumerate(f):
            if not line.strip():
                continue
            line = line.rstrip("\r\n")
            if not lines and line.lstrip().startswith("#"):
                comments.append(line)
                skip = number + 1
                continue
            excel = _EXCEL_SEP.fullmatch(line) if not lines and named is None else None
            if excel:  # Excel's "sep=;" line: the separator, not a row
                named, skip = excel.group(1), number + 1
                continue
            lines.append(line)
            if len(lines) == limit:
                break
    return comments, lines, skip, named


def _separator(lines: list[str], suffix: str) -> str | None:
    """Tab for ``.tsv``; else the first of tab, ``;``, ``|`` and ``,`` that splits every sampled
    line into the same number (> 1) of fields, else runs of whitespace (None) if they do (as
    ``np.savetxt`` writes). When none does (ragged rows), the one that splits the most lines into
    their most common number (> 1) of fields, so that the parser names the odd row; ``,`` for a
    single column."""
    if suffix == ".tsv":
        return "\t"
    best: tuple[int, str | None] = (0, ",")
    for sep in (*_SEPARATORS, None):
        counts = [len(_fields(line, sep)) for line in lines]
        modal = max(set(counts), key=counts.count) if counts else 0
        if modal > 1 and counts.count(modal) == len(counts):
            if sep == "," and _whitespace_with_decimal_commas(lines):
                continue  # "-0,8 0,2": columns of decimal commas, not fields "-0", "8 0", "2"
            return sep
        if modal > 1 and counts.count(modal) > best[0]:
            best = (counts.count(modal), sep)
    return best[1]


def _whitespace_with_decimal_commas(lines: list[str]) -> bool:
    """Whether ``lines`` are whitespace-separated numbers written with decimal commas (``-0,8
    0,2``): a comma split leaves a field with inner whitespace, and every line splits on
    whitespace into the same number (> 1) of numbers, plain or ``d,d``."""
    if not any(re.search(r"\S\s+\S", f.strip()) for line in lines for f in line.split(",")):
        return False
    rows = [line.split() for line in lines]
    return (
        bool(rows)
        and len(rows[0]) > 1
        and all(len(r) == len(rows[0]) for r in rows)
        and all(_PLAIN_OR_COMMA.fullmatch(f) for r in rows for f in r)
    )


def _is_number(field: str, decimal: str = ".") -> bool:
    field = field.strip()
    if field == "":
        return True  # a missing value does not make a header
    try:
        float(field.replace(",", ".") if decimal == "," else field)
    except ValueError:
        # a missing-value marker (every one the reader takes: #N/A, None, ...) is no header
        return field in _NA_TOKENS or field.lower() in ("nan", "na", "n/a", "null")
    return True


def _heads_numbers(rows: list[list[str]], decimal: str) -> bool:
    """Whether the first row is a header row: a field that is not a number over a column of
    numbers (or, with no rows below, any such field). A text field over text is data."""
    first, below = (rows[0], rows[1:]) if rows else ([], [])
    return any(
        not _is_number(f, decimal) and all(_is_number(r[j], decimal) for r in below if j < len(r))
        for j, f in enumerate(first)
    )


def _text_format(path: Path, header: bool | None, compression: str | None) -> _TextFormat:
    """Separator, decimal mark and header of a text table, from its first 50 non-blank lines.

    ``;``-separated files whose numbers use a decimal comma (``1,5;2,25``, as spreadsheets
    write them in many locales) are read with ``decimal=","``; so are files with other
    separators (not ``,``) when a decimal comma cannot be a thousands separator (``0,126``,
    ``2,5``) and no number has a decimal point. A ``#`` comment names the columns when it fits
    them and no header row follows (:func:`_heads_numbers`).
    """
    comments, body, skip, named = _sample_lines(path, compression)
    sep = named or _separator(body, _table_format(path)[0])
    rows = [_fields(line, sep) for line in body]
    cells = [f for row in rows for f in row]
    decimal = "."
    if sep == ";" and any(_DECIMAL_COMMA.fullmatch(f) for row in rows[1:] for f in row):
        decimal = ","
    elif sep != "," and not any("." in f and _is_number(f) for f in cells):
        # "0,126" or "2,5" (say tab-separated) is never a thousands separator; "1,250" may be
        commas = [f.strip() for f in cells if _DECIMAL_COMMA.fullmatch(f)]
        decimal = "," if any(not re.fullmatch(_GROUPED, f) for f in commas) else "."
    first = rows[0] if rows else []
    if comments and header is not False and not _heads_numbers(rows, decimal):
        # np.savetxt(header="a b") writes "# a b": names when no header row follows
        named = _fields(comments[0].lstrip()[1:], sep)
        if rows and len(named) == len(rows[0]) and not all(_is_number(f) for f in named):
            return _TextFormat(sep, decimal, True, [f.strip() for f in named], skip, True)
    if header is None:
        header = bool(first) and not all(_is_number(f, decimal) for f in first)
    names = [f.strip() for f in first] if header else []
    return _TextFormat(sep, decimal, bool(header), names, skip)


def _read_text(
    path: Path, header: bool | None, compression: str | None, text: Sequence[str | int] = ()
) -> Any:
    """A CSV, TSV or whitespace-separated text table, perhaps compressed, as a DataFrame
    (columns as written, or
    ``x0, x1, …`` without a header). A first column with an empty name and distinct, non-float
    values (the row index ``DataFrame.to_csv`` writes) and columns with an empty name and no
    values (a separator at the end of every line) are not data and are dropped. The columns
    in ``text`` (names; 0-based positions in a file without a header) are read as written
    (category labels such as ``02134`` or ``NA``), not as numbers or missing values."""
    import pandas as pd

    try:
        fmt = _text_format(path, header, compression)
        # the text columns' positions: by name under a header, else as given (ints)
        at = (
            {i for i, name in enumerate(fmt.names) if name in text}
            if fmt.header
            else {i for i in text if isinstance(i, int)}
        )
        with warnings.catch_warnings():
            # rows longer than the header: pandas would shift the extra fields into the index
            # (index_col=None) or drop them (index_col=False, with this warning)
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(
                path,
                sep=r"\s+" if fmt.sep is None else fmt.sep,
                decimal=fmt.decimal,
                header=0 if fmt.header and not fmt.names_in_comment else None,
                skiprows=fmt.skip,
                keep_default_na=False,  # "NA" may be a label: _resolve_na decides per column
                na_values=[""],
                dtype={i: str for i in at} or None,
                index_col=False,
                skipinitialspace=True,
                encoding="utf-8",
                compression=compression,
                **_exact_floats(pd.__version__),
            )
    except DataError:
        raise
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except pd.errors.ParserWarning:
        raise DataError(
            f"{path}: rows have more fields than the header's {len(fmt.names)} "
            "(a separator at the end of each data row, or a missing column name?)"
        ) from None
    except (pd.errors.ParserError, ValueError) as e:
        raise DataError(f"{path}: cannot parse as a table ({one_line(e, 80)})") from None
    except _decompression_errors() as e:
        if compression is None:
            raise
        raise DataError(
            f"{path}: cannot decompress as {compression} ({one_line(e, 80)})"
        ) from None
    df = _resolve_na(df, fmt.decimal, at)
    if not fmt.header:
        df.columns = [f"x{i}" for i in range(df.shape[1])]
        df.attrs["header"] = False  # (names given here: a model's columns go by position)
        return df
    if fmt.names_in_comment:
        df.columns = fmt.names
    repeated = sorted({c for c in fmt.names if c and fmt.names.count(c) > 1})
    if repeated:  # pandas renames a repeated name to "a.1": look at the header as written
        raise DataError(f"{path}: duplicate column name(s) {', '.join(map(repr, repeated))}")
    unnamed = [i for i, name in enumerate(fmt.names[: df.shape[1]]) if not name]
    drop = {i for i in unnamed if df.iloc[:, i].isna().all()}  # a separator ending every line
    if unnamed[:1] == [0] and 0 not in drop and _is_row_index(df.iloc[:, 0]):
        drop.add(0)
        warnings.warn(
            f"{path}: dropped the unnamed first column, a row index (distinct values, as "
            "DataFrame.to_csv writes it); give it a name to model it",
            TableNote,
            stacklevel=3,
        )
    keep = [i for i in range(df.shape[1]) if i not in drop]
    df = df.iloc[:, keep]
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _parse_numbers(text: Any, decimal: str = ".") -> Any:
    """The cells of a column of stripped strings that are numbers, as floats (NaN elsewhere);
    with ``decimal=","`` a number is written ``1,5`` and a cell with a ``.`` is not one (as
    ``read_csv(decimal=",")`` reads them)."""

    if decimal == ",":
        text = text.where(~text.str.contains(".", regex=False, na=False))
        text = text.str.replace(",", ".", regex=False)
    return to_numbers(text)


def _few_non_numbers(numeric: Any) -> bool:
    """Whether a column whose present cells are flagged ``numeric`` (booleans) is a column of
    numbers with a few bad cells: at least 90% of the cells are numbers and the others at most
    5 cells or 5% of them. Otherwise it is text (categories)."""
    cells = len(numeric)
    bad = cells - int(numeric.sum())
    return cells > 0 and bad <= max(min(5.0, cells / 10), cells / 20)


def _resolve_na(df: Any, decimal: str, as_written: set[int]) -> Any:
    """A text table read with only empty cells missing, with pandas' missing-value strings
    (``NA``, ``N/A``, ``None``, ``null``, ``nan``, ...) made missing in the columns of numbers
    (:func:`_few_non_numbers`; R and spreadsheets write ``NA`` for a missing number) and kept as
    labels in text columns (``NA`` = North America). A column of numbers with a decimal comma
    and a bad cell keeps its text, its numbers written with ``.``, for :func:`_numeric` to name
    the bad cells. The columns at the positions ``as_written`` are left as read (labels)."""
    import pandas as pd

    for i in range(df.shape[1]):
        col = df.iloc[:, i]
        if i in as_written or pd.api.types.infer_dtype(col, skipna=True) != "string":
            continue
        text = col.str.strip()
        na = text.isin(_NA_TOKENS)
        if not bool(na.any()) and decimal == ".":
            continue  # text, or numbers with bad cells: _numeric names those
        numbers = _parse_numbers(text.mask(na), decimal)
        cells = text.notna() & ~na
        numeric = numbers.notna() | text.str.fullmatch(_GROUPED).fillna(False).astype(bool)
        if bool(cells.any()) and not _few_non_numbers(numeric[cells]):
            continue  # a text column: "NA" is a label
        if bool((numbers.notna() | ~cells).all()):
            df.isetitem(i, numbers.astype("float64"))
        else:
            fixed = text.mask(na)
            if decimal == ",":
                fixed = fixed.where(numbers.isna(), fixed.str.replace(",", ".", regex=False))
            df.isetitem(i, fixed)
    return df


def _non_numbers_error(path: Path, name: str, col: Any, bad: Any) -> DataError:
    """The error for a column of numbers with a few cells that are not (``bad``, booleans):
    each distinct bad value with the first data row (1 = the first row after the header) it is
    in, and what to do."""
    import pandas as pd

    rows = np.flatnonzero(bad.to_numpy()) + 1
    values = pd.Series([str(v).strip() for v in col[bad]], index=rows)
    is_grouped = values.str.fullmatch(_GROUPED).astype(bool)
    grouped = values[is_grouped]
    first = pd.concat([values[~is_grouped], grouped])  # the cells to fix by hand first
    first = first[~first.duplicated()]
    shown = ", ".join(f"{v!r} (data row {r})" for r, v in first.iloc[:5].items())
    shown += ", ..." if len(first) > 5 else ""
    k = len(values)
    what = "1 cell is not a number" if k == 1 else f"{k} cells are not numbers"
    blank = "a blank cell is missing; drop_missing=True / --drop-missing drops its row"
    if not len(grouped):
        return DataError(
            f"{path}: column {name!r} holds numbers but {what}: {shown}; fix or blank "
            f"those cells ({blank})"
        )
    example = grouped.iloc[0]
    plain = example.replace(re.search("[,.]", example).group(), "")  # type: ignore[union-attr]
    fix = f"write numbers without thousands separators ({plain!r}, not {example!r})"
    if len(grouped) == k:
        what = "1 cell is" if k == 1 else f"{k} cells are"
        return DataError(
            f"{path}: column {name!r} holds numbers but {what} written with thousands "
            f"separators: {shown}; {fix}"
        )
    return DataError(
        f"{path}: column {name!r} holds numbers but {what}: {shown}; {fix}, and fix or blank "
        f"the other cells ({blank})"
    )


def _is_row_index(column: Any) -> bool:
    """Whether an unnamed first column is the row index ``DataFrame.to_csv`` writes: its values
    distinct and not floats (``0 … n-1``, or shuffled or filtered row numbers, labels, dates).
    Distinct floats are kept: a measurement under a missing name is data."""
    import pandas as pd

    return (
        not pd.api.types.is_float_dtype(column.dtype)
        and bool(column.notna().all())
        and bool(column.is_unique)
    )


# --------------------------------------------------------------------------- other formats


def _real_dtype(dtype: Any) -> bool:
    """Booleans, integers and floats (NumPy or pandas dtypes): what a density can be put on.
    Complex numbers are numeric but not real: casting them would drop the imaginary part."""
    import pandas as pd

    is_number = pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
    return is_number and not pd.api.types.is_complex_dtype(dtype)


def _read_npy(path: Path) -> Any:
    import pandas as pd

    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(f"{path}: cannot read as .npy ({one_line(e, 80)})") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: expected one array, got an archive of several")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a 1-D or 2-D array, got shape {arr.shape}")
    if not _real_dtype(arr.dtype):
        raise DataError(f"{path}: expected an array of real numbers, got dtype {arr.dtype}")
    df = pd.DataFrame(arr, columns=[f"x{i}" for i in range(arr.shape[1])])
    df.attrs["header"] = False  # (names given here: a model's columns go by position)
    return df


def _read_parquet(path: Path) -> Any:
    """A ``.parquet`` table with rows numbered ``0 … n-1`` in file order. A pandas index stored
    with it is not kept as the row labels: a named one is a column (as ``to_csv`` writes it),
    an unnamed one (the labels of a filtered or re-ordered frame) is dropped."""
    pq = _pyarrow(path, "reading")
    try:
        df = pq.read_table(path).to_pandas()
    except Exception as e:
        raise DataError(f"{path}: cannot read as parquet ({one_line(e, 80)})") from None
    named = [name for name in df.index.names if name is not None]
    clash = [name for name in named if name in df.columns]
    if clash:
        raise DataError(f"{path}: its stored pandas index {clash[0]!r} is also a column's name")
    df = df.reset_index(level=named) if named else df
    df = df.reset_index(drop=True)
    df.columns = [str(c) for c in df.columns]
    return df


Categories = dict[str, list[str]]


def _decimal_commas(col: Any) -> bool:
    """Whether a text column's cells are numbers written with a decimal comma (``"70,5"``,
    quoted in a comma-separated file, as a spreadsheet in many locales writes them; a file
    of another separator is read with ``decimal=","`` instead): every cell a plain number or a
    decimal-comma one, at least one of those not a thousands group (``1,250`` alone may be)."""
    cells = col[col.notna()].astype(str).str.strip()
    comma = cells.str.fullmatch(_DECIMAL_COMMA.pattern)
    plain = to_numbers(cells).notna() & ~cells.str.contains(".", regex=False)
    return (
        bool(comma.any())
        and bool((comma | plain).all())
        and not bool(cells[comma].str.fullmatch(_GROUPED).all())
    )


FLAG_LABELS = ("False", "True")  # a column pandas read as booleans, as categories


def flag_label(value: str) -> str:
    """``value`` as a flag's label when it spells a boolean in any case (``TRUE``, ``false``:
    pandas reads those as booleans in a training file, while a table read as text later keeps
    them as written), else unchanged."""
    return {"true": "True", "false": "False"}.get(value.strip().lower(), value)


def _as_labels(col: Any) -> Any:
    """A column's values as category labels (strings; missing values kept): text stripped,
    whole numbers without a decimal point (a category column whose labels all look like numbers
    is read as numbers)."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(col.dtype):
        return col.map(lambda v: None if pd.isna(v) else str(bool(v))).astype("string")
    if _real_dtype(col.dtype):
        values = [
            None if pd.isna(v) else str(int(v)) if float(v).is_integer() else str(v) for v in col
        ]
        return pd.Series(values, index=col.index, dtype="string")
    return col.astype("string").str.strip()


def _numeric(df: Any, path: Path, categories: bool | Categories) -> tuple[Any, Categories]:
    """The columns as float64, and the labels of the text columns read as categories (their
    integer codes ``0 … K-1`` in the table: learned here if ``categories`` is True, the given
    labels if it is a dict; any other text column is an error)."""
    import pandas as pd

    out, labels = {}, {}
    for name in df.columns:
        col = df[name]
        known = categories.get(name) if isinstance(categories, dict) else None
        if known is None and categories is True and pd.api.types.is_bool_dtype(col.dtype):
            known = list(FLAG_LABELS)  # a flag: two categories, False first (codes 0, 1)
        if known is None:  # a number column, or one to learn categories from
            if _real_dtype(col.dtype):
                out[name] = col.astype("float64")
                continue
            converted = to_numbers(col)
            bad = converted.isna() & col.notna()
            textual = pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col)
            if textual and bool(bad.any()) and _decimal_commas(col):
                converted = to_numbers(col.astype("string").str.strip().str.replace(",", "."))
                bad = converted.isna() & col.notna()
            if not bool(bad.any()) and textual:
                out[name] = converted.astype("float64")
                continue
            if textual:  # numbers with a few bad cells ("-", "?", "13,210") are not categories
                present = col.notna()
                grouped = col[present].astype(str).str.strip().str.fullmatch(_GROUPED)
                if _few_non_numbers(converted[present].notna() | grouped.astype(bool)):
                    raise _non_numbers_error(path, name, col, bad)
            labelled = textual or isinstance(col.dtype, pd.CategoricalDtype)
            if not labelled or categories is not True:
                example = col[bad].iloc[0] if bool(bad.any()) else col.dtype
                raise DataError(
                    f"{path}: column {name!r} is not numeric (e.g. {example!r}); "
                    "only numeric columns can be modelled"
                )
        text = _as_labels(col)
        if known is not None and tuple(known) == FLAG_LABELS:  # a flag: TRUE, true, ... too
            text = text.map(flag_label, na_action="ignore").astype("string")
        if known is None and isinstance(col.dtype, pd.CategoricalDtype) and col.dtype.ordered:
            # an ordinal scale ("low" < "medium" < "high"): codes in its declared order, every
            # declared level included
            levels = _as_labels(pd.Series(col.dtype.categories))
            known = list(dict.fromkeys(levels.tolist()))
        if known is None:
            known = sorted(text.dropna().unique().tolist())
            if len(known) > max(20, text.notna().sum() // 2):
                raise DataError(
                    f"{path}: column {name!r} has {len(known)} distinct text values in "
                    f"{len(col)} rows, too many for categories (an identifier or free text?); "
                    "drop it"
                )
        codes = text.map({label: i for i, label in enumerate(known)})
        unknown = codes.isna() & text.notna()
        if bool(unknown.any()):
            shown_known = ", ".join(map(repr, known[:10])) + (", ..." if len(known) > 10 else "")
            raise DataError(
                f"{path}: column {name!r} has the category {text[unknown].iloc[0]!r}, which the "
                f"model was not fitted on (it knows {shown_known})"
            )
        out[name] = codes.astype("float64")
        labels[name] = list(known)
    return pd.DataFrame(out, index=df.index), labels


def clean_table(
    df: Any,
    source: str | os.PathLike[str] = "table",
    *,
    drop_missing: bool = False,
    drop_constant: bool = False,
    allow_constant: bool = False,
    categories: bool | Categories = False,
    missing_ok: Sequence[str] = (),
    keep_index: bool = False,
) -> Any:
    """Check a DataFrame: numeric columns, no missing/infinite values, no constant column.

    Returns a float64 copy (rows with missing values dropped if ``drop_missing``; constant
    columns dropped if ``drop_constant``; ``allow_constant`` skips the constant-column and
    two-row rules, for data that is scored rather than fitted). Raises :class:`DataError` with
    one line otherwise.

    ``categories``: text columns are then categories, replaced by integer codes ``0 … K-1``
    (``True``: the sorted distinct labels of each text column, at most ``max(20, n/2)`` of them,
    or an ordered pandas categorical's declared levels in their order;
    a dict ``{column: labels}``: those labels, as a model was fitted on, a label outside them
    being an error). The labels of the coded columns are in ``result.attrs["categories"]``.
    A text column that is numbers but for a few cells (at least 90% numbers, the others at most 5
    cells or 5% of them) is neither: an error names those cells and their rows.

    ``missing_ok``: columns whose missing cells are kept, as NaN (a padded set's absent
    elements); they are exempt from the missing-value and constant-column rules.

    ``keep_index``: the rows kept keep their labels in ``df.index`` (to pair them with other
    columns of the same table, cleaned apart); else they are numbered ``0 … n-1``.
    """
    path = Path(source)
    if df.shape[1] == 0:
        raise DataError(f"{path}: no columns")
    if len(set(df.columns)) != len(df.columns):
        dup = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
        raise DataError(f"{path}: duplicate column name(s) {', '.join(map(repr, dup))}")
    df, labels = _numeric(df, path, categories)
    out = _checked(df, path, drop_missing, drop_constant, allow_constant, set(missing_ok))
    out = out if keep_index else out.reset_index(drop=True)
    out.attrs["categories"] = {name: v for name, v in labels.items() if name in out.columns}
    out.attrs["header"] = df.attrs.get("header", True)
    return out


def _checked(
    df: Any,
    path: Path,
    drop_missing: bool,
    drop_constant: bool,
    allow_constant: bool,
    missing_ok: set[str] = frozenset(),  # type: ignore[assignment]
) -> Any:
    """:func:`clean_table`'s checks of a numeric table."""
    checked = [c for c in df.columns if c not in missing_ok]
    missing = df[checked].isna().sum()
    missing = missing[missing > 0]
    if len(missing):
        what = ", ".join(f"{name!r} ({int(k)})" for name, k in missing.items())
        if not drop_missing:
            raise DataError(
                f"{path}: missing values in column(s) {what}; "
                "drop those rows with drop_missing=True (--drop-missing)"
            )
        rows = len(df)
        df = df.dropna(subset=checked)
        warnings.warn(
            f"{path}: dropped {rows - len(df)} of {rows} rows for missing values in column(s) "
            f"{what}",
            TableNote,
            stacklevel=4,
        )
    inf = np.isinf(df.to_numpy()).sum(0)
    if inf.any():
        what = ", ".join(f"{c!r} ({int(k)})" for c, k in zip(df.columns, inf) if k)
        raise DataError(f"{path}: infinite values in column(s) {what}")
    if allow_constant:  # scoring: any number of rows, constant columns are fine
        if len(df) == 0:
            raise DataError(f"{path}: no data rows")
        return df
    if len(df) < 2:
        raise DataError(f"{path}: needs at least 2 data rows, got {len(df)}")
    constant = [c for c in checked if df[c].nunique() <= 1]
    if constant:
        if not drop_constant or len(constant) == df.shape[1]:
            names = ", ".join(repr(c) for c in constant)
            raise DataError(
                f"{path}: column(s) {names} are constant, so a density over them is degenerate; "
                "drop them with drop_constant=True (--drop-constant)"
            )
        df = df.drop(columns=constant)
    return df


def read_table(
    path: str | os.PathLike[str],
    *,
    columns: Sequence[str] | None = None,
    header: bool | None = None,
    drop_missing: bool = False,
    drop_constant: bool = False,
    allow_constant: bool = False,
    categories: bool | Categories = False,
    missing_ok: Sequence[str] = (),
) -> Any:
    r"""Read a numeric table (``.csv``, ``.tsv``, ``.txt``, each also as ``.gz``, ``.bz2``, ``.xz``, ``.zst``
    or a one-file ``.zip``; ``.npy``, ``.parquet``) into a float64 DataFrame.

    Text (``.csv``, ``.tsv``, ``.txt``, UTF-8): the separator is found from the first 50
    non-blank lines: tab for ``.tsv``, else the first of tab, ``;``, ``|`` and ``,`` that gives
    every line the same number of fields (more than one), else runs of whitespace (as
    ``np.savetxt`` writes). A ``;``-separated file with decimal commas (``1,5;2,25``) is read
    with ``decimal=","``, as is any other file with a decimal comma that is not a thousands
    separator (``0,126``, ``2,5``), and quoted ones (``"70,5"``) in a comma-separated file
    are read as numbers. Lines starting with ``#`` at the top are comments
    (``np.savetxt``'s ``header="a b"`` gives ``# a b``: its names are the header when they fit
    the rows and no header row follows); a ``#`` further down is data. The first row is a
    header unless all its fields are numbers (override with ``header``); without a header the
    columns are named ``x0, x1, …``. An empty cell is missing; pandas' missing-value words
    (``NA``, ``N/A``, ``None``, ``null``, ``nan``, ...) are missing in a column of numbers and
    labels in a text column. An unnamed first column of distinct non-float values (the index
    ``DataFrame.to_csv`` writes: row numbers, also shuffled or filtered, labels or dates) and
    unnamed empty columns (a separator ending every line) are dropped; rows longer than the header are an
    error, not shifted into an index. ``.npy``: a 1-D or 2-D numeric array (columns ``x0, …``),
    read with ``allow_pickle=False``. ``.parquet``: needs ``pyarrow``.

    Every problem is a :class:`DataError` (a ``ValueError``) with one line naming the file: a
    non-numeric column (named, with an example value), a column of numbers with a few cells that
    are not (at least 90% numbers, the others at most 5 cells or 5%: ``-``, ``?``, ``13,210``;
    each named with the first data row it is in), missing values (columns and counts;
    ``drop_missing=True`` drops those rows, announced as a :class:`TableNote`), infinite values,
    a constant column (named; a density over it is degenerate; ``drop_constant=True`` drops it),
    fewer than 2 rows, an unknown format.

    Args:
        path: The file.
        columns: Keep only these columns (in this order); an unknown name is an error.
        header: Force the text header detection (``True``/``False``).
        drop_missing: Drop rows with missing values instead of failing.
        drop_constant: Drop constant columns instead of failing.
        allow_constant: Accept constant columns and a single row (data to score, not to fit).
        categories: Read text columns as categories (integer codes), as in
            :func:`clean_table`; their labels are in ``result.attrs["categories"]``.
        missing_ok: Columns whose missing cells are kept as NaN (a padded set's absent
            elements), as in :func:`clean_table`.
    """
    df = read_raw_table(path, header=header)
    path = Path(path)
    if columns is not None:
        unknown = [c for c in columns if c not in df.columns]
        if unknown:
            raise DataError(
                f"{path}: no column(s) {', '.join(map(repr, unknown))}; "
                f"columns are {', '.join(map(repr, df.columns))}"
            )
        df = df[list(columns)]
    return clean_table(
        df,
        path,
        drop_missing=drop_missing,
        drop_constant=drop_constant,
        allow_constant=allow_constant,
        categories=categories,
        missing_ok=missing_ok,
    )


def float32_blurred_columns(
    values: Any, bounds: Sequence[tuple[float | None, float | None] | None] | None = None
) -> list[int]:
    """The columns of ``values`` ``(n, D)`` (float64) that float32 would blur: values far larger
    than their spread (more than ``2**13`` standard deviations from 0: a standardization
    cancels the leading digits, as for timestamps or ``1e12 + noise``), whole numbers beyond
    ``2**24`` (identifiers: float32 cannot tell 30000001 from 30000002), values below float32's
    smallest normal number (``1e-300``: zeros or subnormals in float32), or values inside a
    column's bound (``bounds[j] = (low, high)``, None for open) that float32 rounds onto it
    (``0.999999999`` in ``(0, 1)``). Models of such data should compute in float64."""
    v = np.asarray(values, dtype=np.float64)
    out = []
    for j in range(v.shape[1]):
        col = v[:, j][np.isfinite(v[:, j])]
        if col.size == 0:
            continue
        size = float(np.abs(col).max())
        spread = float((col / size).std()) * size if size > 0 else 0.0  # (squares of 1e200: inf)
        whole = bool(np.all(col == np.round(col)))
        low, high = (bounds[j] if bounds is not None else None) or (None, None)
        with np.errstate(over="ignore"):  # beyond float32's range: inf, not a warning
            rounded = col.astype(np.float32)
        onto = (low is not None and bool(np.any((col > low) & (rounded <= low)))) or (
            high is not None and bool(np.any((col < high) & (rounded >= high)))
        )
        # values float32 flushes towards 0 (below its smallest normal, 1.2e-38): a column of
        # 1e-300 became zeros, whole numbers, and was modelled as counts
        tiny = bool(np.any((col != 0) & (np.abs(col) < np.finfo(np.float32).tiny)))
        if (spread > 0 and size > 2**13 * spread) or (whole and size >= 2**24) or onto or tiny:
            out.append(j)
    return out


def read_raw_table(
    path: str | os.PathLike[str], *, header: bool | None = None, text: Sequence[str | int] = ()
) -> Any:
    """A table file as read, before :func:`clean_table`: the formats, separators, header and
    missing-value rules of :func:`read_table`, the values as pandas parsed them (text columns
    as strings). ``text``: columns of a text file to keep as written (category labels that look
    like numbers, ``02134``, or missing values, ``NA``): names, and for a file without a header
    0-based positions (ints). For reading a table whose other columns are the user's business
    (scoring rows with an identifier beside them): clean the columns you need with
    :func:`clean_table`."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as e:  # a symlink loop, a name too long, no permission on a folder
        if e.errno == errno.ELOOP:  # (Python < 3.13 named it earlier, in Path.resolve)
            raise DataError(f"{path}: a symbolic link loop; it leads to no file") from None
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"{path}: is a directory, not a data file")
    if not stat.S_ISREG(mode):  # a pipe is read twice (the sniff, then pandas): it would hang
        raise DataError(
            f"{path}: is not a regular file (a pipe or a device); save it to a file, or give "
            "'-' to read a table from standard input"
        )
    suffix, compression = _table_format(path)
    if suffix == ".npy":
        return _read_npy(path)
    if suffix == ".parquet":
        return _read_parquet(path)
    try:
        return _read_text(path, header, compression, text)
    except csv.Error as e:  # Python's csv module: a field over its size limit, a NUL byte
        raise DataError(f"{path}: cannot be read as a table ({e})") from None


def as_tensor(
    data: Any,
    where: str,
    name: str = "data",
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    allow_nan: bool = False,
) -> Tensor:
    """A Tensor, NumPy array or pandas DataFrame as a finite 2-D-or-more float tensor (a copy)
    in ``dtype`` (default: a float tensor's own, float64 for integers, booleans, arrays and
    frames); complex numbers are refused. ``allow_nan``: NaN may stand for missing entries (a
    padded set's absent elements), inf not."""
    if isinstance(data, Tensor):
        if data.is_complex():
            raise TypeError(f"{where}: {name} must hold real numbers, got a {data.dtype} tensor")
        t = data.detach()
        if not t.is_floating_point():  # integers and booleans exactly, as NumPy's are
            t = t.to(dtype or torch.float64)
    elif isinstance(data, np.ndarray):
        if not _real_dtype(data.dtype):
            raise TypeError(
                f"{where}: {name} must hold real numbers, got a NumPy array of {data.dtype}"
            )
        t = torch.tensor(np.ascontiguousarray(data, dtype=np.float64))
    elif hasattr(data, "columns") and hasattr(data, "to_numpy"):
        df = _numeric_or_type_error(data, where, name)
        # contiguous: pandas hands out a negatively strided view for columns in reverse
        # order (df[["b", "a"]]), which torch refuses
        t = torch.tensor(np.ascontiguousarray(df.to_numpy(dtype=np.float64)))
    else:
        raise TypeError(
            f"{where}: {name} must be a Tensor, NumPy array or DataFrame, got {type(data).__name__}"
        )
    if t.dim() < 2:
        raise ValueError(
            f"{where}: {name} must be 2-D (rows, columns), got shape {tuple(t.shape)}"
        )
    if allow_nan:
        if bool(torch.isinf(t).any()):
            raise ValueError(f"{where}: {name} contains inf values")
    elif not bool(torch.isfinite(t).all()):
        raise ValueError(f"{where}: {name} contains NaN or inf values")
    out = t.to(dtype=dtype or t.dtype, device=device)
    if out.dtype != t.dtype and bool(torch.isinf(out).any()):  # finite before the cast
        first = torch.nonzero(torch.isinf(out))[0]
        j = int(first[-1])
        column = repr(str(data.columns[j])) if hasattr(data, "columns") else str(j)
        raise ValueError(
            f"{where}: {name} column {column} has values beyond the range of "
            f"{str(out.dtype).replace('torch.', '')} (±{torch.finfo(out.dtype).max:.3g}; e.g. "
            f"{t[tuple(first)].item():g}): rescale it (other units) or use a float64 model"
        )
    return out


def _numeric_or_type_error(df: Any, where: str, name: str) -> Any:
    for col in df.columns:
        if not _real_dtype(df[col].dtype):
            raise TypeError(
                f"{where}: {name} column {str(col)!r} is not numeric ({df[col].dtype})"
            )
    return df
