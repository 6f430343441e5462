"""The rows a lookahead period touched, so that a sparse sync stays sparse.

Between two syncs, ``lookahead(sparse_lazy(...))`` moves only the rows its
:class:`~optax_lookahead.SparseRows` updates name. Every other row still has
fast weights equal to the slow ones (the last sync, or the first update, left
them equal), and ``slow + alpha * (fast - slow)`` leaves it as it is. So the
sync only has to interpolate the rows touched since the last sync. The state
records them as one flag per row, per table: a fixed-size record that a
jitted step can carry, and that costs a byte per row instead of a row.
"""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from optax_lookahead import _rows


def init(params):
    """No row touched yet: a flag per row (along axis 0) of every leaf."""

    def untouched(param):
        # Replicated on the param's mesh: a byte per row is small, and a sync
        # lists the flagged rows (jnp.nonzero), which needs the whole vector.
        sharding = getattr(param, "sharding", None)
        if isinstance(sharding, NamedSharding):
            sharding = NamedSharding(sharding.mesh, PartitionSpec())
        else:
            sharding = None
        return jnp.zeros(jnp.shape(param)[:1], jnp.bool_, device=sharding)

    return jax.tree.map(untouched, params)


def note(touched, updates):
    """``touched`` with the rows of this step's sparse updates flagged."""

    def flag(update, rows):
        if not _rows.is_sparse(update):
            return rows
        ids = _rows.clean_ids(update.ids, rows.shape[0])
        return rows.at[ids].set(True, mode="drop", **_rows.keep_layout(rows))

    return jax.tree.map(flag, updates, touched, is_leaf=_rows.is_sparse)


def sync(interpolate, touched, updates, fast, slow, sync_period: int):
    """The params and slow weights after a sync, and the record cleared.

    ``interpolate(slow, fast)`` gives the new slow weights of a leaf (or of
    some of its rows). A leaf with sparse updates syncs only the rows flagged
    in ``touched``, gathered ``sync_period`` times this step's number of ids
    at a time: one round when every step of the period had as many ids as this
    one, more if some had more. (A loop, not a ``lax.cond`` falling back to
    every row: XLA:CPU copies whole tables that a conditional passes through.)
    """

    def sync_leaf(update, touched, fast, slow):
        if not _rows.is_sparse(update):
            slow = interpolate(slow, fast)
            return slow, slow, touched
        num_rows = touched.shape[0]
        chunk = max(1, min(num_rows, sync_period * update.ids.size))

        def some_pending(carry):
            return jnp.any(carry[2])

        def sync_chunk(carry):
            fast, slow, touched = carry
            ids = jnp.nonzero(touched, size=chunk, fill_value=num_rows)[0]
            new = interpolate(
                _rows.gather_rows(slow, ids), _rows.gather_rows(fast, ids)
            )
            return (
                _rows.scatter_rows(fast, ids, new),
                _rows.scatter_rows(slow, ids, new),
                touched.at[ids].set(False, mode="drop", **_rows.keep_layout(touched)),
            )

        return jax.lax.while_loop(some_pending, sync_chunk, (fast, slow, touched))

    structure = jax.tree.structure(slow)
    synced = map(
        sync_leaf,
        jax.tree.leaves(updates, is_leaf=_rows.is_sparse),
        jax.tree.leaves(touched),
        jax.tree.leaves(fast),
        jax.tree.leaves(slow),
    )
    params, slow, touched = (
        jax.tree.unflatten(structure, leaves) for leaves in zip(*synced, strict=True)
    )
    return params, slow, touched
