"""Argument checks shared by the transformations, run at construction.

Hyperparameters may arrive as Python numbers, NumPy scalars, concrete JAX
arrays or tracers (``optax.inject_hyperparams`` rebuilds the transformation
inside ``update`` with the hyperparameters as traced arrays). Concrete values
are checked and normalised here; traced ones cannot be inspected and are
accepted as they are.
"""

import numbers
import typing

import jax
import numpy as np

# optax's own wording for a missing ``params``; its one private import here.
from optax._src.base import NO_PARAMS_MSG  # noqa: F401 - re-exported

# The step counter is int32, and it wraps from a multiple of sync_period back
# to sync_period (see _lookahead._next_step), which needs two periods to fit.
MAX_SYNC_PERIOD = 2**30


def choices(literal) -> tuple:
    """The values a ``Literal`` type allows: one fact, stated once."""
    return typing.get_args(literal)


def check_choice(name: str, value, allowed: tuple) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(
            f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}."
        )


def check_bool(name: str, value) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}.")


def is_transformation(candidate) -> bool:
    """Whether ``candidate`` looks like an optax transformation."""
    return callable(getattr(candidate, "init", None)) and callable(
        getattr(candidate, "update", None)
    )


def check_sync_period(sync_period):
    """``sync_period`` must be an integer in [1, 2**30]; returns it normalised.

    A concrete value comes back as a Python int, so that the step arithmetic
    stays int32 under strict dtype promotion whatever integer type was given.
    """
    if isinstance(sync_period, (bool, np.bool_)) or not _is_integer(sync_period):
        raise ValueError(
            f"sync_period must be an integer >= 1, got {sync_period!r} of type"
            f" {type(sync_period).__name__}."
        )
    value = _scalar_or_error("sync_period", sync_period)
    if value is None:
        return sync_period
    if not 1 <= value <= MAX_SYNC_PERIOD:
        raise ValueError(
            f"sync_period must be an integer in [1, 2**30], got {value}."
            " (The step counter is int32.)"
        )
    return int(value)


def check_slow_step_size(slow_step_size):
    """``slow_step_size`` must be in (0, 1], or a schedule; returns it normalised."""
    if callable(slow_step_size):
        return slow_step_size
    if isinstance(slow_step_size, (bool, np.bool_)) or not _is_real(slow_step_size):
        raise ValueError(
            "slow_step_size must be a real number in (0, 1] or a schedule (a"
            " callable taking the step count), got"
            f" {slow_step_size!r} of type {type(slow_step_size).__name__}."
        )
    value = _scalar_or_error("slow_step_size", slow_step_size)
    if value is None:
        return slow_step_size
    if not 0.0 < value <= 1.0:
        raise ValueError(
            f"slow_step_size must be in (0, 1], got {value}. Values above 1"
            " overshoot the fast weights and 0 never moves the slow weights."
        )
    if np.float32(value) == 0:
        raise ValueError(
            f"slow_step_size={value} is 0 in float32, so the slow weights would"
            " never move; use a value of at least 1e-38."
        )
    return float(value)


def check_count(name: str, value) -> None:
    """A number of rows: a Python or NumPy integer >= 1, known at trace time."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (numbers.Integral, np.integer)
    ):
        raise TypeError(
            f"{name} must be a positive Python int known at trace time (the"
            f" number of rows of the table), got {value!r}."
        )
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}.")


def concrete_value(value):
    """Returns ``value`` as a NumPy scalar, or ``None`` if it is traced."""
    if isinstance(value, jax.core.Tracer):
        return None
    array = np.asarray(value)
    if array.shape != ():
        raise ValueError(f"expected a scalar, got an array of shape {array.shape}")
    return array[()]


def _scalar_or_error(name, value):
    try:
        return concrete_value(value)
    except ValueError as error:
        raise ValueError(f"{name}: {error}.") from None


def _is_integer(value) -> bool:
    if isinstance(value, numbers.Integral):
        return True
    dtype = getattr(value, "dtype", None)
    return dtype is not None and np.issubdtype(dtype, np.integer)


def _is_real(value) -> bool:
    if isinstance(value, numbers.Real):
        return True
    dtype = getattr(value, "dtype", None)
    return dtype is not None and (
        np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)
    )
