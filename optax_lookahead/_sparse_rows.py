"""Sparse rows of a table: the gradient of an embedding lookup, row by row.

A dense gradient of an embedding lookup is a table-size array that is zero
except in the rows the batch used. :class:`SparseRows` holds only those rows
(their ids and one gradient row each), for :func:`sparse_lazy`; these helpers
build it from a lookup's gradient and apply sparse updates in place.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax._src import base


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


def is_sparse(x) -> bool:
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
    """``table[ids]``, with zero rows for ids outside the table, ``-1`` included.

    Example:
      >>> import jax.numpy as jnp
      >>> from optax_lookahead import gather_rows
      >>> gather_rows(jnp.arange(6.0).reshape(3, 2), jnp.array([2, -1, 3]))
      Array([[4., 5.],
             [0., 0.],
             [0., 0.]], dtype=float32)
    """
    ids = jnp.asarray(ids)
    # JAX indexing wraps negative ids around to the end of the table before
    # mode="fill" looks at them; send them out of range instead.
    ids = jnp.where(ids < 0, table.shape[0], ids)
    return jnp.take(table, ids, axis=0, mode="fill", fill_value=0)


def apply_sparse_updates(params: base.Params, updates: base.Updates) -> base.Params:
    """``optax.apply_updates`` that also applies :class:`SparseRows` leaves.

    A sparse leaf adds its rows in place (``params.at[ids].add``, ids outside
    the table dropped), so under ``jax.jit`` with the params donated the cost
    follows the number of rows, not the size of the table.
    """

    def apply(param, update):
        if is_sparse(update):
            values = update.values.astype(param.dtype)
            return param.at[update.ids].add(values, mode="drop")
        return optax.apply_updates(param, update)

    return jax.tree.map(apply, params, updates, is_leaf=is_sparse)
