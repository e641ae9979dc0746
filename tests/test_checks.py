"""Boundary validators: ``check_device`` and the public entry points that take ``device=``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import nfkit as nf
from nfkit._checks import check_device


def test_check_device_accepts_what_the_machine_has() -> None:
    assert check_device("w", None) is None
    assert check_device("w", "cpu") == torch.device("cpu")
    assert check_device("w", torch.device("cpu")) == torch.device("cpu")
    # meta holds no values: a flow moved there by nf.fit(device="meta") lost its weights
    with pytest.raises(ValueError, match="w: device 'meta' holds no values"):
        check_device("w", "meta")


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("cudax", "w: 'cudax' is not a torch device"),
        ("cuda:-1", "w: 'cuda:-1' is not a torch device"),
        (1.5, "w: device must be a string"),
        (True, "w: device must be a string"),
    ],
)
def test_check_device_rejects_non_devices(device: object, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message) as info:
        check_device("w", device)
    assert "\n" not in str(info.value)


def test_check_device_names_the_missing_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(ValueError, match="'cuda' is not available: this torch build has no CUDA"):
        check_device("w", "cuda")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    with pytest.raises(ValueError, match="'cuda:0' is not available: no GPU is visible"):
        check_device("w", 0)  # an integer i means cuda:i
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("w", "cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"'cuda:2' is not available: 2 GPU\(s\) visible"):
        check_device("w", "cuda:2")
    monkeypatch.setattr(torch.xpu, "is_available", lambda: False)  # any other backend alike
    with pytest.raises(ValueError, match="w: device 'xpu' is not available on this machine"):
        check_device("w", "xpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'mps' is not available on this machine"):
        check_device("w", "mps")


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every machine looks like a CPU-only one, so the callers' errors are the same on a GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)


def _fit() -> None:
    nf.fit(nf.models.MAF(2, transforms=1, hidden=(4,)), torch.randn(64, 2), device="cuda:1")


def _fit_vi() -> None:
    flow = nf.models.MAF(2, transforms=1, hidden=(4,))
    nf.fit_vi(flow, lambda x: -x.square().sum(-1), device="cuda:1", steps=2)


def _estimator() -> None:
    nf.FlowDensity(device="cuda:1").fit(np.random.default_rng(0).normal(size=(40, 2)))


@pytest.mark.parametrize(
    ("call", "where"), [(_fit, "nf.fit"), (_fit_vi, "nf.fit_vi"), (_estimator, "FlowDensity.fit")]
)
def test_callers_check_the_device_first(no_cuda: None, call, where: str) -> None:
    with pytest.raises(ValueError, match=f"^{where}: device 'cuda:1' is not available"):
        call()


def test_load_checks_the_device(no_cuda: None, tmp_path) -> None:
    path = nf.save(nf.models.MAF(2, transforms=1, hidden=(4,)), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="^nf.load: device 'cuda' is not available"):
        nf.load(path, device="cuda")
    assert nf.load(path, device="cpu").config["model"] == "MAF"


def test_cli_checks_the_device_before_reading_data(no_cuda: None, capsys) -> None:
    from nfkit.cli import main

    assert main(["fit", "no-such-table.csv", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nfkit: error: argument --device: device 'cuda' is not available")
    assert err.count("\n") == 1


def test_interval_closed_per_column() -> None:
    """``closed`` may differ by column (angles beside other quantities): each column's ends are
    in or out by its own flag, and ``at`` and ``str`` report each column."""
    from nfkit._checks import Interval

    support = Interval((-1.0, 0.0, -math.inf), (1.0, 2.0, math.inf), (True, False, True))
    x = torch.tensor([[-1.0, 0.0, 5.0], [1.0, 2.0, -5.0], [0.5, 1.0, 0.0], [1.5, 3.0, 0.0]])
    assert support.contains(x).tolist() == [
        [True, False, True], [True, False, True], [True, True, True], [False, False, True]
    ]  # fmt: skip
    assert support.at(0) == Interval(-1.0, 1.0, True) and support.at(2).is_real
    assert support.at(0).is_circle and not support.at(1).is_circle  # closed and bounded
    assert not support.at(2).is_circle and not support.is_circle
    assert str(support) == "per column [-1, 1], (0, 2), the real line"


@pytest.mark.parametrize(
    ("value", "dtype", "shown"),
    [(-5.0, torch.float32, "-5"), (1.5, torch.float64, "1.5"), (0.1, torch.float32, "0.1")],
)
def test_a_value_outside_the_support_is_shown_as_itself(value, dtype, shown) -> None:
    """Short where that reads back as the value; enough digits where it is one ulp past an end
    (float32 π + 1 ulp printed as 3.14159, the end itself)."""
    from nfkit._checks import Interval, check_support

    circle = Interval(-math.pi, math.pi, closed=True)
    past = torch.nextafter(torch.tensor(math.pi, dtype=torch.float32), torch.tensor(4.0))
    with pytest.raises(ValueError, match=r"\(e.g. 3.14159298\)"):
        check_support("f", "x", past.reshape(1, 1), circle)
    with pytest.raises(ValueError, match=rf"\(e.g. {shown}\)$"):
        check_support("f", "x", torch.tensor([[value]], dtype=dtype), Interval(2.0, 3.0))
