"""Lazy updates whose cost follows the sampled rows, not the vocabulary.

A dense gradient of an embedding lookup is a table-size array that is zero
except in the rows the batch used, and a dense optimizer step reads and writes
every row of the table and of its moments. Here the gradient of a table is a
:class:`SparseRows` (the sampled row ids and one gradient row each), and
:func:`sparse_lazy` runs the wrapped optimizer on those rows only: it gathers
them from the params and from every state leaf that mirrors the params, runs
the optimizer once on that small problem (so step counts advance once, for the
whole tree), and scatters the new state rows back in place.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax._src import base

from optax_lookahead._mirrors import map_param_mirrors


class SparseRows(NamedTuple):
    """Some rows of a table: a gradient, or an update ``table[ids] += values``.

    Attributes:
      ids: int32 vector of distinct row ids. Ids outside the table (padding of
        the fixed-size buffer) are ignored wherever the rows are used.
      values: one row per id, shape ``ids.shape + table.shape[1:]``; zero for
        padding ids.
    """

    ids: jax.Array
    values: jax.Array


def _is_sparse(x) -> bool:
    return isinstance(x, SparseRows)


def sparse_rows(ids: jax.Array, row_grads: jax.Array, num_rows: int) -> SparseRows:
    """Sums the gradients of looked-up rows into one row per distinct id.

    A batch may look up the same row many times; an optimizer must see each row
    once, with the sum of its gradients, as the dense gradient would hold it.
    The result has a fixed size (one slot per entry of ``ids``), so it is
    jit-friendly: unused slots get an out-of-range id and a zero row.

    Args:
      ids: integer array of looked-up row ids, any shape. Ids outside
        ``[0, num_rows)``, such as ``-1`` padding, are dropped.
      row_grads: gradient of the loss with respect to each looked-up row, shape
        ``ids.shape + row_shape``.
      num_rows: the number of rows of the table.

    Returns:
      A :class:`SparseRows` with ``ids.size`` slots.

    Example:
      >>> import jax.numpy as jnp
      >>> from optax_lookahead import sparse_rows
      >>> rows = sparse_rows(jnp.array([3, 1, 3, -1]), jnp.ones((4, 2)), num_rows=5)
      >>> rows.ids, rows.values
      (Array([1, 3, 5, 5], dtype=int32), Array([[1., 1.],
             [2., 2.],
             [0., 0.],
             [0., 0.]], dtype=float32))
    """
    ids = jnp.asarray(ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"sparse_rows: ids must be integers, got dtype {ids.dtype}.")
    if row_grads.shape[: ids.ndim] != ids.shape:
        raise ValueError(
            "sparse_rows: row_grads must have shape ids.shape + row_shape;"
            f" got ids of shape {ids.shape} and row_grads of shape"
            f" {row_grads.shape}."
        )
    size = ids.size
    flat_ids = ids.reshape(size).astype(jnp.int32)
    flat_grads = row_grads.reshape((size,) + row_grads.shape[ids.ndim :])
    outside = (flat_ids < 0) | (flat_ids >= num_rows)
    flat_ids = jnp.where(outside, num_rows, flat_ids)
    unique, slot = jnp.unique(
        flat_ids, size=size, fill_value=num_rows, return_inverse=True
    )
    summed = jax.ops.segment_sum(flat_grads, slot.reshape(size), num_segments=size)
    inside = (unique < num_rows).reshape((size,) + (1,) * (summed.ndim - 1))
    return SparseRows(unique, jnp.where(inside, summed, 0))


def gather_rows(table: jax.Array, ids: jax.Array) -> jax.Array:
    """``table[ids]``, with zero rows for ids outside the table."""
    return jnp.take(table, ids, axis=0, mode="fill", fill_value=0)


def apply_sparse_updates(params: base.Params, updates: base.Updates) -> base.Params:
    """``optax.apply_updates`` that also applies :class:`SparseRows` leaves.

    A sparse leaf adds its rows in place (``params.at[ids].add``, ids outside
    the table dropped), so under ``jax.jit`` with the params donated the cost
    follows the number of rows, not the size of the table.
    """

    def apply(param, update):
        if _is_sparse(update):
            values = update.values.astype(param.dtype)
            return param.at[update.ids].add(values, mode="drop")
        return optax.apply_updates(param, update)

    return jax.tree.map(apply, params, updates, is_leaf=_is_sparse)


class SparseLazyState(NamedTuple):
    """State of :func:`sparse_lazy`.

    Attributes:
      inner_state: the wrapped optimizer's state, dense, for all params.
    """

    inner_state: base.OptState


def sparse_lazy(
    inner: optax.GradientTransformation,
) -> base.GradientTransformationExtraArgs:
    """Runs ``inner`` only on the sampled rows of tables given as :class:`SparseRows`.

    For every gradient leaf that is a :class:`SparseRows`, the rows it names are
    gathered from the param and from each state leaf that mirrors the param,
    ``inner`` runs once on the resulting small tree (dense leaves included, so
    step counts advance once per update), and the new state rows are scattered
    back. The update for that leaf is a :class:`SparseRows` too; apply it with
    :func:`apply_sparse_updates` or :func:`update_and_apply`. Rows that were not
    sampled keep their params and state bit for bit, so this equals
    ``lazy_mask(inner, freeze_state=True)`` (TF's LazyAdam, torch's SparseAdam)
    at a cost that grows with the sampled rows. Leaves with dense gradients go
    through ``inner`` as usual.

    ``inner`` must treat rows independently (elementwise or per-row state):
    Adam, AdamW (decay reaches sampled rows only), SGD with momentum, Adagrad,
    RMSProp. Global-norm clipping sees the norm of the sampled rows, which is
    the norm of the full gradient since the other rows are zero.

    Args:
      inner: the optimizer to run on the sampled rows.

    Returns:
      An optax ``GradientTransformationExtraArgs``; ``update`` needs ``params``
      when any gradient leaf is sparse.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> from optax_lookahead import sparse_lazy, sparse_rows, update_and_apply
      >>> params = {"embedding": jnp.zeros((1000, 4)), "bias": jnp.zeros(4)}
      >>> tx = sparse_lazy(optax.sgd(0.1, momentum=0.9))
      >>> state = tx.init(params)
      >>> ids = jnp.array([7, 7, 42])
      >>> grads = {
      ...     "embedding": sparse_rows(ids, jnp.ones((3, 4)), num_rows=1000),
      ...     "bias": jnp.ones(4),
      ... }
      >>> params, state = update_and_apply(tx, params, state, grads)
      >>> params["embedding"][jnp.array([7, 42, 0])]  # id 7 was looked up twice
      Array([[-0.2, -0.2, -0.2, -0.2],
             [-0.1, -0.1, -0.1, -0.1],
             [ 0. ,  0. ,  0. ,  0. ]], dtype=float32)
    """
    inner = base.with_extra_args_support(inner)

    def init_fn(params):
        return SparseLazyState(inner_state=inner.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        if not any(_is_sparse(u) for u in jax.tree.leaves(updates, is_leaf=_is_sparse)):
            new_updates, inner_state = inner.update(
                updates, state.inner_state, params, **extra_args
            )
            return new_updates, SparseLazyState(inner_state)
        if params is None:
            raise ValueError(base.NO_PARAMS_MSG)

        ids = jax.tree.map(
            lambda u: u.ids if _is_sparse(u) else None, updates, is_leaf=_is_sparse
        )
        _check_row_shapes(updates, params)
        row_updates = jax.tree.map(
            lambda u: u.values if _is_sparse(u) else u, updates, is_leaf=_is_sparse
        )
        row_params = jax.tree.map(_gather_if, params, ids, is_leaf=lambda x: x is None)
        row_state = map_param_mirrors(
            inner,
            lambda leaf, i: _gather_if(leaf, i),
            state.inner_state,
            param_info=ids,
        )
        new_row_updates, new_row_state = inner.update(
            row_updates, row_state, row_params, **extra_args
        )
        inner_state = map_param_mirrors(
            inner,
            _scatter_if,
            new_row_state,
            state.inner_state,
            param_info=ids,
        )
        new_updates = jax.tree.map(
            lambda u, i: u if i is None else SparseRows(i, u),
            new_row_updates,
            ids,
            is_leaf=lambda x: x is None,
        )
        return new_updates, SparseLazyState(inner_state)

    return base.GradientTransformationExtraArgs(init_fn, update_fn)


def _gather_if(leaf, ids):
    return leaf if ids is None else gather_rows(leaf, ids)


def _scatter_if(new_rows, full, ids):
    if ids is None:
        return new_rows
    return full.at[ids].set(new_rows.astype(full.dtype), mode="drop")


def _check_row_shapes(updates, params):
    def check(path, update, param):
        if _is_sparse(update) and update.values.shape[1:] != param.shape[1:]:
            raise ValueError(
                f"sparse_lazy: the SparseRows for {jax.tree_util.keystr(path)} have"
                f" rows of shape {update.values.shape[1:]}, but the table has"
                f" shape {param.shape}."
            )

    jax.tree_util.tree_map_with_path(check, updates, params, is_leaf=_is_sparse)
