"""Where lookahead goes relative to the row-masking wrappers: outside.

``lazy_mask`` and ``sparse_lazy`` must wrap the optimizer and sit inside
``lookahead``: a masked or row-gathered sync step would leave the fast and
slow weights apart. These checks turn the wrong order into a clear error, at
construction where the lookahead is visible and at ``init`` where it is
hidden inside a chain or another wrapper.
"""

import jax
import optax

from optax_lookahead import _checks
from optax_lookahead._lookahead import LookaheadState, LookaheadTransformation

_LOOKAHEAD_STATES = (LookaheadState, optax.LookaheadState)


def working_form(wrapper: str) -> str:
    return f"lookahead({wrapper}(optax.adam(1e-3)))"


def _wrong_order(wrapper: str) -> str:
    return (
        f"{wrapper} is wrapped around a lookahead; put it inside instead:"
        f" {working_form(wrapper)}. A {wrapper} around the sync step would leave"
        " the fast and slow weights apart."
    )


def check_transformation(wrapper: str, inner) -> None:
    """``inner`` must be an optax transformation, and not a lookahead."""
    if not _checks.is_transformation(inner):
        raise TypeError(
            f"{wrapper}(inner, ...): inner must be an optax GradientTransformation"
            f" such as optax.adam(1e-3), got {inner!r}. Write {working_form(wrapper)}."
        )
    if isinstance(inner, LookaheadTransformation):
        raise ValueError(_wrong_order(wrapper))


def check_no_lookahead_inside(wrapper: str, inner_state) -> None:
    """Finds a lookahead hidden in the wrapped optimizer, from its state."""
    is_lookahead = lambda x: isinstance(x, _LOOKAHEAD_STATES)
    if any(map(is_lookahead, jax.tree.leaves(inner_state, is_leaf=is_lookahead))):
        raise ValueError(_wrong_order(wrapper))
