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
    """``python -m sphinx -W --keep-going -b html docs <out>``: any warning fails the build."""
    out = tmp_path / "html"
    r = _run(
        [
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            "docs",
            str(out),
        ],
        timeout=600,
    )
    assert r.returncode == 0, f"sphinx build failed:\n{r.stdout[-4000:]}\n{r.stderr[-8000:]}"
    for page in ("index", "concepts", "adding_a_transform", "api", "changelog"):
        assert (out / f"{page}.html").is_file(), page
    assert (out / "generated" / "nfkit.Flow.html").is_file()


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
