"""The rows a lookahead period touched, so that a sparse sync stays sparse.

Between two syncs, ``lookahead(sparse_lazy(...))`` moves only the rows its
:class:`~optax_lookahead.SparseRows` updates name. Every other row still has
fast weights equal to the slow ones (the last sync, or the first update, left
them equal), and ``slow + alpha * (fast - slow)`` leaves it as it is. So the
sync only has to interpolate the rows touched since the last sync.

The state lists them per table in a :class:`TouchedRows`: a fixed-size
record that a jitted step can carry, which a step extends and a sync reads
without looking at the rows nobody touched. It is a sparse set: the first
``num_touched`` entries of ``ids`` name the touched rows, each once, and
``slot_of_row[r]`` says where row ``r`` stands in that list. A row is listed
when its slot is below ``num_touched`` and the list there names it back,
whatever stale values the other slots hold, so a sync empties the record by
setting ``num_touched`` to zero. Both cost and memory follow from that: a step
and a sync do work in proportion to the ids, never to the table, for two
int32 per row of state.

A dense update of a table (a step given a dense gradient for it) may move any
row, so it sets ``every_row``, and the next sync moves every row of that table.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from optax_lookahead import _rows, _state_tree

# The fewest rows a round of a sparse sync gathers, unless they would take
# more than ROUND_BYTES: few enough to cost little beside a step's own rows,
# enough that a sweep of every row (after a dense update) takes at most a
# thousandth of the table's rows in rounds. A table of wide rows (more than
# 4 KiB each) sweeps in rounds of fewer rows, never fewer than the step's.
MIN_ROWS_PER_ROUND = 1024
ROUND_BYTES = 4 << 20


class TouchedRows(NamedTuple):
    """The rows of one table that sparse updates touched since the last sync.

    Attributes:
      ids: int32, one entry per table row; the first ``num_touched`` name the
        touched rows, each once, in the order they were first touched.
      slot_of_row: int32, one entry per table row: the index in ``ids`` of a
        touched row (entries of other rows are stale and mean nothing).
      num_touched: int32 scalar, the number of rows touched.
      every_row: bool scalar, whether a dense update moved the table since the
        last sync (then the sync moves every row, listed or not).
    """

    ids: jax.Array
    slot_of_row: jax.Array
    num_touched: jax.Array
    every_row: jax.Array


def _is_record(x) -> bool:
    return isinstance(x, TouchedRows)


class _Bookkeeping:
    """What ``init`` gives optax's layout probe: one leaf, not params-like."""

    def __repr__(self):
        return "<touched rows: bookkeeping, not a copy of the params>"


def init(params):
    """No row touched yet: an empty record for every leaf (rows along axis 0).

    The record is built leaf by leaf from the params, but it is bookkeeping,
    not a mirror of them: to ``optax.tree.map_params`` (which calls ``init``
    with a placeholder for the params) it shows one leaf that is not params,
    so ``transform_non_params`` receives the whole record, and the README's
    recipe for sharded states replicates it.
    """
    if _state_tree.is_layout_probe(params):
        return _Bookkeeping()

    def empty(param):
        # Replicated on the param's mesh: eight bytes per row are small, and
        # every device must be able to read the whole list at a sync.
        sharding = getattr(param, "sharding", None)
        if isinstance(sharding, NamedSharding):
            sharding = NamedSharding(sharding.mesh, PartitionSpec())
        else:
            sharding = None
        num_rows = jnp.shape(param)[0] if jnp.ndim(param) else 1
        return TouchedRows(
            ids=jnp.zeros((num_rows,), jnp.int32, device=sharding),
            slot_of_row=jnp.zeros((num_rows,), jnp.int32, device=sharding),
            num_touched=jnp.zeros((), jnp.int32, device=sharding),
            every_row=jnp.zeros((), jnp.bool_, device=sharding),
        )

    return jax.tree.map(empty, params)


