"""Finding lookahead in a tree: the slow weights, and where lookahead may sit.

One function, :func:`lookahead_states`, finds the lookahead states anywhere in
an optimizer state (chains, ``optax.masked``, ``inject_hyperparams``,
``MultiSteps``, Flax train states). :func:`slow_params` reads the slow weights
through it, and the order checks use it to refuse a row-masking wrapper placed
around a lookahead, where a masked sync step would leave the fast and slow
weights apart: ``lazy_mask`` and ``sparse_lazy`` go inside.
"""

import jax
import optax

from optax_lookahead import _checks
from optax_lookahead._lookahead import LookaheadState, LookaheadTransformation

# optax's own lookahead has the same problem when wrapped, so it is found too.
_LOOKAHEAD_STATES = (LookaheadState, optax.LookaheadState)
_NO_DEFAULT = object()


def lookahead_states(tree, types=_LOOKAHEAD_STATES) -> list:
    """``(path, state)`` for every lookahead state in ``tree``, in tree order."""
    is_lookahead = lambda x: isinstance(x, types)
    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_lookahead)
    return [(path, node) for path, node in leaves if is_lookahead(node)]


def slow_params(opt_state: optax.OptState, default=_NO_DEFAULT) -> optax.Params:
    """Returns the slow weights of the one :class:`LookaheadState` in ``opt_state``.

    The paper evaluates on the slow weights; use them for evaluation and export.
    ``opt_state`` may be any tree that holds the lookahead state: a chain's tuple,
    the states of ``optax.masked``, ``optax.inject_hyperparams`` or
    ``optax.MultiSteps``, a Flax ``TrainState``, or ``nnx.as_pure`` of an
    ``nnx.Optimizer``'s ``opt_state``. The arrays are returned as they are, not
    copied. Before the first update they are a copy of the params given to
    ``init``; from the first update on, lookahead's slow weights.

    Args:
      opt_state: an optimizer state holding exactly one :class:`LookaheadState`.
      default: returned when ``opt_state`` holds no :class:`LookaheadState`,
        for code that evaluates runs with and without lookahead alike
        (``slow_params(opt_state, default=params)``). Without it, that case
        raises.

    Returns:
      The slow weights, a tree with the params' structure. Under
      ``optax.masked`` or ``optax.multi_transform`` the params the lookahead
      does not train are ``optax.MaskedNode()`` there (they have no slow
      copy); ``optax_lookahead.flax.slow_train_state`` and ``slow_model`` put
      their params in those places.

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
    found = lookahead_states(opt_state, LookaheadState)
    if len(found) == 1:
        return found[0][1].slow
    if not found and default is not _NO_DEFAULT:
        return default
    if not found:
        raise ValueError(
            "slow_params: opt_state holds no LookaheadState (it is a"
            f" {type(opt_state).__name__}); pass the state of an optimizer built"
            " with optax_lookahead.lookahead, or default= for runs without one."
        )
    where = ", ".join(jax.tree_util.keystr(path) or "<root>" for path, _ in found)
    raise ValueError(
        f"slow_params: opt_state holds {len(found)} LookaheadStates, at {where};"
        " pass the part of the state that holds the one you mean."
    )


def working_form(wrapper: str) -> str:
    return f"lookahead({wrapper}(optax.adam(1e-3)))"


def _wrong_order(wrapper: str) -> str:
    return (
        f"{wrapper} is wrapped around a lookahead; put it inside instead:"
        f" {working_form(wrapper)}. A {wrapper} around the sync step would leave"
        " the fast and slow weights apart."
    )


def check_wrappable(wrapper: str, inner) -> None:
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
    if lookahead_states(inner_state):
        raise ValueError(_wrong_order(wrapper))
