"""nf.fit / nf.fit_vi: learning, early stopping, non-finite losses, checkpoints and resume."""

from __future__ import annotations

import copy
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch

import nfkit as nf


def _small(d: int = 2, context: int = 0) -> nf.Flow:
    return nf.models.MAF(d, context=context, transforms=2, hidden=(16,))


def _state(flow: nf.Flow) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in flow.state_dict().items()}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fit_learns_and_records_history() -> None:
    x = nf.datasets.two_moons(1000, seed=0)
    flow = _small()
    with torch.no_grad():
        before = -flow.log_prob(x).mean().item()
    h = nf.fit(flow, x.numpy(), steps=80, batch_size=256, lr=5e-3, progress=False, seed=0)
    with torch.no_grad():
        after = -flow.log_prob(x).mean().item()
    assert after < before - 0.3, (before, after)
    assert len(h.train_loss) == h.steps == 80 and all(math.isfinite(v) for v in h.train_loss)
    assert h.val_step == sorted(h.val_step) and len(h.val_loss) == len(h.val_step)
    assert h.best_val == min(h.val_loss) and h.best_step in h.val_step
    assert h.lr[-1] < 1e-6, "cosine schedule decays to 0"
    assert not flow.training and flow.validate
    assert nf.History.from_dict(h.to_dict()) == h


