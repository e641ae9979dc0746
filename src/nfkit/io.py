r"""Files: ``save``/``load`` of fitted flows, and atomic writes (tables: :mod:`nfkit.tables`).

A model file is one ``torch.save`` archive holding plain types only (so it loads with
``torch.load(..., weights_only=True)``): a format tag, the nfkit version, the flow's ``config``
as a JSON string, its dtype and its ``state_dict`` (weights and buffers: standardization
statistics included). ``load`` rebuilds the architecture with ``nf.models.build(config)`` and
loads the weights; a hand-built flow (no config) is saved with its architecture's outline and
loaded into the same architecture built again (``nf.load(path, into=flow)``). A file may also
hold a ``training`` record (JSON: how the flow was trained; ``nfkit fit`` writes one). Writes are
atomic: a temporary file in the same directory, fsynced, then ``os.replace`` and an fsync of the
directory.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import itertools
import json
import math
import os
import re
import stat
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from nfkit._checks import check_device, one_line
from nfkit.tables import DataError, as_tensor, clean_table, read_table  # the readers' old home

__all__ = [
    "save",
    "load",
    "atomic_write",
    "atomic_save",
    "read_table",
    "clean_table",
    "as_tensor",
    "DataError",
    "DamagedFileError",
]

FORMAT = "nfkit-model"
FORMAT_VERSION = 1
CHECKPOINT_FORMAT = "nfkit-checkpoint"  # nf.fit's checkpoints (written by nfkit.train)
ZIP_MAGIC = b"PK\x03\x04"  # how every file torch.save writes starts


_WRITERS = "(nfkit models and checkpoints are written by nf.save and nf.fit)"


class DamagedFileError(ValueError):
    """A model or checkpoint file that is empty or whose zip archive cannot be read (cut short
    by an interrupted copy or download, a full disk): not a file of another kind."""


# --------------------------------------------------------------------------- atomic writes


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, fsync, then ``os.replace``.

    A reader never sees a half-written file: it finds either the old file or the new one; the
    directory is fsynced after the rename (where the OS allows it), so the new name survives a
    crash too. Missing parent folders are created. A ``path`` that is a symbolic link is written
    through: its target is replaced and the link kept. A filesystem error (a read-only or missing
    place, a parent that is a file, a full disk) is one ``OSError`` naming ``path``; an error
    raised by ``write`` propagates unchanged. Returns ``path`` as given. A ``path`` ending in a
    separator names a folder: refused (the file would have taken the folder's name). A ``path``
    that is a device or a named pipe (``-o /dev/null``) is written into, not replaced.
    """
    if os.fspath(path).endswith(("/", os.sep)):
        raise OSError(f"cannot write {os.fspath(path)!r}: it names a folder; give a file name")
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path  # write through links
    if _special_file(target):  # /dev/null, a named pipe: written into (a rename replaced it)
        try:
            with open(target, "wb") as f:
                write(f)
        except OSError as e:
            raise OSError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
        return path
    parent = target.parent if str(target.parent) else Path(".")
    tmp = None
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode(target))  # mkstemp's 0600 -> what open() would have given
        os.replace(tmp, target)
        tmp = None
        _fsync_directory(parent)
    except OSError as e:
        _discard(tmp)
        raise OSError(f"cannot write {str(path)!r}: {_write_problem(e, parent)}") from None
    except BaseException:
        _discard(tmp)
        raise
    return path


