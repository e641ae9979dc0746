"""nf.save / nf.load (fresh process, atomic, one-line errors) and standardization in user units."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import nfkit as nf
from nfkit.io import atomic_save, atomic_write


def _flow(d: int = 2, context: int = 0) -> nf.Flow:
    torch.manual_seed(0)
    flow = nf.models.NSF(d, context=context, transforms=2, hidden=(8,), bins=4)
    nf.testing.perturb_parameters(flow, 0.1)
    return flow.eval()


def test_round_trip_in_fresh_process(tmp_path) -> None:
    x = 50 + 5 * torch.randn(64, 3)
    c = torch.randn(64, 1)
    flow = nf.models.standardize(_flow(3, 1), x, c, columns=["a", "b", "c", "g"], given=["g"])
    path = nf.save(flow, tmp_path / "m.pt")
    torch.save({"x": x, "c": c}, tmp_path / "x.pt")
    code = (
        "import torch, nfkit as nf\n"
        f"f = nf.load({str(path)!r})\n"
        f"d = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)\n"
        "print(repr(f.log_prob(d['x'], d['c']).tolist()))\n"
        "print(f.config['columns'], f.config['given'], f.training)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.splitlines()
    with torch.no_grad():
        expected = flow.log_prob(x, c)
    torch.testing.assert_close(torch.tensor(eval(out[0])), expected, rtol=0, atol=1e-5)
    assert out[1] == "['a', 'b', 'c', 'g'] ['g'] False"
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_load_keeps_dtype_and_device_argument(tmp_path) -> None:
    flow = _flow().double()
    nf.save(flow, tmp_path / "m.pt")
    loaded = nf.load(tmp_path / "m.pt", device="cpu")
    assert next(loaded.parameters()).dtype == torch.float64
    x = torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(loaded.log_prob(x), flow.log_prob(x))


def test_a_float64_flow_keeps_its_exact_support_through_save_and_load(tmp_path) -> None:
    """Bounds float32 rounds outwards (0.7, 1.1) or inwards (0.1, 0.9): the loaded flow checks
    the exact ends as the saved one did (it checked float32-rounded ends against exact buffers:
    0.69999999 scored NaN, 0.8999999999 was refused), and torch's default dtype is restored."""
    g = torch.Generator().manual_seed(0)
    for (low, high), outside, inside in (
        ((0.7, 1.1), 0.69999999, 1.0999999999),
        ((0.1, 0.9), 0.09999999, 0.8999999999),
    ):
        x = low + (high - low) * torch.rand(100, 1, generator=g, dtype=torch.float64)
        inner = nf.models.MAF(1, transforms=1, hidden=(8,)).double()
        flow = nf.models.standardize(inner, x, bounds=(low, high))
        nf.save(flow, tmp_path / "m.pt")
        loaded = nf.load(tmp_path / "m.pt")
        assert torch.get_default_dtype() == torch.float32
        assert loaded.transform.domain == flow.transform.domain
        rows = torch.tensor([[inside]], dtype=torch.float64)
        torch.testing.assert_close(loaded.log_prob(rows), flow.log_prob(rows), rtol=0, atol=0)
        assert loaded.log_prob(rows).isfinite().all()
        for model in (flow, loaded):
            with pytest.raises(ValueError, match="outside the support"):
                model.log_prob(torch.tensor([[outside]], dtype=torch.float64))


def test_atomic_save_keeps_old_file_on_failure(tmp_path) -> None:
    path = tmp_path / "m.pt"
    nf.save(_flow(), path)
    before = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        atomic_save({"f": lambda: 0}, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]


def test_atomic_write_names_the_path_and_leaves_nothing_behind(tmp_path) -> None:
    (tmp_path / "file").write_text("a file, not a folder")
    target = tmp_path / "file" / "sub" / "m.pt"
    with pytest.raises(OSError, match=r"^cannot write '.*file/sub/m.pt': ") as info:
        nf.save(_flow(), target)
    assert "\n" not in str(info.value)

    def half_then_full_disk(f) -> None:
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match=r"cannot write '.*out.csv': No space left on device"):
        atomic_write(tmp_path / "out.csv", half_then_full_disk)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no temporary file left


