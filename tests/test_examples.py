"""Every worked example under examples/ runs with --quick and writes its figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (ROOT / "examples").glob("*.py"))
# Scripts run a second time with other options: (script, extra arguments).
VARIANTS = [("conditional.py", ("--objective", "flow_matching"))]

# The figures each script must write (a script not listed must write at least one PNG).
FIGURES: dict[str, tuple[str, ...]] = {
    "custom_transform.py": ("custom_transform.png",),
    "density_2d.py": ("density_2d.png", "density_2d_layers.png"),
    "conditional.py": ("conditional.png",),
    "vi.py": ("vi_energies.png",),
    "anomaly.py": ("anomaly.png",),
    "rbig.py": ("rbig_layers.png", "rbig_flow.png"),
    "angles.py": ("angles.png",),
    "mixed_table.py": ("mixed_table.png",),
    "glow_digits.py": ("glow_digits_samples.png",),
}


@pytest.mark.parametrize(
    ("script", "options"),
    [(s, ()) for s in SCRIPTS] + VARIANTS,
    ids=[*SCRIPTS, *(f"{s}{''.join(o)}" for s, o in VARIANTS)],
)
def test_example_runs_quick(script: str, options: tuple[str, ...], tmp_path: Path) -> None:
    # One thread: on a shared CI machine torch's default thread pool oversubscribes the cores.
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), str(tmp_path), "--quick", *options],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, f"{script} failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    written = {p.name for p in tmp_path.rglob("*.png")}
    expected = FIGURES.get(script)
    if expected is None:
        assert written, f"{script} wrote no figure into {tmp_path}"
    else:
        assert set(expected) <= written, f"{script}: missing {set(expected) - written}"