def _special_file(path: Path) -> bool:
    """Whether ``path`` exists and is neither an ordinary file nor a folder (a device such as
    ``/dev/null``, a named pipe, a socket)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _write_problem(e: OSError, parent: Path) -> str:
    """What a failed write's ``OSError`` means, in a few words: a parent that is a file (mkdir
    says "File exists" or "Not a directory") is named."""
    if e.errno in (errno.EEXIST, errno.ENOTDIR):
        blocking = next((p for p in (parent, *parent.parents) if p.is_file()), None)
        if blocking is not None:
            return f"{str(blocking)!r} is a file, not a directory"
    return e.strerror or one_line(e)


def _fsync_directory(folder: Path) -> None:
    """fsync ``folder`` so that a rename in it is durable; skipped where directories cannot be
    opened or synced (Windows, some network filesystems)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_mode(path: Path) -> int:
    """The mode of the file being replaced, else ``0o666`` less the process's umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask: from ``/proc/self/status`` where it is there (Linux 4.7+), since
    reading it with ``os.umask`` means setting it, and another thread creating a file in that
    instant would get mode 0o666/0o777; else that way, put straight back."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)  # the brief setting is a strict one, should a file be made meanwhile
    os.umask(umask)
    return umask


def _discard(tmp: str | None) -> None:
    if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` through :func:`atomic_write`: the old file or the new one, never half.
    torch's zip writer reports a failed write (a full disk) as a ``RuntimeError``; it is an
    ``OSError`` naming ``path`` here, as every other filesystem error."""

    def write(f: IO[bytes]) -> None:
        try:
            torch.save(obj, f)
        except RuntimeError as e:
            if isinstance(e.__context__, KeyboardInterrupt):  # Ctrl-C inside the zip writer
                raise e.__context__ from None
            if "inline_container" not in str(e) and "PytorchStreamWriter" not in str(e):
                raise  # not the zip writer's failure to write
            raise OSError(f"the write failed ({one_line(e, 120)}; a full disk?)") from None

    return atomic_write(path, write)


