"""nfkit: normalizing flows on PyTorch.

import nfkit as nf
flow = nf.models.NSF(2)
loss = -flow.log_prob(x).mean()
"""

from nfkit import distributions, metrics, models, nn, testing, transforms
from nfkit.core import Compose, Flow, Inverse, Transform

__version__ = "0.1.0"

__all__ = [
    "Transform",
    "Inverse",
    "Compose",
    "Flow",
    "distributions",
    "transforms",
    "nn",
    "models",
    "testing",
    "metrics",
    "__version__",
]
