"""The registry of the generic test: every transform and every model factory has a case here.

Each module in this package defines ``TRANSFORMS: dict[str, Case]`` and/or
``MODELS: dict[str, ModelCase]``; this package merges them, so a family's cases live next to
each other and a new module is picked up without editing a shared list.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

from nfkit import Flow, Transform


@dataclass(frozen=True)
class Case:
    """How to build and feed one transform for the generic test."""

    make: Callable[[int, int], Transform]  # (features, context) -> transform
    context: bool = False  # the transform accepts a context
    features: tuple[int, ...] = (1, 2, 5)  # D values to test
    event_shape: Callable[[int], tuple[int, ...]] = lambda d: (d,)  # noqa: E731
    train_first: bool = False  # one train-mode forward, then checked in eval mode
    perturb: float = 0.2  # parameter noise, so zero-initialized layers are not identities
    atol_inverse: float = 1e-8
    tails: bool = True  # feed |x| = 1e4 in float32 and float64
    tags: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ModelCase:
    """How to build one model factory at a small size."""

    make: Callable[[int, int], Flow]  # (features, context) -> flow
    context: bool = True
    features: tuple[int, ...] = (1, 2, 5)
    event_shape: Callable[[int], tuple[int, ...]] = lambda d: (d,)  # noqa: E731 (image flows)
    perturb: float = 0.1
    atol_inverse: float = 1e-8
    train_first: bool = False
    needs_context: bool = False  # built and checked with a context only (``Embedded``)


TRANSFORMS: dict[str, Case] = {}
MODELS: dict[str, ModelCase] = {}

for _info in pkgutil.iter_modules(__path__):
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _name, _case in getattr(_module, "TRANSFORMS", {}).items():
        assert _name not in TRANSFORMS, f"duplicate transform case {_name}"
        TRANSFORMS[_name] = _case
    for _name, _case in getattr(_module, "MODELS", {}).items():
        assert _name not in MODELS, f"duplicate model case {_name}"
        MODELS[_name] = _case