def safe_torch_load(path: str | os.PathLike[str], where: str, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with one-line errors for missing or foreign files; an
    empty file, or a zip archive torch cannot read, raises :class:`DamagedFileError`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{where}: no such file: {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"{where}: {str(path)!r} is a directory, not a file")
    if not path.is_file():  # torch.load of a named pipe waits for a writer for ever
        raise ValueError(
            f"{where}: {str(path)!r} is not a regular file (a pipe or a device); save the model "
            "to a file"
        )
    try:
        with (
            warnings.catch_warnings()
        ):  # e.g. torch's multi-line note on a plain pickle's protocol
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # unpickling, zip and header errors all mean "not our file"
        problem = _load_problem(e)
        if "Python object" not in problem:
            kind = _zip_kind(path)  # torch's error for a cut file may be of any type (OSError)
            if kind == "damaged":
                raise DamagedFileError(
                    f"{where}: {str(path)!r} is a damaged or truncated torch file (its zip "
                    "archive cannot be read)"
                ) from None
            if kind == "empty":
                raise DamagedFileError(
                    f"{where}: {str(path)!r} is empty (0 bytes): a damaged or truncated file, "
                    "not an nfkit model or checkpoint"
                ) from None
            if kind == "other":
                problem = f"is a zip archive of other files, not a torch file {_WRITERS}"
            elif _is_text(path):  # a table, a note
                raise ValueError(
                    f"{where}: {str(path)!r} is a text file (a table?), not an nfkit model or "
                    "checkpoint"
                ) from None
        raise ValueError(f"{where}: {str(path)!r} {problem}") from None
    bad = _member_with_wrong_checksum(path)
    if bad is not None:
        raise DamagedFileError(
            f"{where}: {str(path)!r} is damaged: the checksum of its part {bad!r} does not match "
            "its contents (changed on disk or in transfer)"
        )
    return payload


def _member_with_wrong_checksum(path: Path) -> str | None:
    """The first part of a torch zip archive whose stored CRC-32 does not match its bytes (torch
    reads the parts without checking: a flipped byte in a weight or the header loads as another
    model), else None; None for torch's older non-zip format, which has no checksums. A part
    stored with CRC 0 (torch wrote none) is not checked."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0 and info.file_size > 0:
                    continue  # written without checksums (torch's save.compute_crc32 = False)
                try:
                    with archive.open(info) as part:  # checks the CRC-32 at the part's end
                        while part.read(1 << 20):
                            pass
                except zipfile.BadZipFile:
                    return info.filename
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None  # torch read it: not a zip archive (the legacy format)
    return None


def _zip_kind(path: Path) -> str | None:
    """What an unreadable file is, by its start: ``"empty"``, ``"damaged"`` (a zip archive, as
    torch writes, that is cut short or corrupt), ``"other"`` (a readable zip archive without
    torch's ``data.pkl``: a zipped table) or None (not a zip archive)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(ZIP_MAGIC))
    except OSError:
        return None
    if not head:
        return "empty"
    if head != ZIP_MAGIC:
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return "damaged"  # its directory, at the end, is cut off or corrupt
    return "damaged" if any(n.endswith("data.pkl") for n in names) else "other"


def _is_text(path: Path) -> bool:
    """Whether the file's first 4 KiB are UTF-8 text without NUL bytes (torch files are zip
    archives or binary pickles)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
        head.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return bool(head) and b"\0" not in head


def _load_problem(e: BaseException) -> str:
    """What a failed weights-only ``torch.load`` says about the file, in a few words."""
    text = str(e)
    # torch names a refused object as "Unsupported global: GLOBAL m.f" or "... GLOBAL m.f whose
    # module m is blocked"
    # (a dotted name: a CSV starting with "c" parses as a GLOBAL of its first field)
    refused = re.search(r"GLOBAL (\w+(?:\.\w+)+)", text)
    if refused:
        return (
            f"holds a Python object ({refused.group(1)}) that a weights-only load refuses: "
            "not an nfkit model or checkpoint (nfkit never unpickles arbitrary objects)"
        )
    if "zip archive" in text:
        return "is a damaged or truncated torch file (its zip archive cannot be read)"
    return f"is not a torch file {_WRITERS}"


# --------------------------------------------------------------------------- models


def _with_sampling_settings(config: dict, flow: torch.nn.Module) -> dict:
    """``config`` with each FFJORD's ``sample_solver``/``sample_steps`` (nested ones too) as its
    :class:`~nfkit.transforms.ContinuousFlow` blocks hold them now (the documented way to change
    them on a trained flow is to set those attributes): one value where the blocks agree, else a
    list of one per block, which ``FFJORD`` takes."""
    from nfkit.transforms.continuous import ContinuousFlow

    layers = iter([m for m in flow.modules() if isinstance(m, ContinuousFlow)])

    def synced(c: Any) -> Any:
        if not isinstance(c, dict):
            return c
        out = {k: synced(v) for k, v in c.items()}
        if out.get("model") == "FFJORD":
            blocks = list(itertools.islice(layers, out.get("blocks", 1)))
            for name in ("sample_solver", "sample_steps") if blocks else ():
                values = [getattr(b, name) for b in blocks]
                out[name] = values[0] if values.count(values[0]) == len(values) else values
        return out

    return synced(config)


def save(
    flow: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    training: dict[str, Any] | None = None,
) -> Path:
    r"""Write ``flow`` (config, weights, standardization, nfkit version) to one file, atomically.

    A flow built by an ``nf.models`` factory is rebuilt from its ``config`` by :func:`load`. A
    hand-built ``nf.Flow`` (your own transforms, or ``embedding=`` a summary network of your
    own, such as a CNN) has no config: its file holds the weights and the architecture's
    outline (every submodule's class), and loads into the same architecture built again, with
    ``nf.load(path, into=flow)``.

    The file holds the weights as ``flow.eval()`` leaves them, since :func:`load` returns the
    flow in eval mode: a flow saved in train mode loads as ``flow.eval()`` computes (a
    :class:`~nfkit.transforms.ResidualBlock` refines its spectral norms when it enters eval
    mode; that is done on a copy, ``flow`` itself is not changed).

    Args:
        flow: An :class:`~nfkit.Flow`.
        path: Destination; parent directories are created; a symbolic link is written through.
        training: A record of how the flow was trained (JSON types: seed, steps, data, ...),
            kept in the file and shown by ``nfkit info``; ``nfkit fit`` writes one.

    Returns:
        The path written.
    """
    from nfkit import __version__
    from nfkit.core import Flow

    if not isinstance(flow, Flow):
        raise TypeError(f"nf.save: expected an nf.Flow, got {type(flow).__name__}")
    config = None
    if flow.config and "model" in flow.config:
        try:
            config = json.dumps(_with_sampling_settings(flow.config, flow))
        except TypeError as e:
            raise ValueError(f"nf.save: flow.config is not JSON-serializable ({e})") from None
    record = None
    if training is not None:
        if not isinstance(training, dict):
            raise TypeError(f"nf.save: training must be a dict, got {type(training).__name__}")
        try:
            record = json.dumps(training, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"nf.save: training is not JSON-serializable ({e})") from None
    state = _state_as_in_eval(flow)
    bad = _non_finite(flow, state)
    if bad:  # nf.load refuses such a file: keep the one there instead
        raise ValueError(
            f"nf.save: the flow has non-finite weights (NaN or inf) in {bad}; not written (the "
            "file would not load)"
        )
    dtypes = {p.dtype for p in state.values() if p.is_floating_point()}
    dtype = str(dtypes.pop()).replace("torch.", "") if len(dtypes) == 1 else "float32"
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "nfkit_version": __version__,
        "config": config,
        "outline": _outline(flow),
        "dtype": dtype,
        "state_dict": {k: v.detach().cpu() for k, v in state.items()},
    }
    if record is not None:  # a key older nfkit versions do not read (and do not need)
        payload["training"] = record
    return atomic_save(payload, path)


def _state_as_in_eval(flow: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``flow.state_dict()`` as ``flow.eval()`` would leave it, ``flow`` unchanged: a residual
    block in train mode with a refinement of its spectral norms pending is copied (a block is
    small) and the copy switched to eval mode."""
    from nfkit.transforms.residual import ResidualBlock

    state = flow.state_dict()
    for name, module in flow.named_modules():
        if isinstance(module, ResidualBlock) and module.training and module.refresh_pending:
            refined = copy.deepcopy(module).eval()
            state.update({f"{name}.{k}": v for k, v in refined.state_dict().items()})
    return state


def _outline(flow: torch.nn.Module) -> list[str]:
    """Every submodule as ``"name: Class"``, with ``" [transformer]"`` (its repr: class and
    settings; the ``at 0x…`` of an object without its own repr dropped) for a module that holds an
    elementwise transformer (a dataclass, not a submodule, whose kind and settings the weights
    alone do not tell), and ``" {k=v, …}"`` for the module's ``outline_settings`` (settings
    that define the map but are no weights: a BNAF's ``leak``, a residual block's
    ``lipschitz``): what a file checks the flow it loads into against."""
    from nfkit.transforms.transformers import Transformer

    out = []
    for name, m in flow.named_modules():
        entry = f"{name or '.'}: {type(m).__qualname__}"
        transformer = getattr(m, "transformer", None)
        if isinstance(transformer, Transformer):  # (no memory address: object's own repr)
            entry += f" [{re.sub(r' at 0x[0-9a-fA-F]+>', '>', repr(transformer))}]"
        settings = getattr(m, "outline_settings", ())
        if settings:
            entry += " {" + ", ".join(f"{k}={getattr(m, k)!r}" for k in settings) + "}"
        out.append(entry)
    return out


def _same_entry(saved: str | None, built: str | None) -> bool:
    """Outline entries agree (a file written before transformers or settings were outlined has
    none: its entry matches the module's class, or class and transformer, alone)."""
    if saved is None or built is None:
        return saved == built
    if saved == built:
        return True
    if not saved.endswith("}") and built.endswith("}"):
        built = built.rsplit(" {", 1)[0]
    return saved == built or ("[" not in saved and built.split(" [", 1)[0] == saved)


def _first_difference(
    saved: list[str], built: list[str], *, rebuilt: bool
) -> tuple[str, str] | None:
    """The first pair of outline entries that disagree, or None. For a flow ``rebuilt`` from
    its config, a module the file does not list is no difference (this version's factories may
    add weightless submodules an older file lacks); every module the file lists must be there."""
    if not rebuilt:
        for a, b in itertools.zip_longest(saved, built):
            if not _same_entry(a, b):
                return a or "nothing", b or "nothing"
        return None
    named = {entry.split(": ", 1)[0]: entry for entry in built}
    for a in saved:
        b = named.get(a.split(": ", 1)[0])
        if not _same_entry(a, b):
            return a, b or "nothing"
    return None


@contextlib.contextmanager
def _built_in(dtype: torch.dtype) -> Iterator[None]:
    """torch's default dtype set to ``dtype`` (float32 or float64) for a block, then restored."""
    before = torch.get_default_dtype()
    if dtype in (torch.float32, torch.float64):
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def load(
    path: str | os.PathLike[str],
    *,
    into: torch.nn.Module | None = None,
    device: str | torch.device | None = None,
) -> Any:
    r"""Read a model written by :func:`save`: rebuild with ``nf.models.build``, load the weights.

    Uses ``torch.load(weights_only=True)`` only: no arbitrary code runs. The flow is returned in
    eval mode, in the dtype it was saved in, on ``device`` (default CPU; with ``into``, where
    ``into`` is unless ``device`` is given). torch's global RNG is left as it was (rebuilding
    draws random weights, which the file's replace).

    Args:
        path: A file written by :func:`save`.
        into: An ``nf.Flow`` of the saved architecture to load the weights into, in place and
            returned; needed for a hand-built flow's file (it has no config to rebuild from),
            allowed for any. Its submodules' classes, parameter names and shapes must match the
            file's (the first difference is named).
        device: Where the flow goes.

    The file's weights are checked before anything is loaded: their names and shapes against
    the architecture, parameters finite (NaN or inf are refused; a buffer may hold ±inf, an
    open end of a support), and with ``into`` every layer's class and elementwise transformer
    (kind and settings) against the file's outline; a refused file leaves ``into`` unchanged.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is unreadable, not an nfkit model, damaged (a
            :class:`DamagedFileError`: empty, or cut short), holds non-finite weights, or does
            not match its config (or ``into``).
    """
    return load_with_header(path, into=into, device=device)[0]


def load_with_header(
    path: str | os.PathLike[str],
    *,
    into: torch.nn.Module | None = None,
    device: str | torch.device | None = None,
    where: str = "nf.load",
) -> tuple[Any, dict[str, Any]]:
    """:func:`load`, and the file's header: ``{"nfkit_version": str or None, "format_version":
    int, "training": dict or None}`` (``training``: the record :func:`save` was given)."""
    device = check_device(where, device)
    payload = safe_torch_load(path, where)
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        raise ValueError(
            f"{where}: {str(path)!r} is a training checkpoint of nf.fit, not a model file; load "
            "the file nf.save (nfkit fit --out) wrote, or resume training with resume=True"
        )
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{where}: {str(path)!r} is not an nfkit model file (no nfkit header)")
    version, dtype_name = payload.get("format_version", 0), str(payload.get("dtype", "float32"))
    dtype = getattr(torch, dtype_name, None)
    state = payload.get("state_dict")
    if (
        type(version) is not int  # (a bool is an int to isinstance)
        or version < 0
        or not isinstance(dtype, torch.dtype)
        or not dtype.is_floating_point
        or not isinstance(state, dict)
        or not all(isinstance(k, str) and _plain_tensor(v) for k, v in state.items())
    ):
        raise ValueError(
            f"{where}: {str(path)!r} is a damaged nfkit model file (its header fields or "
            "weights are not what nf.save writes)"
        )
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{where}: {str(path)!r} was written by nfkit {payload.get('nfkit_version')} "
            f"(format {payload['format_version']}); upgrade nfkit to read it"
        )
    config = None
    if payload.get("config") is not None:
        try:
            config = json.loads(payload["config"])
        except (TypeError, ValueError, RecursionError) as e:
            raise ValueError(
                f"{where}: {str(path)!r}: its config is not JSON ({one_line(e)})"
            ) from None
    record = payload.get("training")
    try:
        record = json.loads(record) if isinstance(record, str) else None
    except (ValueError, RecursionError):
        record = None  # a record, not needed to load the flow
    header = {
        "nfkit_version": payload.get("nfkit_version"),
        "format_version": version,
        "training": record if isinstance(record, dict) else None,
    }
    # a rebuilt flow's random init is overwritten; it is built in the saved dtype, so values
    # read from the config into plain numbers (a Bounded layer's support) round as they did
    with torch.random.fork_rng(devices=[]), _built_in(dtype):
        flow = _architecture(where, path, payload, config, into)
    _check_weights(where, path, flow, state)  # before into= is changed at all
    flow = flow.to(dtype=dtype)
    try:
        flow.load_state_dict(state)
    except Exception as e:
        # torch lists every mismatch after a header: name the first (a key and its shapes)
        lines = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        first = lines[0] if lines else str(e)
        raise ValueError(
            f"{where}: {str(path)!r}: weights do not match the architecture "
            f"({one_line(first, 300)})"
        ) from None
    if into is None:
        flow.config = config
    _loaded_as_saved(flow)
    flow.eval()
    if device is not None:
        flow = flow.to(device)
    return flow, header


_WEIGHT_DTYPES = (
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool,
)  # fmt: skip


def _plain_tensor(v: Any) -> bool:
    """A dense CPU tensor of a dtype ``nf.save`` writes (no sparse, meta, complex or float8
    tensor: the finiteness check and ``load_state_dict`` fail on those, or drop a part)."""
    return (
        isinstance(v, torch.Tensor)
        and v.layout == torch.strided
        and v.device.type == "cpu"
        and v.dtype in _WEIGHT_DTYPES
    )


def _loaded_as_saved(flow: torch.nn.Module) -> None:
    """Forget the train-mode passes ``into`` ran before its weights were replaced: a loaded
    residual block keeps the file's spectral-norm estimates when it enters eval mode."""
    from nfkit.transforms.residual import ResidualBlock

    for module in flow.modules():
        if isinstance(module, ResidualBlock):
            module.refresh_pending = False


def weights_difference(flow: torch.nn.Module, state: dict[str, Any]) -> str | None:
    """The first name or shape in which a file's weights ``state`` differ from ``flow``'s (in
    the module's order), in a few words, or None (a model file's ``into=``, a checkpoint)."""
    own = flow.state_dict()
    for key in [*own, *(k for k in state if k not in own)]:
        if key not in state or key not in own:
            return f"{'the file lacks' if key not in state else 'the architecture has no'} {key!r}"
        theirs = state[key]
        if isinstance(theirs, torch.Tensor) and tuple(own[key].shape) != tuple(theirs.shape):
            return (
                f"size mismatch for {key}: copying a param with shape "
                f"torch.Size({list(theirs.shape)}) from the file, the shape in the architecture "
                f"is torch.Size({list(own[key].shape)})"
            )
    return None


def _check_weights(
    where: str, path: Any, flow: torch.nn.Module, state: dict[str, torch.Tensor]
) -> None:
    """The file's weights have the flow's names and shapes (checked before anything is loaded,
    so a failed ``load(..., into=flow)`` leaves ``flow`` as it was)."""
    difference = weights_difference(flow, state)
    if difference is not None:
        raise ValueError(
            f"{where}: {str(path)!r}: weights do not match the architecture ({difference})"
        )
    bad = _non_finite(flow, state)
    if bad:
        raise ValueError(f"{where}: {str(path)!r} holds non-finite weights (NaN or inf) in {bad}")


def _non_finite(flow: torch.nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """The first entry of ``state`` that no flow can hold (and how many more), or None: a
    parameter is finite; a buffer may hold ±inf (an open end of a support), never NaN."""
    params = {name for name, _ in flow.named_parameters()}
    bad = [
        k
        for k, v in state.items()
        if v.is_floating_point() and not bool((v.isfinite() if k in params else ~v.isnan()).all())
    ]
    if not bad:
        return None
    return bad[0] + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")


def _architecture(
    where: str, path: Any, payload: dict[str, Any], config: Any, into: torch.nn.Module | None
) -> torch.nn.Module:
    """The module the weights go into: ``into`` (checked against the file's outline) or the
    architecture rebuilt from ``config``."""
    from nfkit.core import Flow
    from nfkit.models import build

    if into is not None:
        if not isinstance(into, Flow):
            raise TypeError(f"{where}: into must be an nf.Flow, got {type(into).__name__}")
        saved = payload.get("outline")
        differ = None if saved is None else _first_difference(saved, _outline(into), rebuilt=False)
        if differ:
            raise ValueError(
                f"{where}: {str(path)!r} holds another architecture than into: the file has "
                f"{differ[0]!r} where into has {differ[1]!r}"
            )
        return into
    if config is None:
        raise ValueError(
            f"{where}: {str(path)!r} holds a hand-built flow's weights (it has no config to "
            "rebuild it from); build the same flow and load into it: nf.load(path, into=flow)"
        )
    weights = sum(v.numel() for v in payload["state_dict"].values())
    budget = _ConstructionBudget(
        elements=1024 * weights + 2**26, ops=20_000 + 2_000 * len(payload["state_dict"])
    )
    try:
        _check_config_sizes(config, max(2**20, 16 * weights))
        with budget:
            flow = build(config)
    except _OverBudget as e:
        raise ValueError(
            f"{where}: {str(path)!r}: its config asks for a model far larger than the weights the "
            f"file holds ({e}); the config was edited or the file is damaged"
        ) from None
    except (Exception, RecursionError) as e:
        raise ValueError(
            f"{where}: {str(path)!r}: cannot rebuild the model ({one_line(e)})"
        ) from None
    saved = payload.get("outline")
    differ = None if saved is None else _first_difference(saved, _outline(flow), rebuilt=True)
    if differ:  # the saved flow was changed after its factory built it (a layer added, ...)
        raise ValueError(
            f"{where}: {str(path)!r} holds a flow changed after its factory built it: the file "
            f"has {differ[0]!r} where the rebuilt model has {differ[1]!r}; build the same flow "
            "and load into it: nf.load(path, into=flow)"
        )
    return flow


class _OverBudget(Exception):
    pass


_NOT_SIZES = frozenset({"seed", "max_steps", "max_iter", "sample_steps"})
"""Config integers that are no sizes: a seed, and caps on a solver's iterations (used when the
model runs, never while it is built)."""


def _check_config_sizes(config: Any, limit: int, key: str = "config") -> None:
    """Refuse a config integer (a width, a count of features, layers or levels; not those of
    :data:`_NOT_SIZES`) over ``limit``: some factories loop or compute in Python over such a
    number before any tensor op the budget would see (``NCSF`` lists its features, ``Glow``
    takes ``2**levels``)."""
    if isinstance(config, dict):
        for k, v in config.items():
            if k not in _NOT_SIZES:
                _check_config_sizes(v, limit, str(k))
    elif isinstance(config, list):
        for v in config:
            _check_config_sizes(v, limit, key)
    elif isinstance(config, int) and not isinstance(config, bool) and config > limit:
        raise _OverBudget(f"{key}={config}")


class _ConstructionBudget(TorchDispatchMode):
    """Refuses a model's construction at the first tensor op that takes it past ``elements``
    tensor elements or ``ops`` ops in all. An op's output is counted *before* it runs where
    its arguments bound its size (:func:`_output_size`; the rest, as ``repeat``'s growth, once
    it has run). :func:`load` builds a file's config under it with budgets proportional to the
    weights the file holds (a valid file's build makes 1–45x their elements, ``GF``'s slope
    search ~2M whatever its size, and up to ~800 ops per weight tensor), so an edited config
    (``hidden=(10**5,) * 2``, thousands of transforms) is refused before it allocates or loops:
    loading costs memory and time in proportion to the file's size."""

    def __init__(self, *, elements: int, ops: int) -> None:
        super().__init__()
        self.elements, self.ops = elements, ops

    def _spend(self, elements: int, ops: int = 1) -> None:
        self.elements -= elements
        self.ops -= ops
        if self.elements < 0:
            raise _OverBudget("more tensor elements than its weights would need")
        if self.ops < 0:
            raise _OverBudget("more tensor operations than its weights would need")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        fresh = not (func.is_view or func._schema.is_mutable)  # else no new storage
        before = _output_size(func, args, kwargs) if fresh else 0
        self._spend(before or 0)
        out = func(*args, **kwargs)
        if fresh and (before is None or _numel(out) > before):
            self._spend(_numel(out) - (before or 0), ops=0)
        return out


def _numel(tree: Any) -> int:
    return sum(t.numel() for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor))


def _output_size(func: Any, args: Any, kwargs: dict[str, Any]) -> int | None:
    """An upper bound on the elements ``func`` returns, found without running it: a factory
    op's from its arguments on the meta device, another op's from its tensor inputs broadcast
    together (exact for elementwise ops, at least the output for reductions); None where
    that cannot tell (inputs that do not broadcast, as in ``mm`` or ``cat``)."""
    tensors = [v for v in tree_flatten((args, kwargs))[0] if isinstance(v, torch.Tensor)]
    if tensors:
        try:
            return math.prod(torch.broadcast_shapes(*(t.shape for t in tensors)))
        except RuntimeError:
            return None
    if not any(a.name == "device" for a in func._schema.arguments):
        return None
    try:
        return _numel(func(*args, **{**kwargs, "device": torch.device("meta")}))
    except Exception:
        return None
