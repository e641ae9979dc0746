r"""scikit-learn estimator: :class:`FlowDensity`, a normalizing flow as a density estimator."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from nfkit._checks import check_device, check_hidden, check_positive_int, shown
from nfkit.core import Flow, log_prob_or_minus_inf
from nfkit.tables import float32_blurred_columns

__all__ = ["FlowDensity", "make_flow", "model_names"]


def model_names() -> dict[str, str]:
    """Case-insensitive names of the registered factories: ``{"nsf": "NSF", ...}`` (not the
    wrappers of another flow's config, ``Standardized`` and ``Embedded``)."""
    from nfkit.models import FACTORIES

    skipped = ("Standardized", "Embedded", *IMAGE_MODELS)
    return {name.lower(): name for name in FACTORIES if name not in skipped}


IMAGE_MODELS = ("Glow", "MultiscaleRealNVP")
"""Factories of image flows (events ``(C, H, W)``): not models of a table's rows."""


# the parameter that ``transforms`` sets, where it is not ``transforms`` or ``layers``
_LAYER_COUNT: dict[str, tuple[str, ...]] = {"ResidualFlow": ("blocks",), "FFJORD": (), "RBIG": ()}


def make_flow(
    model: str,
    features: int,
    *,
    context: int = 0,
    transforms: int | None = None,
    hidden: Sequence[int] | None = None,
    options: dict[str, Any] | None = None,
    where: str = "nfkit",
) -> Flow:
    """Build ``nf.models.<model>(features, context=..., ...)`` by case-insensitive name.

    ``transforms`` sets the number of layers: ``transforms``, ``layers`` for the planar family,
    ``blocks`` for ResidualFlow; FFJORD (one ODE block by default: flow matching needs one),
    RBIG (its ``layers`` is a cap, the fit picks the count) and GMM have no such count and keep
    their own settings (give them as ``options``). ``hidden`` goes only to factories that take
    it; ``options`` as extra keyword arguments.
    """
    from nfkit.models import FACTORIES

    names = model_names()
    key = str(model).lower()
    image = [name for name in IMAGE_MODELS if name.lower() == key]
    if image:
        raise ValueError(
            f"{where}: {image[0]} is an image flow (events of shape (C, H, W)), not a model of "
            f"a table's rows; choose from {', '.join(sorted(names))}"
        )
    if key not in names:
        raise ValueError(
            f"{where}: unknown model {shown(model)}; choose from {', '.join(sorted(names))}"
        )
    factory = FACTORIES[names[key]]
    accepted = inspect.signature(factory).parameters
    kwargs: dict[str, Any] = {}
    if "context" in accepted:
        kwargs["context"] = context
    elif context:
        raise ValueError(f"{where}: model {names[key]!r} cannot be conditional")
    if transforms is not None:
        count = _LAYER_COUNT.get(names[key], ("transforms", "layers"))
        for name in count:
            if name in accepted:
                kwargs[name] = check_positive_int(where, "transforms", transforms)
                break
    if hidden is not None and "hidden" in accepted:
        kwargs["hidden"] = check_hidden(where, hidden)
    clash = sorted(set(options or {}) & set(kwargs))
    if clash:  # the options would silently override what transforms/hidden/context set
        raise ValueError(
            f"{where}: {', '.join(map(repr, clash))} is set by the transforms, hidden or "
            "context setting; give it there, not among the model options"
        )
    kwargs.update(options or {})
    try:
        return factory(features, **kwargs)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None


# scikit-learn's checks that pass sample_weight to fit, which rbig refuses
_RBIG_WEIGHT_CHECKS = (
    "check_sample_weights_pandas_series",
    "check_sample_weights_not_an_array",
    "check_sample_weights_list",
    "check_sample_weights_shape",
    "check_sample_weights_not_overwritten",
    "check_sample_weight_equivalence_on_dense_data",
    "check_all_zero_sample_weights_error",
)

# what fit sets: none of it may outlive a failed fit
_FITTED = (
    "flow_",
    "history_",
    "discrete_indices_",
    "given_indices_",
    "data_indices_",
    "device_",
    "n_features_in_",
    "feature_names_in_",
)


class FlowDensity(DensityMixin, BaseEstimator):
    r"""A normalizing flow as a scikit-learn density estimator (``fit``, ``score_samples``, ...).

    ``fit`` builds ``nf.models.<model>`` (case-insensitive: ``"nsf"``, ``"maf"``, ``"realnvp"``,
    ...), wraps it in a standardization fitted on the training data
    (:func:`nfkit.models.standardize`, unless ``standardize=False``) and trains it with
    :func:`nfkit.fit`. ``score_samples`` returns ``log p(x)`` per row in the input's units (the
    standardization's Jacobian included), in float64: the trained flow is kept in float64;
    ``score`` is their (weighted) mean per row, as in ``GaussianMixture``.

    Conditional densities: ``given`` names the context columns (ints, or names when fitting on a
    DataFrame); the estimator then models ``p(other columns | given columns)`` and
    ``score_samples`` returns ``log p(x | c)``. The rows passed everywhere are full rows (both).

    Args:
        model: Factory name in ``nf.models``.
        given: Context columns (indices, or names with DataFrames), or None.
        transforms: Number of layers (``layers`` for the planar family, ``blocks`` for
            ResidualFlow; not used by FFJORD, RBIG and GMM, see :func:`make_flow`).
        hidden: Hidden widths of the conditioners, a tuple of positive ints (``(64,)`` for one
            layer), or None for the factory's default.
        model_options: Extra keyword arguments for the factory (e.g. ``{"bins": 8}``).
        steps, epochs: Training length (see :func:`nfkit.fit`; default 1000 steps).
        batch_size, lr, weight_decay, val_fraction, patience: As in :func:`nfkit.fit`.
        standardize: Standardize the modelled columns (and the context) inside the model.
        bounds: Supports of the modelled columns, ``(low, high)`` pairs (None: an open end),
            one for every column, one per modelled column, or a dict ``{column: (low, high)}``
            (names with DataFrames, or indices; the others open): the density is zero outside
            them and samples stay inside (see :func:`nfkit.models.standardize`; needs
            ``standardize``). ``(0, None)`` for positive quantities, ``(0, 1)`` for fractions;
            the ends are open: a column with an exact 0 is refused by ``(0, None)``.
        discrete: Integer-valued modelled columns (counts, ratings): indices, names (with
            DataFrames), or ``"auto"`` for every modelled column of whole numbers. They are
            modelled by uniform dequantization (:class:`~nfkit.models.DequantizedFlow`):
            ``score_samples`` gives the log-probability of their integers (a density over the
            other columns) and ``sample`` draws integers there. Needs ``standardize``.
        angles: Columns that are angles (indices, or names with DataFrames), or a dict of
            them to their ranges ``(low, high)``, one period in their units (``(0, 360)`` for
            compass degrees; default ``[-π, π]``). Modelled angles need ``model="ncsf"``: they
            are modelled on the circle, the other columns as usual
            (``nf.models.NCSF(..., angles=...)``). ``model="ncsf"`` without ``angles`` treats
            every modelled column as an angle in ``[-π, π]`` (NCSF's default) and refuses
            values outside. A given angle is read as a ``(cos, sin)`` pair by any model
            (``context_angles`` of :func:`nfkit.models.standardize`).
        summary: With many given columns: condition on this many features of a learned
            summary network of them, an MLP of ``hidden`` widths trained with the model
            (:func:`nfkit.models.Embedded`). None: the given columns as they are.
        summary_set: ``m``: the given columns, in order, are a set of exchangeable elements of
            ``m`` columns each, and the summary is a DeepSet blind to their order
            (``Embedded(set_features=m)``).
        summary_padded: With ``summary_set``: sets of different sizes; an absent element is
            ``m`` NaNs anywhere among the given columns (``Embedded(padded=True)``). NaN in a
            modelled column stays an error.
        objective: ``"likelihood"`` or ``"flow_matching"`` (``model="ffjord"``: a continuous
            flow trained by flow matching; see :func:`nfkit.fit`).
        device: Torch device for training and scoring.
        random_state: Seed (int), ``RandomState`` or None; a fixed seed makes ``fit``
            deterministic without touching torch's global RNG.
        progress: Show a progress bar during ``fit``.
        outside_support: What ``score_samples`` (and ``score``) do with a row outside the
            model's support (below a bound, a non-integer value in a discrete column):
            ``"raise"`` a one-line error naming the column (default), or score it ``-inf``
            (density 0; :func:`nfkit.log_prob_or_minus_inf`), as an anomaly detector wants.

    Attributes:
        flow_: The fitted :class:`~nfkit.Flow` (float64, eval mode).
        history_: The :class:`~nfkit.train.History` of the fit.
        given_indices_, data_indices_: Which input columns are context and which are modelled.
        discrete_indices_: The input columns modelled as discrete (empty: none).
        n_features_in_, feature_names_in_: As usual in scikit-learn.

    scikit-learn conformance: passes ``sklearn.utils.estimator_checks.parametrize_with_checks``
    (see ``tests/test_estimator.py``) except the checks listed in
    :meth:`_expected_failed_checks`, with the reason for each.

    Example:
        >>> import nfkit as nf
        >>> x = nf.datasets.two_moons(500, seed=0).numpy()
        >>> est = nf.FlowDensity("maf", transforms=2, hidden=(16,), steps=50, random_state=0)
        >>> est.fit(x).score_samples(x[:3]).shape
        (3,)
    """

    outside_support = "raise"  # (estimators pickled before the setting existed)

    def __init__(
        self,
        model: str = "nsf",
        *,
        given: Sequence[int | str] | None = None,
        transforms: int = 4,
        hidden: Sequence[int] = (64, 64),
        model_options: dict[str, Any] | None = None,
        steps: int | None = None,
        epochs: int | None = None,
        batch_size: int = 256,
        lr: float | None = None,
        weight_decay: float = 0.0,
        val_fraction: float = 0.1,
        patience: int = 10,
        standardize: bool = True,
        bounds: Any = None,
        discrete: Any = None,
        angles: Any = None,
        summary: int | None = None,
        summary_set: int | None = None,
        summary_padded: bool = False,
        objective: str = "likelihood",
        device: str | None = None,
        random_state: int | np.random.RandomState | None = None,
        progress: bool = False,
        outside_support: str = "raise",
    ) -> None:
        self.model = model
        self.given = given
        self.transforms = transforms
        self.hidden = hidden
        self.model_options = model_options
        self.steps = steps
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.val_fraction = val_fraction
        self.patience = patience
        self.standardize = standardize
        self.bounds = bounds
        self.discrete = discrete
        self.angles = angles
        self.summary = summary
        self.summary_set = summary_set
        self.summary_padded = summary_padded
        self.objective = objective
        self.device = device
        self.random_state = random_state
        self.progress = progress
        self.outside_support = outside_support

    # ---------------------------------------------------------------- helpers

    def _columns(self, what: str, items: Any, n_features: int) -> list[int]:
        """Input column indices of ``items`` (ints, or names with a DataFrame), for ``what``."""
        items = [items] if isinstance(items, (str, int, np.integer)) else list(items)
        names = [str(n) for n in getattr(self, "feature_names_in_", [])]
        out = []
        for g in items:
            if isinstance(g, str):
                if g not in names:
                    raise ValueError(
                        f"FlowDensity.fit: {what} column {g!r} not found; "
                        + ("fit on a DataFrame to use names" if not names else f"columns: {names}")
                    )
                out.append(names.index(g))
            elif isinstance(g, (int, np.integer)) and not isinstance(g, bool):
                if not -n_features <= int(g) < n_features:
                    raise ValueError(
                        f"FlowDensity.fit: {what} index {g} out of range for {n_features} columns"
                    )
                out.append(int(g) % n_features)
            else:
                raise TypeError(
                    f"FlowDensity.fit: {what} entries must be int or str, got {shown(g)}"
                )
        if len(set(out)) != len(out):
            raise ValueError(f"FlowDensity.fit: {what} lists a column twice")
        return out

    def _given_indices(self, n_features: int) -> list[int]:
        if self.given is None:
            return []
        out = self._columns("given", self.given, n_features)
        if len(out) >= n_features:
            raise ValueError("FlowDensity.fit: given must leave at least one column to model")
        return out

    def _discrete_columns(self) -> list[int] | str | None:
        """``discrete`` as positions among the modelled columns (or ``"auto"``, or None)."""
        if self.discrete is None or (isinstance(self.discrete, str) and self.discrete == "auto"):
            return self.discrete
        return self._modelled("discrete", self.discrete)

    def _modelled(self, what: str, items: Any) -> list[int]:
        """``items`` (input columns: indices or names) as positions among the modelled columns;
        a given (context) column is an error."""
        names = [str(n) for n in getattr(self, "feature_names_in_", [])]
        out = []
        for i in self._columns(what, items, self.n_features_in_):
            if i in self.given_indices_:
                label = repr(names[i]) if names else str(i)
                raise ValueError(f"FlowDensity.fit: {what} column {label} is a given column")
            out.append(self.data_indices_.index(i))
        return out

    def _angles(self) -> tuple[dict[int, Any], dict[int, Any]]:
        """``angles`` as ``{position: range or None}`` among the modelled columns and among
        the given ones."""
        if self.angles is None:
            return {}, {}
        spans = dict(self.angles) if isinstance(self.angles, dict) else None
        keys = list(spans) if spans is not None else self.angles
        modelled: dict[int, Any] = {}
        given: dict[int, Any] = {}
        for key, i in zip(
            keys if not isinstance(keys, str | int | np.integer) else [keys],
            self._columns("angles", keys, self.n_features_in_),
        ):
            span = None if spans is None else spans[key]
            if i in self.given_indices_:
                given[self.given_indices_.index(i)] = span
            else:
                modelled[self.data_indices_.index(i)] = span
        return modelled, given

    def _angle_options(self, modelled: dict[int, Any]) -> dict[str, Any]:
        """``model_options`` with the modelled angles' positions (``NCSF(angles=...)``)."""
        options = dict(self.model_options or {})
        if modelled and (str(self.model).lower() != "ncsf" or "angles" in options):
            raise ValueError(
                "FlowDensity.fit: modelled angles are for model='ncsf' (given once, not also "
                f"in model_options), got model={self.model!r}"
            )
        if modelled:
            options["angles"] = sorted(modelled)
        return options

    def _bounds_by_column(self) -> Any:
        """``bounds`` as given, or, for a dict ``{column: (low, high)}`` (names or indices),
        one pair per modelled column (open where not named)."""
        if not isinstance(self.bounds, dict):
            return self.bounds
        pairs: list[Any] = [(None, None)] * len(self.data_indices_)
        keys = list(self.bounds)  # resolved together: a name and an index of one column clash
        for (key, span), i in zip(
            self.bounds.items(), self._columns("bounds", keys, self.n_features_in_)
        ):
            if i in self.given_indices_:
                raise ValueError(
                    f"FlowDensity.fit: bounds are for modelled columns; {key!r} is given"
                )
            pairs[self.data_indices_.index(i)] = span
        return pairs

    def _bounds(self, modelled: dict[int, Any]) -> Any:
        """``bounds`` (one pair per modelled column, or as given) with each modelled angle's
        range in its place (an angle's bounds are its range; one given in both is an error)."""
        bounds = self._bounds_by_column()
        ranged = {j: span for j, span in modelled.items() if span is not None}
        if not ranged:
            return bounds
        from nfkit.models.standardized import _check_bounds

        d = len(self.data_indices_)
        pairs = _check_bounds("FlowDensity.fit", bounds, d) or [(-math.inf, math.inf)] * d
        for j, span in ranged.items():
            if pairs[j] != (-math.inf, math.inf):
                raise ValueError(
                    "FlowDensity.fit: an angle's range goes in angles or in bounds, not both"
                )
            pairs[j] = tuple(span)  # type: ignore[assignment]
        return pairs

    def _bounds_of_columns(self, modelled: dict[int, Any]) -> list[Any]:
        """Each column of ``X``'s ``(low, high)`` support (``None``: the given columns, or no
        bounds at all)."""
        from nfkit.models.standardized import _check_bounds

        bounds = self._bounds(modelled) if self.standardize else None
        pairs = _check_bounds("FlowDensity.fit", bounds, len(self.data_indices_))
        out: list[Any] = [None] * self.n_features_in_
        for j, i in enumerate(self.data_indices_):
            out[i] = None if pairs is None else pairs[j]
        return out

    def _split(self, X: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        like = {"dtype": torch.float64, "device": self.device_}
        x = torch.tensor(X[:, self.data_indices_], **like)
        if not self.given_indices_:
            return x, None
        return x, torch.tensor(X[:, self.given_indices_], **like)

    def _check_missing(self, where: str, X: np.ndarray) -> None:
        """With ``summary_padded``, NaN may only stand for absent set elements: a modelled
        column's NaN is named (the flow's checks judge the given columns)."""
        if not self.summary_padded:
            return
        bad = [j for j in self.data_indices_ if np.isnan(X[:, j]).any()]
        if bad:
            names = getattr(self, "feature_names_in_", None)
            which = ", ".join(str(names[j]) if names is not None else str(j) for j in bad)
            raise ValueError(
                f"{where}: missing values (NaN) in modelled column(s) {which}; only the given "
                "set's elements may be missing"
            )

    def _check_params(self) -> None:
        """One-line errors for the settings that nothing downstream checks."""
        for name in ("standardize", "summary_padded", "progress"):
            value = getattr(self, name)
            if not isinstance(value, bool | np.bool_):
                raise TypeError(
                    f"FlowDensity.fit: {name} must be True or False, got {shown(value)}"
                )
        if self.outside_support not in ("raise", "-inf"):
            raise ValueError(
                "FlowDensity.fit: outside_support must be 'raise' or '-inf', got "
                f"{shown(self.outside_support)}"
            )
        hidden = self.hidden
        if hidden is not None:
            if not isinstance(hidden, tuple | list | np.ndarray) or np.ndim(hidden) != 1:
                raise TypeError(
                    "FlowDensity.fit: hidden must be a tuple of positive ints, one width per "
                    f"layer ((64,) for one), got {shown(hidden)}"
                )
            check_hidden("FlowDensity.fit", hidden)
        for name, kinds, what in (
            (
                "given",
                (int, np.integer, str, list, tuple, np.ndarray),
                "a column or a list of them",
            ),
            ("model_options", (dict,), "a dict of the factory's keyword arguments"),
        ):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
                raise TypeError(f"FlowDensity.fit: {name} must be {what}, got {shown(value)}")

    def _check_default_angles(self, x: torch.Tensor) -> None:
        """``model="ncsf"`` without ``angles``: every modelled column is an angle in NCSF's
        ``[-bound, bound]`` (``[-π, π]``); name a column outside it (where its ``bounds`` do
        not give its range) and say so, before the flow's own check of the support."""
        options = self.model_options or {}
        if str(self.model).lower() != "ncsf" or self.angles is not None or "angles" in options:
            return
        bound = options.get("bound", math.pi)
        if isinstance(bound, bool) or not isinstance(bound, int | float | np.number):
            return  # the factory names it
        ends = self._bounds_of_columns({})
        names = [str(n) for n in getattr(self, "feature_names_in_", [])]
        for j, i in enumerate(self.data_indices_):
            if ends[i] is not None and tuple(ends[i]) != (-math.inf, math.inf):
                continue  # its bounds are its range
            outside = x[:, j].abs() > bound
            if bool(outside.any()):
                label = repr(names[i]) if names else str(i)
                span = "[-π, π]" if bound == math.pi else f"[{-bound:g}, {bound:g}]"
                every = "every modelled column" if self.given_indices_ else "every column"
                raise ValueError(
                    f"FlowDensity.fit: model='ncsf' treats {every} as an angle in {span} unless "
                    f"angles= names them; column {label} has values outside it (e.g. "
                    f"{float(x[:, j][outside][0]):g})"
                )

    def _expected_failed_checks(self) -> dict[str, str]:
        """scikit-learn checks that do not apply, with the reason (rbig's sample weights)."""
        if str(self.model).lower() != "rbig":
            return {}
        why = "model='rbig' is fitted greedily and refuses sample_weight"
        return {name: why for name in _RBIG_WEIGHT_CHECKS}

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "flow_")

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags

    # ---------------------------------------------------------------- API

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> FlowDensity:
        """Fit the flow to the rows of ``X`` (``y`` is ignored).

        ``sample_weight`` ``(n,)``, ``>= 0``: maximize the weighted log-likelihood ``Σ_i w_i
        log p(x_i)`` (see ``weights`` of :func:`nfkit.fit`; an integer weight counts as that
        many copies of the row in the objective). Rows of weight 0 are dropped first: they take
        no part in the standardization (fitted, unweighted, on the other rows) or the
        validation split. A failed fit leaves the estimator unfitted.
        """
        for name in _FITTED:  # no stale model if this fails
            self.__dict__.pop(name, None)
        try:
            return self._fit(X, sample_weight)
        except BaseException:
            for name in _FITTED:
                self.__dict__.pop(name, None)
            raise

    def _fit(self, X: Any, sample_weight: Any) -> FlowDensity:
        from nfkit.models import Embedded, standardize
        from nfkit.models.gaussianization import fitted_greedily
        from nfkit.train import OBJECTIVES, History, fit

        self._check_params()
        nan = "allow-nan" if self.summary_padded else True
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2, ensure_all_finite=nan)
        n_features = X.shape[1]
        self.given_indices_ = self._given_indices(n_features)
        self.data_indices_ = [i for i in range(n_features) if i not in self.given_indices_]
        self._check_missing("FlowDensity.fit", X)
        weights = None
        if sample_weight is not None and str(self.model).lower() == "rbig":
            raise ValueError(
                "FlowDensity.fit: rbig is fitted greedily, without sample weights; give "
                "another model"
            )
        if sample_weight is not None:
            weights = _check_sample_weight(
                sample_weight, X, dtype=np.float64, ensure_non_negative=True
            )  # (its errors name sample_weight; scikit-learn 1.6 lets all-zero weights pass)
            kept = weights > 0  # the rows that count: the others take no part at all
            if kept.sum() < 2:
                raise ValueError(
                    "FlowDensity.fit: sample_weight "
                    + (
                        "has no non-zero weight"
                        if not kept.any()
                        else "leaves 1 row of weight > 0"
                    )
                    + "; give at least 2 rows of weight > 0"
                )
            X, weights = X[kept], weights[kept]
        self.device_ = check_device("FlowDensity.fit", self.device) or torch.device("cpu")
        seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        x, c = self._split(X)
        devices = [self.device_] if self.device_.type == "cuda" else []
        modelled_angles, given_angles = self._angles()
        if given_angles and not self.standardize:
            raise ValueError("FlowDensity.fit: given angles need standardize=True")
        context = len(self.given_indices_) + len(given_angles)  # given angles: (cos, sin)
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"FlowDensity.fit: objective must be one of {OBJECTIVES}, got {shown(self.objective)}"
            )
        if self.objective == "flow_matching" and str(self.model).lower() != "ffjord":
            raise ValueError(
                f"FlowDensity.fit: objective='flow_matching' trains a continuous flow, "
                f"model='ffjord', not {shown(self.model)}"
            )
        if self.summary is not None and not context:
            raise ValueError("FlowDensity.fit: summary is the size of a summary of given columns")
        if self.summary_set is not None and (self.summary is None or given_angles):
            raise ValueError(
                "FlowDensity.fit: summary_set reads the given columns as a set for a summary "
                "network: " + ("give summary=K" if self.summary is None else "no given angles")
            )
        if self.summary_padded and self.summary_set is None:
            raise ValueError(
                "FlowDensity.fit: summary_padded lets a set's elements be missing (NaN); "
                "give summary_set=m"
            )
        self._check_default_angles(x)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            flow = make_flow(
                self.model,
                len(self.data_indices_),
                context=context if self.summary is None else self.summary,
                transforms=self.transforms,
                hidden=self.hidden,
                options=self._angle_options(modelled_angles),
                where="FlowDensity.fit",
            )
            if self.summary is not None:  # a learned summary of the given columns
                flow = Embedded(
                    len(self.data_indices_),
                    flow=flow.config,
                    context=context,
                    **({} if self.hidden is None else {"hidden": self.hidden}),
                    set_features=self.summary_set,
                    padded=self.summary_padded,
                )
            # float32 unless it would blur a column (then the whole fit runs in float64)
            blurred = float32_blurred_columns(X, self._bounds_of_columns(modelled_angles))
            dtype = torch.float64 if blurred else torch.float32
            flow = flow.to(device=self.device_, dtype=dtype)
            if self.standardize:
                # the column layout the saved flow keeps (the command line reads a table by
                # it): the DataFrame's names, else those a header-less table gets, x0, x1, ...
                names = [str(n) for n in getattr(self, "feature_names_in_", [])] or [
                    f"x{i}" for i in range(X.shape[1])
                ]
                given = [names[i] for i in self.given_indices_] or None
                flow = standardize(
                    flow,
                    x,
                    c,
                    columns=names,
                    given=given,
                    bounds=self._bounds(modelled_angles),
                    discrete=self._discrete_columns(),
                    context_angles=given_angles or None,
                )
            elif (
                self.bounds is not None
                or self.discrete is not None
                or any(span is not None for span in modelled_angles.values())
            ):
                what = (
                    "bounds"
                    if self.bounds is not None
                    else "discrete"
                    if self.discrete is not None
                    else "angle ranges"
                )
                raise ValueError(f"FlowDensity.fit: {what} need standardize=True")
            elif fitted_greedily(flow):
                flow.fit(x.to(device=self.device_, dtype=dtype))  # type: ignore[operator]
            if fitted_greedily(flow):  # fitted above (by standardize): no gradient training
                self.history_ = History()
            else:
                self.history_ = fit(
                    flow,
                    x.to(dtype),
                    context=None if c is None else c.to(dtype),
                    weights=weights,
                    steps=self.steps,
                    epochs=self.epochs,
                    batch_size=self.batch_size,
                    lr=self.lr,
                    weight_decay=self.weight_decay,
                    val_fraction=self.val_fraction,
                    patience=self.patience,
                    progress=self.progress,
                    device=self.device_,
                    seed=seed,
                    objective=self.objective,
                )
        self.flow_ = flow.double().eval()
        cells = (flow.config.get("discrete") or []) if self.standardize else []
        self.discrete_indices_ = [self.data_indices_[j] for j in cells]
        return self

    def score_samples(self, X: Any) -> np.ndarray:
        """``log p(x)`` (or ``log p(x | c)``) of each row, shape ``(n,)``, float64."""
        check_is_fitted(self, "flow_")
        nan = "allow-nan" if self.summary_padded else True
        X = validate_data(self, X, dtype=np.float64, reset=False, ensure_all_finite=nan)
        self._check_missing("FlowDensity.score_samples", X)
        if self.outside_support not in ("raise", "-inf"):
            raise ValueError(
                "FlowDensity.score_samples: outside_support must be 'raise' or '-inf', got "
                f"{shown(self.outside_support)}"
            )
        x, c = self._split(X)
        with torch.no_grad():
            if self.outside_support == "-inf":
                return log_prob_or_minus_inf(self.flow_, x, c).cpu().numpy()
            return self.flow_.log_prob(x, c).cpu().numpy()

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Mean log-likelihood per row (higher is better; used by ``GridSearchCV``), weighted by
        ``sample_weight`` ``(n,)``, ``>= 0`` when given (rows of weight 0 take no part)."""
        if sample_weight is None:
            return float(np.mean(self.score_samples(X)))
        w = _check_sample_weight(
            sample_weight, np.empty(_rows(X)), dtype=np.float64, ensure_non_negative=True
        )
        # rows of weight 0 are not scored at all (out of the support, they would be refused;
        # of log p = -inf, they would add 0 · -inf = NaN)
        kept = np.flatnonzero(w > 0)
        rows = X.iloc[kept] if hasattr(X, "iloc") else np.asarray(X)[kept]
        kept_w = w[kept] / w[kept].max()  # (scaled: a sum of weights near 1e308 overflows)
        return float(np.average(self.score_samples(rows), weights=kept_w))

    def n_parameters(self) -> int:
        """The fitted model's number of trained parameters (the standardization's statistics
        and other fixed buffers are not counted; a mixture's ``K`` weight logits count ``K - 1``,
        as their softmax does not change with a common shift, as ``GaussianMixture`` counts
        them): the ``k`` of :meth:`aic` and :meth:`bic`."""
        from nfkit.distributions import GaussianMixture

        check_is_fitted(self, "flow_")
        shifts = sum(  # one free direction of each unconditional mixture's trained logits
            1
            for m in self.flow_.modules()
            if isinstance(m, GaussianMixture) and not m.context and m.logits.requires_grad
        )
        return sum(p.numel() for p in self.flow_.parameters() if p.requires_grad) - shifts

    def aic(self, X: Any) -> float:
        """Akaike's information criterion on ``X``: ``2k - 2 Σ log p(x_i)`` (lower is better;
        ``k``: :meth:`n_parameters`), as ``GaussianMixture.aic``. A flow's parameters are many
        and not identifiable, so compare held-out :meth:`score` first; the criteria order
        models of one family by size."""
        return float(2 * self.n_parameters() - 2 * self.score(X) * _rows(X))

    def bic(self, X: Any) -> float:
        """The Bayesian information criterion on ``X``: ``k log n - 2 Σ log p(x_i)`` (lower is
        better), as ``GaussianMixture.bic``; see :meth:`aic`."""
        n = _rows(X)
        return float(self.n_parameters() * math.log(n) - 2 * self.score(X) * n)

    def sample(
        self,
        n_samples: int = 1,
        *,
        context: Any = None,
        random_state: int | np.random.RandomState | None = None,
    ) -> np.ndarray:
        """Draw full rows ``(n_samples, n_features_in_)``.

        For a conditional model give ``context``: one row of the given columns ``(C,)`` (all
        samples share it) or ``(n_samples, C)`` (one sample per row); the given columns of the
        output hold the context.
        """
        check_is_fitted(self, "flow_")
        if (
            isinstance(n_samples, bool)
            or not isinstance(n_samples, (int, np.integer))
            or n_samples < 1
        ):
            raise ValueError(
                f"FlowDensity.sample: n_samples must be an int >= 1, got {shown(n_samples)}"
            )
        n = int(n_samples)
        c = None
        if self.given_indices_:
            if context is None:
                raise ValueError("FlowDensity.sample: this model is conditional; pass context=")
            c = torch.as_tensor(np.array(context, dtype=np.float64), device=self.device_)
            k = len(self.given_indices_)
            if c.shape not in ((k,), (n, k)):
                raise ValueError(
                    f"FlowDensity.sample: context must have shape ({k},) or ({n}, {k}), "
                    f"got {tuple(c.shape)}"
                )
        elif context is not None:
            raise ValueError("FlowDensity.sample: this model is not conditional; context not used")
        seed = int(check_random_state(random_state).randint(0, 2**31 - 1))
        devices = [self.device_] if self.device_.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            if c is None or c.dim() == 1:
                x = self.flow_.sample(n, c)
            else:
                x = self.flow_.sample((), c)
        out = np.empty((n, self.n_features_in_))
        out[:, self.data_indices_] = x.cpu().numpy()
        if c is not None:
            out[:, self.given_indices_] = c.expand(n, -1).cpu().numpy()
        return out


def _rows(X: Any) -> int:
    """The number of rows of a table (array, DataFrame or list of rows)."""
    return int(X.shape[0]) if hasattr(X, "shape") else len(X)
