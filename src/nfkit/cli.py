r"""The ``nfkit`` command: ``demo``, ``fit``, ``sample``, ``score`` and ``plot``.

Exit status 0 on success; on bad input (missing file, text column, NaN, wrong columns, unknown
model, ...) one line ``nfkit: error: ...`` on stderr and a non-zero status, never a traceback
(set ``NFKIT_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line: ``nfkit: error: ...`` (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"nfkit: error: {message} (see '{self.prog} --help')\n")


class _UserError(ValueError):
    """A problem with the command's input, reported as one line."""


class _Terminated(BaseException):
    """SIGTERM (``timeout``, systemd, SLURM) raised as an exception, so that the cleanups run
    (an atomic write removes its temporary file) as for Ctrl-C."""


def _on_sigterm_raise() -> Any:
    """Make SIGTERM raise :class:`_Terminated` while a command runs (main thread only); returns
    the previous handler to put back, or None."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated

    return signal.signal(signal.SIGTERM, handler)


def _shown(args: argparse.Namespace, message: str) -> str:
    """``message`` with a table read from standard input named ``<stdin>``."""
    stdin = getattr(args, "stdin_path", None)
    return message.replace(stdin, "<stdin>") if stdin else message


def _info(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(_shown(args, message), file=sys.stderr)


def _tensor(frame: Any, dtype: Any, device: Any = None) -> Any:
    """A checked table's values as a tensor (:func:`nfkit.tables.as_tensor`; NaN kept where
    the table allows it: absent set elements, rows ``score --skip-incomplete`` scores NaN)."""
    from nfkit.tables import as_tensor

    return as_tensor(frame, "nfkit", allow_nan=True, dtype=dtype, device=device)


def _needs_float64(frame: Any, bounds: dict[str, Any]) -> list[str]:
    """The columns of ``frame`` that float32 would blur (:func:`nfkit.tables.float32_blurred_columns`;
    ``bounds`` by column name)."""
    from nfkit.tables import float32_blurred_columns

    names = [str(c) for c in frame.columns]
    ends = [bounds.get(name) for name in names]
    return [names[j] for j in float32_blurred_columns(frame.to_numpy(dtype=float), ends)]


def _hidden(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths like 64,64, got {text!r}") from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths like 64,64, got {text!r}")
    return widths


def _seed(text: str) -> int:
    """A seed in ``0 … 2**32 - 1`` (torch reduces larger ones modulo 2**32 and overflows past
    2**64: two different seeds would give one run)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected a seed in 0 … 4294967295, got {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _device(text: str) -> str:
    """A torch device this machine has (checked before any data is read)."""
    from nfkit._checks import check_device

    try:
        device = check_device("nfkit", text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("nfkit: ")) from None
    if device is not None and device.type == "meta":
        raise argparse.ArgumentTypeError("device 'meta' holds no values; use 'cpu' or 'cuda'")
    return text


def _model_option(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` for the model factory: VALUE as JSON (``16``, ``0.5``, ``true``,
    ``[32, 32]``), else as a string (``random``)."""
    import json

    name, sep, value = (part.strip() for part in text.partition("="))
    if not sep or not name.isidentifier() or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE like bins=16, got {text!r}")
    if name in ("features", "context", "model"):
        raise argparse.ArgumentTypeError(f"{name!r} is set by nfkit (the columns, --given)")
    if name in ("transforms", "hidden"):
        raise argparse.ArgumentTypeError(f"{name!r} has its own flag: --{name}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def _given_values(text: str) -> dict[str, str]:
    """``a=1.5,b=0,region=east`` → ``{"a": "1.5", "b": "0", "region": "east"}``: the values as
    written, read against the model (a number, or a category's label such as ``02134``)."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(
                f"expected NAME=VALUE pairs like a=1.5,b=0, got {item!r}"
            )
        if name.strip() in out:
            raise argparse.ArgumentTypeError(f"{name.strip()!r} is given twice in {text!r}")
        if not value.strip():
            raise argparse.ArgumentTypeError(f"value of {name.strip()!r} is empty in {text!r}")
        out[name.strip()] = value.strip()
    return out


def _discrete_spec(text: str) -> str | list[str] | None:
    """``auto`` (columns of whole numbers), ``none``, or column names ``a,b``."""
    if text.strip().lower() in ("auto", "none"):
        return None if text.strip().lower() == "none" else "auto"
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected auto, none or column names a,b, got {text!r}")
    return names


def _bounds_spec(text: str) -> dict[str, tuple[float | None, float | None]]:
    """``price=0:,share=0:1`` → ``{"price": (0.0, None), "share": (0.0, 1.0)}`` (an empty
    end is open)."""
    out: dict[str, tuple[float | None, float | None]] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, span = item.partition("=")
        low, colon, high = span.partition(":")
        if not sep or not name.strip() or not colon:
            raise argparse.ArgumentTypeError(
                f"expected NAME=LOW:HIGH pairs like price=0:,share=0:1, got {item!r}"
            )
        if name.strip() in out:
            raise argparse.ArgumentTypeError(f"{name.strip()!r} is given twice in {text!r}")
        try:
            ends = tuple(float(v) if v.strip() else None for v in (low, high))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bounds of {name.strip()!r} are not numbers: {span!r}"
            ) from None
        out[name.strip()] = ends  # type: ignore[assignment]
    return out


def _angle_end(text: str) -> float:
    """A number, or a multiple of pi: ``-pi``, ``2pi``, ``0.5*pi``."""
    t = text.strip().lower().replace("π", "pi")
    if t.endswith("pi"):
        factor = t[:-2].rstrip("*").strip()
        factor = {"": "1", "-": "-1", "+": "1"}.get(factor, factor)
        return float(factor) * math.pi
    return float(t)


def _angles_spec(text: str) -> dict[str, tuple[float, float] | None]:
    """``phi,psi`` or ``wind=0:360,phi=-pi:pi`` → ``{"wind": (0.0, 360.0), ...}`` (None: the
    model's interval, ``[-π, π]`` by default)."""
    out: dict[str, tuple[float, float] | None] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, span = item.partition("=")
        name = name.strip()
        if not name or (sep and ":" not in span):
            raise argparse.ArgumentTypeError(
                f"expected column names, each with an optional range NAME=LOW:HIGH, like "
                f"phi,wind=0:360, got {item!r}"
            )
        if name in out:
            raise argparse.ArgumentTypeError(f"{name!r} is given twice in {text!r}")
        if not sep:
            out[name] = None
            continue
        low, _, high = span.partition(":")
        try:
            ends = (_angle_end(low), _angle_end(high))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"the range of {name!r} must be two numbers (or multiples of pi), got {span!r}"
            ) from None
        if not (math.isfinite(ends[0]) and math.isfinite(ends[1]) and ends[0] < ends[1]):
            raise argparse.ArgumentTypeError(
                f"the range of {name!r} needs finite LOW < HIGH (one period), got {span!r}"
            )
        out[name] = ends
    if not out:
        raise argparse.ArgumentTypeError(f"expected column names, got {text!r}")
    return out


# --------------------------------------------------------------------------- models and tables


def _schema(flow: Any) -> tuple[list[str], list[str], list[str]]:
    """``(columns, data_columns, given_columns)`` of a saved model (names recorded at fit time)."""
    config = flow.config or {}
    d = int(flow.event_shape[0])
    k = int(flow.context_features)
    if config.get("columns"):
        columns = list(config["columns"])
        given = list(config.get("given") or [])
    else:
        given = [f"c{i}" for i in range(k)]
        columns = [f"x{i}" for i in range(d)] + given
    data = [c for c in columns if c not in set(given)]
    return columns, data, given


def _load_model(path: str, device: str | None = None) -> Any:
    import nfkit as nf

    flow = nf.load(path, device=device)
    if len(flow.event_shape) != 1:
        raise _UserError(f"{path}: only table models (vector flows) work with the command line")
    return flow


def _check_order(command: str, model: str, data: str, usage: str) -> None:
    """A table given where the model goes and a model where the table goes: say so, with the
    command's order, before the loader's 'not a torch file'."""
    import zipfile

    def is_model(path: str) -> bool:  # torch files are zip archives; tables never are
        return os.path.isfile(path) and zipfile.is_zipfile(path)

    if os.path.isfile(model) and not is_model(model) and is_model(data):
        raise _UserError(
            f"{model} is a table and {data} a model: the order is nfkit {command} {usage}"
        )


def _read(path: str, **kwargs: Any) -> Any:
    from nfkit.tables import read_table

    return read_table(path, **kwargs)


def _exact(value: float) -> str:
    """A number as it can be pasted back: a whole number in full (``1234567``, where ``:g``
    gave ``1.23457e+06``, inside the data's range), else the shortest exact ``repr``."""
    v = float(value)
    return str(int(v)) if v.is_integer() and abs(v) < 2**63 else repr(v)


def _dropped(
    table: Any, drop: str | None, source: str, given: list[str], weights: str | None
) -> Any:
    """The raw table without the ``--drop`` columns (identifiers, free text, leaks of the
    answer): each must exist, and none may be ``--given`` or ``--weights`` too."""
    names = [n.strip() for n in (drop or "").split(",") if n.strip()]
    if drop is not None and not names:
        raise _UserError(f"--drop names no column: {drop!r}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise _UserError(f"--drop names {', '.join(map(repr, twice))} twice")
    unknown = [n for n in names if n not in table.columns]
    if unknown:
        raise _UserError(
            f"{source}: --drop column(s) {', '.join(map(repr, unknown))} not found; columns are "
            f"{', '.join(map(repr, table.columns))}"
        )
    for other, option in ((given, "--given"), ([weights] if weights else [], "--weights")):
        both = [n for n in names if n in other]
        if both:
            raise _UserError(f"--drop column(s) {', '.join(map(repr, both))} are {option} too")
    kept = table.drop(columns=names)
    if kept.shape[1] == 0:
        raise _UserError(f"{source}: --drop leaves no column to model")
    return kept


def _weights_column(table: Any, column: str, source: str, drop_missing: bool) -> Any:
    """The ``--weights`` column of a raw table as float64 row weights (a Series on the table's
    index): numbers, finite, ``>= 0`` and not all zero (rows with a missing weight dropped
    with ``drop_missing``, else an error)."""
    from nfkit.tables import clean_table, to_numbers

    if column not in table.columns:
        raise _UserError(
            f"{source}: --weights column {column!r} not found; columns are "
            f"{', '.join(map(repr, table.columns))}"
        )

    raw = table[column]
    numbers = to_numbers(raw)
    text = numbers.isna() & raw.notna()
    if bool(text.any()):
        raise _UserError(
            f"{source}: --weights column {column!r} is not numeric (e.g. "
            f"{raw[text].iloc[0]!r}); weights are numbers >= 0"
        )
    w = clean_table(
        table[[column]], source, drop_missing=drop_missing, allow_constant=True, keep_index=True
    )
    w = w[column]
    negative = w.index[w < 0]
    if len(negative):
        raise _UserError(
            f"{source}: --weights column {column!r} has {len(negative)} negative value(s) "
            f"(first: {w[negative[0]]:g}); weights are >= 0"
        )
    if not (w > 0).any():
        raise _UserError(f"{source}: --weights column {column!r} is all zero")
    return w


def _select(df: Any, needed: list[str], source: str) -> Any:
    """The model's columns from a table: by name, or by position for a header-less file."""
    # a file without a header (the reader named its columns x0, x1, ...): by position, even
    # when the model's own columns are called x0, ... (a header x0, x1 is a header: by name)
    if df.attrs.get("header", True) is False and list(df.columns) != needed:
        if df.shape[1] != len(needed):
            raise _UserError(
                f"{source}: has {df.shape[1]} unnamed columns; the model needs {len(needed)} "
                f"({', '.join(needed)})"
            )
        df = df.copy()
        df.columns = needed
        return df
    missing = [c for c in needed if c not in df.columns]
    if missing:
        from nfkit.tables import _is_number  # the reader's rule for a header's fields

        numbers = [c for c in df.columns if _is_number(str(c))]
        hint = (  # a header-less file with a text column: its first row is read as names
            f" (its first row, {', '.join(map(str, df.columns[:4]))}"
            f"{', ...' if df.shape[1] > 4 else ''}, was read as a header, as it holds text; a "
            "header-less table with text columns needs a header row)"
            if numbers and len(missing) == len(needed)
            else ""
        )
        raise _UserError(
            f"{source}: no column(s) {', '.join(map(repr, missing))}; "
            f"the model needs {', '.join(map(repr, needed))}{hint}"
        )
    return df[needed]


def _read_for(
    flow: Any, path: str, needed: list[str], incomplete: bool = False, **read: Any
) -> tuple[Any, Any]:
    """``(table, rows)``: a table as read for a saved model, every column as written (the
    other columns are the user's: identifiers, notes), and its ``needed`` columns, by name or,
    header-less, by position, checked and coded (category columns with the model's labels,
    read as written; a padded set's given columns may hold empty cells; with ``incomplete``,
    every needed column may); ``table`` keeps the rows ``rows`` keeps."""
    from nfkit.tables import DataError, clean_table, read_raw_table

    given = _schema(flow)[2]
    categories = flow.config.get("categories") or {}
    missing_ok = given if _padded_given(flow) else ()  # absent set elements
    if incomplete:
        missing_ok = needed
    # category columns as written: by name, or by position in a header-less file (as _select)
    text = [*categories, *(i for i, name in enumerate(needed) if name in categories)]
    table = read_raw_table(path, text=text)
    try:
        rows = clean_table(
            _select(table, needed, path),
            path,
            allow_constant=True,
            categories=categories,
            missing_ok=missing_ok,
            keep_index=True,
            **read,
        )
    except DataError as e:  # a command without --drop-missing: not the option's hint
        head, hint, _ = str(e).partition(_DROP_HINT)
        if not hint or "drop_missing" in read:
            raise
        raise DataError(f"{head}{_FILL_HINT}") from None
    return table.loc[rows.index].reset_index(drop=True), rows.reset_index(drop=True)


_DROP_HINT = "; drop those rows"  # (clean_table's hint: drop_missing=True, --drop-missing)
_FILL_HINT = "; fill or remove those rows"


def _outside_support(
    flow: Any, x: Any, c: Any, path: str, rows: Any = None, hint: str | None = ""
) -> int:
    """How many rows of ``x`` lie outside the model's support; unless ``hint`` is None, any
    such row is refused in one line naming the file, the first one's row number (``rows``: the
    table's row of each, default their order) and how many there are, then ``hint``."""
    import torch

    inside = flow.in_support(x, c) if torch.isfinite(x).all() else None  # NaN: log_prob's error
    outside = 0 if inside is None else int((~inside).sum())
    if outside and hint is not None:
        first = int(torch.argmin(inside.long()))
        row = first if rows is None else int(rows[first])
        try:
            flow.log_prob(x[first : first + 1], None if c is None else c[first : first + 1])
        except ValueError as e:
            raise _UserError(
                f"{path}: row {row + 1} (of {outside} outside the model's support): {e}{hint}"
            ) from None
    return outside


def _padded_given(flow: Any) -> bool:
    """Whether the model's given columns are a padded set (empty cells: absent elements)."""
    from nfkit.nn.sets import padded_set

    return padded_set(flow.embedding) is not None


def _model_table(flow: Any, path: str, **read: Any) -> tuple[Any, Any, Any, Any]:
    """``(table, rows, x, c)``: a table read for a saved model (:func:`_read_for`), the model's
    columns of it, and its data and context as tensors in the model's dtype and device (``c``
    None for an unconditional model)."""
    import torch

    from nfkit.core import dtype_device

    columns, data, given = _schema(flow)
    table, rows = _read_for(flow, path, columns, **read)
    dtype, device = dtype_device(flow)
    x = _tensor(rows[data], dtype, device)
    if dtype != torch.float64 and flow.config.get("bounds"):
        x = _inside_bounds(flow, rows[data], x)
    c = _tensor(rows[given], dtype, device) if given else None
    return table, rows, x, c


def _inside_bounds(flow: Any, frame: Any, x: Any) -> Any:
    """``x`` with the values inside a continuous column's bound in the table (float64) that the
    model's dtype rounds onto the bound put one ulp inside (else refused as out of support)."""
    import torch

    exact = _tensor(frame, torch.float64, x.device)
    cells = set(flow.config.get("discrete") or ())
    for j, ends in enumerate(flow.config["bounds"]):
        for end, inward in zip(ends, (1.0, -1.0)):
            if end is None or j in cells:
                continue
            at = torch.tensor(end, dtype=x.dtype, device=x.device)
            rounded = (exact[:, j] - end) * inward > 0
            rounded &= (x[:, j] - at) * inward <= 0
            x[:, j] = torch.where(rounded, torch.nextafter(at, at + inward), x[:, j])
    return x


def _context_row(flow: Any, given: list[str], values: dict[str, str] | None, path: str) -> Any:
    import torch

    if not given:
        if values:
            raise _UserError(f"{path}: this model is not conditional; --given is not used")
        return None
    if not values:
        raise _UserError(
            f"{path}: this model is conditional on {', '.join(given)}; "
            f"pass --given {','.join(f'{g}=VALUE' for g in given)}"
        )
    unknown = [k for k in values if k not in given]
    missing = [g for g in given if g not in values]
    if unknown or missing:
        what = []
        if missing:
            what.append(f"missing {', '.join(missing)}")
        if unknown:
            what.append(f"unknown {', '.join(unknown)}")
        raise _UserError(f"--given must set exactly {', '.join(given)} ({'; '.join(what)})")
    from nfkit.core import dtype_device

    dtype, device = dtype_device(flow)
    return torch.tensor(
        [_given_code(flow, g, values[g]) for g in given], dtype=dtype, device=device
    )


FAR_CONTEXT = 10.0
"""Given values more than this many training standard deviations from the training mean get
a note: the model extrapolates there."""


def _check_sample_memory(n: int, rows: int, columns: int) -> None:
    """Refuse, before drawing, an ``-n`` whose samples cannot be held: the draws, their float64
    copy and the table written are about 24 bytes a value, all in memory at once (a huge ``-n``
    gave "internal error (... you tried to allocate 8e14 bytes)" or "Overflow when unpacking
    long long")."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system: torch's error then
        return
    need = 24 * n * rows * columns
    if need > memory:
        draws = f"-n {n} × {rows} --given-table rows" if rows > 1 else f"-n {n}"
        raise _UserError(
            f"{draws} × {columns} columns needs about {need / 2**30:,.0f} GiB of memory, more "
            f"than this machine's {memory / 2**30:,.0f} GiB; draw fewer (runs with different "
            "--seed values add up)"
        )


def _far_context_note(flow: Any, given: list[str], ctx: Any, source: str) -> str | None:
    """A note when given values ``ctx`` (``(C,)`` or ``(R, C)``) lie more than
    :data:`FAR_CONTEXT` standard deviations of the training data from its mean (angles
    excepted); None otherwise, or without a context standardization."""
    from nfkit.models.standardized import ContextStandardize

    scaler = next((m for m in flow.modules() if isinstance(m, ContextStandardize)), None)
    if scaler is None or ctx is None:
        return None
    rows = ctx.reshape(-1, ctx.shape[-1])
    z = ((rows - scaler.mean) / scaler.scale).abs()
    z[:, list(scaler.angles)] = 0.0
    worst = z.amax(0).tolist()
    far = [j for j, v in enumerate(worst) if v > FAR_CONTEXT]
    if not far:
        return None
    shown_cols = ", ".join(f"{given[j]} ({worst[j]:.3g} SD)" for j in far)
    where = (
        ""
        if rows.shape[0] == 1
        else (f" in {int((z > FAR_CONTEXT).any(1).sum())} of {rows.shape[0]} rows of {source}")
    )
    return (
        f"given value(s) far outside the training data{where}: {shown_cols} from its mean; "
        "the model extrapolates there, and its samples may mean nothing"
    )


def _given_value(flow: Any, name: str, value: str) -> float | str:
    """A ``--given`` value as the model reads it: a number, or one of a category column's
    labels (as written, else as the number it spells: ``2.0`` is the label ``2``)."""
    from nfkit.tables import FLAG_LABELS, flag_label

    labels = (flow.config.get("categories") or {}).get(name)
    try:
        number = float(value)
    except ValueError:
        number = None
    if labels is None:
        if number is None:
            raise _UserError(f"--given value of {name!r} is not a number: {value!r}")
        return number
    if value in labels:
        return value
    if tuple(labels) == FLAG_LABELS and flag_label(value) in labels:  # TRUE, false, ...
        return flag_label(value)
    if number is not None and f"{number:g}" in labels:
        return f"{number:g}"
    raise _UserError(
        f"--given {name}={value!r} is not a category of the model "
        f"(it knows {', '.join(map(repr, labels))})"
    )


def _given_written(flow: Any, name: str, value: str) -> float | int | str:
    """A ``--given`` value as ``sample`` writes it back: a whole number written without a
    decimal point as an integer (``2001``, not ``2001.0``), else as :func:`_given_value`."""
    read = _given_value(flow, name, value)
    whole = isinstance(read, float) and value.strip().lstrip("+-").isdecimal()
    return int(value) if whole else read


def _given_code(flow: Any, name: str, value: str) -> float:
    """A ``--given`` value as the model's input: the number, or the category's code."""
    read = _given_value(flow, name, value)
    if isinstance(read, str):
        return float(flow.config["categories"][name].index(read))
    return read


def _refuse_overwriting(output: tuple[str, Any], *inputs: tuple[str, Any]) -> None:
    """An output path that names one of the command's other files would replace it: refused
    before anything is read or trained. ``output``, ``inputs``: ``(what, path or None)``."""
    what, path = output
    for other, other_path in inputs:
        if path is not None and other_path is not None:
            if _place(path) == _place(other_path):
                raise _UserError(f"{what} {path} is also the {other}; writing it would replace it")


def _place(path: Any) -> Path:
    """Where ``path`` leads (links followed), or a symlink loop named as a one-line error
    (before Python 3.13; from 3.13 ``resolve`` returns a loop's own path, and reading it names
    the loop: ``tables.read_table``)."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):  # RuntimeError: Python's own "Symlink loop" before 3.13
        raise _UserError(f"{path}: a symbolic link loop; it leads to no file") from None


def _check_output_table(out: str | None, text: str | None = None) -> None:
    """An output table's suffix names a format nfkit writes, and ``.npy`` (numbers only) is not
    asked to hold ``text`` columns: checked before any work."""
    from nfkit.tables import check_table_path

    if out is not None:
        check_table_path(out, writing=True)
        if text and Path(out).suffix.lower() == ".npy":
            raise _UserError(f"-o {out}: a .npy file holds numbers only, and {text}; use .csv")


def _check_output_file(option: str, out: str, suffixes: tuple[str, ...]) -> None:
    """A model or program file's path: not a folder, and with one of ``suffixes`` (a data
    table's name there would be replaced by a binary file): checked before any work."""
    path = Path(out)
    if path.is_dir():
        raise _UserError(f"{option} {out} is a folder; give a file path")
    if path.suffix.lower() not in suffixes:
        raise _UserError(
            f"{option} {out}: expected a {' or '.join(suffixes)} file name (the file is "
            "written in torch's format)"
        )
    _check_writable(option, out)


def _check_figure_path(option: str, out: str) -> None:
    """A figure's path: a format matplotlib writes (no suffix: PNG), in a folder that takes a
    file; checked before the sampling a figure needs."""
    from nfkit.plot import figure_format

    try:
        figure_format(out)
    except ValueError as e:  # "nf.plot: cannot write a figure as ...": the option instead
        raise _UserError(f"{option} {out}: {str(e).split(': ', 2)[-1]}") from None
    if Path(out).is_dir():
        raise _UserError(f"{option} {out} is a folder; give a file path")
    _check_writable(option, out)


def _check_writable(option: str, out: str) -> None:
    """``out``'s folder (or the nearest existing one above it, where the missing ones would be
    created) takes a new file: tried with a temporary file, before any work (a fit that ran
    for an hour must not end in "Permission denied")."""
    import tempfile

    folder = Path(out).parent if str(Path(out).parent) else Path(".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".nfkit-probe.", dir=folder)
    except OSError as e:
        raise _UserError(f"{option} {out}: cannot write there ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


def _write_table(df: Any, out: str | os.PathLike[str] | None) -> None:
    """CSV to stdout, or atomically to ``out`` in the format its suffix names (folders created)."""
    from nfkit.tables import write_table

    if out is None:
        df.to_csv(sys.stdout, index=False)
    else:
        write_table(df, out)


# --------------------------------------------------------------------------- commands


def _check_modelled(source: str, option: str, names: Any, data_cols: list[str]) -> None:
    """Every name an option gives is a modelled column (not a context one, not unknown)."""
    unknown = [name for name in names if name not in data_cols]
    if unknown:
        raise _UserError(
            f"{source}: {option} column(s) {', '.join(map(repr, unknown))} are not modelled "
            f"columns; those are {', '.join(map(repr, data_cols))}"
        )


def _train(
    args: argparse.Namespace, df: Any, given: list[str], source: str, weights: Any = None
) -> tuple[Any, Any]:
    """Build, standardize and fit a model on a DataFrame (rows weighted by ``weights``, a
    Series on its index, when given); returns ``(flow, history)``. The run's seed
    (:func:`_run_seed`) is set in ``args.seed`` and seeds torch's global RNG in a fork of it:
    the caller's RNG (``main`` called from Python) is left as it was."""
    import torch

    with torch.random.fork_rng(devices=_cuda_devices(args.device)):
        args.seed = _run_seed(args)
        torch.manual_seed(args.seed)
        return _fit_table(args, df, given, source, weights)


def _cuda_devices(device: str | None) -> list[int]:
    """The CUDA device a run on ``device`` draws from, for ``fork_rng`` (none on others)."""
    import torch

    if device is None or not torch.cuda.is_available():
        return []
    place = torch.device(device)
    if place.type != "cuda":
        return []
    return [torch.cuda.current_device() if place.index is None else place.index]


def _run_seed(args: argparse.Namespace) -> int:
    """The seed the run uses: a resumed checkpoint's (``nf.fit`` continues with it), else
    ``--seed``, else a fresh one drawn from torch's RNG (rank 0's in a distributed run), so
    that ``--seed`` with the seed reported repeats the run."""
    import torch

    checkpoint = getattr(args, "checkpoint", None)
    if getattr(args, "resume", False) and checkpoint and os.path.isfile(checkpoint):
        from nfkit.io import safe_torch_load

        try:
            made = int(safe_torch_load(checkpoint, "nfkit fit")["seed"])
        except Exception:  # nf.fit says what is wrong with the checkpoint
            made = None
        if made is not None and args.seed is not None and args.seed != made:
            raise _UserError(
                f"--checkpoint {checkpoint} was made with --seed {made}; got --seed {args.seed}: "
                "resume with its seed (or no --seed), or give another --checkpoint"
            )
        if made is not None:
            return made
    if args.seed is not None:
        return args.seed
    seed = int(torch.randint(0, 2**32, ()).item())
    from nfkit.distributed import rank_and_world

    if rank_and_world()[1] > 1:  # every rank must draw the same batches
        import torch.distributed as dist

        box = [seed]
        dist.broadcast_object_list(box, src=0)
        seed = int(box[0])
    return seed


def _rbig_options(args: argparse.Namespace, options: dict[str, Any]) -> None:
    """RBIG is fitted greedily: the run's seed seeds its held-out split (and random rotations)
    unless ``--option seed=`` does, and options of gradient training are refused, not ignored."""
    gradients_only = ("--val", "--val-fraction", "--steps", "--epochs", "--patience",
                      "--weight-decay", "--lr", "--batch-size", "--checkpoint")  # fmt: skip
    unused = [flag for flag in _non_default_options(args) if flag in gradients_only]
    if unused:
        raise _UserError(
            f"--model rbig is fitted greedily, layer by layer without gradient steps: "
            f"{', '.join(unused)} play(s) no part (its held-out share of rows: --option "
            "validation=F, default 0.2)"
        )
    options.setdefault("seed", args.seed)


def _fit_table(
    args: argparse.Namespace, df: Any, given: list[str], source: str, weights: Any
) -> tuple[Any, Any]:
    """:func:`_train`'s work, under the run's seed."""
    import torch

    import nfkit as nf
    from nfkit.estimator import make_flow
    from nfkit.models.gaussianization import fitted_greedily

    unknown = [g for g in given if g not in df.columns]
    if unknown:
        raise _UserError(
            f"{source}: --given column(s) {', '.join(map(repr, unknown))} not found; "
            f"columns are {', '.join(map(repr, df.columns))}"
        )
    data_cols = [c for c in df.columns if c not in set(given)]
    if not data_cols:
        raise _UserError(f"{source}: --given uses every column; nothing is left to model")
    if len(df) >= 50:  # a number in every row that no other row has: an identifier?
        ids = [
            col
            for col in data_cols
            if col not in (df.attrs.get("categories") or {})
            and df[col].is_unique
            and bool((df[col] == df[col].round()).all())
        ]
        if ids:
            _info(
                args,
                f"{source}: column(s) {', '.join(map(repr, ids))} hold a different whole number "
                "in every row: identifiers? They are modelled like any column; remove them "
                "from the table if they are",
            )
    wide = _needs_float64(df, getattr(args, "bounds", None) or {})  # demo: no --bounds
    dtype = torch.float64 if wide else torch.float32
    if wide:
        _info(
            args,
            f"{source}: float32 would blur column(s) {', '.join(wide)} (values far larger than "
            "their spread, whole numbers beyond 2**24, values below 1e-38, or values it rounds "
            "onto a bound): the model computes in float64",
        )
    x = _tensor(df[data_cols], dtype)
    c = _tensor(df[given], dtype) if given else None
    options = dict(args.option or [])
    names = [name for name, _ in args.option or []]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise _UserError(f"--option {', '.join(repeated)} is given more than once")
    every_angle = getattr(args, "angles", None) or {}  # nfkit demo has no --angles
    given_angles = {col: span for col, span in every_angle.items() if col in given}
    angles = {col: span for col, span in every_angle.items() if col not in given}
    objective = getattr(args, "objective", "likelihood")  # nfkit demo has no --objective
    if objective == "flow_matching":
        if angles:
            raise _UserError(
                "--angles need --model ncsf, and --objective flow-matching trains ffjord: "
                "give one of them"
            )
        if (args.model or "ffjord").lower() != "ffjord":
            raise _UserError(
                "--objective flow-matching trains a continuous flow: --model ffjord (the "
                f"default with it), not {args.model!r}"
            )
    model = args.model or (
        "ncsf" if angles else "ffjord" if objective == "flow_matching" else "nsf"
    )
    if angles:
        _check_modelled(source, "--angles", angles, data_cols)
        if model.lower() != "ncsf":
            raise _UserError(f"--angles needs --model ncsf (the flow for angles), not {model!r}")
        if "angles" in options:
            raise _UserError("give the angles once: --angles, or --option angles=")
        options["angles"] = [data_cols.index(col) for col in data_cols if col in angles]
    if model.lower() == "rbig":
        _rbig_options(args, options)
    context = len(given) + len(given_angles)  # a given angle is read as (cos, sin)
    summary = getattr(args, "summary", None)  # nfkit demo has no --summary
    if summary is not None and not given:
        raise _UserError("--summary is the size of a learned summary of the --given columns")
    summary_set = getattr(args, "summary_set", None)
    if summary_set is not None and (summary is None or given_angles):
        raise _UserError(
            "--summary-set M reads the --given columns as a set of elements of M columns for "
            "a --summary K; " + ("give --summary" if summary is None else "not with given angles")
        )
    padded = getattr(args, "summary_padded", False)
    if padded and summary_set is None:
        raise _UserError(
            "--summary-padded lets a set's elements be missing (empty cells); give --summary-set"
        )
    flow = make_flow(
        model,
        len(data_cols),
        context=context if summary is None else summary,
        transforms=args.transforms,
        hidden=args.hidden,
        options=options,
        where="nfkit fit",
    )
    if summary is not None:  # an MLP from the (standardized) given columns to `summary` features
        flow = nf.models.Embedded(
            len(data_cols),
            flow=flow.config,
            context=context,
            hidden=args.hidden,
            set_features=summary_set,
            padded=padded,
        )
    spec = getattr(args, "bounds", None) or {}  # nfkit demo has no --bounds
    _check_modelled(source, "--bounds", spec, data_cols)
    categories = df.attrs.get("categories") or {}
    coded = [col for col in data_cols if col in categories]  # always discrete, in 0 … K-1
    taken = [col for col in coded if col in spec]
    if taken:
        raise _UserError(
            f"{source}: --bounds column(s) {', '.join(map(repr, taken))} hold categories; "
            "their range is their categories"
        )
    spec = {**spec, **{col: (0.0, float(len(categories[col]) - 1)) for col in coded}}
    clash = [col for col in angles if col in spec]
    if clash:
        what = "hold categories" if clash[0] in coded else "have --bounds too"
        raise _UserError(
            f"{source}: --angles column(s) {', '.join(map(repr, clash))} {what}; an angle's "
            "range goes in --angles NAME=LOW:HIGH"
        )
    # an angle's range is its bounds (without one, standardize takes the model's interval)
    spec.update({col: span for col, span in angles.items() if span is not None})
    bounds = [spec.get(col, (None, None)) for col in data_cols] if spec else None
    discrete = getattr(args, "discrete", None)  # nfkit demo has no --discrete
    if isinstance(discrete, list):
        _check_modelled(source, "--discrete", discrete, data_cols)
        taken = [col for col in discrete if col in angles]
        if taken:
            raise _UserError(
                f"{source}: --discrete column(s) {', '.join(map(repr, taken))} are --angles; "
                "an angle is continuous"
            )
        discrete = [*discrete, *(col for col in coded if col not in discrete)]
    elif discrete is None and coded:
        discrete = coded
    kept = slice(None) if weights is None else torch.as_tensor(weights.to_numpy() > 0)
    flow = nf.models.standardize(  # from the rows that count (weight > 0)
        flow.to(dtype),
        x[kept],
        None if c is None else c[kept],
        columns=list(df.columns),
        given=given,
        bounds=bounds,
        discrete=discrete or None,
        context_angles=given_angles or None,
    )
    if categories:
        flow.config["categories"] = {
            col: categories[col] for col in df.columns if col in categories
        }
        counts = ", ".join(f"{col} ({len(categories[col])})" for col in categories)
        _info(
            args,
            f"{source}: text column(s) {counts} read as categories (integer codes in sorted "
            "order, or an ordered categorical's declared order; discrete when modelled)",
        )
    cells = [data_cols[j] for j in flow.config.get("discrete") or [] if data_cols[j] not in coded]
    if cells and discrete == "auto":
        _info(
            args,
            f"{source}: column(s) {', '.join(cells)} hold whole numbers only: modelled as "
            "discrete (log-probabilities of their integers; --discrete none: as continuous)",
        )
    open_cells = [col for col in cells if col not in spec]
    if open_cells:  # without a range, some probability goes to integers the data never reach
        ranges = ",".join(
            f"{col}={_exact(df[col].min())}:{_exact(df[col].max())}" for col in open_cells
        )
        _info(
            args,
            f"{source}: discrete column(s) {', '.join(open_cells)} have no --bounds; if their "
            f"range is known, give it (the data span --bounds {ranges})",
        )
    val_path = getattr(args, "val", None)  # nfkit demo has none of these four
    val_fraction = getattr(args, "val_fraction", None)
    if val_path is not None and val_fraction is not None:
        raise _UserError("--val-fraction splits the data; with --val every row of it trains")
    val = val_weights = None
    if val_path is not None:
        _refuse_overwriting(("--out", args.out), ("--val", val_path))
        val_table, val_df = _read_for(
            flow, val_path, list(df.columns), drop_missing=args.drop_missing
        )
        if weights is not None and args.weights in val_table.columns:  # else: unweighted
            wv = _weights_column(val_table, args.weights, val_path, args.drop_missing)
            kept = val_df.index.intersection(wv.index)  # the rows both keep (same labels)
            val_df = val_df.loc[kept]
            val_weights = _tensor(wv.loc[kept].to_frame(), dtype)[:, 0]
        xv = _tensor(val_df[data_cols], dtype)
        cv = _tensor(val_df[given], dtype) if given else None
        # rows of weight 0 take no part: not checked either
        counted = (
            torch.arange(len(xv)) if val_weights is None else (val_weights > 0).nonzero()[:, 0]
        )
        _outside_support(flow, xv[counted], None if cv is None else cv[counted], val_path, counted)
        val = (xv, cv) if given else xv
    if fitted_greedily(flow):  # RBIG: fitted by standardize, no gradient training
        if weights is not None:
            raise _UserError("--model rbig is fitted greedily, without --weights")
        from nfkit.train import History

        return flow.cpu(), History(steps=0)
    history = nf.fit(
        flow,
        x,
        context=c,
        weights=None if weights is None else _tensor(weights.to_frame(), dtype)[:, 0],
        val=val,
        val_weights=val_weights,
        val_fraction=0.1 if val_fraction is None else val_fraction,
        patience=getattr(args, "patience", 10),
        weight_decay=getattr(args, "weight_decay", 0.0),
        steps=(
            args.steps
            if args.steps is not None or args.epochs is not None
            else getattr(args, "default_steps", None)
        ),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        progress=not args.quiet,
        seed=args.seed,
        device=args.device,
        checkpoint=args.checkpoint,
        resume=args.resume,
        objective=objective,
    )
    return flow.cpu(), history


def _summary(flow: Any, history: Any, rows: int, seed: int) -> str:
    model = flow.config.get("flow", flow.config).get("model", "flow")
    if model == "RBIG":
        layers = flow.config.get("flow", flow.config).get("layers")
        return (
            f"fitted RBIG on {rows} rows greedily, without gradients: {layers} layer(s) kept "
            f"(seed {seed})"
        )
    val = ""
    if history.val_nll is not None:  # flow matching: its loss picked the step
        val = (
            f"val flow-matching loss {history.best_val:.4f} at step {history.best_step}, "
            f"val NLL {history.val_nll:.4f} nats, "
        )
    elif history.best_val is not None:
        val = f"val NLL {history.best_val:.4f} nats at step {history.best_step}, "
    return (
        f"trained {model} on {rows} rows in {history.steps} steps ({val}"
        f"{history.wall_time:.1f} s, seed {seed})"
    )


def _training_record(
    args: argparse.Namespace, flow: Any, history: Any, data: str | os.PathLike[str], rows: int
) -> dict[str, Any]:
    """What ``nfkit info`` shows of how a model was trained, kept in its file: the command,
    the data file's name and SHA-256, the run's settings and seed, the versions."""
    import hashlib

    import torch

    from nfkit import __version__
    from nfkit.models._registry import learning_rate

    digest = hashlib.sha256()
    with open(data, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    stdin = getattr(args, "stdin_path", None)
    gradients = history.steps > 0  # RBIG is fitted greedily: no steps, batches or rate
    return {
        "command": f"nfkit {args.command}",
        "data": "<stdin>" if stdin and str(data) == stdin else Path(data).name,
        "data_sha256": digest.hexdigest(),
        "rows": rows,
        "seed": args.seed,
        "steps": history.steps,
        "batch_size": args.batch_size if gradients else None,
        "lr": (learning_rate(flow) if args.lr is None else args.lr) if gradients else None,
        "nfkit_version": __version__,
        "torch_version": torch.__version__,
    } | {  # options that change what was modelled, when given
        key: value
        for key, value in (
            ("dropped", getattr(args, "drop", None)),
            ("weights", getattr(args, "weights", None)),
            ("options", _options_given(args)),
        )
        if value
    }


# fit's options kept elsewhere in the record (or in no way part of the model: files, output)
_UNRECORDED = {"help", "data", "out", "checkpoint", "resume", "distributed", "device", "quiet",
               "threads", "seed", "batch_size", "lr", "drop", "weights", "func", "command"}  # fmt: skip


def _end(value: float | None) -> str:
    """An end of a ``--bounds``/``--angles`` range as it can be given again, exactly (``:g``
    recorded π as 3.14159, inside the data's range): empty for an open one."""
    return "" if value is None or math.isinf(value) else _exact(value)


def _non_default_options(args: argparse.Namespace) -> dict[str, tuple[str, Any]]:
    """``{"--flag": (dest, value)}`` of the command's options that differ from its defaults."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {
        max(action.option_strings, key=len): (action.dest, getattr(args, action.dest, None))
        for action in sub.choices[args.command]._actions
        if action.option_strings and getattr(args, action.dest, None) != action.default
    }


def _options_given(args: argparse.Namespace) -> dict[str, Any]:
    """The command's other options that differ from their defaults, as ``{"--flag": value}``
    (JSON values): with the data, seed, batch size and rate, what repeats the run."""
    import json

    out: dict[str, Any] = {}
    stdin = getattr(args, "stdin_path", None)
    for flag, (dest, value) in _non_default_options(args).items():
        if dest in _UNRECORDED:
            continue
        if stdin is not None and value == stdin:  # --val -: not the deleted temporary copy
            value = "-"
        if flag in ("--bounds", "--angles") and isinstance(value, dict):  # NAME=LOW:HIGH,...
            value = ",".join(  # (an angle without a range: radians, its name alone)
                k if span is None else f"{k}={_end(span[0])}:{_end(span[1])}"
                for k, span in value.items()
            )
        elif flag == "--option":  # (name, value) pairs: NAME=VALUE, one --option each
            value = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in value]
        elif isinstance(value, (list, tuple)):
            value = [v if isinstance(v, (int, float, str)) else str(v) for v in value]
        elif value is None:  # a default switched off: --discrete none
            value = "none"
        elif not isinstance(value, (bool, int, float, str)):
            value = str(value)
        out[flag] = value
    return out


def cmd_fit(args: argparse.Namespace) -> None:
    import nfkit as nf
    from nfkit import distributed

    if args.resume and args.checkpoint is None:
        raise _UserError("--resume continues from --checkpoint PATH; give one")
    launched = os.environ.get("WORLD_SIZE", "1")
    if not args.distributed and launched.isdigit() and int(launched) > 1:
        raise _UserError(
            f"launched as one of {launched} processes (torchrun) without --distributed: each "
            "would train its own model and write the same --out; add --distributed (or unset "
            "WORLD_SIZE)"
        )
    _refuse_overwriting(
        ("--out", args.out), ("data", args.data), ("--checkpoint", args.checkpoint)
    )
    _refuse_overwriting(("--checkpoint", args.checkpoint), ("data", args.data))
    _check_output_file("--out", args.out, (".pt", ".pth"))
    if args.checkpoint is not None:
        _check_writable("--checkpoint", args.checkpoint)
    if args.distributed:
        try:
            device = distributed.init_from_env(device=args.device)
        except (RuntimeError, ValueError) as e:
            raise _UserError(str(e)) from None
        args.device = str(device)  # this rank's own GPU (cuda:LOCAL_RANK) or the CPU
        args.quiet = args.quiet or not distributed.is_main_process()
    try:
        given = [g.strip() for g in args.given.split(",") if g.strip()] if args.given else []
        if args.given is not None and not given:
            raise _UserError(f"--given names no column: {args.given!r}")
        twice = sorted({g for g in given if given.count(g) > 1})
        if twice:
            raise _UserError(f"--given names {', '.join(map(repr, twice))} twice")
        read = dict(
            drop_missing=args.drop_missing,
            drop_constant=args.drop_constant,
            categories=True,
            missing_ok=given if args.summary_padded else (),
        )
        weights = None
        if args.weights is None and args.drop is None:
            df = _read(args.data, **read)
        elif args.weights is None:
            from nfkit.tables import clean_table, read_raw_table

            raw = _dropped(read_raw_table(args.data), args.drop, args.data, given, None)
            df = clean_table(raw, args.data, **read)
        else:  # the weights are not modelled: read apart, then the rows both keep
            from nfkit.tables import clean_table, read_raw_table

            if args.weights in given:
                raise _UserError(
                    f"--weights column {args.weights!r} is --given too; weights are not modelled"
                )
            raw = _dropped(read_raw_table(args.data), args.drop, args.data, given, args.weights)
            weights = _weights_column(raw, args.weights, args.data, args.drop_missing)
            df = clean_table(raw.drop(columns=[args.weights]), args.data, keep_index=True, **read)
            kept = df.index.intersection(weights.index)  # by the raw table's row labels
            df = df.loc[kept].reset_index(drop=True)
            weights = weights.loc[kept].reset_index(drop=True)
            if not (weights > 0).any():
                raise _UserError(
                    f"{args.data}: --weights column {args.weights!r} is zero on every row kept"
                )
        flow, history = _train(args, df, given, args.data, weights)
        is_main = distributed.is_main_process()
        if is_main:  # rank 0 writes the model and reports
            record = _training_record(args, flow, history, args.data, len(df))
            path = nf.save(flow, args.out, training=record)
    except BaseException:
        if args.distributed:  # no barrier: a peer may be waiting in a collective (it hung)
            distributed.shutdown(wait=False)
        raise
    if args.distributed:
        distributed.shutdown()
    if not is_main:
        return
    weighted = ""
    if weights is not None:
        zero = int((weights == 0).sum())
        weighted = f" (weighted by {args.weights}" + (
            f"; {zero} of them weight 0, taking no part)" if zero else ")"
        )
    _info(args, _summary(flow, history, len(df), args.seed) + weighted)
    cond = (
        f" of {', '.join(c for c in df.columns if c not in given)} given {', '.join(given)}"
        if given
        else ""
    )
    print(f"saved the model{cond} to {path}")


def cmd_demo(args: argparse.Namespace) -> None:
    import pandas as pd

    import nfkit as nf

    if args.dataset not in nf.datasets.TOYS:
        raise _UserError(
            f"unknown dataset {args.dataset!r}; choose from {', '.join(nf.datasets.TOYS)}"
        )
    if args.n < 100:  # a validation split and a density need some rows
        raise _UserError(f"-n must be at least 100 data points, got {args.n}")
    if args.steps is not None and args.epochs is not None:  # (before data.csv is written)
        raise _UserError("give --steps or --epochs, not both")
    out = Path(args.out)
    t0 = time.perf_counter()
    x = nf.datasets.TOYS[args.dataset](args.n, seed=args.seed)
    df = pd.DataFrame(x.double().numpy(), columns=["x", "y"])
    _write_table(df, out / "data.csv")
    flow, history = _train(args, df, [], args.dataset)
    _info(args, _summary(flow, history, len(df), args.seed))
    record = _training_record(args, flow, history, out / "data.csv", len(df))
    files = [nf.save(flow, out / "model.pt", training=record)]
    title = f"{flow.config['flow']['model']} on {args.dataset}"
    files.append(out / "density.png")
    nf.plot.density(flow, x[:4000], path=files[-1], title=title)
    files.append(out / "layers.png")
    nf.plot.layers(flow, path=files[-1])
    files.append(out / "history.png")
    nf.plot.history(history, files[-1], title=f"training history ({title})")
    files.append(out / "samples.csv")
    import torch

    with torch.random.fork_rng(devices=[]):  # the run's seed draws the samples too
        torch.manual_seed(args.seed)
        drawn = flow.sample(1000)
    _write_table(pd.DataFrame(drawn.double().numpy(), columns=["x", "y"]), files[-1])
    print(
        f"nfkit demo: wrote {len(files) + 1} files to {out}/ in {time.perf_counter() - t0:.0f} s:"
    )
    for f in [out / "data.csv", *files]:
        print(f"  {f}")


def _labels_of(codes: Any, labels: list[str]) -> Any:
    """A column of category codes ``0 … K-1`` as the labels they stand for (text)."""
    import pandas as pd

    return pd.Categorical.from_codes(codes.astype("int64"), labels).astype(str)


def cmd_sample(args: argparse.Namespace) -> None:
    import numpy as np
    import pandas as pd
    import torch

    from nfkit.core import dtype_device

    table_path = args.given_table
    _refuse_overwriting(("-o", args.output), ("model", args.model), ("--given-table", table_path))
    _check_output_table(args.output)
    flow = _load_model(args.model, args.device)
    if flow.config.get("categories"):
        _check_output_table(args.output, "the samples have category labels")
    columns, data, given = _schema(flow)
    dtype, device = dtype_device(flow)
    if table_path is not None:
        if args.given is not None:
            raise _UserError("give the context once: --given or --given-table, not both")
        if not given:
            raise _UserError(
                f"{args.model}: this model is not conditional; --given-table is not used"
            )
        table, contexts = _read_for(flow, table_path, given)
        ctx = _tensor(contexts, dtype, device)  # (R, C)
    else:
        ctx = _context_row(flow, given, args.given, args.model)
    _check_sample_memory(args.n, 1 if table_path is None else len(ctx), len(columns))
    far = _far_context_note(flow, given, ctx, table_path or "")
    if far:
        _info(args, f"nfkit: note: {far}")
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, enabled=args.seed is not None):
        if args.seed is not None:
            torch.manual_seed(args.seed)
        x = flow.sample(args.n, ctx, chunk_size=args.chunk_size)
    if table_path is not None:  # (n, R, D) -> R blocks of n draws, one per table row
        x = x.transpose(0, 1).reshape(-1, len(data))
    df = pd.DataFrame(x.double().cpu().numpy(), columns=data)
    categories = flow.config.get("categories") or {}
    for j in flow.config.get("discrete") or []:  # integers, written without a decimal point
        if bool((df[data[j]].abs() < 2**63).all()):  # (beyond int64: whole floats as they are)
            df[data[j]] = df[data[j]].astype("int64")
        if data[j] in categories:  # a category column: its labels
            df[data[j]] = _labels_of(df[data[j]], categories[data[j]])
    if table_path is None:
        for g in given:
            df[g] = _given_written(flow, g, args.given[g])
        _write_table(df[columns], args.output)
        if args.output:
            print(f"wrote {args.n} samples to {args.output}")
        return
    repeated = contexts.loc[contexts.index.repeat(args.n)].reset_index(drop=True)
    raw = _select(table, given, table_path)  # as read: integer columns written back as such
    for g in given:
        if g in categories:
            df[g] = _labels_of(repeated[g], categories[g])
        elif pd.api.types.is_integer_dtype(raw[g].dtype):
            df[g] = raw[g].repeat(args.n).reset_index(drop=True)
        else:
            df[g] = repeated[g]
    row = "row"
    while row in columns:  # a model column named "row": the row number's column is "_row"
        row = f"_{row}"
    df.insert(0, row, np.repeat(np.arange(len(contexts)), args.n))
    _write_table(df[[row, *columns]], args.output)
    if args.output:
        print(
            _shown(
                args,
                f"wrote {args.n} samples for each of the {len(contexts)} rows of {table_path} "
                f"({len(df)} rows) to {args.output}",
            )
        )


def cmd_score(args: argparse.Namespace) -> None:
    import pandas as pd
    import torch

    from nfkit.core import log_prob_or_minus_inf
    from nfkit.models import DequantizedFlow
    from nfkit.tables import DataError

    _refuse_overwriting(("-o", args.output), ("model", args.model), ("data", args.data))
    _check_output_table(args.output)
    _check_order("score", args.model, args.data, "MODEL DATA")
    flow = _load_model(args.model, args.device)
    if args.with_data and flow.config.get("categories"):
        _check_output_table(args.output, "--with-data writes the category labels too")
    options = {}
    if args.draws is not None:
        if not isinstance(flow, DequantizedFlow):
            raise _UserError(f"{args.model}: --draws is for models with discrete columns")
        options["draws"] = args.draws
    columns = _schema(flow)[0]
    try:
        table, df, x, c = _model_table(flow, args.data, incomplete=args.skip_incomplete)
    except DataError as e:  # score has no --drop-missing: one output row per input row
        head, hint, _ = str(e).partition(_FILL_HINT)
        if not hint:
            raise
        raise _UserError(f"{head}; --skip-incomplete scores those rows NaN") from None
    if args.with_data and "log_density" in table.columns:
        raise _UserError(
            f"{args.data}: already has a log_density column; --with-data would repeat it"
        )
    if args.with_data:  # the table's own columns as written: text (a date, TRUE) needs a text file
        kinds = pd.api.types
        text = [
            n
            for n in table.columns
            if not kinds.is_numeric_dtype(table[n].dtype) or kinds.is_bool_dtype(table[n].dtype)
        ]
        if text:
            _check_output_table(args.output, f"--with-data writes the text column {text[0]!r}")
    scores = torch.full((len(x),), float("nan"), dtype=torch.float64)
    complete = slice(None)
    if args.skip_incomplete:  # a NaN score for a row with a missing model value
        padded = _padded_given(flow)
        complete = ~x.isnan().any(-1)
        if c is not None and not padded:
            complete &= ~c.isnan().any(-1)
        complete = complete.cpu()
        skipped = int((~complete).sum())
        if skipped:
            _info(args, f"{args.data}: {skipped} incomplete row(s) scored NaN")
        x, c = x[complete.to(x.device)], None if c is None else c[complete.to(c.device)]
    rows = torch.arange(len(scores))[complete]  # the table's row of each scored one
    with torch.no_grad():
        refuse = args.impossible == "error"
        hint = "; --impossible=-inf scores such rows -inf"
        outside = _outside_support(flow, x, c, args.data, rows, hint if refuse else None)
        options["chunk_size"] = args.chunk_size
        lp = (
            log_prob_or_minus_inf(flow, x, c, **options)
            if outside
            else flow.log_prob(x, c, **options)
        )
        scores[complete] = lp.double().cpu()
    if outside:
        _info(args, f"{args.data}: {outside} row(s) outside the model's support scored -inf")
    out = pd.DataFrame({"log_density": scores.numpy()})
    if args.with_data:  # every column of the table as written (header-less: the model's names)
        rows = table if set(columns) <= set(table.columns) else table.set_axis(columns, axis=1)
        out = pd.concat([_as_written(args.data, rows, columns), out], axis=1)
    _write_table(out, args.output)
    if args.output:
        finite = scores[torch.isfinite(scores)]  # not the -inf or NaN (skipped) rows
        mean = f"{float(finite.mean()):.4f} nats" if len(finite) else "none"
        others = f" of {len(finite)} finite row(s)" if len(finite) < len(out) else ""
        print(f"wrote {len(out)} log-densities to {args.output} (mean {mean}{others})")


def _as_written(path: str, table: Any, columns: list[str]) -> Any:
    """``table`` (every row of the text file ``path``, as pandas parsed it) with the columns
    that are not the model's read again as text: an identifier ``02134`` or ``007``, ``TRUE``,
    ``2`` written back as they were (pandas made them 2134, 7, True, 2.0)."""
    from nfkit.tables import read_raw_table

    extra = [c for c in table.columns if c not in columns]
    table = table.reset_index(drop=True)
    if not extra or Path(path).suffix.lower() in (".parquet", ".npy"):  # typed formats: as read
        return table
    raw = read_raw_table(path, text=extra)
    if len(raw) != len(table):  # (every row is scored: the same rows)
        return table
    return table.assign(**{c: raw[c].to_numpy() for c in extra})


def _angle_columns(flow: Any) -> list[int]:
    """The modelled columns that are angles: on a closed, bounded support (a circle)."""
    support = flow.transform.domain
    return [j for j in range(flow.event_shape[0]) if support.at(j).is_circle]


def _bounds_text(flow: Any) -> str:
    """The recorded bounds per modelled column: ``0 < share < 1``, ``kids >= 0`` (integers)."""
    _, data, _ = _schema(flow)
    cells = set(flow.config.get("discrete") or ())
    coded = flow.config.get("categories") or {}
    parts = []
    angles = set(_angle_columns(flow))
    for j, (low, high) in enumerate(flow.config["bounds"]):
        if data[j] in coded or j in angles:  # listed with their categories, their ranges
            continue
        strict = "<" if j not in cells else "<="
        low_text = "" if low is None else f"{low:g} {strict} "
        high_text = "" if high is None else f" {strict} {high:g}"
        if low_text or high_text:
            parts.append(f"{low_text}{data[j]}{high_text}")
    return ", ".join(parts)


def cmd_compare(args: argparse.Namespace) -> None:
    import torch

    from nfkit.metrics import compare_scores

    models = [str(m) for m in args.models]
    places = [_place(m) for m in models]
    repeated = [m for m, p in zip(models, places) if places.count(p) > 1]
    if repeated:
        raise _UserError(f"model {repeated[0]} is given more than once")
    _refuse_overwriting(("-o", args.output), ("data", args.data), *(("model", m) for m in models))
    _check_output_table(args.output, "the ranking names the models")
    _check_order("compare", models[0], args.data, "DATA MODEL [MODEL ...]")
    flows = {m: _load_model(m, args.device) for m in models}
    first = None
    for name, flow in flows.items():  # the same variables, the same kind of likelihood
        _, data, given = _schema(flow)
        cells = [data[j] for j in flow.config.get("discrete") or []]
        kind = (sorted(data), sorted(given), sorted(cells))
        if first is None:
            first = (name, kind)
            continue
        for what, a, b in zip(("models", "is given", "treats as discrete"), first[1], kind):
            if a != b:
                raise _UserError(
                    f"{first[0]} and {name} differ in what each {what} ({', '.join(a) or 'none'}"
                    f" against {', '.join(b) or 'none'}); their likelihoods do not compare"
                )
    orders = {name: _schema(flow)[0] for name, flow in flows.items()}
    scores = {}
    for name, flow in flows.items():
        table, _, x, c = _model_table(flow, args.data)
        other = next((m for m in models if orders[m] != orders[models[0]]), None)
        if other is not None and table.attrs.get("header", True) is False:
            # by position, each model would read the columns in its own order
            raise _UserError(
                f"{args.data}: has no column names, and {models[0]} and {other} take their "
                f"columns in different orders ({', '.join(orders[models[0]])} against "
                f"{', '.join(orders[other])}); give the table a header"
            )
        with torch.no_grad():
            _outside_support(flow, x, c, args.data, hint=f" (model {name})")
            scores[name] = flow.log_prob(x, c, chunk_size=args.chunk_size)
    ranking = compare_scores(scores)
    if args.output:
        _write_table(ranking, args.output)
        print(f"wrote the ranking of {len(models)} models to {args.output}")
        return
    print(ranking.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(
        "log_likelihood: mean nats per row (sem: its standard error); difference: the best "
        "model's mean minus this one's (difference_sem: standard error of the paired per-row "
        "differences)"
    )


def cmd_export(args: argparse.Namespace) -> None:
    import torch

    import nfkit as nf
    from nfkit.io import atomic_write

    _refuse_overwriting(("output", args.output), ("model", args.model))
    _check_output_file("output", args.output, (".pt2",))
    flow = _load_model(args.model)
    _, data, given = _schema(flow)
    direction = "sample" if args.sample else "density"
    try:
        program = nf.export(flow, direction)
    except ValueError as e:
        raise _UserError(f"{args.model}: {e}") from None
    atomic_write(args.output, lambda f: torch.export.save(program, f))
    first = "z" if args.sample else "x"
    dtype = str(nf.core.dtype_device(flow)[0]).replace("torch.", "")  # inputs must match it
    inputs = f"{first} (rows, {len(data)})" + (f", c (rows, {len(given)})" if given else "")
    inputs += f", {dtype}"
    what = "sampler" if args.sample else "density"
    print(f"wrote the {what} of {args.model} to {args.output} (torch.export.load(path).module())")
    print(f"  inputs: {inputs}")
    if args.sample:
        print(f"  z: standard normal noise; output: rows of {', '.join(data)}")
    else:
        print(f"  x: {', '.join(data)}; output: log-density per row (nats)")
    if given:
        print(f"  c: {', '.join(given)}")
    if flow.config.get("categories"):
        print("  category columns are their codes 0 … K-1 (their labels: nfkit info)")


def cmd_info(args: argparse.Namespace) -> None:
    import json

    from nfkit.core import dtype_device
    from nfkit.io import load_with_header

    flow, header = load_with_header(args.model)
    record = header["training"]
    if args.json:
        shown = {"config": flow.config, "nfkit_version": header["nfkit_version"]}
        print(json.dumps({**shown, "training": record}, indent=2))
        return
    config = flow.config
    # Standardized keeps the inner flow's config (Embedded too, below: not read as this one)
    inner = config["flow"] if config.get("model") == "Standardized" else config
    embedded = inner if inner.get("model") == "Embedded" else None
    if embedded is not None:  # the summary network's own line, below
        inner = embedded["flow"]
    settings = ", ".join(f"{k}={v}" for k, v in inner.items() if k != "model")
    print(f"{args.model}: {inner['model']}({settings})")
    if embedded is not None:
        hidden = ", ".join(map(str, embedded["hidden"]))
        m, padded = embedded.get("set_features"), embedded.get("padded")
        what = (
            f"an MLP ({hidden}) of the {embedded['context']} context features"
            if not m
            else f"a DeepSet ({hidden}) of {'up to' if padded else 'the'} "
            f"{embedded['context'] // m} elements of {m} context features each (their order "
            f"does not matter{'; absent ones are empty cells' if padded else ''})"
        )
        print(f"  summary: {what} into the model's {inner['context']}, trained with it")
    if config["model"] == "Standardized":
        _, data, _ = _schema(flow)
        support = flow.transform.domain
        angles = _angle_columns(flow)
        if len(angles) < len(data) or config.get("bounds"):
            print(
                "  standardized: columns are scaled inside the model; "
                "densities in the table's units"
            )
        if config.get("bounds") and _bounds_text(flow):
            print(f"  bounds: {_bounds_text(flow)} (zero probability outside)")
        if angles and len(angles) == len(data) and not config.get("bounds"):
            print(f"  support: {support} per column (not scaled; angles stay in their units)")
        elif angles:
            ranges = ", ".join(
                f"{data[j]} in [{support.at(j).low:g}, {support.at(j).high:g}]" for j in angles
            )
            print(f"  angles: {ranges} (periodic: the two ends are one point)")
        if config.get("discrete"):
            _, data, _ = _schema(flow)
            names = ", ".join(data[j] for j in config["discrete"])
            print(f"  discrete: {names} (integers, dequantized; log-probabilities over them)")
        for name, labels in (config.get("categories") or {}).items():
            shown_labels = ", ".join(labels[:12]) + (", ..." if len(labels) > 12 else "")
            print(f"  categories of {name}: {shown_labels} (codes 0-{len(labels) - 1})")
    if len(flow.event_shape) == 1:
        _, data, given = _schema(flow)
        print(f"  models: {', '.join(data)}" + (f" given {', '.join(given)}" if given else ""))
        if config.get("context_angles"):
            ranges = ", ".join(
                f"{given[int(j)] if given else j} in [{low:g}, {high:g}]"
                for j, low, high in config["context_angles"]
            )
            print(f"  given angles: {ranges} (read as (cos, sin): periodic)")
    else:
        print(f"  event shape: {tuple(flow.event_shape)} (not a table model)")
    count = sum(p.numel() for p in flow.parameters())
    dtype = str(dtype_device(flow)[0]).replace("torch.", "")
    print(f"  parameters: {count:,} ({dtype})")
    if header["nfkit_version"]:
        print(f"  saved by: nfkit {header['nfkit_version']}")
    if record:
        print(f"  training: {_record_text(record)}")


def _record_text(record: dict[str, Any]) -> str:
    """A training record (``nfkit fit``'s, or any ``nf.save(..., training=)``) on one line:
    the known fields in words, any others as ``name=value``."""
    rest = dict(record)
    command, data = rest.pop("command", None), rest.pop("data", None)
    facts = [
        text.format(rest.pop(key))
        for key, text in (("rows", "{} rows"), ("data_sha256", "sha256 {}"))
        if rest.get(key) is not None
    ]
    parts = [] if data is None else [f"on {data}" + (f" ({', '.join(facts)})" if facts else "")]
    for key, text in (("steps", "{} steps"), ("batch_size", "batch size {}"), ("lr", "lr {}"),
                      ("seed", "seed {}"), ("nfkit_version", "nfkit {}"),
                      ("torch_version", "torch {}")):  # fmt: skip
        value = rest.pop(key, None)
        if value is not None:
            parts.append(text.format(value))
    options = rest.pop("options", None) or {}
    parts += [f"{key}={value}" for key, value in rest.items()]
    for flag, value in options.items():
        if value is True:
            parts.append(flag)
        elif flag == "--option" and isinstance(value, list):  # repeatable: one each
            parts += [f"{flag} {v}" for v in value]
        else:
            parts.append(
                f"{flag} {','.join(map(str, value)) if isinstance(value, list) else value}"
            )
    return " ".join(filter(None, [command, ", ".join(parts)]))


CLI_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def cmd_coverage(args: argparse.Namespace) -> None:
    import nfkit as nf

    _refuse_overwriting(("--plot", args.plot), ("model", args.model), ("data", args.data))
    if args.plot:
        _check_figure_path("--plot", args.plot)
    _check_order("coverage", args.model, args.data, "MODEL DATA")
    if args.samples < 20:  # a rank among S draws resolves coverage to 1/S at best
        raise _UserError(
            f"--samples must be at least 20 draws per row (a rank among S draws resolves the "
            f"coverage to 1/S; 1000 by default), got {args.samples}"
        )
    flow = _load_model(args.model, args.device)
    data = _schema(flow)[1]
    _, _, x, c = _model_table(flow, args.data)  # c: None for an unconditional model
    _outside_support(flow, x, c, args.data)
    result = nf.metrics.coverage(flow, x, c, samples=args.samples, levels=CLI_LEVELS,
                                 seed=args.seed)  # fmt: skip
    result.names = list(data)  # the verdict names a column, not "feature j"
    print(_shown(args, f"coverage of {args.model} on {len(x)} rows of {args.data}, "
                       f"{args.samples} draws each"))  # fmt: skip
    print("level  coverage")
    for level, found in zip(result.levels, result.coverage):
        print(f"{level:<5g}  {found:.3f}")
    print(
        f"max deviation {result.max_deviation:.3f} (band {result.band:.3f}; marginal ranks "
        f"{float(result.marginal_deviation.max()):.3f}, band {result.marginal_band:.3f}): "
        f"{result.verdict}"
    )
    if args.plot:
        nf.plot.coverage(result, args.plot, columns=data)
        print(f"wrote {args.plot}")


def cmd_plot(args: argparse.Namespace) -> None:
    import nfkit as nf

    out = args.output or str(Path(args.model).with_suffix(".png"))
    _refuse_overwriting(("-o", out), ("model", args.model), ("--data", args.data))
    _check_figure_path("-o", out)
    flow = _load_model(args.model)
    _, data, given = _schema(flow)
    ctx = _context_row(flow, given, args.given, args.model)
    x = None
    if args.data is not None:  # as the other commands read a table: no row left out silently
        _, _, x, c = _model_table(flow, args.data)
        _outside_support(flow, x, c, args.data)
    kind = args.kind
    if kind == "auto":
        kind = "density" if len(data) <= 2 else "corner"
    if kind == "density" and len(data) > 2:
        raise _UserError(
            f"--kind density needs at most 2 modelled columns, the model has {len(data)}"
        )
    shown_given = ", ".join(f"{g}={args.given[g]}" for g in given)
    title = f"{Path(args.model).name}" + (f" given {shown_given}" if given else "")
    if kind == "density":
        nf.plot.density(flow, x, context=ctx, columns=data, path=out, title=title)
    elif kind == "corner":
        nf.plot.corner(flow, x, context=ctx, columns=data, path=out, title=title)
    else:
        nf.plot.layers(flow, context=ctx, path=out)
    print(f"wrote {out}")


# --------------------------------------------------------------------------- parser


def _objective(text: str) -> str:
    """``--objective``: ``likelihood`` or ``flow-matching`` (``flow_matching`` too)."""
    value = text.strip().lower().replace("-", "_")
    if value not in ("likelihood", "flow_matching"):
        raise argparse.ArgumentTypeError(f"expected likelihood or flow-matching, got {text!r}")
    return value


def _training_options(
    p: argparse.ArgumentParser, steps: int | None, model_help: str = "default: nsf"
) -> None:
    p.add_argument("--model", default=None, help=f"factory in nf.models ({model_help})")
    p.add_argument(
        "--steps",
        type=_positive,
        default=None,
        help=f"optimizer steps (default: {steps or 1000})",
    )
    p.set_defaults(default_steps=steps)  # without --steps or --epochs (--epochs replaces it)
    p.add_argument(
        "--epochs", type=_positive, default=None, help="passes over the data instead of --steps"
    )
    p.add_argument(
        "--transforms",
        type=_positive,
        default=4,
        help="number of layers (default: 4; blocks for residualflow; not used by ffjord, rbig "
        "and gmm: set theirs with --option)",
    )
    p.add_argument(
        "--option",
        type=_model_option,
        action="append",
        metavar="NAME=VALUE",
        help="any other setting of the model's factory, e.g. bins=16, orders=random, "
        "batch_norm=true (repeatable; see 'nfkit info' of a saved model for the names)",
    )
    p.add_argument(
        "--hidden", type=_hidden, default=(64, 64), help="hidden widths (default: 64,64)"
    )
    p.add_argument(
        "--batch-size", type=_positive, default=512, help="minibatch size (default: 512)"
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: the model's, 1e-3; bnaf 5e-3)",
    )
    p.add_argument("--seed", type=_seed, default=None, help="random seed, 0 … 4294967295")
    p.add_argument(
        "--device", type=_device, default=None, help="torch device, e.g. cuda (default: cpu)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument(
        "--threads",
        type=_positive,
        default=1,
        help="torch CPU threads (default: 1; small flows train fastest single-threaded)",
    )


def _inference_options(p: argparse.ArgumentParser, draws: bool = True) -> None:
    p.add_argument(
        "--device", type=_device, default=None, help="torch device, e.g. cuda (default: cpu)"
    )
    p.add_argument(
        "--chunk-size",
        type=_positive,
        default=2**16,
        help="rows per pass: memory stays bounded for millions of rows (default: 65536"
        + ("; seeded samples depend on it)" if draws else ")"),
    )


class _Merged(argparse.Action):
    """An option that may be repeated: ``--bounds a=0: --bounds b=0:`` adds up like
    ``--bounds a=0:,b=0:`` (a column set twice is refused; without this, the last would win)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        given = namespace.__dict__.setdefault("_merged_given", set())  # (this parse's options)
        if self.dest not in given:  # the first time: replaces the default (--discrete auto)
            given.add(self.dest)
            setattr(namespace, self.dest, values)
            return
        before = getattr(namespace, self.dest, None)
        if self.type is None and isinstance(values, str) and isinstance(before, str):
            values = f"{before},{values}"  # column lists: a,b
        elif isinstance(values, list) and isinstance(before, list):  # --discrete a --discrete b
            twice = sorted(set(before) & set(values))
            if twice:
                parser.error(f"{option_string} names {', '.join(map(repr, twice))} twice")
            values = [*before, *values]
        elif isinstance(values, dict) and isinstance(before, dict):
            twice = sorted(set(before) & set(values))
            if twice:
                parser.error(f"{option_string} sets {', '.join(map(repr, twice))} twice")
            values = {**before, **values}
        elif before != values:  # a mode (--discrete auto, none) and another value: one only
            parser.error(
                f"{option_string} given as {_as_typed(before)!r} and {_as_typed(values)!r}: "
                "give one"
            )
        setattr(namespace, self.dest, values)


def _as_typed(value: Any) -> str:
    """A parsed option value as the user wrote it: ``none`` for None, ``a,b`` for a list."""
    if value is None:
        return "none"
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


class _Single(argparse.Action):
    """An option of one value: given again with another, refused (argparse kept the last, so
    ``--weights w --weights w2`` weighted by ``w2`` and modelled ``w`` as data)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        given = namespace.__dict__.setdefault("_merged_given", set())  # (this parse's options)
        before = getattr(namespace, self.dest, None)
        if self.dest in given and before != values:
            parser.error(f"{option_string} given as {before!r} and {values!r}: give one")
        given.add(self.dest)
        setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``nfkit`` command."""
    parser = _Parser(
        prog="nfkit",
        description="Normalizing-flow density models of tables: fit, sample, score, compare and plot.",
    )
    from nfkit import __version__

    parser.add_argument("--version", action="version", version=f"nfkit {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    p = sub.add_parser("demo", help="train a flow on built-in 2-D data, write figures and a model")
    p.add_argument("--out", default="nfkit-demo", help="output directory (default: ./nfkit-demo)")
    p.add_argument(
        "--dataset",
        default="two_moons",
        help="two_moons, circles, checkerboard, pinwheel, eight_gaussians or spirals",
    )
    p.add_argument(
        "-n", type=_positive, default=8192, help="number of data points (default: 8192)"
    )
    _training_options(p, 1500)
    p.set_defaults(func=cmd_demo, checkpoint=None, resume=False)
    p.set_defaults(seed=0)

    p = sub.add_parser(
        "fit", help="fit a density model to a table (.csv, .tsv, .txt, .npy, .parquet)"
    )
    p.add_argument(
        "data",
        help="the table: .csv/.tsv/.txt (separator and header detected; also .gz, .bz2, .xz, .zst, "
        ".zip), .npy or .parquet",
    )
    p.add_argument("--out", default="model.pt", help="where to save the model (default: model.pt)")
    p.add_argument(
        "--given",
        action=_Merged,
        default=None,
        help="context columns a,b: fit p(other columns | a, b)",
    )
    p.add_argument(
        "--summary",
        type=_positive,
        default=None,
        help="with many --given columns: condition on K features of a learned summary network "
        "of them (an MLP of --hidden widths, trained with the model; nf.models.Embedded)",
        metavar="K",
    )
    p.add_argument(
        "--summary-set",
        type=_positive,
        default=None,
        help="the --given columns, in order, are a set of exchangeable elements of M columns "
        "each (i.i.d. trials): the --summary network is a DeepSet, blind to their order",
        metavar="M",
    )
    p.add_argument(
        "--summary-padded",
        action="store_true",
        help="with --summary-set: sets of different sizes; an absent element is M empty cells "
        "(NaN) anywhere in the row, and the summary reads how many are present",
    )
    p.add_argument(
        "--bounds",
        type=_bounds_spec,
        action=_Merged,
        default=None,
        help="supports of columns, NAME=LOW:HIGH pairs (an empty end is open): price=0:,share=0:1;"
        " the density is zero outside and samples stay inside",
    )
    p.add_argument(
        "--angles",
        type=_angles_spec,
        action=_Merged,
        default=None,
        help="angle columns, each with its range (one period): phi,psi (radians, -pi:pi) or "
        "wind=0:360,phi=-180:180; modelled on the circle by ncsf (the default model then), the "
        "other columns as usual; a --given angle is read as (cos, sin) by any model",
    )
    p.add_argument(
        "--discrete",
        type=_discrete_spec,
        action=_Merged,
        default="auto",
        help="integer-valued columns, modelled by dequantization (log-probabilities of their "
        "integers; samples are integers): auto (default: every column of whole numbers), none, "
        "or names a,b",
    )
    p.add_argument(
        "--weights",
        default=None,
        action=_Single,
        metavar="COLUMN",
        help="a column of row weights >= 0 (survey or importance weights; not modelled): fit "
        "the weighted likelihood, a weight k counting as k copies of the row; a --val table "
        "with the column is weighted too",
    )
    p.add_argument(
        "--drop",
        metavar="COLUMNS",
        action=_Merged,
        help="columns a,b not to model (identifiers, free text): left out of the model; score "
        "and sample ignore them too",
    )
    p.add_argument("--drop-missing", action="store_true", help="drop rows with missing values")
    p.add_argument("--drop-constant", action="store_true", help="drop constant columns")
    p.add_argument(
        "--val",
        default=None,
        metavar="PATH",
        help="a validation table (the data's columns) for early stopping; then every row of "
        "the data trains",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="share of the rows held out for early stopping (default: 0.1)",
    )
    p.add_argument(
        "--patience",
        type=_positive,
        default=10,
        help="evaluations without a better validation loss before stopping (default: 10)",
    )
    p.add_argument(
        "--weight-decay",
        type=float,
        default=0.0,
        help="AdamW weight decay (default: 0); regularizes small tables",
    )
    p.add_argument(
        "--checkpoint", default=None, help="checkpoint file, written at each evaluation"
    )
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    p.add_argument(
        "--objective",
        type=_objective,
        default="likelihood",
        help="likelihood (default: maximum likelihood) or flow-matching (trains ffjord by "
        "regressing its vector field: one network pass per step, no ODE solve)",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel training under torchrun: torchrun --nproc-per-node N -m nfkit fit ...",
    )
    _training_options(p, None, "default: nsf; ncsf with --angles; ffjord with flow matching")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser(
        "sample", help="draw samples from a saved model (CSV to stdout, or -o in any table format)"
    )
    p.add_argument("model", help="a model written by 'nfkit fit' or nf.save")
    p.add_argument("-n", type=_positive, required=True, help="number of samples")
    p.add_argument(
        "-o",
        "--output",
        default=None,
        help="table file, format by suffix: .csv .tsv .txt (also .gz .bz2 .xz .zst .zip), .parquet, "
        ".npy (default: CSV to stdout)",
    )
    p.add_argument(
        "--given",
        type=_given_values,
        action=_Merged,
        default=None,
        help="context values a=1.5,b=0 for a conditional model",
    )
    p.add_argument(
        "--given-table",
        default=None,
        metavar="PATH",
        help="a table of contexts (the model's given columns, by name or position): -n samples "
        "for each row, written with a 'row' column (0-based) before the model's columns",
    )
    p.add_argument("--seed", type=_seed, default=None, help="random seed, 0 … 4294967295")
    _inference_options(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("score", help="log-density of each row of a table under a saved model")
    p.add_argument("model", help="a model written by 'nfkit fit' or nf.save")
    p.add_argument("data", help="table with the model's columns (extra columns are ignored)")
    p.add_argument(
        "-o",
        "--output",
        default=None,
        help="table with a log_density column, format by suffix as for 'sample' "
        "(default: CSV to stdout)",
    )
    p.add_argument(
        "--with-data",
        action="store_true",
        help="write the table's columns before log_density (rows to rank, e.g. for anomalies)",
    )
    p.add_argument(
        "--draws",
        type=_positive,
        default=None,
        help="models with discrete columns: points per row averaged to estimate its probability "
        "(default: 16; more is closer, each costs one pass)",
    )
    p.add_argument(
        "--skip-incomplete",
        action="store_true",
        help="score a row with a missing value in a model column as NaN instead of stopping "
        "(the output keeps one row per input row)",
    )
    p.add_argument(
        "--impossible",
        choices=("error", "-inf", "neg-inf"),
        default="error",
        help="a row outside the model's support (below a bound, a non-integer count, a value "
        "outside a discrete column's range; not an unseen category label): stop with an error "
        "naming the row (default), or score it -inf (density 0) and say how many there were: "
        "--impossible=-inf (or --impossible neg-inf)",
    )
    _inference_options(p, draws=False)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser(
        "compare", help="rank saved models by their log-likelihood of one table (held-out data)"
    )
    p.add_argument("data", help="the table the models score (held-out rows, not training rows)")
    p.add_argument("models", nargs="+", help="models written by 'nfkit fit' or nf.save")
    p.add_argument(
        "-o", "--output", default=None, help="write the ranking as a table, format by suffix"
    )
    _inference_options(p, draws=False)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "coverage",
        help="calibration of a model on held-out rows (a posterior: held-out simulations)",
    )
    p.add_argument("model", help="a model written by 'nfkit fit' (with --given: a posterior)")
    p.add_argument(
        "data",
        help="held-out rows (with the given columns of a conditional model), not training rows",
    )
    p.add_argument("--samples", type=_positive, default=1000, help="draws per row (default: 1000)")
    p.add_argument("--seed", type=_seed, default=None, help="random seed, 0 … 4294967295")
    p.add_argument("--plot", default=None, help="figure file: coverage curve and rank histograms")
    p.add_argument(
        "--device", type=_device, default=None, help="torch device, e.g. cuda (default: cpu)"
    )
    p.set_defaults(func=cmd_coverage)

    p = sub.add_parser(
        "export",
        help="a saved model's density (or sampler) as a torch.export program, to run without nfkit",
    )
    p.add_argument("model", help="a model written by 'nfkit fit' or nf.save")
    p.add_argument("output", help="the program file (.pt2), for torch.export.load")
    p.add_argument(
        "--sample",
        action="store_true",
        help="export the sampler (standard normal noise -> rows) instead of the density",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "info",
        help="what a saved model is: architecture, columns, parameters, how it was trained",
    )
    p.add_argument("model", help="a model written by 'nfkit fit' or nf.save")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the model's config, the nfkit version that saved it and its training "
        "record as JSON",
    )
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "plot", help="figure of a saved model (density, corner or layers), as PNG, PDF, SVG, ..."
    )
    p.add_argument("model", help="a model written by 'nfkit fit' or nf.save")
    p.add_argument("--data", default=None, help="table to draw next to the model's samples")
    p.add_argument(
        "-o",
        "--output",
        default=None,
        help="figure file; its suffix names the format (default: MODEL with .png)",
    )
    p.add_argument(
        "--given",
        type=_given_values,
        action=_Merged,
        default=None,
        help="context values a=1.5,b=0 for a conditional model",
    )
    p.add_argument(
        "--kind",
        default="auto",
        choices=["auto", "density", "corner", "layers"],
        help="figure kind (default: density for 1-2 columns, corner beyond)",
    )
    p.set_defaults(func=cmd_plot)
    return parser


@contextlib.contextmanager
def _stdin_table(args: argparse.Namespace) -> Iterator[None]:
    """A table argument given as ``-`` is read from standard input: a text table (CSV, TSV, ...;
    the usual detection) copied to ``stdin.csv`` in a temporary folder for the command."""
    names = [n for n in ("data", "val", "given_table") if getattr(args, n, None) == "-"]
    if not names:
        yield
        return
    if len(names) > 1:
        raise _UserError("only one table can come from standard input (-)")
    with tempfile.TemporaryDirectory(prefix="nfkit-stdin-") as folder:
        path = Path(folder) / "stdin.csv"
        path.write_bytes(sys.stdin.buffer.read())
        setattr(args, names[0], str(path))
        args.stdin_path = str(path)
        try:
            yield
        except Exception as e:  # messages name the table as the user gave it
            if len(e.args) == 1 and isinstance(e.args[0], str):
                e.args = (_shown(args, e.args[0]),)
            raise


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nfkit`` command; returns the exit status (0 on success)."""
    from nfkit.train import NonFiniteLossError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed
        return e.code if isinstance(e.code, int) else 1
    import warnings

    import torch

    from nfkit.tables import TableNote

    threads = torch.get_num_threads()
    show = warnings.showwarning

    def note(message, category, *rest):  # noqa: ANN001, ANN002
        if issubclass(category, TableNote):
            print(f"nfkit: note: {_shown(args, str(message))}", file=sys.stderr)
        else:
            show(message, category, *rest)

    previous = _on_sigterm_raise()
    try:
        if getattr(args, "threads", None):
            torch.set_num_threads(args.threads)
        with warnings.catch_warnings(), _stdin_table(args):
            warnings.simplefilter("always", TableNote)
            warnings.showwarning = note
            args.func(args)
    except KeyboardInterrupt:
        print("nfkit: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("nfkit: terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:
        return 0
    except (ValueError, TypeError, OSError, ImportError, NonFiniteLossError) as e:
        if os.environ.get("NFKIT_DEBUG"):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"nfkit: error: {message}", file=sys.stderr)
        return 1
    except Exception as e:  # never a traceback; NFKIT_DEBUG=1 shows it
        if os.environ.get("NFKIT_DEBUG"):
            raise
        message = " ".join(str(e).split())
        if getattr(args, "distributed", False) and "closed by peer" in message:
            message = "another process of the distributed run stopped (its error is above)"
            print(f"nfkit: error: {message}", file=sys.stderr)
            return 1
        print(f"nfkit: error: internal error ({type(e).__name__}: {message})", file=sys.stderr)
        return 1
    finally:
        torch.set_num_threads(threads)  # main() may be called from Python: leave it as it was
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)
    return 0
