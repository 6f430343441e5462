"""The leaves of an optimizer state that mirror the parameters.

Lookahead's reset and pullback options and lazy_mask's frozen moments act on
the parts of an inner optimizer's state that have the parameters' tree
structure (Adam's ``mu`` and ``nu``, a momentum trace, an Adagrad sum), and
leave the rest (step counts, hyperparameters) alone. Which parts those are is
found with ``optax.tree.map_params``, which asks the optimizer's own ``init``,
so this works for any optimizer, not only the ones we know about.
"""

from collections.abc import Callable
from typing import Any

import jax
import optax


class _Mirror:
    """Marks a state leaf that mirrors a parameter, carrying per-param info.

    A plain class, so that JAX treats it as one leaf (a NamedTuple would be
    flattened into its fields).
    """

    __slots__ = ("info",)

    def __init__(self, info):
        self.info = info


def map_param_mirrors(
    inner: optax.GradientTransformation,
    fn: Callable[..., Any],
    state: optax.OptState,
    *others: optax.OptState,
    param_info: Any = None,
) -> optax.OptState:
    """Applies ``fn`` to the leaves of ``state`` that mirror a parameter.

    Args:
      inner: the transformation whose ``init`` built ``state``.
      fn: called as ``fn(leaf, *other_leaves, info)`` for every state leaf that
        mirrors a parameter; its result replaces the leaf.
      state: a state of ``inner``.
      *others: states of the same structure; their matching leaves are passed to
        ``fn`` beside the leaf of ``state``.
      param_info: a tree with the params' structure (``None`` allowed as a leaf);
        the entry of the param a state leaf mirrors is passed to ``fn`` as
        ``info``. Defaults to ``None`` for every param.

    Returns:
      ``state`` with its param-mirroring leaves replaced by ``fn``'s results and
      every other leaf unchanged.
    """
    is_masked = lambda x: isinstance(x, optax.MaskedNode)

    if param_info is None:

        def mark(leaf):
            return None if is_masked(leaf) else _Mirror(None)

        marks = optax.tree.map_params(
            inner, mark, state, transform_non_params=lambda _: None, is_leaf=is_masked
        )
    else:

        def mark(leaf, info):
            return None if is_masked(leaf) else _Mirror(info)

        marks = optax.tree.map_params(
            inner,
            mark,
            state,
            param_info,
            transform_non_params=lambda _: None,
            is_leaf=is_masked,
        )

    def apply(mark, leaf, *other_leaves):
        if isinstance(mark, _Mirror):
            return fn(leaf, *other_leaves, mark.info)
        return leaf

    return jax.tree.map(
        apply,
        marks,
        state,
        *others,
        is_leaf=lambda x: x is None or isinstance(x, _Mirror),
    )