def test_a_val_dataframe_is_matched_by_column_name() -> None:
    """``val=`` with the training DataFrame's columns in another order was scored column by
    column (a ~ N(0, 1) under b's N(10, 0.1)), silently; now matched by name, and other names
    refused; the same for a conditional fit's pair."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.normal(0, 1, 300), "b": rng.normal(10, 0.1, 300)})
    ctx = pd.DataFrame({"u": rng.normal(size=300), "v": rng.normal(size=300)})
    for context, val, swapped in (
        (None, df, df[["b", "a"]]),
        (ctx, (df, ctx), (df[["b", "a"]], ctx[["v", "u"]])),
    ):
        losses = []
        for v in (val, swapped):
            torch.manual_seed(0)
            flow = _small(2, 0 if context is None else 2)
            h = nf.fit(flow, df, context=context, val=v, steps=5, progress=False, seed=0)
            losses.append(h.val_loss)
        assert losses[0] == losses[1]
    with pytest.raises(ValueError, match=r"nf.fit: val has columns \['a', 'c'\] but the tra"):
        nf.fit(_small(2), df, val=df.rename(columns={"b": "c"}), steps=2, progress=False)
    with pytest.raises(ValueError, match=r"nf.fit: val context has columns \['u', 'w'\] but co"):
        nf.fit(_small(2, 2), df, context=ctx, val=(df, ctx.rename(columns={"v": "w"})), steps=2,
               progress=False)  # fmt: skip


def test_fit_dataframe_context_and_errors() -> None:
    g = torch.Generator().manual_seed(0)
    c = torch.randn(400, 1, generator=g)
    x = c + 0.1 * torch.randn(400, 2, generator=g)
    flow = _small(2, 1)
    h = nf.fit(
        flow, pd.DataFrame(x.numpy(), columns=["a", "b"]), context=c, steps=40, progress=False
    )
    assert h.steps == 40
    with pytest.raises(
        ValueError,
        match=r"context must be a table \(n, C\) with a row per data row \(400\), got shape \(10, 1\)",
    ):
        nf.fit(flow, x, context=c[:10], steps=2, progress=False)
    # (n, 1, C) broadcast against the rows: every row paired with every context, silently
    with pytest.raises(ValueError, match=r"got shape \(400, 1, 1\)$"):
        nf.fit(flow, x, context=c[:, None], steps=2, progress=False)
    with pytest.raises(
        ValueError,
        match=r"val context must be a table \(n, C\) with a row per val data row \(10\), got shape \(10, 1, 1\)$",
    ):
        nf.fit(flow, x, context=c, val=(x[:10], c[:10, None]), steps=2, progress=False)
    with pytest.raises(ValueError, match="needs a context"):
        nf.fit(flow, x, steps=2, progress=False)
    with pytest.raises(ValueError, match="nf.fit: lr must be"):
        nf.fit(_small(), x, lr=-1, progress=False)
    with pytest.raises(ValueError, match="steps or epochs, not both"):
        nf.fit(_small(), x, steps=3, epochs=1, progress=False)
    with pytest.raises(ValueError, match="NaN or inf"):
        nf.fit(_small(), np.array([[0.0, np.nan], [1.0, 2.0]]), progress=False)
    with pytest.raises(TypeError, match="column 's' is not numeric"):
        nf.fit(_small(1), pd.DataFrame({"s": ["a", "b"]}), progress=False)
    with pytest.raises(ValueError, match=r"nf.fit: val must have last dim 2, got shape \(10, 3\)"):
        nf.fit(_small(), x, val=torch.randn(10, 3), steps=2, progress=False)
    with pytest.raises(ValueError, match=r"nf.fit: val context must have last dim 1, got shape"):
        nf.fit(flow, x, context=c, val=(x[:10], torch.randn(10, 2)), steps=2, progress=False)
    # epochs: the floor(n_train / batch) full batches of one shuffle (360 training rows,
    # batch 100 -> 3 steps; the 60 left over wait for the next shuffle)
    rows: list[int] = []
    flow = _small()
    flow.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    h = nf.fit(flow, x, epochs=2, batch_size=100, eval_every=100, progress=False)
    assert h.steps == 6 and rows.count(100) == 6
    with pytest.raises(ValueError, match=r"nf.fit: data must have last dim 2, got shape \(5, 3\)"):
        nf.fit(_small(), torch.randn(5, 3), steps=2, progress=False)


def test_early_stopping_restores_best_weights() -> None:
    x = nf.datasets.two_moons(600, seed=1)
    flow = _small()
    snapshots: dict[int, dict] = {}

    def spoil(history: nf.History) -> None:
        step = history.val_step[-1]
        snapshots[step] = _state(flow)
        if len(history.val_step) == 3:  # from here on the model is much worse
            with torch.no_grad():
                for p in flow.parameters():
                    p.add_(torch.randn_like(p))

    h = nf.fit(
        flow, x, steps=200, eval_every=10, patience=3, lr=1e-4, schedule="constant",
        progress=False, seed=0, callback=spoil,
    )  # fmt: skip
    assert h.stopped_early and h.steps < 200
    assert h.best_step == h.val_step[2] and h.best_val == min(h.val_loss)
    assert _equal(_state(flow), snapshots[h.best_step])


def test_non_finite_loss_raises_and_keeps_last_good_weights() -> None:
    """The weights at a check are vouched for by the next step's finite loss: a failure at the
    first step after a check (here the weights at step 20, spoiled after it) restores the check
    before, step 10 (the weights at step 20 were restored: those that failed)."""
    x = nf.datasets.two_moons(400, seed=2)
    flow = _small()
    good: dict = {}

    def poison(history: nf.History) -> None:
        if len(history.val_step) == 1:
            good.update(_state(flow))
        if len(history.val_step) == 2:
            with torch.no_grad():
                next(flow.parameters()).fill_(float("nan"))

    with pytest.raises(
        nf.NonFiniteLossError, match=r"nf.fit: non-finite loss .* at step 21; weights restored "
        r"to step 10"
    ) as info:
        nf.fit(flow, x, steps=100, eval_every=10, progress=False, callback=poison)
    assert "\n" not in str(info.value)
    assert _equal(_state(flow), good)
    assert all(torch.isfinite(p).all() for p in flow.parameters())
    # Data far out in float32 overflows at the first step: the initial weights stay.
    flow = _small()
    initial = _state(flow)
    with pytest.raises(nf.NonFiniteLossError):
        nf.fit(flow, torch.full((50, 2), 1e30), steps=5, progress=False, val_fraction=0)
    assert _equal(_state(flow), initial)


def test_checkpoint_atomic_and_resume_equals_uninterrupted(tmp_path) -> None:
    x = nf.datasets.eight_gaussians(500, seed=3)
    torch.manual_seed(0)
    initial = _small()
    kwargs = dict(steps=40, eval_every=10, batch_size=64, progress=False, seed=7)

    full = copy.deepcopy(initial)
    h_full = nf.fit(full, x, **kwargs)

    class Crash(Exception):
        pass

    def crash(history: nf.History) -> None:
        if history.val_step[-1] == 20:
            raise Crash

    path = tmp_path / "ckpt.pt"
    part = copy.deepcopy(initial)
    with pytest.raises(Crash):
        nf.fit(part, x, checkpoint=path, callback=crash, **kwargs)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"], "no temporary files left behind"
    state = torch.load(path, weights_only=True)
    assert state["step"] == 20 and state["format"] == "nfkit-checkpoint"

    resumed = copy.deepcopy(initial)  # fresh weights: everything must come from the checkpoint
    h = nf.fit(resumed, x, checkpoint=path, resume=True, **kwargs)
    assert _equal(_state(resumed), _state(full))
    assert h.train_loss == h_full.train_loss and h.val_loss == h_full.val_loss
    assert h.best_step == h_full.best_step
    with pytest.raises(
        ValueError, match=r"checkpoint '.*ckpt.pt' was made with steps=40 on 450 training rows; "
        r"got steps=50 on 450 rows",
    ):  # fmt: skip
        nf.fit(copy.deepcopy(initial), x, checkpoint=path, resume=True, **{**kwargs, "steps": 50})
    # eval_every left to its default (steps // 20): the steps are named, not eval_every=3
    derived = {k: v for k, v in kwargs.items() if k != "eval_every"}
    with pytest.raises(ValueError, match=r"was made with steps=40 on 450 training rows; got steps=60"):
        nf.fit(copy.deepcopy(initial), x, checkpoint=path, resume=True, **{**derived, "steps": 60})
    with pytest.raises(ValueError, match=r"ckpt.pt' was made on other training data \(the "):
        nf.fit(copy.deepcopy(initial), x * 100, checkpoint=path, resume=True, **kwargs)
    # batches capped by the rows on both tables: other data, not "made with batch_size=450"
    capped = {**kwargs, "batch_size": 512}
    nf.fit(copy.deepcopy(initial), x, checkpoint=tmp_path / "capped.pt", **capped)
    with pytest.raises(ValueError, match=r"capped.pt' was made on other training data \(the "):
        nf.fit(copy.deepcopy(initial), x[:300], checkpoint=tmp_path / "capped.pt", resume=True,
               **capped)  # fmt: skip
    other = nf.models.MAF(2, transforms=1, hidden=(8,))
    # the first setting that differs is named (it said "(MAF, other settings); got MAF")
    with pytest.raises(ValueError, match=r"ckpt.pt' was made for another model \(transforms=2 "
                       r"there, 1 here\)"):  # fmt: skip
        nf.fit(other, x, checkpoint=path, resume=True, **kwargs)
    hand_built = nf.Flow(nf.transforms.ActNorm(2), nf.distributions.StandardNormal(2))
    with pytest.raises(ValueError, match=r"ckpt.pt' holds another architecture's weights \("):
        nf.fit(hand_built, x, checkpoint=path, resume=True, **kwargs)
    # the same transforms, one layer fewer: not "damaged" (the optimizer's size check said so)
    deeper = nf.models.MAF(2, transforms=3, hidden=(8,))
    shorter = nf.models.MAF(2, transforms=2, hidden=(8,))
    path2 = tmp_path / "deep.pt"
    nf.fit(nf.Flow(deeper.transform, deeper.base), x, checkpoint=path2, **kwargs)
    with pytest.raises(ValueError, match=r"deep.pt' holds another architecture's weights \(the "
                       r"architecture has no 'transform.transforms.2"):  # fmt: skip
        nf.fit(nf.Flow(shorter.transform, shorter.base), x, checkpoint=path2, resume=True,
               **kwargs)  # fmt: skip
    model = nf.save(initial, tmp_path / "model.pt")  # a model file is not a checkpoint
    table = tmp_path / "data.csv"
    table.write_text("a,b\n1,2\n")
    for resume in (True, False):  # nor overwritten by one
        with pytest.raises(
            ValueError, match="model.pt' is a model file \\(nf.save\\), not an nfkit checkpoint"
        ):
            nf.fit(copy.deepcopy(initial), x, checkpoint=model, resume=resume, **kwargs)
        with pytest.raises(ValueError, match="data.csv' exists and is not an nfkit checkpoint; "):
            nf.fit(copy.deepcopy(initial), x, checkpoint=table, resume=resume, **kwargs)
    assert nf.load(model).config == initial.config and table.read_text() == "a,b\n1,2\n"
    nf.fit(copy.deepcopy(initial), x, checkpoint=path, **kwargs)  # an old checkpoint: replaced
    for change in ({"lr": 1e-4}, {"batch_size": 32}, {"eval_every": 5}, {"clip": 1.0},
                   {"schedule": "constant"}, {"patience": 3}, {"seed": 8}):  # fmt: skip
        with pytest.raises(ValueError, match=f"ckpt.pt' was made with {next(iter(change))}="):
            nf.fit(copy.deepcopy(initial), x, checkpoint=path, resume=True, **{**kwargs, **change})


def test_resume_refuses_the_same_rows_in_another_order_and_reads_older_fingerprints(
    tmp_path,
) -> None:
    """The batch order depends on the rows' order: the same rows re-sorted (a re-sorted CSV,
    no split) are other data. A checkpoint made before the order was fingerprinted (its sums
    alone) still resumes."""
    x = nf.datasets.two_moons(200, seed=0)
    path = tmp_path / "ckpt.pt"
    kwargs = dict(steps=20, eval_every=10, val_fraction=0.0, progress=False, seed=0)
    torch.manual_seed(0)
    initial = _small()
    full = nf.fit(copy.deepcopy(initial), x, **kwargs)
    nf.fit(copy.deepcopy(initial), x, checkpoint=path, **{**kwargs, "steps": 20})
    with pytest.raises(ValueError, match=r"made on other training data \(the rows, their order"):
        nf.fit(copy.deepcopy(initial), x.flip(0), checkpoint=path, resume=True, **kwargs)
    state = torch.load(path, weights_only=True)
    state["data"] = state["data"][: state["data"].numel() * 2 // 3]
    torch.save(state, path)
    resumed = nf.fit(copy.deepcopy(initial), x, checkpoint=path, resume=True, **kwargs)
    assert resumed.train_loss == full.train_loss


def test_rows_of_weight_zero_are_not_checked_against_the_support() -> None:
    """Rows of weight 0 take no part, so their values are not checked either (a row outside a
    bounded column's support stopped the fit, in training and in val=)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 2, generator=g) + 0.5
    w = torch.ones(60)
    bad, w[:5] = x.clone(), 0.0
    bad[:5, 0] = -3.0  # outside (0, inf), weight 0
    flow = nf.models.standardize(_small(), x, bounds=[(0, None), (None, None)])
    nf.fit(flow, bad, weights=w, steps=3, progress=False, seed=0)
    nf.fit(flow, x, val=bad, val_weights=w, steps=3, progress=False, seed=0)
    with pytest.raises(ValueError, match="outside the support"):
        nf.fit(flow, bad, steps=3, progress=False, seed=0)


def test_resume_with_padded_sets_in_the_context(tmp_path) -> None:
    """NaN pads a set's absent elements: the same padded context resumes (its fingerprint was
    NaN, never equal), another padding pattern does not."""
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(120, 1, generator=g)
    x = theta + torch.randn(120, 4, generator=g)
    x[:40, 2:] = math.nan
    inner = nf.models.NSF(1, context=2, transforms=1, hidden=(8,)).config
    make = lambda: nf.models.Embedded(  # noqa: E731
        1, flow=inner, context=4, hidden=(8,), set_features=1, padded=True
    )
    path = tmp_path / "ckpt.pt"
    kwargs = dict(steps=10, eval_every=5, progress=False, seed=0, checkpoint=path)
    done = nf.fit(make(), theta, context=x, **kwargs)
    assert nf.fit(make(), theta, context=x, resume=True, **kwargs).train_loss == done.train_loss
    other = x.clone()
    other[40:50, 2:] = math.nan
    with pytest.raises(ValueError, match="made on other training data"):
        nf.fit(make(), theta, context=other, resume=True, **kwargs)


def test_an_explicit_seed_fixes_the_training_noise_and_leaves_the_global_rng_alone() -> None:
    """``seed=`` also seeds the noise drawn from torch's RNG (dequantization here), in a fork:
    the global stream before the call does not change the result, and is left as it was."""
    xi = (nf.datasets.two_moons(300, seed=0) * 3).round()
    results = []
    for outside in (0, 1):
        torch.manual_seed(0)
        flow = nf.models.standardize(
            nf.models.MAF(2, transforms=1, hidden=(8,)), xi, discrete=[0, 1]
        )
        torch.manual_seed(outside)
        nf.fit(flow, xi, steps=10, batch_size=64, progress=False, seed=7)
        results.append((flow.log_prob(xi[:5]).detach(), torch.randn(3)))
    assert torch.equal(results[0][0], results[1][0])
    torch.manual_seed(0)
    after_seed_0 = torch.randn(3)
    assert torch.equal(results[0][1], after_seed_0), "the caller's RNG stream moved"


def test_resuming_a_run_that_stopped_early_returns_its_result(tmp_path) -> None:
    """Resume of a finished early-stopped run: the same weights, no more steps (the checkpoint
    of the last evaluation records the stop)."""
    x = nf.datasets.two_moons(300, seed=0)
    kwargs = dict(steps=400, eval_every=10, patience=2, lr=5e-2, progress=False, seed=0,
                  checkpoint=tmp_path / "ckpt.pt")  # fmt: skip
    torch.manual_seed(0)
    first = _small()
    h1 = nf.fit(first, x, **kwargs)
    assert h1.stopped_early and h1.steps < 400
    torch.manual_seed(0)
    again = _small()
    h2 = nf.fit(again, x, resume=True, **kwargs)
    assert h2.steps == h1.steps and h2.stopped_early and h2.best_step == h1.best_step
    assert _equal(_state(again), _state(first))


def test_nan_validation_loss_raises_with_the_best_weights_back() -> None:
    """A NaN validation NLL (the flow gives NaN at a held-out row) is an error, not an
    evaluation no later one can beat (which kept the first evaluation's weights silently)."""
    flow = _small()
    calls = {"n": 0}
    real = flow.log_prob

    def poisoned(x, context=None, **kw):  # NaN from the second evaluation on
        out = real(x, context, **kw)
        if not torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] >= 2:
                out = out * math.nan
        return out

    flow.log_prob = poisoned  # type: ignore[method-assign]
    with pytest.raises(nf.NonFiniteLossError, match="validation loss is NaN at step 20") as info:
        nf.fit(flow, nf.datasets.two_moons(200, seed=0), steps=40, eval_every=10,
               progress=False, seed=0)  # fmt: skip
    assert "weights restored to the best evaluation (step 10)" in str(info.value)


