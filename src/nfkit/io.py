r"""Files: ``save``/``load`` of fitted flows, readers for user tables, and atomic writes.

A model file is one ``torch.save`` archive holding plain types only (so it loads with
``torch.load(..., weights_only=True)``): a format tag, the nfkit version, the flow's ``config``
as a JSON string, its dtype and its ``state_dict`` (weights and buffers: standardization
statistics included). ``load`` rebuilds the architecture with ``nf.models.build(config)`` and
loads the weights. Writes are atomic: a temporary file in the same directory, then ``os.replace``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor

from nfkit._checks import check_device

__all__ = ["save", "load", "read_table", "as_tensor", "atomic_write", "atomic_save", "DataError"]

FORMAT = "nfkit-model"
FORMAT_VERSION = 1


class DataError(ValueError):
    """A data file or table that cannot be used; the message is one line naming the problem."""


def _one_line(e: BaseException, limit: int = 120) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- atomic writes


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, fsync, then ``os.replace``.

    A reader never sees a half-written file: it finds either the old file or the new one.
    Missing parent folders are created. A filesystem error (a read-only or missing place, a full
    disk) is one ``OSError`` naming ``path``; an error raised by ``write`` propagates unchanged.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    tmp = None
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode(path))  # mkstemp's 0600 -> what open() would have given
        os.replace(tmp, path)
    except OSError as e:
        _discard(tmp)
        raise OSError(f"cannot write {str(path)!r}: {e.strerror or _one_line(e)}") from None
    except BaseException:
        _discard(tmp)
        raise
    return path


def _file_mode(path: Path) -> int:
    """The mode of the file being replaced, else ``0o666`` less the process's umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)  # reading the umask means setting it; put it straight back
        os.umask(umask)
        return 0o666 & ~umask


