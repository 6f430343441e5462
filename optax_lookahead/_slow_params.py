"""Reading the slow weights out of any optimizer state, for evaluation."""

import jax
from optax._src import base

from optax_lookahead._lookahead import LookaheadState

_NO_DEFAULT = object()


def slow_params(opt_state: base.OptState, default=_NO_DEFAULT) -> base.Params:
    """Returns the slow weights of the one :class:`LookaheadState` in ``opt_state``.

    The paper evaluates on the slow weights; use them for evaluation and export.
    ``opt_state`` may be any tree that holds the lookahead state: a chain's tuple,
    the states of ``optax.masked``, ``optax.inject_hyperparams`` or
    ``optax.MultiSteps``, a Flax ``TrainState``, or ``nnx.as_pure`` of an
    ``nnx.Optimizer``'s ``opt_state``. The arrays are returned as they are, not
    copied.

    Args:
      opt_state: an optimizer state holding exactly one :class:`LookaheadState`.
      default: returned when ``opt_state`` holds no :class:`LookaheadState`,
        for code that evaluates runs with and without lookahead alike
        (``slow_params(opt_state, default=params)``). Without it, that case
        raises.

    Returns:
      The slow weights, a tree with the params' structure.

    Raises:
      ValueError: if ``opt_state`` holds no :class:`LookaheadState` and no
        ``default`` is given, or if it holds more than one (then it is
        ambiguous which slow weights are meant).

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> from optax_lookahead import lookahead, slow_params
      >>> tx = optax.chain(optax.clip_by_global_norm(1.0), lookahead(optax.adam(1e-3)))
      >>> state = tx.init({"w": jnp.zeros(2)})
      >>> slow_params(state)
      {'w': Array([0., 0.], dtype=float32)}
      >>> params = {"w": jnp.ones(2)}  # evaluation code that runs either way
      >>> slow_params(optax.adam(1e-3).init(params), default=params) is params
      True
    """
    is_lookahead = lambda x: isinstance(x, LookaheadState)
    found = [
        (path, node)
        for path, node in jax.tree_util.tree_flatten_with_path(
            opt_state, is_leaf=is_lookahead
        )[0]
        if is_lookahead(node)
    ]
    if len(found) == 1:
        return found[0][1].slow
    if not found and default is not _NO_DEFAULT:
        return default
    if not found:
        raise ValueError(
            "slow_params: opt_state holds no LookaheadState (it is a"
            f" {type(opt_state).__name__}); pass the state of an optimizer built"
            " with optax_lookahead.lookahead."
        )
    raise ValueError(
        f"slow_params: opt_state holds {len(found)} LookaheadStates, at"
        f" {', '.join(jax.tree_util.keystr(path) or '<root>' for path, _ in found)};"
        " pass the part of the state that holds the one you mean."
    )