@pytest.mark.parametrize("clip", [-1.0, math.nan, "5", math.inf])
def test_clip_must_be_a_number_at_least_zero(clip) -> None:
    """A negative clip flipped every gradient (training climbed the loss), NaN wrote NaN
    weights; both fits refuse them."""
    x = nf.datasets.two_moons(100, seed=0)
    with pytest.raises(ValueError, match="clip must be a finite number >= 0"):
        nf.fit(_small(), x, clip=clip, steps=2, progress=False)
    with pytest.raises(ValueError, match="clip must be a finite number >= 0"):
        nf.fit_vi(_small(), nf.targets.U1, clip=clip, steps=2, progress=False)


def test_fit_vi_keeps_actnorm_trained() -> None:
    """fit_vi trains ActNorm from samples; a later train-mode forward must not re-initialize it
    from a batch (it overwrote the trained values)."""
    inner = nf.models.RealNVP(2, transforms=2, hidden=(8,))
    flow = nf.Flow(nf.Compose(nf.transforms.ActNorm(2), inner.transform), inner.base)
    nf.fit_vi(flow, nf.targets.gaussian(torch.tensor([3.0, -2.0]), torch.ones(2)), steps=60,
              lr=1e-2, progress=False, seed=0)  # fmt: skip
    norms = [m for m in flow.modules() if isinstance(m, nf.transforms.ActNorm)]
    assert norms and all(bool(m.initialized) for m in norms)
    before = _state(flow)
    flow.train()
    flow.log_prob(torch.randn(64, 2) * 5)
    assert _equal(_state(flow), before)


def test_fit_vi_refuses_a_nan_target_in_its_final_estimate() -> None:
    """NaN (or +inf) of log p̃ where only the final n_estimate draws land is an error, as in
    nf.metrics.importance_sampling (NaN counted as weight 0 and biased log Ẑ silently)."""

    def target(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x[:, 0] > 3.3, math.nan, -0.5 * (x**2).sum(-1))

    with pytest.raises(ValueError, match=r"nf.fit_vi: log_density is NaN at \d+ of 8192 draws"):
        nf.fit_vi(_small(), target, steps=2, batch_size=4, n_estimate=8192, progress=False,
                  seed=0)  # fmt: skip


def test_fit_vi_takes_a_numpy_context() -> None:
    flow = _small(2, 1)
    h = nf.fit_vi(flow, lambda x, c: -0.5 * ((x - c) ** 2).sum(-1), context=np.array([1.0]),
                  steps=3, n_estimate=100, progress=False, seed=0)  # fmt: skip
    assert h.steps == 3 and math.isfinite(h.log_normalizer)