def note(touched, updates):
    """``touched`` with the rows of this step's sparse updates listed."""

    def note_leaf(update, record):
        if not _rows.is_sparse(update):
            return record._replace(every_row=jnp.ones_like(record.every_row))
        num_rows = record.ids.shape[0]
        ids = _rows.clean_ids(update.ids, num_rows)  # padding: num_rows
        new = (ids < num_rows) & ~_listed(record, ids)
        # An id repeated within this step is listed once: each of its slots
        # claims the row, and the claim that the scatter keeps wins.
        claim = jnp.arange(ids.size, dtype=jnp.int32)
        claimed = _rows.scatter_rows(
            record.slot_of_row, jnp.where(new, ids, num_rows), claim
        )
        first = new & (_get(claimed, ids) == claim)
        slot = record.num_touched + jnp.cumsum(first, dtype=jnp.int32) - 1
        return TouchedRows(
            ids=_rows.scatter_rows(record.ids, jnp.where(first, slot, num_rows), ids),
            slot_of_row=_rows.scatter_rows(
                claimed, jnp.where(first, ids, num_rows), slot
            ),
            num_touched=record.num_touched + jnp.sum(first, dtype=jnp.int32),
            every_row=record.every_row,
        )

    return jax.tree.map(note_leaf, updates, touched, is_leaf=_rows.is_sparse)


def sync(interpolate, touched, updates, fast, slow):
    """The params and slow weights after a sync, and the record emptied.

    ``interpolate(slow, fast)`` gives the new slow weights of a leaf (or of
    some of its rows). A leaf with sparse updates syncs only the rows its
    record lists (every row, after a dense update), gathered this step's
    number of ids at a time or more (``_rows_per_round``): one round when the
    period touched no more rows than that, more otherwise.
    (A loop, not a ``lax.cond`` falling back to every row: XLA:CPU copies
    whole tables that a conditional passes through.)
    """

    def sync_leaf(update, record, fast, slow):
        if not _rows.is_sparse(update):
            slow = interpolate(slow, fast)
            return slow, slow, _emptied(record)
        num_rows = record.ids.shape[0]
        chunk = max(1, min(num_rows, _rows_per_round(update.ids.size, slow)))
        # After a dense update, slot i stands for row i: every row is pending.
        pending = jnp.where(record.every_row, num_rows, record.num_touched)

        def some_pending(carry):
            return carry[0] < pending

        def sync_chunk(carry):
            start, fast, slow = carry
            slot = start + jnp.arange(chunk, dtype=jnp.int32)
            row = jnp.where(record.every_row, slot, _get(record.ids, slot))
            ids = jnp.where(slot < pending, row, num_rows)
            new = interpolate(
                _rows.gather_rows(slow, ids), _rows.gather_rows(fast, ids)
            )
            return (
                start + chunk,
                _rows.scatter_rows(fast, ids, new),
                _rows.scatter_rows(slow, ids, new),
            )

        start = jnp.zeros_like(record.num_touched)
        _, fast, slow = jax.lax.while_loop(
            some_pending, sync_chunk, (start, fast, slow)
        )
        return fast, slow, _emptied(record)

    structure = jax.tree.structure(slow)
    synced = map(
        sync_leaf,
        jax.tree.leaves(updates, is_leaf=_rows.is_sparse),
        jax.tree.leaves(touched, is_leaf=_is_record),
        jax.tree.leaves(fast),
        jax.tree.leaves(slow),
    )
    params, slow, touched = (
        jax.tree.unflatten(structure, leaves) for leaves in zip(*synced, strict=True)
    )
    return params, slow, touched


def _rows_per_round(num_ids: int, table: jax.Array) -> int:
    """The rows a round of the sync gathers: the step's ids, and at least
    ``MIN_ROWS_PER_ROUND`` where they fit in ``ROUND_BYTES`` (a step with few
    ids would otherwise sweep a table after a dense update in as many rounds
    as it has rows over ids)."""
    row_bytes = max(1, math.prod(table.shape[1:]) * table.dtype.itemsize)
    return max(num_ids, min(MIN_ROWS_PER_ROUND, ROUND_BYTES // row_bytes))


def emptied(touched):
    """Every record of ``touched`` (a tree of them, or None) emptied."""
    return jax.tree.map(_emptied, touched, is_leaf=_is_record)


def _emptied(record: TouchedRows) -> TouchedRows:
    return record._replace(
        num_touched=jnp.zeros_like(record.num_touched),
        every_row=jnp.zeros_like(record.every_row),
    )


def _listed(record: TouchedRows, ids: jax.Array) -> jax.Array:
    """Whether each of ``ids`` (inside the table) is already in the record."""
    slot = _get(record.slot_of_row, ids)
    return (slot >= 0) & (slot < record.num_touched) & (_get(record.ids, slot) == ids)


def _get(vector: jax.Array, index: jax.Array) -> jax.Array:
    """``vector[index]``, with -1 where the index is outside the vector."""
    return jnp.asarray(vector).at[index].get(mode="fill", fill_value=-1)
