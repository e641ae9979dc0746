"""The documentation: the Sphinx site builds with warnings as errors, docstring examples run,
and the pages stay in step with the code (every public module has an API page, every factory
has a row in the concepts table, every figure a page shows exists and is small)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import nfkit as nf

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.skipif(
    importlib.util.find_spec("sphinx") is None
    or importlib.util.find_spec("furo") is None
    or importlib.util.find_spec("myst_parser") is None,
    reason="sphinx, furo or myst-parser not installed (pip install -e '.[docs]')",
)
def test_sphinx_build_has_no_warnings(tmp_path: Path) -> None:
    """``python -m sphinx -W --keep-going -b dummy docs <out>``: any warning fails the build.

    The dummy builder reads every page (autodoc, autosummary, MyST) and resolves every
    cross-reference as the HTML builder does, then writes nothing: the same warnings in 21 s
    instead of 54 (the HTML pages, the theme and viewcode's source pages are output only).
    The HTML build is the command in ``docs/conf.py``.
    """
    doctrees = tmp_path / "doctrees"
    r = _run(
        [
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "dummy",
            "-d",
            str(doctrees),
            "docs",
            str(tmp_path / "out"),
        ],
        timeout=600,
    )
    assert r.returncode == 0, f"sphinx build failed:\n{r.stdout[-4000:]}\n{r.stderr[-8000:]}"
    for page in ("index", "concepts", "adding_a_transform", "api", "changelog"):
        assert (doctrees / f"{page}.doctree").is_file(), page
    assert (doctrees / "generated" / "nfkit.Flow.doctree").is_file()


def test_docstring_examples() -> None:
    """``pytest --doctest-modules src/nfkit``: every ``>>>`` example in the package runs."""
    r = _run(
        [
            "-m",
            "pytest",
            "--doctest-modules",
            "src/nfkit",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
        ],
        timeout=300,
    )
    assert r.returncode == 0, f"doctests failed:\n{r.stdout[-6000:]}\n{r.stderr[-2000:]}"
    ran = re.search(r"(\d+) passed", r.stdout)
    assert ran is not None and int(ran.group(1)) >= 8, r.stdout[-2000:]


def test_main_objects_have_examples() -> None:
    """The main public objects carry a doctested ``Example:`` section."""
    for obj in (
        nf.Flow,
        nf.Compose,
        nf.models.MAF,
        nf.models.NSF,
        nf.transforms.Coupling,
        nf.transforms.Autoregressive,
        nf.distributions.StandardNormal,
    ):
        assert ">>> " in (obj.__doc__ or ""), obj.__qualname__


def test_every_public_module_has_an_api_page() -> None:
    api = (DOCS / "api.rst").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\s+(nfkit[\w.]*)\s*$", api, flags=re.M))
    public = {"nfkit"} | {
        getattr(nf, name).__name__
        for name in nf.__all__
        if isinstance(getattr(nf, name, None), types.ModuleType)
    }
    assert public <= listed, f"docs/api.rst misses {sorted(public - listed)}"


def test_every_factory_is_in_the_concepts_table() -> None:
    text = (DOCS / "concepts.md").read_text(encoding="utf-8")
    table = text[text.index("(family-table)=") :]
    rows = [line for line in table.splitlines() if line.startswith("|")]
    factories = {n for n in nf.models.__all__ if n in nf.models.FACTORIES}
    for name in sorted(factories):
        assert any(f"`{name}`" in row or f"`{name}(" in row for row in rows), (
            f"docs/concepts.md: the family table has no row for nf.models.{name}"
        )


def test_figures_exist_and_are_small() -> None:
    """Every image a page shows exists under docs/img; the ones this project generates are small."""
    pages = [*DOCS.glob("*.md"), *DOCS.glob("examples/*.md")]
    for page in pages:
        for ref in re.findall(r"img/([\w.\-]+\.png)", page.read_text(encoding="utf-8")):
            path = DOCS / "img" / ref
            assert path.is_file(), f"{page.relative_to(ROOT)} shows missing {ref}"
            assert path.stat().st_size < 200_000, f"{ref} is {path.stat().st_size} bytes"


# The names a page's code uses without defining them (the reader's own data), by page.
_PRELUDE = {
    "README.md": """
X_train = nf.datasets.two_moons(600).numpy()
X_test = nf.datasets.two_moons(200).numpy()
my_transform = nf.transforms.Affine(3)
""",
    "adding_a_transform.md": """
import importlib.util
_spec = importlib.util.spec_from_file_location("custom_transform", ROOT / "examples" / "custom_transform.py")
_mod = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(_mod)
SinhArcsinh = _mod.SinhArcsinh
""",
    "concepts.md": """
D = 2
x = torch.cat([nf.datasets.two_moons(300)[:, :1].clamp(-3, 3), 1 + torch.rand(300, 1)], 1)
t = nf.transforms.Affine(2)
context = None
""",
    "sklearn.md": """
import pandas as pd
X_train = nf.datasets.two_moons(600).numpy()
X_test = nf.datasets.two_moons(200).numpy()
_g = torch.Generator().manual_seed(0)
table = pd.DataFrame({
    "region": [["north", "south", "west"][i % 3] for i in range(300)],
    "income": (torch.randn(300, generator=_g) + 3).numpy(),
})
""",
}
# Blocks that are not meant to run as they stand: a test-registry module (relative import).
_NOT_RUN = ("from . import Case",)


def _code_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)


def _shortened(code: str) -> str:
    """The same code with training budgets cut to a few steps (the test checks that it runs)."""
    code = re.sub(r"\bsteps=[\d_]+", "steps=8", code)
    return re.sub(r"range\(\d+\)", "range(3)", code)


@pytest.mark.parametrize(
    "page", ["README.md", "index.md", "concepts.md", "sklearn.md", "adding_a_transform.md"]
)
def test_code_blocks_on_the_pages_run(
    page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every ``python`` block of a page runs, in order, in one namespace (training budgets cut
    to a few steps), with the reader's own data (``X_train``, ``table``, ...) stood in for."""
    import matplotlib

    matplotlib.use("Agg")
    path = ROOT / page if page == "README.md" else DOCS / page
    blocks = [b for b in _code_blocks(path) if not any(s in b for s in _NOT_RUN)]
    assert blocks, f"{page} has no python blocks"
    monkeypatch.chdir(tmp_path)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    namespace: dict[str, object] = {"torch": torch, "nf": nf, "ROOT": ROOT}
    exec(_PRELUDE.get(page, ""), namespace)
    for i, block in enumerate(blocks):
        try:
            exec(compile(_shortened(block), f"{page}[block {i}]", "exec"), namespace)
        except Exception as e:  # noqa: BLE001 - the message names the block
            raise AssertionError(f"{page}: python block {i} failed: {e!r}\n{block}") from e