def test_fit_uses_fused_adamw_with_the_per_op_update(tmp_path, monkeypatch) -> None:
    """nf.fit steps with torch's fused AdamW on CPU (the checkpoint's optimizer says so), and the
    weights match torch's per-op AdamW loop to float64 rounding."""
    x = nf.datasets.two_moons(400, seed=1).double()
    torch.manual_seed(0)
    initial = _small().double()
    kwargs = dict(steps=30, eval_every=10, batch_size=64, progress=False, seed=3, weight_decay=0.1)
    fused = copy.deepcopy(initial)
    nf.fit(fused, x, checkpoint=tmp_path / "f.pt", **kwargs)
    groups = torch.load(tmp_path / "f.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["fused"] for g in groups] == [True]

    monkeypatch.setattr(nf.train, "_fused_adamw", lambda params: None)
    per_op = copy.deepcopy(initial)
    nf.fit(per_op, x, checkpoint=tmp_path / "p.pt", **kwargs)
    groups = torch.load(tmp_path / "p.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["fused"] for g in groups] == [None]
    a, b = _state(fused), _state(per_op)
    assert not _equal(a, initial.state_dict()), "training moved the weights"
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-11)


def test_fused_adamw_only_where_torch_has_the_kernel() -> None:
    from nfkit.train import _fused_adamw

    assert _fused_adamw([torch.zeros(3, requires_grad=True)]) is True
    assert _fused_adamw([torch.zeros(3, dtype=torch.float64, requires_grad=True)]) is True
    assert _fused_adamw([torch.zeros(3), torch.zeros(3, device="meta")]) is None
    assert _fused_adamw([torch.zeros(3, dtype=torch.complex64)]) is None


def test_fit_vi_reports_each_context_of_a_batch_on_its_own() -> None:
    """Three targets ``p̃(x | c) = N(x; c, I) · 2π e^{2c}``, one amortized ``q``: each context's
    ``log Ẑ`` is its own (``log 2π + 2c``), not the pooled ``log mean_c Z_c``."""
    torch.manual_seed(0)
    flow = nf.models.IAF(2, context=1, transforms=2, hidden=(16,))
    contexts = torch.tensor([[-1.0], [0.0], [1.0]])

    def log_p(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((x - c) ** 2).sum(-1) + 2 * c[..., 0]

    h = nf.fit_vi(flow, log_p, steps=400, batch_size=64, lr=1e-2, context=contexts,
                  progress=False, seed=0, n_estimate=2048)  # fmt: skip
    truth = [math.log(2 * math.pi) + 2 * c for c in (-1.0, 0.0, 1.0)]
    assert h.objective == "reverse_kl" and h.log_normalizer is None
    assert h.per_context["log_normalizer"] == pytest.approx(truth, abs=0.1)
    assert h.ess == min(h.per_context["ess"]) and h.pareto_k == max(h.per_context["pareto_k"])
    assert h.ess > 0.5


def test_fit_vi_gaussian_log_normalizer_and_ess() -> None:
    loc = torch.tensor([1.0, -2.0])
    scale = torch.tensor([0.5, 2.0])
    log_z = float(torch.log(scale * math.sqrt(2 * math.pi)).sum())
    torch.manual_seed(0)
    flow = nf.models.IAF(2, transforms=1, hidden=(8,))
    before = torch.get_rng_state()
    h = nf.fit_vi(
        flow, nf.targets.gaussian(loc, scale), steps=400, batch_size=128, lr=2e-2,
        progress=False, seed=0, n_estimate=20000,
    )  # fmt: skip
    assert torch.equal(before, torch.get_rng_state()), "seeded fit_vi touched the global RNG"
    assert h.ess > 0.9, h.ess
    assert h.pareto_k < 0.5, h.pareto_k  # measured 0.05
    assert abs(h.log_normalizer - log_z) < 0.05, (h.log_normalizer, log_z)
    # -ELBO = KL - log Z >= -log Z, and close to it at the end.
    assert np.mean(h.train_loss[-50:]) > -log_z - 0.05
    assert np.mean(h.train_loss[-50:]) < -log_z + 0.1


def test_fit_vi_pareto_k_flags_a_proposal_narrower_than_the_target() -> None:
    """Untrained (the standard normal) against N(0, 3² I): the weights' tail has shape
    1 - 1/9 ≈ 0.89 in theory; k̂ says "unreliable" (> 0.7; measured 0.89) while the ESS alone
    only says "small"."""
    torch.manual_seed(0)
    flow = nf.models.IAF(2, transforms=1, hidden=(8,))
    target = nf.targets.gaussian(torch.zeros(2), torch.full((2,), 3.0))
    h = nf.fit_vi(flow, target, steps=1, lr=1e-9, progress=False, seed=0, n_estimate=20000)
    assert 0.75 < h.pareto_k < 1.05, h.pareto_k
    assert "pareto_k=" in repr(h)


def test_fit_vi_on_U1_runs() -> None:
    g = torch.linspace(-5, 5, 501, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1)
    p = nf.targets.U1(grid).exp()
    log_z = math.log(torch.trapezoid(torch.trapezoid(p, g, dim=1), g).item())
    torch.manual_seed(0)
    flow = nf.models.RealNVP(2, transforms=4, hidden=(16, 16))
    h = nf.fit_vi(
        flow, nf.targets.U1, steps=100, batch_size=128, lr=5e-3, anneal=30, progress=False, seed=0
    )
    assert 0 < h.ess <= 1 and math.isfinite(h.log_normalizer)
    assert h.log_normalizer < log_z + 0.1  # log Ẑ is a lower bound in expectation
    assert h.log_normalizer > log_z - 1.0, (h.log_normalizer, log_z)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight_decay": -0.1}, "nf.fit_vi: weight_decay must be a finite number >= 0"),
        ({"lr": 0.0}, "nf.fit_vi: lr must be"),
        ({"eval_every": 0}, "nf.fit_vi: eval_every must be an integer >= 1"),
        ({"steps": 0}, "nf.fit_vi: steps must be an integer >= 1"),
    ],
)
def test_fit_vi_rejects_bad_settings_in_one_line(kwargs: dict, message: str) -> None:
    flow = _small()
    with pytest.raises(ValueError, match=message) as err:
        nf.fit_vi(flow, nf.targets.U1, progress=False, **{"steps": 2, **kwargs})
    assert "\n" not in str(err.value)


def test_fit_vi_seed_is_an_integer() -> None:
    """A float seed is refused, not truncated by torch.manual_seed; NumPy integers are seeds."""
    with pytest.raises(TypeError, match=r"nf.fit_vi: seed must be an int or None, got 1\.5"):
        nf.fit_vi(_small(), nf.targets.U1, steps=2, progress=False, seed=1.5)
    runs = []
    for seed in (3, np.int64(3)):
        torch.manual_seed(0)
        runs.append(nf.fit_vi(_small(), nf.targets.U1, steps=3, progress=False, seed=seed))
    assert runs[0].train_loss == runs[1].train_loss


@pytest.mark.parametrize(
    ("log_density", "got"),
    [
        (lambda x: x, r"\(64, 2\)"),  # per coordinate, not per sample
        (lambda x: -x.square().sum(-1, keepdim=True), r"\(64, 1\)"),  # would broadcast to 64 x 64
        (lambda x: 0.0, "float"),
    ],
)
def test_fit_vi_checks_what_log_density_returns(log_density, got: str) -> None:
    message = (
        r"nf.fit_vi: log_density must return one value per sample, a tensor of shape \(64,\) "
        r"for samples of shape \(64, 2\); got " + got
    )
    with pytest.raises(ValueError, match=message):
        nf.fit_vi(_small(), log_density, steps=2, batch_size=64, progress=False)


@pytest.mark.parametrize(
    "log_density",
    [
        lambda x: -x.square().sum(-1).detach(),
        lambda x: torch.from_numpy(-(x.detach().numpy() ** 2).sum(-1)),
        lambda x: -x.square().sum(-1).round().long(),
    ],
)
@pytest.mark.parametrize("batch_size", [8, 1])
def test_fit_vi_refuses_a_target_without_a_gradient(log_density, batch_size: int) -> None:
    """A target cut from x's graph would train q towards maximum entropy, silently; with one
    draw per step it was taken for a flat target (one value is "the same" at every draw)."""
    with pytest.raises(ValueError, match="log_density returned a value without a gradient in x"):
        nf.fit_vi(_small(), log_density, steps=2, batch_size=batch_size, progress=False)


def test_fit_vi_with_one_draw_per_step_accepts_a_flat_target() -> None:
    """A constant log-density (uniform on a box) has no graph: accepted with one draw too."""
    inner = nf.models.RealNVP(2, transforms=1, hidden=(8,))
    box = nf.Flow(
        nf.Compose(nf.transforms.Bounded([1.0, 0.0], [2.0, 1.0]), inner.transform), inner.base
    )
    nf.fit_vi(box, lambda x: torch.zeros(x.shape[:-1]), steps=5, batch_size=1, progress=False)


