"""The methods, by family. Importing this package registers every method.

Each family module lists its public names in ``__all__``; a new module adds one line here.
"""
from . import cam, gradient, lrp, path, perturbation, propagation
from .cam import *  # noqa: F401,F403
from .gradient import *  # noqa: F401,F403
from .path import *  # noqa: F401,F403
from .perturbation import *  # noqa: F401,F403
from .propagation import *  # noqa: F401,F403
from .lrp import *  # noqa: F401,F403

__all__ = [*cam.__all__, *gradient.__all__, *path.__all__, *perturbation.__all__, *propagation.__all__, *lrp.__all__]
