"""The fused lookahead step, for training loops that apply updates themselves."""

import optax
from optax._src import base

from optax_lookahead._lookahead import LookaheadTransformation
from optax_lookahead._sparse_rows import apply_sparse_updates


def update_and_apply(
    tx: optax.GradientTransformation,
    params: base.Params,
    opt_state: base.OptState,
    grads: base.Updates,
    **extra_args,
) -> tuple[base.Params, base.OptState]:
    """``tx.update`` then ``optax.apply_updates``, with the lookahead sync after.

    Gives the same params and state as::

        updates, opt_state = tx.update(grads, opt_state, params, **extra_args)
        params = optax.apply_updates(params, updates)

    (up to one rounding of the params at a sync), but faster when ``tx`` is a
    :func:`lookahead`: the inner updates are applied first and the sync runs
    afterwards, on the params and slow weights only, under a ``lax.cond`` whose
    other branch passes both through. A transformation must hand its updates to
    ``apply_updates``, so the plain ``tx.update`` writes the inner updates to
    memory and reads them back on every step; here XLA fuses the inner step
    with the apply, as it does for ``optax.adam`` alone. With ``params`` and
    ``opt_state`` donated, the non-sync step moves no more memory than the
    inner optimizer's.

    Updates given as :class:`SparseRows` (from :func:`sparse_lazy`) are added
    in place, row by row. For any other ``tx`` (including a chain that holds a
    lookahead inside) this runs the two lines above; to get the fused step, put
    the lookahead outermost, e.g.
    ``lookahead(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)))``
    rather than the chain around it: the results are the
    same, since the sync does not look at the gradients.

    The arguments come in the order of the results, ``(params, opt_state)``,
    so that jitting this function with ``donate_argnums`` lets each donated
    buffer be reused by the result of the same shape (JAX pairs donated inputs
    with outputs in order).

    Args:
      tx: the optimizer, ideally a :func:`lookahead`.
      params: the current params.
      opt_state: ``tx``'s state.
      grads: the gradients, with the params' structure.
      **extra_args: forwarded to ``tx``'s update.

    Returns:
      The new params and the new optimizer state.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import optax
      >>> from optax_lookahead import lookahead, slow_params, update_and_apply
      >>> tx = lookahead(optax.sgd(1.0), sync_period=2)
      >>> params = jnp.array([4.0])
      >>> state = tx.init(params)
      >>> step = jax.jit(update_and_apply, static_argnums=0, donate_argnums=(1, 2))
      >>> for _ in range(2):
      ...     params, state = step(tx, params, state, jnp.array([1.0]))
      >>> params, slow_params(state)
      (Array([3.], dtype=float32), Array([3.], dtype=float32))
    """
    if isinstance(tx, LookaheadTransformation):
        return tx.update_and_apply(grads, opt_state, params, **extra_args)
    updates, opt_state = tx.update(grads, opt_state, params, **extra_args)
    return apply_sparse_updates(params, updates), opt_state