def test_atomic_write_keeps_a_replaced_files_mode_and_else_follows_the_umask(tmp_path) -> None:
    new = atomic_write(tmp_path / "new.csv", lambda f: f.write(b"a\n"))
    umask = os.umask(0)
    os.umask(umask)
    assert new.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    new.chmod(0o640)
    atomic_write(new, lambda f: f.write(b"b\n"))
    assert new.stat().st_mode & 0o777 == 0o640 and new.read_bytes() == b"b\n"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_load_errors_are_one_line(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nf.load: no such file: .*missing.pt"):
        nf.load(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(
        ValueError,
        match="nf.load: '.*text.pt' is a text file \\(a table\\?\\), not an nfkit model",
    ) as info:
        nf.load(tmp_path / "text.pt")
    assert "\n" not in str(info.value)
    nf.save(_flow(), tmp_path / "whole.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:300])
    with pytest.raises(ValueError, match="'.*cut.pt' is a damaged or truncated torch file"):
        nf.load(tmp_path / "cut.pt")
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not an nfkit model file"):
        nf.load(tmp_path / "foreign.pt")
    x = nf.datasets.two_moons(64, seed=0)
    nf.fit(_flow(), x, steps=2, eval_every=1, checkpoint=tmp_path / "ck.pt", progress=False)
    with pytest.raises(ValueError, match="'.*ck.pt' is a training checkpoint of nf.fit, not a"):
        nf.load(tmp_path / "ck.pt")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(ValueError, match="'.*evil.pt' is not a torch file"):
        nf.load(tmp_path / "evil.pt")  # a bare pickle: not even read as one
    torch.save({"state": Evil()}, tmp_path / "evil_zip.pt")  # the torch format, os.system inside
    with pytest.raises(
        ValueError, match=r"evil_zip.pt' holds a Python object \(\S*system\)"
    ) as info:
        nf.load(tmp_path / "evil_zip.pt")
    assert "weights-only load refuses" in str(info.value) and "\n" not in str(info.value)


def test_standardized_density_in_user_units() -> None:
    """Identity inner flow: p(x) must be N(x; μ, σ²) exactly (change of variables incl. -Σ log σ)."""
    torch.manual_seed(0)
    mu = torch.tensor([100.0, -3.0], dtype=torch.float64)
    sigma = torch.tensor([20.0, 0.01], dtype=torch.float64)
    x = mu + sigma * torch.randn(4000, 2, dtype=torch.float64)
    inner = nf.models.MAF(2, transforms=1, hidden=(4,)).double()  # zero-init: the identity
    flow = nf.models.standardize(inner, x)
    m, s = x.mean(0), x.std(0, unbiased=False)
    ref = torch.distributions.Normal(m, s).log_prob(x).sum(-1)
    torch.testing.assert_close(flow.log_prob(x), ref)
    samples = flow.sample(20000)
    torch.testing.assert_close(
        samples.mean(0), m, rtol=0, atol=float(4 * s.max() / math.sqrt(2e4))
    )
    torch.testing.assert_close(samples.std(0), s, rtol=0.05, atol=0)
    # Rebuilt from its config, the statistics come back with the state dict.
    rebuilt = nf.models.build(flow.config).double()
    rebuilt.load_state_dict(flow.state_dict())
    torch.testing.assert_close(rebuilt.log_prob(x[:5]), flow.log_prob(x[:5]))


def test_standardize_errors() -> None:
    x = torch.randn(10, 2)
    x[:, 1] = 3.0
    with pytest.raises(ValueError, match="column\\(s\\) b are constant"):
        nf.models.standardize(_flow(), x, columns=["a", "b"])
    c = torch.randn(10, 1).expand(10, 2).clone()
    c[:, 1] = 1.0  # a constant context column: no density over it, but nothing to learn from
    with pytest.raises(ValueError, match="context column.s. 1 are constant; the flow could not"):
        nf.models.standardize(_flow(context=2), torch.randn(10, 2), c)
    with pytest.raises(ValueError, match="context was given"):
        nf.models.standardize(_flow(), torch.randn(10, 2), torch.randn(10, 1))
    where = "nf.models.standardize"
    # a set summary's columns are exchangeable elements: an angle among them was pooled into
    # the elements' statistics (the trials squashed) and read as two more elements
    inner = nf.models.NSF(1, context=2, transforms=1, hidden=(8,)).config
    sets = nf.models.Embedded(1, flow=inner, context=5, hidden=(8,), set_features=1)
    with pytest.raises(ValueError, match=f"{where}: context_angles cannot be given for a set"):
        nf.models.standardize(sets, torch.randn(20, 1), torch.randn(20, 4), context_angles=[0])
    with pytest.raises(TypeError, match=f"{where}: x must be a Tensor, NumPy array or DataFrame"):
        nf.models.standardize(_flow(), [[1.0, 2.0]] * 5)
    with pytest.raises(ValueError, match=f"{where}: x contains NaN or inf values"):
        nf.models.standardize(_flow(), np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match=rf"{where}: x must have last dim 2, got shape \(10, 3\)"):
        nf.models.standardize(_flow(), torch.randn(10, 3))
    with pytest.raises(TypeError, match="only vector flows|expected an nf.Flow"):
        nf.models.standardize(nf.Flow(nf.transforms.Tanh(), nf.distributions.StandardNormal(2)), x)
    conditional = nf.models.MAF(2, context=1, transforms=1, hidden=(4,))
    with pytest.raises(ValueError, match=r"context must have last dim 1, got shape \(10, 2\)"):
        nf.models.standardize(conditional, torch.randn(10, 2), torch.randn(10, 2))


def test_standardize_takes_arrays_and_frames_like_tensors() -> None:
    """NumPy arrays and DataFrames give the statistics a float64 tensor gives (to rounding:
    a DataFrame's array may be column-major, which changes the order of the sums)."""
    x = np.random.default_rng(0).normal(loc=[5.0, -2.0], scale=[3.0, 0.5], size=(200, 2))
    flows = [
        nf.models.standardize(_flow().double(), data)
        for data in (torch.as_tensor(x), x, pd.DataFrame(x, columns=["a", "b"]))
    ]
    reference = flows[0].state_dict()
    for flow in flows[1:]:
        for key, value in flow.state_dict().items():
            torch.testing.assert_close(value, reference[key], rtol=1e-12, atol=1e-12)


def test_load_names_what_is_wrong_with_a_model_file(tmp_path) -> None:
    flow = _flow()
    path = nf.save(flow, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    variants = {
        "newer": ({**payload, "format_version": 999}, "upgrade nfkit to read it"),
        "config": ({**payload, "config": '{"model": "Nope"}'}, "cannot rebuild the model"),
        "weights": (
            {**payload, "state_dict": {"nope": torch.zeros(1)}},
            "weights do not match the architecture",
        ),
    }
    for name, (bad, message) in variants.items():
        torch.save(bad, tmp_path / f"{name}.pt")
        with pytest.raises(ValueError, match=f"nf.load: '.*{name}.pt'.*{message}") as info:
            nf.load(tmp_path / f"{name}.pt")
        assert "\n" not in str(info.value)
    with pytest.raises(TypeError, match="nf.save: expected an nf.Flow, got Linear"):
        nf.save(torch.nn.Linear(2, 2), tmp_path / "lin.pt")
    assert not (tmp_path / "lin.pt").exists()


@pytest.mark.parametrize(
    ("make", "edit", "what"),
    [  # one layer of 10**9 units: ~40 GB
        (lambda: nf.models.MAF(2, transforms=1, hidden=(8,)), {"hidden": [10**9]}, "hidden=10"),
        (  # 1.4e8 weights, none of them in the file
            lambda: nf.models.MAF(2, transforms=1, hidden=(8,)),
            {"hidden": [12000, 12000]},
            "more tensor elements",
        ),
        (  # a loop of small layers
            lambda: nf.models.MAF(2, transforms=1, hidden=(8,)),
            {"transforms": 3000},
            "more tensor operations",
        ),
        (  # Python work before any tensor op: NCSF lists its features, Glow takes 2**levels
            lambda: nf.models.NCSF(3, angles=[0], transforms=1, hidden=(4,)),
            {"features": 10**8},
            "features=100000000",
        ),
        (
            lambda: nf.models.Glow((2, 4, 4), levels=1, steps=1, hidden=(4,)),
            {"levels": 10**10},
            "levels=10000000000",
        ),
    ],
)
def test_load_refuses_a_config_edited_to_build_far_more_than_the_file_holds(
    tmp_path, make, edit: dict, what: str
) -> None:
    """The file's weights bound what nf.load builds: an edited config is refused before it
    allocates (a 10**9-unit layer would take ~40 GB) or loops, in one line."""
    path = nf.save(make(), tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    config = json.loads(payload["config"])
    torch.save({**payload, "config": json.dumps({**config, **edit})}, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match=f"far larger than the weights the file holds \\({what}"):
        nf.load(tmp_path / "edited.pt")
    assert nf.load(path).config == config  # the file as saved loads


def test_load_builds_a_large_but_valid_construction(tmp_path) -> None:
    """A valid file whose construction is large for its weights loads: UMNN with 6000
    quadrature nodes (its Clenshaw–Curtis weights once took a 6001 × 3000 matrix, which the
    construction budget refused; one FFT now), and a seed is not a size."""
    for flow in (
        nf.models.UMNN(2, transforms=1, hidden=(4,), integrand=(4,), nodes=6000),
        nf.models.RBIG(2, layers=2, seed=2**40),
    ):
        assert nf.load(nf.save(flow, tmp_path / "m.pt")).config == flow.config


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_load_refuses_a_named_pipe_instead_of_waiting_for_a_writer(tmp_path) -> None:
    os.mkfifo(tmp_path / "pipe.pt")
    with pytest.raises(
        ValueError, match="'.*pipe.pt' is not a regular file \\(a pipe or a device\\)"
    ):
        nf.load(tmp_path / "pipe.pt")


@pytest.mark.parametrize(
    "odd",
    [
        lambda v: v.to_sparse(),
        lambda v: torch.empty_like(v, device="meta"),
        lambda v: v.to(torch.float8_e4m3fn),
        lambda v: v.to(torch.complex64),  # loaded with a warning, its imaginary part dropped
    ],
    ids=["sparse", "meta", "float8", "complex"],
)
def test_load_refuses_weights_nf_save_never_writes(tmp_path, odd) -> None:
    """Sparse, meta, float8 or complex weights: a damaged file in one line (torch's multi-line
    errors from the finiteness check, or a silent cast, before)."""
    payload = torch.load(nf.save(_flow(), tmp_path / "m.pt"), weights_only=True)
    state = dict(payload["state_dict"])
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = odd(state[name])
    torch.save({**payload, "state_dict": state}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="'.*odd.pt' is a damaged nfkit model file") as info:
        nf.load(tmp_path / "odd.pt")
    assert "\n" not in str(info.value)


def _hand_built(embedding: bool = True) -> nf.Flow:
    """A flow no factory builds: a coupling layer behind a summary network of the user's own."""
    summary = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    return nf.Flow(
        nf.transforms.Coupling(
            2, nf.transforms.AffineTransformer(), context=3 if embedding else 10
        ),
        nf.distributions.StandardNormal(2),
        embedding=summary if embedding else None,
        context=10,
    )


def test_hand_built_flow_saves_and_loads_into_the_same_architecture(tmp_path) -> None:
    torch.manual_seed(0)
    flow = _hand_built().double()
    nf.testing.perturb_parameters(flow, 0.3)
    path = nf.save(flow, tmp_path / "h.pt")
    with pytest.raises(ValueError, match=r"holds a hand-built flow's weights .*into=flow") as info:
        nf.load(path)
    assert "\n" not in str(info.value)
    target = _hand_built()  # float32, fresh random weights, train mode
    loaded = nf.load(path, into=target)
    assert loaded is target and not loaded.training
    assert next(loaded.parameters()).dtype == torch.float64  # the saved dtype, as nf.load gives
    x, c = torch.randn(7, 2, dtype=torch.float64), torch.randn(7, 10, dtype=torch.float64)
    torch.testing.assert_close(loaded.log_prob(x, c), flow.log_prob(x, c), rtol=0, atol=0)
    assert loaded.config == {}


def test_load_into_names_the_first_difference(tmp_path) -> None:
    nf.save(_hand_built(), tmp_path / "h.pt")
    with pytest.raises(
        ValueError, match=r"another architecture than into: the file has 'embedding: Sequential'"
    ):
        nf.load(tmp_path / "h.pt", into=_hand_built(embedding=False))
    maf = nf.models.MAF(2, transforms=2, hidden=(8,))
    nf.testing.perturb_parameters(maf, 0.2)
    nf.save(maf, tmp_path / "m.pt")
    with pytest.raises(
        ValueError,
        match=r"file has 'base: StandardNormal' where into has .transform\.transforms\.2: Autor",
    ):
        nf.load(tmp_path / "m.pt", into=nf.models.MAF(2, transforms=3, hidden=(8,)))
    with pytest.raises(ValueError, match="weights do not match the architecture .*size mismatch"):
        nf.load(tmp_path / "m.pt", into=nf.models.MAF(2, transforms=2, hidden=(9,)))
    with pytest.raises(
        ValueError,
        match=r"\(size mismatch for transform\.transforms\.0\.made\.theta: copying a param with shape torch\.Size\(\[60\]\)",
    ):
        nf.load(tmp_path / "m.pt", into=nf.models.MAF(2, transforms=2, hidden=(9,)))
    with pytest.raises(TypeError, match="nf.load: into must be an nf.Flow, got Linear"):
        nf.load(tmp_path / "m.pt", into=torch.nn.Linear(2, 2))
    # a factory's file loads into the same factory's flow as well as by its config
    same = nf.load(tmp_path / "m.pt", into=nf.models.MAF(2, transforms=2, hidden=(8,)))
    x = torch.randn(5, 2)
    torch.testing.assert_close(same.log_prob(x), nf.load(tmp_path / "m.pt").log_prob(x))


def test_load_into_refuses_another_transformer_of_the_same_width(tmp_path) -> None:
    """Transformers hold no weights of their own: a DSF coupling's file (9 parameters per
    column) loaded into a Bernstein coupling of the same width, silently changing the
    density; the outline now records each layer's transformer and its settings."""
    t = nf.transforms
    base = nf.distributions.StandardNormal(2)
    saved = nf.save(nf.Flow(t.Coupling(2, t.DSFTransformer(hidden=3)), base), tmp_path / "m.pt")
    for other in (t.BernsteinTransformer(degree=8), t.DSFTransformer(hidden=3, bound=1.0)):
        with pytest.raises(ValueError, match="holds another architecture than into: the file has "
                           r"'transform: Coupling \[DSFTransformer\(hidden=3"):  # fmt: skip
            nf.load(saved, into=nf.Flow(t.Coupling(2, other), base))
    same = nf.Flow(t.Coupling(2, t.DSFTransformer(hidden=3)), base)
    assert nf.load(saved, into=same) is same


class _Shift(nf.transforms.Transformer):
    """A user's transformer as a plain class (no dataclass, no repr of its own)."""

    num_params = property(lambda self: 1)

    def forward(self, x: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + p[..., 0], torch.zeros_like(x)

    def inverse(self, z: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z - p[..., 0], torch.zeros_like(z)


def test_load_into_a_flow_with_a_plain_class_transformer(tmp_path) -> None:
    """The outline held the transformer's default repr with its memory address, so such a
    flow's file never loaded (not even into a rebuild in the same process)."""
    t = nf.transforms

    def build() -> nf.Flow:
        return nf.Flow(t.Coupling(2, _Shift(), hidden=(8,)), nf.distributions.StandardNormal(2))

    flow = nf.testing.perturb_parameters(build(), 0.3)
    saved = nf.save(flow, tmp_path / "s.pt")
    loaded = nf.load(saved, into=build())
    x = torch.randn(4, 2)
    torch.testing.assert_close(loaded.log_prob(x), flow.log_prob(x), rtol=0, atol=0)


def test_damaged_or_poisoned_model_files_are_refused_without_touching_into(tmp_path) -> None:
    """NaN/inf weights, a bad header field or a deeply nested config: one line each; a failed
    load(into=) leaves the flow as it was (it was converted to the file's dtype and half
    loaded before the error)."""
    flow = nf.models.MAF(2, transforms=1, hidden=(8,))
    path = nf.save(flow, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)

    def write(name: str, **changes) -> str:
        bad = {**payload, **changes}
        torch.save(bad, tmp_path / name)
        return str(tmp_path / name)

    state = dict(payload["state_dict"])
    theta = next(k for k in state if k.endswith("theta"))
    nan = write("nan.pt", state_dict={**state, theta: state[theta] * math.nan})
    with pytest.raises(ValueError, match=f"holds non-finite weights .NaN or inf. in {theta}"):
        nf.load(nan)
    for name, change in (("v.pt", {"format_version": "abc"}), ("d.pt", {"dtype": "nn"}),
                         ("i.pt", {"dtype": "int64"}), ("s.pt", {"state_dict": [1, 2]})):  # fmt: skip
        with pytest.raises(ValueError, match="is a damaged nfkit model file"):
            nf.load(write(name, **change))
    deep = write("deep.pt", config="[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="its config is not JSON|cannot rebuild the model"):
        nf.load(deep)
    into = nf.models.MAF(2, transforms=1, hidden=(8,)).double()
    before = {k: v.clone() for k, v in into.state_dict().items()}
    wrong = write("w.pt", state_dict={**state, theta: state[theta][:-1]})
    with pytest.raises(ValueError, match="size mismatch for .*theta"):
        nf.load(wrong, into=into)
    after = into.state_dict()
    assert all(
        torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype for k in before
    )


def test_a_full_disk_is_an_os_error_naming_the_file(tmp_path, monkeypatch) -> None:
    """torch's zip writer reports a failed write as a RuntimeError (inline_container.cc); the
    old file stays and no temporary is left."""
    flow = nf.models.MAF(2, transforms=1, hidden=(8,))
    path = nf.save(flow, tmp_path / "m.pt")
    real = torch.save

    def full(obj, f, *args, **kwargs):
        real(obj, f, *args, **kwargs)
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . unexpected pos 2240 vs 2134"
        )

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match=r"cannot write '.*m.pt': the write failed .*a full disk"):
        nf.save(flow, path)
    monkeypatch.setattr(torch, "save", real)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    nf.load(path)


def test_a_tampered_made_mask_or_order_is_refused(tmp_path) -> None:
    """A MADE's mask follows from its order and settings: a file with another one (all ones:
    a density that integrated to 0.28) or an order that is not a permutation is refused."""
    path = nf.save(nf.models.MAF(3, transforms=1, hidden=(8,)), tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    state = payload["state_dict"]
    mask = next(k for k in state if k.endswith("made.mask"))
    for key, value, message in (
        (mask, torch.ones_like(state[mask]), "mask is not the autoregressive mask of its order"),
        (mask.replace("mask", "rank"), torch.tensor([0, 0, 1]), "rank is not a permutation"),
    ):
        torch.save({**payload, "state_dict": {**state, key: value}}, tmp_path / "t.pt")
        with pytest.raises(ValueError, match=message):
            nf.load(tmp_path / "t.pt")


def _trained_in_train_mode(steps: int = 20) -> tuple[nf.Flow, torch.Tensor]:
    """A ResidualFlow after a hand-written training loop, left in train mode (float64)."""
    torch.manual_seed(0)
    flow = nf.models.ResidualFlow(2, blocks=2, hidden=(16,)).double()
    x = torch.randn(256, 2, dtype=torch.float64) * torch.tensor([1.0, 3.0], dtype=torch.float64)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    flow.train()
    for _ in range(steps):
        loss = -flow.log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return flow, x


def test_a_flow_saved_in_train_mode_loads_as_its_eval_mode(tmp_path) -> None:
    """A residual block refines its spectral norms on entering eval mode: the file holds the
    refined estimates (from a copy: the caller's flow is not changed), so the loaded flow
    equals ``flow.eval()``; loading into a flow that trained resets its pending refinement."""
    flow, x = _trained_in_train_mode()
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    path = nf.save(flow, tmp_path / "r.pt")
    assert flow.training and all(torch.equal(v, before[k]) for k, v in flow.state_dict().items())
    block = next(m for m in flow.modules() if isinstance(m, nf.transforms.ResidualBlock))
    copied = pickle.loads(pickle.dumps(block))  # a copy does what the block's eval() will do
    loaded = nf.load(path)
    into, _ = _trained_in_train_mode(5)  # trained in train mode too: its refinement is pending
    nf.load(path, into=into)
    with torch.no_grad():
        expected = flow.eval().log_prob(x)
        torch.testing.assert_close(loaded.log_prob(x), expected, rtol=0, atol=1e-12)
        torch.testing.assert_close(into.log_prob(x), expected, rtol=0, atol=1e-12)
    assert copied.training and copied.refresh_pending
    assert not block.refresh_pending and not into.training


def test_load_leaves_the_global_rng_alone(tmp_path) -> None:
    path = nf.save(nf.models.MAF(2, transforms=2, hidden=(8,)), tmp_path / "m.pt")
    torch.manual_seed(0)
    expected = torch.randn(3)
    torch.manual_seed(0)
    nf.load(path)
    assert torch.equal(torch.randn(3), expected)


def test_empty_and_truncated_files_are_named_damaged(tmp_path) -> None:
    """A torch file (a zip archive) cut anywhere, and a 0-byte file: "damaged or truncated",
    whatever torch raised (an OSError for a cut in the last third); a zip archive of other
    files is named as such."""
    whole = nf.save(_flow(), tmp_path / "whole.pt").read_bytes()
    cuts = sorted({len(whole) * k // 12 for k in range(1, 12)} | {4, len(whole) - 1})
    for n in cuts:
        (tmp_path / "cut.pt").write_bytes(whole[:n])
        with pytest.raises(ValueError, match=r"'.*cut.pt' is a damaged or truncated torch"):
            nf.load(tmp_path / "cut.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"'.*empty.pt' is empty \(0 bytes\): a damaged"):
        nf.load(tmp_path / "empty.pt")
    from nfkit.io import DamagedFileError, safe_torch_load

    x = nf.datasets.two_moons(64, seed=0)
    nf.fit(_flow(), x, steps=2, eval_every=1, checkpoint=tmp_path / "ck.pt", progress=False)
    (tmp_path / "ck.pt").write_bytes((tmp_path / "ck.pt").read_bytes()[:-100])
    with pytest.raises(DamagedFileError, match="nf.fit: '.*ck.pt' is a damaged or truncated"):
        safe_torch_load(tmp_path / "ck.pt", "nf.fit")
    import zipfile

    with zipfile.ZipFile(tmp_path / "table.zip", "w") as archive:
        archive.writestr("data.csv", "a,b\n1,2\n")
    with pytest.raises(ValueError, match="'.*table.zip' is a zip archive of other files, not a"):
        nf.load(tmp_path / "table.zip")


def test_a_changed_byte_is_named_damaged_by_the_archives_checksums(tmp_path) -> None:
    """torch reads a zip archive's parts without their CRC-32: a byte changed in the config (the
    spline's bound 5.0 → 7.0) or inside a weight loaded as another model (log-density -38.1
    against -27.0), silently; a checkpoint likewise on resume."""
    flow = _flow()
    whole = nf.save(flow, tmp_path / "m.pt").read_bytes()
    at = whole.find(b'"bound": 5.0')
    assert at > 0
    (tmp_path / "config.pt").write_bytes(whole[:at] + b'"bound": 7.0' + whole[at + 12 :])
    theta = flow.transform[0].made.theta.detach().numpy().tobytes()
    at = whole.find(theta[:64])
    assert at > 0
    flipped = bytearray(whole)
    flipped[at + 40] ^= 0x01
    (tmp_path / "weight.pt").write_bytes(bytes(flipped))
    for name in ("config", "weight"):
        with pytest.raises(ValueError, match=f"'.*{name}.pt' is damaged: the checksum of its"):
            nf.load(tmp_path / f"{name}.pt")
    x = nf.datasets.two_moons(64, seed=0)
    ck = tmp_path / "ck.pt"
    nf.fit(_flow(), x, steps=2, eval_every=1, checkpoint=ck, progress=False)
    raw = bytearray(ck.read_bytes())
    at = raw.find(b"data.pkl") + 200  # inside the pickled record, past the local header
    raw[at] ^= 0x20
    ck.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="'.*ck.pt' (is damaged|.*damaged or truncated)"):
        nf.fit(_flow(), x, steps=3, checkpoint=ck, resume=True, progress=False)


def test_a_file_written_without_checksums_loads(tmp_path) -> None:
    """torch's ``save.compute_crc32 = False`` writes CRC 0 for every part: the checksum test
    called nfkit's own files damaged (a model, and a fit's checkpoint on resume)."""
    config = pytest.importorskip("torch.utils.serialization").config
    flow = _flow()
    config.save.compute_crc32 = False
    try:
        nf.save(flow, tmp_path / "m.pt")
    finally:
        config.save.compute_crc32 = True
    x = torch.randn(3, 2)
    torch.testing.assert_close(nf.load(tmp_path / "m.pt").log_prob(x), flow.log_prob(x))


def test_a_pickle_is_refused_without_torchs_warning_and_bad_versions_are_damaged(
    tmp_path,
) -> None:
    """A plain pickle (protocol 4, Python's default) printed torch's multi-line "Detected pickle
    protocol" warning before nfkit's one line; a format_version of True or -1 loaded."""
    import warnings

    with open(tmp_path / "plain.pt", "wb") as f:
        pickle.dump({"a": 1}, f, protocol=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="'.*plain.pt' is not a torch file"):
            nf.load(tmp_path / "plain.pt")
    payload = torch.load(nf.save(_flow(), tmp_path / "m.pt"), weights_only=True)
    for version in (True, -1, 1.0):
        torch.save({**payload, "format_version": version}, tmp_path / "v.pt")
        with pytest.raises(ValueError, match="'.*v.pt' is a damaged nfkit model file"):
            nf.load(tmp_path / "v.pt")


def test_a_truncated_checkpoint_is_named_damaged_on_resume(tmp_path) -> None:
    """Not "exists and is not an nfkit checkpoint; training would overwrite it"."""
    x = nf.datasets.two_moons(64, seed=0)
    ck = tmp_path / "ck.pt"
    nf.fit(_flow(), x, steps=2, eval_every=1, checkpoint=ck, progress=False)
    whole = ck.read_bytes()
    for cut in (whole[: len(whole) // 2], whole[:-100], b""):
        ck.write_bytes(cut)
        with pytest.raises(ValueError, match="'.*ck.pt' .*damaged or truncated"):
            nf.fit(_flow(), x, steps=3, checkpoint=ck, resume=True, progress=False)


def test_atomic_write_syncs_the_directory_after_the_rename(tmp_path, monkeypatch) -> None:
    import stat

    synced = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write(tmp_path / "a.csv", lambda f: f.write(b"a\n"))
    assert synced == [False, True]  # the file, then its folder (after os.replace)


def test_atomic_write_writes_through_a_symbolic_link(tmp_path) -> None:
    """The link stays a link; its target gets the new content (mode kept)."""
    target = tmp_path / "models" / "m.pt"
    target.parent.mkdir()
    target.write_bytes(b"old")
    target.chmod(0o640)
    link = tmp_path / "latest.pt"
    link.symlink_to(target)
    assert atomic_write(link, lambda f: f.write(b"new")) == link
    assert link.is_symlink() and target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o640
    assert sorted(os.listdir(target.parent)) == ["m.pt"]
    dangling = tmp_path / "next.pt"
    dangling.symlink_to(tmp_path / "models" / "next.pt")
    atomic_write(dangling, lambda f: f.write(b"first"))
    assert dangling.is_symlink() and (tmp_path / "models" / "next.pt").read_bytes() == b"first"


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="no /proc")
def test_atomic_write_reads_the_umask_without_setting_it(tmp_path, monkeypatch) -> None:
    """Setting the umask to read it would race with other threads creating files."""
    umask = os.umask(0o022)
    os.umask(umask)

    def refused(mask: int) -> int:
        raise AssertionError("os.umask called")

    monkeypatch.setattr(os, "umask", refused)
    new = atomic_write(tmp_path / "new.csv", lambda f: f.write(b"a\n"))
    assert new.stat().st_mode & 0o777 == 0o666 & ~umask


def test_saving_under_a_file_says_the_parent_is_not_a_directory(tmp_path) -> None:
    (tmp_path / "sd.pt").write_bytes(b"a file")
    with pytest.raises(
        OSError, match=r"^cannot write '.*sd.pt/x.pt': '.*sd.pt' is a file, not a directory$"
    ):
        nf.save(_flow(), tmp_path / "sd.pt" / "x.pt")
    with pytest.raises(OSError, match=r"'.*sd.pt' is a file, not a directory$"):
        nf.save(_flow(), tmp_path / "sd.pt" / "deeper" / "x.pt")
    # a path that names a folder: not a file of the folder's name ("models/" wrote "models")
    with pytest.raises(OSError, match=r"^cannot write '.*models/': it names a folder"):
        nf.save(_flow(), f"{tmp_path}/models/")
    assert not (tmp_path / "models").exists()


def test_save_keeps_a_training_record_that_load_with_header_reads(tmp_path) -> None:
    from nfkit.io import load_with_header

    record = {"seed": 3, "steps": 10, "data": "t.csv"}
    path = nf.save(_flow(), tmp_path / "m.pt", training=record)
    flow, header = load_with_header(path)
    assert header == {"nfkit_version": nf.__version__, "format_version": 1, "training": record}
    assert not flow.training
    assert load_with_header(nf.save(_flow(), tmp_path / "n.pt"))[1]["training"] is None
    with pytest.raises(ValueError, match="training is not JSON-serializable"):
        nf.save(_flow(), tmp_path / "b.pt", training={"lr": math.nan})


def test_per_block_sampling_settings_round_trip(tmp_path) -> None:
    """FFJORD blocks with their own ``sample_solver``/``sample_steps`` (set on the trained
    flow's layers) load with the same settings; only the first block's were saved, for all."""
    flow = nf.models.FFJORD(2, blocks=3, hidden=(8,))
    blocks = list(flow.transform)
    blocks[1].sample_solver, blocks[1].sample_steps = "rk4", 4
    blocks[2].sample_solver = "euler"
    loaded = nf.load(nf.save(flow, tmp_path / "m.pt"))
    settings = [(b.sample_solver, b.sample_steps) for b in loaded.transform]
    assert settings == [(None, None), ("rk4", 4), ("euler", None)]
    assert loaded.config["sample_solver"] == [None, "rk4", "euler"]
    for block in blocks:  # agreeing blocks save one value, as before
        block.sample_solver, block.sample_steps = "midpoint", 6
    loaded = nf.load(nf.save(flow, tmp_path / "m.pt"))
    assert (loaded.config["sample_solver"], loaded.config["sample_steps"]) == ("midpoint", 6)
    assert {(b.sample_solver, b.sample_steps) for b in loaded.transform} == {("midpoint", 6)}


def test_a_named_pipe_or_device_is_written_into_not_replaced(tmp_path) -> None:
    """The temporary file was renamed over any target: ``-o /dev/null`` as root turned the
    device into an ordinary file, and a named pipe's reader got nothing."""
    import stat
    import threading

    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    pipe = tmp_path / "pipe.pt"
    os.mkfifo(pipe)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_bytes()), daemon=True)
    reader.start()
    nf.save(_flow(), pipe)
    reader.join(timeout=30)
    assert stat.S_ISFIFO(os.stat(pipe).st_mode) and got  # (a replaced pipe: the reader waits)
    (tmp_path / "got.pt").write_bytes(got[0])
    assert torch.load(tmp_path / "got.pt", weights_only=True)["format"] == "nfkit-model"


def test_an_interrupt_inside_the_zip_writer_is_an_interrupt(tmp_path, monkeypatch) -> None:
    """Ctrl-C during torch's zip write surfaces as its RuntimeError ("unexpected pos"), which
    was reported as a failed write ("a full disk?", exit 1) instead of an interrupt."""

    def interrupted_in_context(obj, f) -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos")  # noqa: B904

    monkeypatch.setattr(torch, "save", interrupted_in_context)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"a": torch.zeros(1)}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists() and not list(tmp_path.iterdir())


def test_save_refuses_non_finite_weights_and_keeps_the_file_there(tmp_path) -> None:
    """nf.load refuses NaN/inf weights, so saving them would replace a good file with one that
    never loads (a hand-written loop that diverged)."""
    flow = nf.models.MAF(2, transforms=1, hidden=(8,))
    path = nf.save(flow, tmp_path / "m.pt")
    before = path.read_bytes() if hasattr(path, "read_bytes") else open(path, "rb").read()
    theta = next(name for name, _ in flow.named_parameters() if name.endswith("theta"))
    with torch.no_grad():
        flow.get_parameter(theta)[0] = math.nan
    with pytest.raises(ValueError) as info:
        nf.save(flow, tmp_path / "m.pt")
    assert str(info.value) == (
        f"nf.save: the flow has non-finite weights (NaN or inf) in {theta}; not written (the "
        "file would not load)"
    )
    assert open(tmp_path / "m.pt", "rb").read() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_load_takes_large_iteration_caps_which_are_no_sizes(tmp_path) -> None:
    """An ODE's ``max_steps`` or a fixed-point ``max_iter`` of two million was read as a size
    far beyond the weights: the file nf.save (or ``nfkit fit --option``) wrote did not load."""
    for flow in (
        nf.models.FFJORD(2, hidden=(8,), max_steps=2_000_000, sample_steps=3_000_000),
        nf.models.ResidualFlow(2, blocks=1, hidden=(8,), max_iter=2_000_000),
    ):
        assert nf.load(nf.save(flow, tmp_path / "m.pt")).config == flow.config


@pytest.mark.parametrize(
    ("make", "setting"),
    [
        (lambda v: nf.models.BNAF(2, transforms=1, hidden=(4,), leak=v), "leak"),
        (lambda v: nf.models.ResidualFlow(2, blocks=1, hidden=(8,), lipschitz=v), "lipschitz"),
        (lambda v: nf.models.FFJORD(2, hidden=(8,), solver="rk4", t1=v), "t1"),
    ],
)
def test_load_into_refuses_a_setting_that_is_no_weight(tmp_path, make, setting: str) -> None:
    """A BNAF's leak, a residual block's Lipschitz bound or an ODE's end time change the map
    but hold no weights: a file loaded into a flow built with another value, silently changing
    the density (BNAF leak 0.01 → 0.3: log p off by 1.97). The outline records them now."""
    flow = make(0.5)
    saved = nf.save(flow, tmp_path / "m.pt")
    with pytest.raises(ValueError, match=f"holds another architecture than into: .*{setting}=0.5"):
        nf.load(saved, into=make(0.25))
    same = make(0.5)
    assert nf.load(saved, into=same) is same
    # a file written before settings were outlined (its entries without them) still loads
    payload = torch.load(saved, weights_only=True)
    old = [
        entry.rsplit(" {", 1)[0] if entry.endswith("}") else entry for entry in payload["outline"]
    ]
    assert old != payload["outline"]
    torch.save({**payload, "outline": old}, tmp_path / "old.pt")
    assert nf.load(tmp_path / "old.pt", into=make(0.25)) is not None
    assert nf.load(tmp_path / "old.pt").config == flow.config


def test_load_refuses_a_factory_flow_changed_after_it_was_built(tmp_path) -> None:
    """A weightless layer appended to a factory's flow was saved with the factory's config and
    loaded as the unchanged flow (log p off by 1.46), silently. The rebuilt model is checked
    against the file's outline: refused, naming the layer, and pointing to ``into=``."""
    flow = nf.models.NSF(2, transforms=1, hidden=(8,))
    flow.transform.transforms.append(nf.transforms.Tanh())
    saved = nf.save(flow, tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"changed after its factory built it: the file has "
                       r"'transform.transforms.1: Tanh' where the rebuilt model has 'nothing'; "
                       r"build the same flow and load into it"):  # fmt: skip
        nf.load(saved)
    again = nf.models.NSF(2, transforms=1, hidden=(8,))
    again.transform.transforms.append(nf.transforms.Tanh())
    x = torch.rand(5, 2) - 0.5
    torch.testing.assert_close(nf.load(saved, into=again).log_prob(x), flow.eval().log_prob(x))
    # a module this version's factory has and an older file lacks is no change
    payload = torch.load(
        nf.save(nf.models.MAF(2, transforms=1, hidden=(8,)), tmp_path / "maf.pt"),
        weights_only=True,
    )
    fewer = [e for e in payload["outline"] if not e.split(": ")[0].endswith(".embed")]
    assert len(fewer) < len(payload["outline"])
    torch.save({**payload, "outline": fewer}, tmp_path / "older.pt")
    assert isinstance(nf.load(tmp_path / "older.pt"), nf.Flow)
