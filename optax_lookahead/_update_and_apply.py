"""One call for a whole optimizer step: the fused lookahead step, sparse rows."""

import warnings

import optax

from optax_lookahead import _lookahead_in_tree, _rows
from optax_lookahead._lookahead import LookaheadTransformation


def update_and_apply(
    tx: optax.GradientTransformation,
    params: optax.Params,
    opt_state: optax.OptState,
    grads: optax.Updates,
    **extra_args,
) -> tuple[optax.Params, optax.OptState]:
    """``tx.update`` then ``optax.apply_updates``, with the lookahead sync after.

    Gives the same params and state as::

        updates, opt_state = tx.update(grads, opt_state, params, **extra_args)
        params = optax.apply_updates(params, updates)

    (up to one rounding of the params at a sync), but faster when ``tx`` is a
    :func:`lookahead`: the inner updates are applied first and the sync runs
    afterwards, on the params and slow weights only. A transformation must hand
    its updates to ``apply_updates``, so the plain ``tx.update`` writes the
    inner updates to memory and reads them back on every step; here XLA fuses
    the inner step with the apply, as it does for ``optax.adam`` alone. (Under
    plain ``jax.jit``, XLA:CPU also copies the params once per step, because
    of the conditional that takes the slow weights from the first update's
    params. Under :func:`lookahead_jit` there is no conditional and no copy,
    and the plain ``tx.update`` form compiles to the same program.)

    Updates given as :class:`SparseRows` (from :func:`sparse_lazy`) are added
    in place, row by row. For any other ``tx`` this runs the two lines above.
    A lookahead inside another transformation (a chain, ``inject_hyperparams``)
    cannot be fused, and a ``UserWarning`` says so at trace time: put the
    lookahead outermost, e.g.
    ``lookahead(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)))``
    rather than the chain around it; the results are the same, since the sync
    does not look at the gradients.

    The arguments come in the order of the results, ``(params, opt_state)``,
    so that jitting this function with ``donate_argnums`` lets each donated
    buffer be reused by the result of the same shape (JAX pairs donated inputs
    with outputs in order).

    Args:
      tx: the optimizer, ideally a :func:`lookahead`.
      params: the current params.
      opt_state: ``tx``'s state.
      grads: the gradients, with the params' structure (a leaf may be a
        :class:`SparseRows` for :func:`sparse_lazy`).
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
    if params is None:
        raise ValueError(
            "update_and_apply(tx, params, opt_state, grads): params is None; the"
            " arguments are in the order of the results, params first."
        )
    if isinstance(tx, LookaheadTransformation):
        return tx.update_and_apply(grads, opt_state, params, **extra_args)
    if _lookahead_in_tree.lookahead_states(opt_state):
        warnings.warn(
            "update_and_apply: tx holds a lookahead inside another transformation"
            " (a chain or a wrapper), so the fused step cannot be used and this"
            " runs tx.update then the apply (same results, the plain step's"
            " cost). Put the lookahead outermost:"
            " lookahead(optax.chain(...)).",
            stacklevel=2,
        )
    updates, opt_state = tx.update(grads, opt_state, params, **extra_args)
    return _rows.apply_sparse_updates(params, updates), opt_state
