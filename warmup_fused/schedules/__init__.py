"""Learning-rate schedules evaluated on the device: native constructors and converters.

    >>> from warmup_fused import schedules
    >>> s = schedules.warmup_cosine(warmup=100, total=1000, base_lr=3e-4)
    >>> s.lr_at(range(5))        # float64 [num_groups, 5], computed by the compiled kernel
"""
from ._schedule import MAX_STEP, Recorded, Schedule
from .convert import from_torch
from .convert_keras import from_keras
from .convert_optax import from_optax
from .native import *  # noqa: F401,F403
from .native import __all__ as _native_all
from .plateau import reduce_on_plateau
from .scaling import linear_scaling

__all__ = ["Schedule", "Recorded", "from_torch", "from_keras", "from_optax", "linear_scaling", "reduce_on_plateau",
           "MAX_STEP", *_native_all]