def _discard(tmp: str | None) -> None:
    if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` through :func:`atomic_write`: the old file or the new one, never half."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def safe_torch_load(path: str | os.PathLike[str], where: str, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with one-line errors for missing or foreign files."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{where}: no such file: {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"{where}: {str(path)!r} is a directory, not a file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # unpickling, zip and header errors all mean "not our file"
        raise ValueError(f"{where}: {str(path)!r} {_load_problem(e)}") from None


def _load_problem(e: BaseException) -> str:
    """What a failed weights-only ``torch.load`` says about the file, in a few words."""
    text = str(e)
    # torch names a refused object as "Unsupported global: GLOBAL m.f" or "... GLOBAL m.f whose
    # module m is blocked"
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        return (
            f"holds a Python object ({refused.group(1)}) that a weights-only load refuses: "
            "not an nfkit model or checkpoint (nfkit never unpickles arbitrary objects)"
        )
    if "zip archive" in text:
        return "is a damaged or truncated torch file (its zip archive cannot be read)"
    return "is not a torch file (nfkit models and checkpoints are written by nf.save and nf.fit)"


# --------------------------------------------------------------------------- models


def save(flow: torch.nn.Module, path: str | os.PathLike[str]) -> Path:
    r"""Write ``flow`` (config, weights, standardization, nfkit version) to one file, atomically.

    Args:
        flow: An :class:`~nfkit.Flow` built by an ``nf.models`` factory (its ``config`` is set).
        path: Destination; parent directories are created.

    Returns:
        The path written.
    """
    from nfkit import __version__
    from nfkit.core import Flow

    if not isinstance(flow, Flow):
        raise TypeError(f"nf.save: expected an nf.Flow, got {type(flow).__name__}")
    if not flow.config or "model" not in flow.config:
        raise ValueError(
            "nf.save: flow.config is empty; build the flow with an nf.models factory "
            "so that nf.load can rebuild it"
        )
    try:
        config = json.dumps(flow.config)
    except TypeError as e:
        raise ValueError(f"nf.save: flow.config is not JSON-serializable ({e})") from None
    dtypes = {p.dtype for p in flow.state_dict().values() if p.is_floating_point()}
    dtype = str(dtypes.pop()).replace("torch.", "") if len(dtypes) == 1 else "float32"
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "nfkit_version": __version__,
        "config": config,
        "dtype": dtype,
        "state_dict": {k: v.detach().cpu() for k, v in flow.state_dict().items()},
    }
    return atomic_save(payload, path)


def load(path: str | os.PathLike[str], *, device: str | torch.device | None = None) -> Any:
    r"""Read a model written by :func:`save`: rebuild with ``nf.models.build``, load the weights.

    Uses ``torch.load(weights_only=True)`` only: no arbitrary code runs. The flow is returned in
    eval mode, in the dtype it was saved in, on ``device`` (default CPU).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is unreadable, not an nfkit model, or does not match its config.
    """
    from nfkit.models import build

    where = "nf.load"
    device = check_device(where, device)
    payload = safe_torch_load(path, where)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{where}: {str(path)!r} is not an nfkit model file (no nfkit header)")
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{where}: {str(path)!r} was written by nfkit {payload.get('nfkit_version')} "
            f"(format {payload['format_version']}); upgrade nfkit to read it"
        )
    try:
        config = json.loads(payload["config"])
        flow = build(config)
    except Exception as e:
        raise ValueError(
            f"{where}: {str(path)!r}: cannot rebuild the model ({_one_line(e)})"
        ) from None
    dtype = getattr(torch, str(payload.get("dtype", "float32")), torch.float32)
    flow = flow.to(dtype=dtype)
    try:
        flow.load_state_dict(payload["state_dict"])
    except Exception as e:
        raise ValueError(
            f"{where}: {str(path)!r}: weights do not match the architecture ({_one_line(e, 80)})"
        ) from None
    flow.config = config
    flow.eval()
    if device is not None:
        flow = flow.to(device)
    return flow


# --------------------------------------------------------------------------- tables


def _is_number(field: str) -> bool:
    field = field.strip()
    if field == "":
        return True  # a missing value does not make a header
    try:
        float(field)
    except ValueError:
        return field.lower() in ("nan", "na", "n/a", "null")
    return True


def _sniff_header(path: Path) -> bool:
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            if row and any(cell.strip() for cell in row):
                return not all(_is_number(cell) for cell in row)
    return False


def _read_csv(path: Path, header: bool | None) -> Any:
    import pandas as pd

    try:
        has_header = _sniff_header(path) if header is None else bool(header)
        df = pd.read_csv(path, header=0 if has_header else None, skipinitialspace=True)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text CSV file") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, ValueError) as e:
        raise DataError(f"{path}: cannot parse as CSV ({_one_line(e, 80)})") from None
    if not has_header:
        df.columns = [f"x{i}" for i in range(df.shape[1])]
    else:  # pandas renames a repeated name to "a.1": look at the header as written
        with open(path, newline="", encoding="utf-8") as f:
            names = [c.strip() for c in next(csv.reader(f), [])]
        repeated = sorted({c for c in names if names.count(c) > 1})
        if repeated:
            raise DataError(f"{path}: duplicate column name(s) {', '.join(map(repr, repeated))}")
    df.columns = [str(c).strip() for c in df.columns]
    return df


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
        raise DataError(f"{path}: cannot read as .npy ({_one_line(e, 80)})") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: expected one array, got an archive of several")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a 1-D or 2-D array, got shape {arr.shape}")
    if not _real_dtype(arr.dtype):
        raise DataError(f"{path}: expected an array of real numbers, got dtype {arr.dtype}")
    return pd.DataFrame(arr, columns=[f"x{i}" for i in range(arr.shape[1])])


def _read_parquet(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path}: reading .parquet files needs pyarrow (pip install 'nfkit[parquet]')"
        ) from None
    try:
        df = pq.read_table(path).to_pandas()
    except Exception as e:
        raise DataError(f"{path}: cannot read as parquet ({_one_line(e, 80)})") from None
    df.columns = [str(c) for c in df.columns]
    return df


def _numeric(df: Any, path: Path) -> Any:
    import pandas as pd

    out = {}
    for name in df.columns:
        col = df[name]
        if _real_dtype(col.dtype):
            out[name] = col.astype("float64")
            continue
        converted = pd.to_numeric(col, errors="coerce")
        bad = converted.isna() & col.notna()
        if bool(bad.any()) or not (
            pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col)
        ):
            example = col[bad].iloc[0] if bool(bad.any()) else col.dtype
            raise DataError(
                f"{path}: column {name!r} is not numeric (e.g. {example!r}); "
                "only numeric columns can be modelled"
            )
        out[name] = converted.astype("float64")
    return pd.DataFrame(out, index=df.index)


def clean_table(
    df: Any,
    source: str | os.PathLike[str] = "table",
    *,
    drop_missing: bool = False,
    drop_constant: bool = False,
    allow_constant: bool = False,
) -> Any:
    """Check a DataFrame: numeric columns, no missing/infinite values, no constant column.

    Returns a float64 copy (rows with missing values dropped if ``drop_missing``; constant
    columns dropped if ``drop_constant``; ``allow_constant`` skips the constant-column and
    two-row rules, for data that is scored rather than fitted). Raises :class:`DataError` with one line otherwise.
    """
    path = Path(source)
    if df.shape[1] == 0:
        raise DataError(f"{path}: no columns")
    if len(set(df.columns)) != len(df.columns):
        dup = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
        raise DataError(f"{path}: duplicate column name(s) {', '.join(map(repr, dup))}")
    df = _numeric(df, path)
    missing = df.isna().sum()
    missing = missing[missing > 0]
    if len(missing):
        if not drop_missing:
            what = ", ".join(f"{name!r} ({int(k)})" for name, k in missing.items())
            raise DataError(
                f"{path}: missing values in column(s) {what}; "
                "drop those rows with drop_missing=True (--drop-missing)"
            )
        df = df.dropna()
    inf = np.isinf(df.to_numpy()).sum(0)
    if inf.any():
        what = ", ".join(f"{c!r} ({int(k)})" for c, k in zip(df.columns, inf) if k)
        raise DataError(f"{path}: infinite values in column(s) {what}")
    if allow_constant:  # scoring: any number of rows, constant columns are fine
        if len(df) == 0:
            raise DataError(f"{path}: no data rows")
        return df.reset_index(drop=True)
    if len(df) < 2:
        raise DataError(f"{path}: needs at least 2 data rows, got {len(df)}")
    constant = [c for c in df.columns if df[c].nunique() <= 1]
    if constant:
        if not drop_constant or len(constant) == df.shape[1]:
            names = ", ".join(repr(c) for c in constant)
            raise DataError(
                f"{path}: column(s) {names} are constant, so a density over them is degenerate; "
                "drop them with drop_constant=True (--drop-constant)"
            )
        df = df.drop(columns=constant)
    return df.reset_index(drop=True)


def read_table(
    path: str | os.PathLike[str],
    *,
    columns: Sequence[str] | None = None,
    header: bool | None = None,
    drop_missing: bool = False,
    drop_constant: bool = False,
    allow_constant: bool = False,
) -> Any:
    r"""Read a numeric table from ``.csv``, ``.npy`` or ``.parquet`` into a float64 DataFrame.

    CSV: the first row is a header unless all its fields are numbers (override with ``header``);
    without a header the columns are named ``x0, x1, …``. ``.npy``: a 1-D or 2-D numeric array
    (columns ``x0, …``), read with ``allow_pickle=False``. ``.parquet``: needs ``pyarrow``.

    Every problem is a :class:`DataError` (a ``ValueError``) with one line naming the file: a
    non-numeric column (named, with an example value), missing values (columns and counts;
    ``drop_missing=True`` drops those rows), infinite values, a constant column (named; a density
    over it is degenerate; ``drop_constant=True`` drops it), fewer than 2 rows, an unknown format.

    Args:
        path: The file.
        columns: Keep only these columns (in this order); an unknown name is an error.
        header: Force the CSV header detection (``True``/``False``).
        drop_missing: Drop rows with missing values instead of failing.
        drop_constant: Drop constant columns instead of failing.
        allow_constant: Accept constant columns and a single row (data to score, not to fit).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")
    suffix = path.suffix.lower()
    readers = {".csv": lambda: _read_csv(path, header), ".txt": lambda: _read_csv(path, header)}
    readers.update({".npy": lambda: _read_npy(path), ".parquet": lambda: _read_parquet(path)})
    if suffix not in readers:
        raise DataError(
            f"{path}: unknown file type {suffix!r}; expected .csv (or .txt), .npy or .parquet"
        )
    df = readers[suffix]()
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
    )


def as_tensor(
    data: Any,
    where: str,
    name: str = "data",
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> Tensor:
    """A Tensor, NumPy array or pandas DataFrame as a finite 2-D-or-more float tensor (a copy)."""
    if isinstance(data, Tensor):
        t = data.detach()
    elif isinstance(data, np.ndarray):
        if not _real_dtype(data.dtype):
            raise TypeError(
                f"{where}: {name} must hold real numbers, got a NumPy array of {data.dtype}"
            )
        t = torch.tensor(np.asarray(data, dtype=np.float64))
    elif hasattr(data, "columns") and hasattr(data, "to_numpy"):
        df = _numeric_or_type_error(data, where, name)
        t = torch.tensor(df.to_numpy(dtype=np.float64))
    else:
        raise TypeError(
            f"{where}: {name} must be a Tensor, NumPy array or DataFrame, got {type(data).__name__}"
        )
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if t.dim() < 2:
        raise ValueError(
            f"{where}: {name} must be 2-D (rows, columns), got shape {tuple(t.shape)}"
        )
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{where}: {name} contains NaN or inf values")
    return t.to(dtype=dtype or t.dtype, device=device)


def _numeric_or_type_error(df: Any, where: str, name: str) -> Any:
    for col in df.columns:
        if not _real_dtype(df[col].dtype):
            raise TypeError(
                f"{where}: {name} column {str(col)!r} is not numeric ({df[col].dtype})"
            )
    return df
