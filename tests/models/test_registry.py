"""The factory registry: plain configs from integer-like arguments, one-line refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import nfkit as nf
from cases import MODELS


@pytest.mark.parametrize("name", sorted(MODELS))
def test_numpy_and_tensor_integers_build_the_same_flow_and_config(name: str) -> None:
    """``MAF(mask.sum())`` (a NumPy or 0-d torch integer) is ``MAF(2)``, config included."""
    case = MODELS[name]
    c = 1 if case.context else 0
    torch.manual_seed(0)
    plain = case.make(2, c)
    for features, context in ((np.int64(2), np.int32(c)), (torch.tensor(2), torch.tensor(c))):
        torch.manual_seed(0)
        flow = case.make(features, context)
        assert flow.config == plain.config
        assert json.loads(json.dumps(flow.config)) == json.loads(json.dumps(plain.config))
        assert flow.event_shape == plain.event_shape


def test_numpy_settings_are_stored_as_python_numbers() -> None:
    flow = nf.models.MAF(
        np.int64(3), transforms=np.int8(2), hidden=np.array([8, 4]), max_log_scale=np.float32(2)
    )
    assert flow.config["hidden"] == [8, 4] and flow.config["max_log_scale"] == 2.0
    assert {type(flow.config[k]) for k in ("features", "transforms", "hidden")} == {int, list}
    assert json.dumps(flow.config)  # np.int64 would not serialize
    assert nf.models.build(flow.config).config == flow.config


@pytest.mark.parametrize("name", sorted(nf.models.FACTORIES))
def test_data_passed_as_features_is_a_short_one_line_error(name: str) -> None:
    """A data tensor where ``features`` belongs: named by shape, not printed row by row."""
    with pytest.raises((TypeError, ValueError)) as info:
        nf.models.FACTORIES[name](torch.randn(500, 2))
    message = str(info.value)
    assert "\n" not in message and len(message) < 200, message
    if "missing a required" not in message:  # Python 3.12: "required keyword-only argument"
        assert "a Tensor of shape (500, 2)" in message, message


@pytest.mark.parametrize(
    "value", [True, 2.0, "2", np.float64(2.0), np.bool_(True), torch.tensor(2.0), [2]]
)
def test_non_integers_are_still_refused(value: object) -> None:
    with pytest.raises(ValueError, match="MAF: features must be an integer >= 1, got "):
        nf.models.MAF(value)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nf.models.MAF(3, transforms=3, hidden=(8,), batch_norm=True),
        lambda: nf.models.NSF(3, transforms=3, hidden=(8,), bins=4, batch_norm=True),
        lambda: nf.models.NSF(
            3, transforms=3, hidden=(8,), bins=4, coupling=True, batch_norm=True
        ),
        lambda: nf.models.RealNVP(3, transforms=3, hidden=(8,), batch_norm=True),
    ],
)
def test_batch_norm_sits_between_the_layers_and_is_saved(make, tmp_path) -> None:
    flow = make()
    kinds = [type(t).__name__ for t in flow.transform]
    assert kinds[1::2] == ["BatchNorm", "BatchNorm"] and "BatchNorm" not in kinds[::2]
    assert flow.config["batch_norm"] is True and nf.models.build(flow.config).config == flow.config
    x = torch.randn(64, 3)
    nf.fit(flow, x, steps=3, progress=False)  # running statistics move in train mode
    nf.save(flow, tmp_path / "m.pt")
    torch.testing.assert_close(nf.load(tmp_path / "m.pt").log_prob(x), flow.eval().log_prob(x))


@pytest.mark.parametrize("name", ["MAF", "IAF", "NSF", "NAF", "UMNN"])
def test_random_orders_are_permutations_rebuilt_from_the_config(name: str) -> None:
    make = nf.models.FACTORIES[name]
    flow = make(6, transforms=3, hidden=(8,), orders="random")
    ranks = [m.rank for m in flow.modules() if isinstance(m, nf.nn.MADE)]
    assert len(ranks) == 3 and all(sorted(r.tolist()) == list(range(6)) for r in ranks)
    assert any(r.tolist() not in (list(range(6)), list(range(5, -1, -1))) for r in ranks)
    rebuilt = [m.rank for m in nf.models.build(flow.config).modules() if isinstance(m, nf.nn.MADE)]
    assert all(torch.equal(a, b) for a, b in zip(ranks, rebuilt))
    with pytest.raises(ValueError, match=f"{name}: orders must be 'alternate' or 'random'"):
        make(3, orders="reverse")


@pytest.mark.parametrize("value", ["no", "false", 1, 0, None])
def test_switches_take_only_booleans(value: object) -> None:
    """A truthy string such as "no" must not silently turn on residual blocks or a coupling."""
    with pytest.raises(TypeError, match=r"nf.models.MAF: residual must be True or False"):
        nf.models.MAF(2, residual=value)
    with pytest.raises(TypeError, match=r"nf.models.NSF: coupling must be True or False"):
        nf.models.NSF(2, coupling=value)
    assert nf.models.MAF(2, batch_norm=np.bool_(True)).config["batch_norm"] is True


def test_config_shares_nothing_with_the_caller(tmp_path) -> None:
    """A sweep editing the dict it passed after building once changed the recorded inner
    architecture, and the saved file no longer loaded."""
    inner = nf.models.MAF(2, context=8, transforms=1, hidden=[8]).config
    first = nf.models.Embedded(2, flow=inner, context=4, hidden=(8,))
    inner["hidden"] = [16]
    assert first.config["flow"]["hidden"] == [8]
    path = nf.save(first, tmp_path / "m.pt")
    assert nf.load(path).config == first.config
    rebuilt = nf.models.build(first.config)
    rebuilt.config["flow"]["hidden"].append(32)
    assert first.config["flow"]["hidden"] == [8]


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: nf.models.NSF(2, bins=0), ValueError, "NSF: bins must be"),
        (lambda: nf.models.MAF(2, base="x"), ValueError, "MAF: base must be one of"),
        (lambda: nf.models.MAF(2, activation="x"), ValueError, "MAF: activation must be one of"),
        (lambda: nf.models.MAF(2, max_log_scale=-1.0), ValueError, "MAF: max_log_scale"),
        (lambda: nf.models.BNAF(2, leak=-1.0), ValueError, "BNAF: leak must be"),
        (lambda: nf.models.NAF(2, components=0), ValueError, "NAF: components must be"),
        (lambda: nf.models.Planar(2, hidden=()), ValueError, "Planar: hidden must be"),
        (lambda: nf.models.Radial(2, context=1, hidden=[-1]), ValueError, "Radial: hidden must"),
        (lambda: nf.models.Sylvester(2, hidden="64"), ValueError, "Sylvester: hidden must be"),
        (lambda: nf.models.NCSF("2", angles=[0]), ValueError, "NCSF: features must be"),
        (lambda: nf.models.FFJORD(2, base="x"), ValueError, "FFJORD: base must be one of"),
        (lambda: nf.models.ResidualFlow(2, lipschitz=2), ValueError, "ResidualFlow: lipschitz"),
        (lambda: nf.models.build(None), TypeError, "nf.models.build: config must be a dict"),
        (lambda: nf.models.build({"model": ["MAF"]}), ValueError, "nf.models.build: unknown model"),
    ],
)
def test_argument_errors_name_the_factory(make, error: type, message: str) -> None:
    """An option passed on to a layer or the base is named after the factory (it said
    `RQSplineTransformer: bins ...`, `base must ...` with no name, or blamed `hidden` for NAF's
    components), in one line."""
    with pytest.raises(error) as info:
        make()
    text = str(info.value)
    assert "\n" not in text and message in (text[: len(message)], text[10:][: len(message)]), text