def test_fit_vi_blames_the_target_only_at_the_step_it_was_not_finite() -> None:
    """A target finite everywhere with a NaN gradient (``where`` over ``sqrt``): its NaN update
    made every later draw NaN, and the error blamed the target's support at the next step; the
    loop's own error names the step and its gradient."""

    def target(x: torch.Tensor) -> torch.Tensor:
        root = torch.where(x[..., 0] > 0, torch.sqrt(x[..., 0]), torch.zeros_like(x[..., 0]))
        return -0.5 * x.square().sum(-1) + root

    flow = nf.models.IAF(2, hidden=(8,), transforms=1)
    with pytest.raises(nf.NonFiniteLossError, match=r"non-finite loss or gradient at step 1;"):
        nf.fit_vi(flow, target, steps=50, progress=False, seed=0)


def test_fit_vi_refuses_an_empty_context_and_a_seed_out_of_range() -> None:
    flow = _small(context=1)
    target = lambda x, c: -x.square().sum(-1)  # noqa: E731
    with pytest.raises(ValueError, match=r"^nf.fit_vi: context has no rows \(shape \(0, 1\)\)$"):
        nf.fit_vi(flow, target, context=torch.zeros(0, 1), steps=2, batch_size=4, progress=False)
    with pytest.raises(ValueError, match=r"^nf.fit_vi: seed must lie in"):
        nf.fit_vi(flow, target, context=torch.zeros(1), steps=2, progress=False, seed=-(2**63) - 1)


def test_fit_vi_takes_padded_sets_in_the_context() -> None:
    """NaN as a padded set's absent elements, as log_prob, sample and fit take them."""
    inner = nf.models.RealNVP(1, context=3, transforms=2, hidden=(8,)).config
    flow = nf.models.Embedded(1, flow=inner, context=4, hidden=(8,), set_features=1, padded=True)
    c = torch.randn(5, 4)
    c[:, 2:] = math.nan
    target = lambda x, c: -x.square().sum(-1)  # noqa: E731
    assert nf.fit_vi(flow, target, steps=3, context=c, progress=False).steps == 3
    c[0, :] = math.inf
    with pytest.raises(ValueError, match="nf.fit_vi: context"):
        nf.fit_vi(flow, target, steps=3, context=c, progress=False)


def test_fit_vi_counts_the_draws_of_every_context() -> None:
    """A target NaN at the final estimate over 50 contexts: every one of S × 50 draws."""

    def target(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        lp = -x.square().sum(-1)
        return lp if torch.is_grad_enabled() else torch.full_like(lp, math.nan)

    with pytest.raises(ValueError, match="log_density is NaN at 5000 of 5000 draws"):
        nf.fit_vi(
            _small(context=1), target, context=torch.zeros(50, 1), steps=1, batch_size=4,
            progress=False, seed=0, n_estimate=100,
        )  # fmt: skip


def test_fit_vi_takes_a_flat_target() -> None:
    """A constant log-density (uniform on a box the flow is bounded to) has no graph in x but
    a true gradient of 0: maximum entropy on the box, log Z = log(2 · 1)."""
    inner = nf.models.RealNVP(2, transforms=2, hidden=(8,))
    box = nf.Flow(
        nf.Compose(nf.transforms.Bounded([0.0, 0.0], [2.0, 1.0]), inner.transform), inner.base
    )
    h = nf.fit_vi(
        box, lambda x: torch.zeros(x.shape[:-1]), steps=30, batch_size=64, progress=False, seed=0
    )
    assert h.log_normalizer == pytest.approx(math.log(2.0), abs=0.05), h.log_normalizer


def test_fit_vi_names_a_target_that_is_minus_inf_at_the_draws() -> None:
    """-inf outside the target's support at training draws: the error counts the draws and
    names the remedy (a Bounded layer), and Bounded in front of the flow then trains."""

    def positive(x: torch.Tensor) -> torch.Tensor:
        inside = (x > 0).all(-1)
        return torch.where(inside, -x.square().sum(-1), torch.full_like(x[..., 0], -math.inf))

    with pytest.raises(
        nf.NonFiniteLossError,
        match=r"not finite \(-inf, NaN or \+inf\) at \d+ of 32 draws of step 1.*Bounded",
    ):
        nf.fit_vi(_small(), positive, steps=3, batch_size=32, progress=False, seed=0)
    inner = _small()
    bounded = nf.Flow(
        nf.Compose(nf.transforms.Bounded([0, 0], [math.inf, math.inf]), inner.transform),
        inner.base,
    )
    h = nf.fit_vi(bounded, positive, steps=5, batch_size=32, progress=False, seed=0)
    assert math.isfinite(h.log_normalizer)


def test_fit_vi_names_the_calling_convention_of_a_conditional_target() -> None:
    with pytest.raises(TypeError, match=r"called as log_density\(x, context\) when a context"):
        nf.fit_vi(_small(context=1), lambda x: -x.square().sum(-1), steps=2,
                  context=torch.zeros(1), progress=False)  # fmt: skip


def test_spline_flows_warn_when_data_or_draws_reach_their_interval() -> None:
    """The spline is the identity beyond its bound: unstandardized training rows there, or a
    variational q whose draws reach it (a target centred at 4 with sd 1), are flagged."""
    theta = 50 + torch.randn(200, 1)
    with pytest.warns(
        UserWarning,
        match=r"nf.fit: 100.0% of the training rows lie at or beyond ±4.5 \(90% of the",
    ):
        nf.fit(nf.models.NSF(1, transforms=1, hidden=(8,)), theta, steps=2, progress=False)
    target = nf.targets.gaussian(torch.tensor([4.0, 0.0]), torch.tensor([1.0, 1.0]))
    torch.manual_seed(0)
    flow = nf.models.NSF(2, hidden=(16, 16), transforms=2)
    with pytest.warns(UserWarning, match=r"nf.fit_vi: .*% of q's draws lie at or beyond ±4.5"):
        nf.fit_vi(flow, target, steps=150, progress=False, seed=0)
    with pytest.warns(
        UserWarning, match=r"importance_sampling: .*% of q's draws lie at or beyond"
    ):
        nf.metrics.importance_sampling(flow, target, 4096, seed=1)
    import warnings

    with warnings.catch_warnings():  # standardized rows, a wide bound: nothing to say
        warnings.simplefilter("error")
        wide = nf.models.NSF(2, hidden=(16, 16), transforms=2, bound=20.0)
        nf.fit_vi(wide, target, steps=5, progress=False, seed=0)
        nf.fit(nf.models.standardize(nf.models.NSF(1, transforms=1, hidden=(8,)), theta),
               theta, steps=2, progress=False)  # fmt: skip


def test_explicit_val_is_what_early_stopping_scores() -> None:
    """With ``val=``, every training row is trained on and the best weights score ``best_val``
    on exactly those rows (unconditional, and a (data, context) pair)."""
    g = torch.Generator().manual_seed(0)
    c = torch.randn(300, 1, generator=g)
    x = torch.cat([c, c + 0.2 * torch.randn(300, 1, generator=g)], 1)
    for flow, data, context, val in (
        (_small(), x[:200], None, x[200:]),
        (_small(2, 1), x[:200], c[:200], (x[200:], c[200:])),
    ):
        rows: list[int] = []
        flow.register_forward_pre_hook(lambda m, args, rows=rows: rows.append(args[0].shape[0]))
        h = nf.fit(flow, data, context=context, val=val, steps=30, eval_every=10, batch_size=200,
                   lr=5e-3, progress=False, seed=0)  # fmt: skip
        assert rows[0] == 200, "no rows were split off for validation"
        vx, vc = val if isinstance(val, tuple) else (val, None)
        with torch.no_grad():
            nll = -flow.log_prob(vx, vc).double().mean().item()
        assert h.best_val == pytest.approx(nll, rel=1e-6) and h.best_val == min(h.val_loss)


def test_without_validation_the_last_weights_are_kept() -> None:
    h = nf.fit(_small(), nf.datasets.two_moons(200, seed=0), val_fraction=0.0, steps=20,
               eval_every=5, progress=False, seed=0)  # fmt: skip
    assert h.val_loss == [] and h.best_val is None
    assert h.best_step == h.steps == 20 and not h.stopped_early


def _frozen() -> nf.Flow:
    flow = _small()
    flow.requires_grad_(False)
    return flow


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda x: nf.fit(_small(), x, seed="1"), TypeError, "seed must be an int or None, got '1'"),
        (lambda x: nf.fit(_small(), x, seed=1.0), TypeError, "seed must be an int or None, got 1.0"),
        (lambda x: nf.fit(_small(), x, schedule="linear"), ValueError,
         "schedule must be 'cosine' or 'constant', got 'linear'"),
        (lambda x: nf.fit(_frozen(), x), ValueError, "the flow has no trainable parameters"),
        (lambda x: nf.fit(_small(), x, val_fraction=1.0), ValueError, "val_fraction must be < 1"),
        (lambda x: nf.fit(_small(2, 1), x, context=x[:, :1], val=x), TypeError,
         "for a conditional fit, val must be a pair"),
        (lambda x: nf.fit(torch.nn.Linear(2, 2), x), TypeError, "flow must be an nf.Flow"),
        (lambda x: nf.fit(_small(), x[:0]), ValueError, "nf.fit: data has no rows"),
        (lambda x: nf.fit(_small(), x.reshape(10, 10, 2)), ValueError,
         r"nf.fit: data must be rows of shape \(n, 2\), got shape \(10, 10, 2\)"),
        (lambda x: nf.fit(_small(), x, val=x[:0]), ValueError, "nf.fit: val has no rows"),
        (lambda x: nf.fit_vi(torch.nn.Linear(2, 2), nf.targets.U1, steps=2), TypeError,
         "nf.fit_vi: flow must be an nf.Flow"),
        (lambda x: nf.fit_vi(_small(), "U1", steps=2), TypeError, "log_density must be callable, got str"),
        (lambda x: nf.fit_vi(_small(2, 1), nf.targets.U1, context=[1.0], steps=2), TypeError,
         "nf.fit_vi: context must be a Tensor, got list"),
        (lambda x: nf.fit_vi(_small(2, 1), nf.targets.U1, context=torch.ones(3, 2), steps=2),
         ValueError, r"nf.fit_vi: context must have last dim 1, got shape \(3, 2\)"),
        (lambda x: nf.fit_vi(_small(2, 1), nf.targets.U1, steps=2), ValueError,
         "nf.fit_vi: this flow is conditional and needs a context of last dim 1"),
    ],
)  # fmt: skip
def test_fit_refusals_are_one_line(call, error: type, message: str) -> None:
    with pytest.raises(error, match=message) as info:
        call(nf.datasets.two_moons(100, seed=0))
    assert "\n" not in str(info.value)


