"""The contributor recipe's transform (``examples/custom_transform.py``, shown by
docs/adding_a_transform.md): the page says it passes the generic test once registered, so it is
registered here, from the example file itself."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from . import Case

_PATH = Path(__file__).resolve().parents[2] / "examples" / "custom_transform.py"
_spec = importlib.util.spec_from_file_location("nfkit_recipe_example", _PATH)
assert _spec is not None and _spec.loader is not None
_example = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _example  # (its layers pickle by module and class name)
_spec.loader.exec_module(_example)

TRANSFORMS: dict[str, Case] = {
    "Recipe-SinhArcsinh": Case(lambda d, c: _example.SinhArcsinh(d)),
}
