"""Lazy updates whose cost follows the sampled rows, not the vocabulary.

A dense optimizer step reads and writes every row of an embedding table and of
its moments. :func:`sparse_lazy` runs the wrapped optimizer on the rows a
:class:`SparseRows` gradient names: it gathers them from the params and from
every state leaf that mirrors the params, runs the optimizer once on that small
problem (so step counts advance once, for the whole tree), and scatters the new
state rows back in place.
"""

from typing import NamedTuple

import jax
import optax
from optax._src import base

from optax_lookahead import _order
from optax_lookahead._mirrors import map_param_mirrors
from optax_lookahead._sparse_rows import SparseRows, gather_rows, is_sparse


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
    _order.check_transformation("sparse_lazy", inner)
    inner = base.with_extra_args_support(inner)

    def init_fn(params):
        inner_state = inner.init(params)
        _order.check_no_lookahead_inside("sparse_lazy", inner_state)
        return SparseLazyState(inner_state=inner_state)

    def update_fn(updates, state, params=None, **extra_args):
        if not any(is_sparse(u) for u in jax.tree.leaves(updates, is_leaf=is_sparse)):
            new_updates, inner_state = inner.update(
                updates, state.inner_state, params, **extra_args
            )
            return new_updates, SparseLazyState(inner_state)
        if params is None:
            raise ValueError(base.NO_PARAMS_MSG)

        ids = jax.tree.map(
            lambda u: u.ids if is_sparse(u) else None, updates, is_leaf=is_sparse
        )
        _check_row_shapes(updates, params)
        row_updates = jax.tree.map(
            lambda u: u.values if is_sparse(u) else u, updates, is_leaf=is_sparse
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
        if is_sparse(update) and update.values.shape[1:] != param.shape[1:]:
            raise ValueError(
                f"sparse_lazy: the SparseRows for {jax.tree_util.keystr(path)} have"
                f" rows of shape {update.values.shape[1:]}, but the table has"
                f" shape {param.shape}."
            )

    jax.tree_util.tree_map_with_path(check, updates, params, is_leaf=is_sparse)