def test_numpy_integer_settings_train_like_python_ints() -> None:
    x = nf.datasets.two_moons(200, seed=0)
    runs = []
    for kind in (int, np.int64):
        torch.manual_seed(0)
        flow = _small()
        history = nf.fit(
            flow, x, steps=kind(12), batch_size=kind(32), eval_every=kind(4), seed=kind(3),
            patience=kind(5), progress=False,
        )  # fmt: skip
        runs.append((history.train_loss, torch.cat([p.flatten() for p in flow.parameters()])))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])


def test_history_repr_is_one_short_line() -> None:
    """A notebook cell ending in nf.fit(...) shows the run's outcome, not every step's loss."""
    h = nf.History(train_loss=[1.0] * 100_000, steps=100_000, best_val=0.5, best_step=90_000)
    h.stopped_early, h.wall_time = True, 12.34
    text = repr(h)
    assert "\n" not in text and len(text) < 200
    assert text == (
        "History(steps=100000, last train_loss=1.0000, best_val=0.5000 at step 90000, "
        "stopped early, wall_time=12.3s)"
    )
    assert nf.History.from_dict(h.to_dict()) == h  # the lists are all still there


def test_default_learning_rate_is_the_factorys() -> None:
    """``lr=None`` (the default) takes the factory's rate: BNAF's 5e-3, through the
    standardization wrapper too; other flows 1e-3; an explicit lr wins."""
    x = torch.randn(200, 2)
    bnaf = nf.models.standardize(nf.models.BNAF(2, transforms=1, hidden=(4,)), x)
    maf = nf.models.MAF(2, transforms=1, hidden=(8,))
    for flow, expected in ((bnaf, 5e-3), (maf, 1e-3)):
        assert nf.models.learning_rate(flow) == expected
        h = nf.fit(flow, x, steps=4, eval_every=2, schedule="constant", progress=False, seed=0)
        assert h.lr == [expected] * len(h.lr) and h.lr
    h = nf.fit(maf, x, steps=2, eval_every=1, lr=3e-4, schedule="constant", progress=False)
    assert h.lr[0] == 3e-4
    assert nf.models.learning_rate(nf.Flow(nf.transforms.Identity(), maf.base)) == 1e-3


def test_fit_vi_refuses_a_mixture_base_with_trained_weights() -> None:
    """The component choice carries no gradient: trained weights would get biased gradients."""

    def log_density(x: torch.Tensor) -> torch.Tensor:
        return -(x**2).sum(-1)

    for flow, context in ((nf.models.GMM(2), None), (nf.models.GMM(2, context=1), torch.ones(1))):
        with pytest.raises(ValueError, match="without a gradient.*fit a flow factory"):
            nf.fit_vi(flow, log_density, steps=1, context=context, progress=False)
    frozen = nf.distributions.GaussianMixture(2, trainable=False)
    flow = nf.models.MAF(2, transforms=1, hidden=(8,), base=frozen)
    assert nf.fit_vi(flow, log_density, steps=2, progress=False).ess > 0


def _gaussian_fit(x: torch.Tensor, **kwargs) -> tuple[float, float]:
    """Mean and standard deviation of the normal fitted by ``nf.fit`` to 1-D rows ``x``: a flow
    ``z = x · s + t`` (trainable) to N(0, 1), whose maximum-likelihood fit is ``s = 1/σ``,
    ``t = -μ/σ``; full batches, a constant rate, no validation."""
    flow = nf.Flow(
        nf.transforms.Affine(torch.zeros(1), torch.ones(1), trainable=True),
        nf.distributions.StandardNormal(1),
    ).double()
    nf.fit(flow, x, steps=600, batch_size=len(x), lr=0.05, schedule="constant", clip=None,
           val_fraction=0.0, progress=False, seed=0, **kwargs)  # fmt: skip
    with torch.no_grad():
        z0, _ = flow.transform(torch.zeros(1, 1, dtype=torch.float64))
        z1, _ = flow.transform(torch.ones(1, 1, dtype=torch.float64))
    s = float(z1 - z0)
    return -float(z0) / s, 1 / abs(s)


