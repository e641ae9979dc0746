r"""The factory registry: ``@factory`` fills ``flow.config``; ``build(config)`` rebuilds a flow."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import Tensor, nn

from nfkit import distributions as D
from nfkit._checks import shown
from nfkit.core import Flow

__all__ = ["FACTORIES", "factory", "build", "make_base", "activation", "learning_rate"]

FACTORIES: dict[str, Callable[..., Flow]] = {}
# The learning rate nf.fit and nf.fit_vi use for a factory's flows when none is given; factories
# that need another than DEFAULT_LR say so with @factory(lr=...).
LEARNING_RATES: dict[str, float] = {}
DEFAULT_LR = 1e-3

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def _plain(value: Any) -> Any:
    """NumPy scalars and 0-d tensors as Python numbers, 1-d arrays and ranges as lists, inside
    tuples and lists too: factories (and ``flow.config``) see plain values, so ``MAF(x.shape[1])`` and
    ``MAF(np.int64(3))`` build the same flow and save the same config."""
    if isinstance(value, tuple | list):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, range):
        return list(value)
    if isinstance(value, np.generic) or (isinstance(value, Tensor) and value.dim() == 0):
        return value.item()
    if isinstance(value, np.ndarray | Tensor) and value.ndim == 1:
        return value.tolist()
    return value


def _jsonable(value: Any) -> Any:
    """``value`` with tuples as lists, and every list and dict a fresh copy: ``flow.config``
    shares nothing with the caller (a sweep that edits the dict it passed as ``flow=`` after
    building would otherwise change the recorded architecture, and the saved file not load)."""
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


_COMPONENT = re.compile(r"[A-Z][A-Za-z0-9]*: ")


def _named(factory_name: str, e: ValueError | TypeError) -> ValueError | TypeError:
    """An argument error raised while a factory builds its layers and base, named after the
    factory: ``NSF: bins ...`` rather than ``RQSplineTransformer: bins ...``, ``MAF: base must
    ...`` rather than ``base must ...`` (errors already naming a factory are left as they are)."""
    message = str(e)
    found = _COMPONENT.match(message)
    if message.startswith("nf.") or (found and found.group()[:-2] in FACTORIES):
        return e  # the factory's own, or an inner flow's (Embedded(flow=...)): already named
    return type(e)(f"{factory_name}: {message[found.end() if found else 0 :]}")


def factory(fn: Callable[..., Flow] | None = None, *, lr: float | None = None) -> Any:
    """Register a factory and fill ``flow.config`` with its bound arguments (JSON-able).

    ``@factory(lr=...)`` also records the learning rate that :func:`nfkit.fit` uses for the
    factory's flows when it is given none (see :func:`learning_rate`)."""
    if fn is None:
        return lambda f: factory(f, lr=lr)
    if lr is not None:
        LEARNING_RATES[fn.__name__] = float(lr)
    signature = inspect.signature(fn)
    # switches (``residual``, ``coupling``, ...): a truthy string such as "no" must not turn one on
    flags = {n for n, p in signature.parameters.items() if p.annotation in (bool, "bool")}

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Flow:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"nf.models.{fn.__name__}: {e}") from None
        bound.apply_defaults()
        for name, value in bound.arguments.items():
            bound.arguments[name] = value = _plain(value)
            if name in flags and not isinstance(value, bool):
                raise TypeError(
                    f"nf.models.{fn.__name__}: {name} must be True or False, got {shown(value)}"
                )
        try:
            flow = fn(*bound.args, **bound.kwargs)
        except (ValueError, TypeError) as e:
            raise _named(fn.__name__, e) from None
        flow.config = {
            "model": fn.__name__,
            **{k: _jsonable(v) for k, v in bound.arguments.items()},
        }
        if any(isinstance(v, nn.Module) for v in bound.arguments.values()):
            # a module given (a base distribution object) is no config: rebuilding would share
            # it, and JSON cannot hold it; the flow saves as a hand-built one (nf.load(into=))
            flow.config = None
        return flow

    FACTORIES[fn.__name__] = wrapper
    return wrapper


def build(config: dict[str, Any]) -> Flow:
    """Rebuild the architecture described by ``flow.config`` (fresh weights; the flow's
    config is a copy, sharing nothing with ``config``)."""
    if not isinstance(config, dict):
        raise TypeError(
            f"nf.models.build: config must be a dict such as flow.config, got {type(config).__name__}"
        )
    config = _jsonable(config)
    name = config.pop("model", None)
    if not isinstance(name, str) or name not in FACTORIES:
        raise ValueError(
            f"nf.models.build: unknown model {shown(name)}; known: {sorted(FACTORIES)}"
        )
    features = config.pop("features", None)
    if features is None:
        return FACTORIES[name](**config)
    return FACTORIES[name](features, **config)


def learning_rate(flow: Any) -> float:
    """The learning rate ``nf.fit`` and ``nf.fit_vi`` use for ``flow`` when given none: its
    factory's (``BNAF``: 5e-3), else 1e-3. A wrapper (``Standardized``, ``DequantizedFlow``)
    takes its inner flow's; a flow built by hand takes the default."""
    config = getattr(flow, "config", None)
    while isinstance(config, dict):
        if config.get("model") in LEARNING_RATES:
            return LEARNING_RATES[config["model"]]
        config = config.get("flow")
    return DEFAULT_LR


def make_base(base: str | nn.Module, features: int | Sequence[int]) -> nn.Module:
    """A base distribution by name (``normal``, ``diag_normal``, ``student_t``, ``gmm``), or a
    distribution module of the flow's event shape. The factories' flows map onto the whole real
    line, so no bounded base is offered by name (a uniform one gave density 0 beyond its box
    and stopped training with a non-finite loss); NCSF builds its own for angles."""
    shape = (features,) if isinstance(features, int) else tuple(features)
    if isinstance(base, nn.Module):
        given = tuple(getattr(base, "event_shape", ()) or ())
        if given != shape:
            raise ValueError(
                f"base: a distribution of event shape {given} for the flow's events {shape}"
            )
        return base
    if base == "gmm" and len(shape) != 1:
        raise ValueError(f"base='gmm' is for vector events, not events of shape {shape}")
    makers: dict[str, Callable[[], nn.Module]] = {
        "normal": lambda: D.StandardNormal(features),
        "diag_normal": lambda: D.DiagNormal(features),
        "student_t": lambda: D.StudentT(features),
        "gmm": lambda: D.GaussianMixture(features),  # type: ignore[arg-type]
    }
    if base not in makers:
        onto = "; a flow onto the real line has no bounded base" if base == "uniform" else ""
        raise ValueError(
            f"base must be one of {sorted(makers)} or a distribution, got {shown(base)}{onto}"
        )
    return makers[base]()


def activation(name: str) -> Callable[[], nn.Module]:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {shown(name)}")
    return _ACTIVATIONS[name]
