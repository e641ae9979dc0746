"""nfkit: normalizing flows on PyTorch.

import nfkit as nf
flow = nf.models.NSF(2)
loss = -flow.log_prob(x).mean()
"""

from nfkit import (
    datasets,
    distributed,
    distributions,
    flow_matching,
    metrics,
    models,
    nn,
    plot,
    tables,
    targets,
    testing,
    transforms,
)
from nfkit._numerics import NotConvergedError
from nfkit.core import Compose, Flow, Inverse, Transform, log_prob_or_minus_inf
from nfkit.deploy import export
from nfkit.flow_matching import flow_matching_loss
from nfkit.io import load, save
from nfkit.torch_distribution import FlowDistribution
from nfkit.train import History, NonFiniteLossError, fit, fit_vi

__version__ = "0.1.0"

__all__ = [
    "Transform",
    "Inverse",
    "Compose",
    "Flow",
    "FlowDistribution",
    "log_prob_or_minus_inf",
    "distributions",
    "transforms",
    "nn",
    "models",
    "testing",
    "metrics",
    "distributed",
    "__version__",
    "fit",
    "fit_vi",
    "flow_matching",
    "flow_matching_loss",
    "History",
    "NonFiniteLossError",
    "NotConvergedError",
    "save",
    "load",
    "export",
    "FlowDensity",
    "datasets",
    "tables",
    "targets",
    "plot",
]


def __getattr__(name: str) -> object:
    # FlowDensity imports scikit-learn: load it on first use, not with `import nfkit`.
    if name == "FlowDensity":
        from nfkit.estimator import FlowDensity

        return FlowDensity
    raise AttributeError(f"module 'nfkit' has no attribute {name!r}")