def test_weighted_fit_is_the_weighted_maximum_likelihood() -> None:
    """Weights ``w``: the fit maximizes ``Σ w log p``: for a normal, the weighted mean and
    standard deviation; an integer weight ``k`` acts as ``k`` copies of the row, and a zero
    weight drops it."""
    x = torch.tensor([[-1.0], [0.0], [1.0], [4.0]], dtype=torch.float64)
    w = torch.tensor([3.0, 1.0, 2.0, 0.0])
    mu, sd = _gaussian_fit(x, weights=w)
    copies = torch.tensor([[-1.0], [-1.0], [-1.0], [0.0], [1.0], [1.0]], dtype=torch.float64)
    assert (mu, sd) == pytest.approx(
        (copies.mean().item(), copies.std(correction=0).item()), abs=1e-6
    )
    assert (mu, sd) == pytest.approx(_gaussian_fit(copies), abs=1e-6)
    assert _gaussian_fit(x, weights=7 * w) == pytest.approx((mu, sd), abs=1e-6)  # scale-free


def test_weights_of_one_train_exactly_as_no_weights() -> None:
    x = nf.datasets.two_moons(300, seed=0)
    runs = []
    for weights in (
        None,
        torch.ones(300),
        np.ones(300),
        pd.Series(np.ones(300)),
        np.full(300, 1e-50),
        np.full(300, 1e39),
    ):  # fmt: skip  (outside float32)
        torch.manual_seed(0)
        flow = _small()
        h = nf.fit(flow, x, weights=weights, steps=20, eval_every=5, progress=False, seed=1)
        runs.append((h.train_loss, h.val_loss, _state(flow)))
    for losses, val, state in runs[1:]:
        assert losses == runs[0][0] and val == runs[0][1] and _equal(state, runs[0][2])


def test_weighted_validation_scores_the_weighted_nll() -> None:
    """``val_weights``: early stopping compares ``-Σ w log p / Σ w`` of the val rows; held-out
    rows of a split keep their weights (the split is the unweighted one)."""
    x = nf.datasets.two_moons(300, seed=0)
    vx, vw = x[200:], torch.rand(100, generator=torch.Generator().manual_seed(0))
    flow = _small()
    h = nf.fit(flow, x[:200], val=vx, val_weights=vw, steps=30, eval_every=10, progress=False,
               seed=0)  # fmt: skip
    with torch.no_grad():
        lp = flow.log_prob(vx).double()
    assert h.best_val == pytest.approx(-(lp * vw).sum().item() / vw.sum().item(), rel=1e-6)
    assert h.best_val != pytest.approx(-lp.mean().item(), rel=1e-4)
    # a split: held-out rows keep their weights (outliers weighted 0 do not count)
    w = torch.ones(300)
    w[::2] = 0.0
    far = x.clone()
    far[::2] += 50.0
    weighted = nf.fit(_small(), far, weights=w, steps=20, eval_every=10, progress=False, seed=3)
    plain = nf.fit(_small(), far, steps=20, eval_every=10, progress=False, seed=3)
    assert max(weighted.val_loss) < 5 < 50 < min(plain.val_loss)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"weights": torch.ones(5)}, ValueError, r"weights must have shape \(100,\), one per row, got \(5,\)"),
        ({"weights": np.ones((100, 1))}, ValueError, r"weights must have shape \(100,\)"),
        ({"weights": -torch.ones(100)}, ValueError, "weights must be >= 0, got a minimum of -1"),
        ({"weights": torch.zeros(100)}, ValueError, "weights are all zero"),
        ({"weights": torch.full((100,), math.nan)}, ValueError, "weights contains NaN or inf"),
        ({"weights": "heavy"}, TypeError, "weights must be numbers, one per row, got str"),
        ({"val_weights": torch.ones(3)}, ValueError, "val_weights weights the rows of val=; give val= too"),
        ({"val": torch.zeros(4, 2), "val_weights": torch.ones(3)}, ValueError,
         r"val_weights must have shape \(4,\)"),
        ({"weights": torch.cat([torch.ones(90), torch.zeros(10)]), "val_fraction": 0.0,
          "val": torch.zeros(4, 2), "val_weights": torch.zeros(4)}, ValueError, "val_weights are all zero"),
    ],
)  # fmt: skip
def test_bad_weights_are_refused_in_one_line(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message) as info:
        nf.fit(_small(), nf.datasets.two_moons(100, seed=0), steps=2, progress=False, **kwargs)
    assert "\n" not in str(info.value)


def test_resume_refuses_other_weights(tmp_path) -> None:
    x = nf.datasets.two_moons(200, seed=0)
    path = tmp_path / "ckpt.pt"
    nf.fit(_small(), x, weights=torch.ones(200), steps=10, eval_every=5, checkpoint=path,
           progress=False, seed=0)  # fmt: skip
    with pytest.raises(ValueError, match="made on other training data"):
        nf.fit(_small(), x, weights=torch.arange(200.0) + 1, steps=10, eval_every=5,
               checkpoint=path, resume=True, progress=False, seed=0)  # fmt: skip


def test_a_damaged_checkpoint_is_one_line_and_leaves_the_flow_alone(tmp_path) -> None:
    """Missing or malformed fields (steps, the batcher, the RNG, the optimizer): a one-line
    error naming the checkpoint, raised before the flow's weights are touched."""
    x = nf.datasets.two_moons(200, seed=0)
    path = tmp_path / "ckpt.pt"
    kwargs = dict(steps=20, eval_every=10, progress=False, seed=0)
    nf.fit(_small(), x, checkpoint=path, **kwargs)
    good = torch.load(path, weights_only=True)
    for change in ({"steps": None}, {"seed": "x"}, {"batcher": {}}, {"rng": "x"},
                   {"optimizer": {"state": {}, "param_groups": []}}):  # fmt: skip
        torch.save({**good, **change}, path)
        flow = _small()
        before = _state(flow)
        with pytest.raises(ValueError, match=r"ckpt.pt' (is damaged|was made with)") as info:
            nf.fit(flow, x, checkpoint=path, resume=True, **kwargs)
        assert "\n" not in str(info.value) and _equal(_state(flow), before), change


def test_batch_norm_flows_need_batches_of_two_rows() -> None:
    with pytest.raises(ValueError, match="BatchNorm needs batches of at least 2 rows"):
        nf.fit(nf.models.MAF(3, batch_norm=True, transforms=2, hidden=(8,)), torch.randn(10, 3),
               batch_size=1, steps=2, progress=False)  # fmt: skip


def test_zero_weight_rows_do_not_trigger_the_spline_warning() -> None:
    import warnings

    x = torch.randn(1000, 2)
    x[:60] *= 10
    w = torch.ones(1000)
    w[:60] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nf.fit(nf.models.NSF(2, transforms=1, hidden=(8,)), x, weights=w, steps=1, progress=False)


def _rows(n: int = 300, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g) * torch.tensor([1.0, 0.5]) + 0.3


def test_numpy_settings_make_a_checkpoint_that_resumes(tmp_path) -> None:
    """A NumPy ``lr``/``weight_decay`` (from a grid) went into the checkpoint as NumPy scalars,
    which a weights-only load refuses: the file was "not an nfkit checkpoint"."""
    path, x = tmp_path / "ck.pt", _rows()

    def stop(history: nf.History) -> None:
        if history.steps >= 10:
            raise KeyboardInterrupt

    settings = dict(steps=20, eval_every=5, lr=np.float64(2e-3), weight_decay=np.float64(0.01))
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        nf.fit(_small(), x, checkpoint=path, callback=stop, progress=False, seed=0, **settings)
    torch.manual_seed(0)
    history = nf.fit(_small(), x, checkpoint=path, resume=True, progress=False, seed=0, **settings)
    assert history.steps == 20


