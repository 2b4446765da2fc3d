"""capsprobe: do capsule networks keep the pose information that convnets discard?

Importing the package registers capsprobe's models (``capsnet*``, ``baseline_cnn``) in timm.
"""

from . import models

__all__ = ["__version__", "models"]

__version__ = "0.1.0"
