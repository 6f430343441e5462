"""How an inner optimizer's state relates to the params.

Three facts every wrapper here needs:

- which state leaves mirror a parameter (Adam's ``mu`` and ``nu``, a momentum
  trace, an Adagrad sum) and which do not (step counts, hyperparameters). This
  is found with ``optax.tree.map_params``, which asks the optimizer's own
  ``init``, so it works for any optimizer, not only the ones we know about;
- which state a restart of the inner statistics keeps: learning-rate schedules
  go on counting;
- where eagerly created step counters live: on the params' mesh, replicated.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding


class _Mirror:
    """Marks a state leaf that mirrors a parameter, carrying per-param info.

    A plain class, so that JAX treats it as one leaf (a NamedTuple would be
    flattened into its fields).
    """

    __slots__ = ("info",)

    def __init__(self, info):
        self.info = info


def _is_masked(x) -> bool:
    return isinstance(x, optax.MaskedNode)


def _marks(inner, state, param_info):
    """A tree like ``state``: a ``_Mirror`` at each mirror leaf, else None."""
    if param_info is None:
        return optax.tree.map_params(
            inner,
            lambda leaf: None if _is_masked(leaf) else _Mirror(None),
            state,
            transform_non_params=lambda _: None,
            is_leaf=_is_masked,
        )
    return optax.tree.map_params(
        inner,
        lambda leaf, info: None if _is_masked(leaf) else _Mirror(info),
        state,
        param_info,
        transform_non_params=lambda _: None,
        is_leaf=_is_masked,
    )


def _is_mark(x) -> bool:
    return x is None or isinstance(x, _Mirror)


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

    def apply(mark, leaf, *other_leaves):
        if isinstance(mark, _Mirror):
            return fn(leaf, *other_leaves, mark.info)
        return leaf

    marks = _marks(inner, state, param_info)
    return jax.tree.map(apply, marks, state, *others, is_leaf=_is_mark)


def mirror_trees(inner: optax.GradientTransformation, state) -> tuple:
    """The parts of ``state`` that mirror the params, each a tree like them.

    Adam's state gives ``(mu, nu)``. ``optax.tree.map_params`` recognises them
    as params too, so a tuple of them can live in a state that is itself
    mapped (sharding specs, ``init`` from a layout probe).
    """
    found: list = []

    def collect(tree):
        found.append(tree)
        return tree

    _map_whole_mirrors(inner, collect, state)
    return tuple(found)


def with_mirror_trees(inner: optax.GradientTransformation, state, trees):
    """``state`` with the parts that mirror the params replaced, in order."""
    replacements = iter(trees)
    return _map_whole_mirrors(inner, lambda _: next(replacements), state)


def _map_whole_mirrors(inner, fn, state):
    # is_leaf is asked first about each params-like part as a whole.
    return optax.tree.map_params(inner, fn, state, is_leaf=lambda _: True)


# State types that drive learning-rate schedules. A restart of the inner
# optimizer's statistics keeps them, so that schedules keep running.
# Learning-rate schedules, by step or (reduce_on_plateau) by the loss.
_SCHEDULE_STATES = (
    optax.ScaleByScheduleState,
    optax.contrib.ReduceLROnPlateauState,
)
_INJECTED_STATES = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)


def restart_keeping_schedules(state, fresh):
    """``fresh`` (a new ``init``), but with the schedule counters of ``state``.

    Everything ``init`` creates starts over (moments, and step counts such as
    Adam's, so bias correction restarts too), except the counts that drive
    learning-rate schedules: ``optax.scale_by_schedule``'s (used by optax
    optimizers given a schedule), ``optax.inject_hyperparams``' count and
    hyperparameters, and ``optax.contrib.reduce_on_plateau``'s scale and
    patience.
    """

    def pick(old, new):
        if isinstance(old, _SCHEDULE_STATES):
            return old
        if isinstance(old, _INJECTED_STATES):
            return old._replace(
                inner_state=restart_keeping_schedules(old.inner_state, new.inner_state)
            )
        return new

    is_special = lambda x: isinstance(x, _SCHEDULE_STATES + _INJECTED_STATES)
    return jax.tree.map(pick, state, fresh, is_leaf=is_special)


def is_layout_probe(params) -> bool:
    """Whether ``params`` is optax's layout probe rather than real params.

    ``optax.tree.map_params`` calls ``init`` with an empty custom node to find
    which parts of the state mirror the params. Real params with no leaves are
    an empty dict, list or tuple (or None).
    """
    return not jax.tree.leaves(params) and not isinstance(
        params, (dict, list, tuple, type(None))
    )


def place_counters_like_params(state, params):
    """Puts eagerly created scalar leaves of ``state`` on the params' mesh.

    ``jnp.zeros([])`` lands on one device, while a jitted step returns the
    counter replicated over the mesh, so the second step would see a new input
    sharding and trace and compile again. When the params all live on one
    mesh, the scalars (step counts of every wrapped optimizer) start out
    replicated on it. Every transformation here calls this from its ``init``.
    """
    shardings = [
        leaf.sharding
        for leaf in jax.tree.leaves(params)
        if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer)
    ]
    meshes = {getattr(s, "mesh", None) for s in shardings}
    mesh = meshes.pop() if len(meshes) == 1 else None
    if mesh is None:
        return state
    replicated = NamedSharding(mesh, PartitionSpec())

    def place(leaf):
        if (
            isinstance(leaf, jax.Array)
            and not isinstance(leaf, jax.core.Tracer)
            and leaf.ndim == 0
            and isinstance(leaf.sharding, SingleDeviceSharding)
        ):
            return jax.device_put(leaf, replicated)
        return leaf

    return jax.tree.map(place, state)


def check_state_holds_rows(inner, state, tables, message: str) -> None:
    """Refuses an inner state whose mirror of a table is not row for row.

    Args:
      inner: the transformation whose ``init`` built ``state``.
      state: a state of ``inner``.
      tables: a tree with the params' structure: the table (any object with a
        ``shape``) where rows matter, ``None`` elsewhere.
      message: the error, with ``{got}`` and ``{want}`` for the two shapes.
    """

    class _NotRowForRow(Exception):
        pass

    def check(leaf, table):
        if table is not None and tuple(jnp.shape(leaf)) != tuple(table.shape):
            raise _NotRowForRow(jnp.shape(leaf), tuple(table.shape))
        return leaf

    want = next((tuple(t.shape) for t in jax.tree.leaves(tables)), ())
    try:
        map_param_mirrors(inner, check, state, param_info=tables)
    except _NotRowForRow as mismatch:
        got, want = mismatch.args
        raise ValueError(message.format(got=got, want=want)) from None
    except (ValueError, TypeError, AttributeError):
        # The state's params-like parts do not even pair with the params
        # (optax.sm3 keeps a list of statistics, one per axis, per table).
        raise ValueError(
            message.format(got="(several arrays, one per axis)", want=want)
        ) from None