def test_an_infinite_validation_loss_raises_as_nan_does() -> None:
    """A held-out row of density 0 made every validation loss +inf: the first evaluation's
    weights were kept as "best" and the run stopped early, silently."""
    xv = torch.cat([_rows(30, seed=5), torch.tensor([[1e30, 0.0]])])
    with pytest.raises(nf.NonFiniteLossError, match=r"validation loss is \+inf at step 10 .*-inf"):
        nf.fit(_small(), _rows(), val=xv, steps=50, eval_every=10, patience=3, progress=False)


def test_a_weight_of_zero_takes_no_part_even_at_a_row_of_density_zero() -> None:
    """``0 · -inf`` was NaN: a training row of weight 0 raised NonFiniteLossError, a held-out
    one "the flow gives NaN". Training rows of weight 0 are left out; held-out ones masked."""
    x = torch.cat([_rows(), torch.tensor([[1e30, 0.0]])])
    weights = torch.ones(len(x))
    weights[-1] = 0
    torch.manual_seed(0)
    weighted = _small()
    nf.fit(weighted, x, weights=weights, steps=20, val_fraction=0, progress=False, seed=0)
    torch.manual_seed(0)
    plain = _small()
    nf.fit(plain, x[:-1], steps=20, val_fraction=0, progress=False, seed=0)
    assert _equal(_state(weighted), _state(plain))  # the same as without the row
    xv = torch.cat([_rows(30, seed=5), torch.tensor([[1e30, 0.0]])])
    history = nf.fit(
        _small(), _rows(), val=xv, val_weights=[1.0] * 30 + [0.0], steps=20, eval_every=10,
        progress=False,
    )  # fmt: skip
    assert all(math.isfinite(v) for v in history.val_loss)


def test_fit_vi_callback_sees_the_history_up_to_its_check() -> None:
    """It saw the history of the last 25-step sync (25 steps at the check of step 30)."""
    seen = []
    flow = nf.models.MAF(2, transforms=1, hidden=(8,))
    target = lambda x: -0.5 * (x * x).sum(-1)  # noqa: E731
    nf.fit_vi(flow, target, steps=60, eval_every=30, n_estimate=64, progress=False,
              callback=lambda h: seen.append((h.steps, len(h.train_loss))))  # fmt: skip
    assert seen == [(30, 30), (60, 60)]


def test_resuming_with_other_held_out_rows_is_refused(tmp_path) -> None:
    """Early stopping compares the held-out rows' loss: resuming on another set mixed two
    sets' losses and kept a "best" step scored on the first."""
    path, x = tmp_path / "ck.pt", _rows()

    def stop(history: nf.History) -> None:
        if history.steps >= 10:
            raise KeyboardInterrupt

    run = dict(steps=20, eval_every=5, checkpoint=path, progress=False, seed=0)
    with pytest.raises(KeyboardInterrupt):
        nf.fit(_small(), x, val=_rows(40, seed=1), callback=stop, **run)
    with pytest.raises(ValueError, match="was made with other held-out rows"):
        nf.fit(_small(), x, val=_rows(40, seed=2), resume=True, **run)
    assert nf.fit(_small(), x, val=_rows(40, seed=1), resume=True, **run).steps == 20
    # none held out, then some (a run without validation resumed with it: val_step and
    # val_loss no longer lined up); and the reverse
    other = tmp_path / "none.pt"
    with pytest.raises(KeyboardInterrupt):
        nf.fit(_small(), x, val_fraction=0, callback=stop, **{**run, "checkpoint": other})
    with pytest.raises(ValueError, match="was made with other held-out rows"):
        nf.fit(_small(), x, val=_rows(40, seed=1), resume=True, **{**run, "checkpoint": other})
    history = nf.fit(_small(), x, val_fraction=0, resume=True, **{**run, "checkpoint": other})
    assert history.steps == 20 and not history.val_loss
    # another split: named as such (it was "made on other training data")
    split = tmp_path / "split.pt"
    with pytest.raises(KeyboardInterrupt):
        nf.fit(_small(), x, val_fraction=0.2, callback=stop, **{**run, "checkpoint": split})
    with pytest.raises(ValueError, match=r"was made with .*val_fraction=0.2; got .*val_fraction=0.3"):
        nf.fit(_small(), x, val_fraction=0.3, resume=True, **{**run, "checkpoint": split})


def test_fit_checks_callback_and_checkpoint_and_reports_a_full_run_as_not_stopped_early() -> None:
    """``callback=1`` failed with Python's error at the first evaluation; ``checkpoint=123``
    likewise. A run whose patience ran out at its last step did not stop early."""
    x = _rows()
    with pytest.raises(TypeError, match="nf.fit: callback must be callable .or None., got 1"):
        nf.fit(_small(), x, steps=5, callback=1, progress=False)
    with pytest.raises(TypeError, match="nf.fit: checkpoint must be a path"):
        nf.fit(_small(), x, steps=5, checkpoint=123, progress=False)
    with pytest.raises(TypeError, match="nf.fit_vi: callback must be callable"):
        nf.fit_vi(_small(), lambda x: -(x * x).sum(-1), steps=2, callback="no", progress=False)
    history = nf.fit(_small(), x, steps=9, eval_every=3, patience=2, lr=0.5, progress=False)
    assert history.steps == 9 and not history.stopped_early


@pytest.mark.parametrize("eval_every", [1, 7])
def test_the_weights_restored_after_a_non_finite_loss_give_finite_losses(eval_every: int) -> None:
    """A check copied the weights after the last checked step's update, which no loss had
    measured: when the next step failed, those very weights were restored (2 of 64 training
    rows at density 0)."""
    x = torch.linspace(-0.5, 0.5, 64).unsqueeze(1)
    flow = nf.Flow(
        nf.transforms.Affine(0.0, 1.0, trainable=True), nf.distributions.Uniform(1, -1.0, 1.0)
    )
    with pytest.raises(nf.NonFiniteLossError, match="at step 15; weights restored to step"):
        nf.fit(flow, x, val_fraction=0, steps=200, lr=0.05, eval_every=eval_every,
               progress=False, seed=0)  # fmt: skip
    assert torch.isfinite(flow.log_prob(x)).all()


def test_fit_vi_takes_a_context_with_history_and_leaves_it_alone() -> None:
    """A context computed by a network failed at step 2 ("backward through the graph a second
    time"); a leaf context that requires grad collected gradients from every step."""
    encoder = torch.nn.Linear(3, 1)
    computed = encoder(torch.randn(4, 3))
    leaf = torch.zeros(2, 1, requires_grad=True)
    for context in (computed, leaf):
        flow = nf.models.MAF(2, context=1, transforms=1, hidden=(4,))
        nf.fit_vi(flow, lambda x, c: -(x - c).square().sum(-1), context=context, steps=3,
                  progress=False, seed=0)  # fmt: skip
    assert leaf.grad is None and encoder.weight.grad is None


def test_a_huge_step_cap_stopped_by_patience_allocates_per_check_not_per_step() -> None:
    """The loop kept one loss and one gradient norm per step, allocated up front: a cap of
    10**9 steps, meant to be stopped by patience, asked for 16 GB before the first step."""
    from nfkit.train import _Loop

    flow = nf.models.MAF(2, transforms=1, hidden=(8,))
    loop = _Loop("nf.fit", flow, steps=10**9, lr=1e-3, weight_decay=0.0, clip=None,
                 schedule="constant", sync_every=25, progress=False, device=torch.device("cpu"))  # fmt: skip
    assert loop.losses.numel() == loop.norms.numel() == 25
    history = nf.fit(flow, _rows(), steps=10**9, patience=1, eval_every=10, progress=False,
                     seed=0, schedule="constant")  # fmt: skip
    assert history.stopped_early and len(history.train_loss) == history.steps
