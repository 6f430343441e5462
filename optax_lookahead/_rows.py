"""Which rows of an embedding table were sampled in this batch.

The one place that decides what "sampled" means, for detection from the
gradient and for rows given explicitly by the caller.
"""

import jax
import jax.numpy as jnp


def detect_sampled_rows(grad: jax.Array) -> jax.Array:
    """Returns a bool vector: True for each row of ``grad`` that is not all zero.

    ``sum(abs(g)) != 0`` was measured as the cheapest test that is also right at
    the edges: a row holding a NaN sums to NaN, which is ``!= 0``, so it counts as
    sampled and the NaN stays visible; tiny values (1e-30) do not underflow as
    they would in ``sum(g * g)``; and no table-size boolean temporary is built,
    as ``any(g != 0)`` would.
    """
    return jnp.sum(jnp.abs(grad), axis=tuple(range(1, grad.ndim))) != 0


def given_sampled_rows(sampled: jax.Array, num_rows: int, where: str) -> jax.Array:
    """Turns a caller's row mask or row ids into a bool vector of ``num_rows``.

    Args:
      sampled: a bool vector of length ``num_rows`` (True = sampled), or an
        integer array of row ids of any shape. Ids outside ``[0, num_rows)``,
        negative ones included, are ignored, so a fixed-size id buffer can be
        padded with ``-1``. Repeated ids are fine.
      num_rows: the table's number of rows.
      where: the tree path of the table, for error messages.

    Returns:
      A bool vector of shape ``(num_rows,)``.
    """
    sampled = jnp.asarray(sampled)
    if sampled.dtype == jnp.bool_:
        if sampled.shape != (num_rows,):
            raise ValueError(
                f"sampled_rows for {where}: a boolean row mask must have shape"
                f" ({num_rows},), one flag per row, got shape {sampled.shape}."
            )
        return sampled
    if not jnp.issubdtype(sampled.dtype, jnp.integer):
        raise TypeError(
            f"sampled_rows for {where}: expected a boolean row mask or an integer"
            f" array of row ids, got dtype {sampled.dtype}."
        )
    ids = sampled.reshape(-1)
    # Negative ids would wrap around to the end of the table in JAX indexing;
    # send them out of range instead, where mode="drop" ignores them.
    ids = jnp.where(ids < 0, num_rows, ids)
    return jnp.zeros((num_rows,), jnp.bool_).at[ids].set(True, mode="drop")


def broadcast_rows(rows: jax.Array, like: jax.Array) -> jax.Array:
    """Reshapes a row vector so it broadcasts against ``like`` along axis 0."""
    return rows.reshape(rows.shape + (1,) * (like.ndim - 1))
