"""Construction-time argument checks shared by the transformations.

Hyperparameters may arrive as Python numbers, NumPy scalars, concrete JAX
arrays or tracers (``optax.inject_hyperparams`` rebuilds the transformation
inside ``update`` with the hyperparameters as traced arrays). Concrete values
are checked here; traced ones cannot be inspected and are accepted as they are.
"""

import numbers

import jax
import numpy as np


def concrete_value(value):
    """Returns ``value`` as a NumPy scalar, or ``None`` if it is traced."""
    if isinstance(value, jax.core.Tracer):
        return None
    array = np.asarray(value)
    if array.shape != ():
        raise ValueError(f"expected a scalar, got an array of shape {array.shape}")
    return array[()]


def check_sync_period(sync_period) -> None:
    """``sync_period`` must be an integer >= 1."""
    if isinstance(sync_period, bool) or not _is_integer(sync_period):
        raise ValueError(
            f"sync_period must be an integer >= 1, got {sync_period!r} of type"
            f" {type(sync_period).__name__}."
        )
    value = _scalar_or_error("sync_period", sync_period)
    if value is not None and value < 1:
        raise ValueError(f"sync_period must be an integer >= 1, got {value}.")


def check_slow_step_size(slow_step_size) -> None:
    """``slow_step_size`` must be a real number in (0, 1]."""
    if isinstance(slow_step_size, bool) or not _is_real(slow_step_size):
        raise ValueError(
            "slow_step_size must be a real number in (0, 1], got"
            f" {slow_step_size!r} of type {type(slow_step_size).__name__}."
        )
    value = _scalar_or_error("slow_step_size", slow_step_size)
    if value is not None and not 0.0 < value <= 1.0:
        raise ValueError(
            f"slow_step_size must be in (0, 1], got {value}. Values above 1"
            " overshoot the fast weights and 0 never moves the slow weights."
        )


def is_transformation(candidate) -> bool:
    """Whether ``candidate`` looks like an optax transformation."""
    return callable(getattr(candidate, "init", None)) and callable(
        getattr(candidate, "update", None)
    )


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(
            f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}."
        )


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
