"""Lazy updates whose cost follows the sampled rows, not the vocabulary.

A dense optimizer step reads and writes every row of an embedding table and of
its moments. :func:`sparse_lazy` runs the wrapped optimizer on the rows a
:class:`SparseRows` gradient names: it gathers them from the params and from
every state leaf that mirrors the params, runs the optimizer once on that small
problem (so step counts advance once, for the whole tree), and scatters the new
state rows back in place.

That is only right for an optimizer that treats rows independently. Adam,
AdamW, momentum, Adagrad and RMSProp do; LAMB, LARS and ``scale_by_trust_ratio``
(norms over a whole table), Muon (orthogonalises a whole matrix), Adafactor
and SM3 (factored statistics) do not. The first time an update is traced for a
tree, a small probe runs the optimizer both ways on stand-in tables and
refuses the ones whose results differ.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_lookahead import _checks, _lookahead_in_tree, _rows, _state_tree


class SparseLazyState(NamedTuple):
    """State of :func:`sparse_lazy`.

    Attributes:
      inner_state: the wrapped optimizer's state, dense, for all params.
    """

    inner_state: optax.OptState


def sparse_lazy(inner: optax.GradientTransformation) -> _rows.SparseTransformation:
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

    Ids outside the table are padding and dropped; repeated ids in a
    hand-built :class:`SparseRows` are summed first, as the dense gradient
    would hold them; a ``num_rows`` recorded in the rows must equal the table's.
    The state keeps its dtypes: the new state rows are written back in the
    dtype of the state leaf (optax's Adam run densely on bfloat16 params with
    float32 gradients turns its moments into float32 after the first step, so
    there the two paths differ by the rounding of the moments).

    ``inner`` must treat rows independently (elementwise or per-row state):
    Adam, AdamW (decay reaches sampled rows only), SGD with momentum, Adagrad,
    RMSProp; global-norm clipping inside it sees the norm of the sampled rows,
    which is the norm of the full gradient since the other rows are zero.
    Optimizers that are not row-wise (LAMB, LARS, Muon, Adafactor, SM3) are
    refused with a ``ValueError`` when the update is traced. Transformations
    that should see the gradient (clipping, scaling) go inside:
    ``sparse_lazy(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)))``.

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
    _lookahead_in_tree.check_wrappable("sparse_lazy", inner)
    inner = optax.with_extra_args_support(inner)
    probed: set = set()  # the trees the row-wise probe has passed, by signature

    def init_fn(params):
        inner_state = inner.init(params)
        _lookahead_in_tree.check_no_lookahead_inside("sparse_lazy", inner_state)
        state = SparseLazyState(inner_state=inner_state)
        return _state_tree.place_counters_like_params(state, params)

    def update_fn(updates, state, params=None, **extra_args):
        if not _rows.has_sparse(updates):
            new_updates, inner_state = inner.update(
                updates, state.inner_state, params, **extra_args
            )
            return new_updates, SparseLazyState(inner_state)
        if params is None:
            raise ValueError(_checks.NO_PARAMS_MSG)
        rows = _checked_rows(updates, params)
        _state_tree.check_state_holds_rows(
            inner, state.inner_state, _sparse_tables(rows, params), _STATE_NOT_ROWS
        )
        _check_row_wise(inner, rows, params, probed)
        new_updates, inner_state = _row_step(
            inner, rows, updates, state.inner_state, params, **extra_args
        )
        return new_updates, SparseLazyState(inner_state)

    return _rows.SparseTransformation(init_fn, update_fn)


_STATE_NOT_ROWS = (
    "sparse_lazy runs the optimizer on the sampled rows only, so it needs an"
    " optimizer whose state holds one row per table row; its state holds a leaf"
    " of shape {got} for a table of shape {want} (optax.adafactor and"
    " optax.sm3 factor their statistics). Use lazy_mask(inner) with a dense"
    " gradient instead."
)


def _is_sparse_or_none(x) -> bool:
    return x is None or _rows.is_sparse(x)


def _checked_rows(updates, params):
    """A tree like the params: each sparse gradient checked and coalesced."""

    def check(path, update, param):
        if not _rows.is_sparse(update):
            return None
        if not jnp.issubdtype(update.ids.dtype, jnp.integer):
            raise TypeError(
                f"sparse_lazy {_name(path)}: SparseRows.ids have dtype"
                f" {update.ids.dtype}; a transformation before sparse_lazy treated"
                " them as numbers. Put it inside: sparse_lazy(optax.chain(...))."
            )
        rows = _rows.checked_rows(update, param, f"sparse_lazy {_name(path)}")
        return _rows.coalesce(rows, param.shape[0])

    return jax.tree_util.tree_map_with_path(
        check, updates, params, is_leaf=_rows.is_sparse
    )


def _sparse_tables(rows, params):
    return jax.tree.map(
        lambda r, p: None if r is None else p, rows, params, is_leaf=_is_sparse_or_none
    )


def _row_step(inner, rows, updates, inner_state, params, **extra_args):
    """``inner`` on the gathered rows; the new state rows scattered back."""
    ids = jax.tree.map(
        lambda r: None if r is None else r.ids, rows, is_leaf=_is_sparse_or_none
    )
    row_grads = jax.tree.map(
        lambda u, r: u if r is None else r.values,
        updates,
        rows,
        is_leaf=_is_sparse_or_none,
    )
    row_params = jax.tree.map(_gather_if, params, ids, is_leaf=lambda x: x is None)
    row_state = _state_tree.map_param_mirrors(
        inner, _gather_if, inner_state, param_info=ids
    )
    new_row_updates, new_row_state = inner.update(
        row_grads, row_state, row_params, **extra_args
    )
    new_state = _state_tree.map_param_mirrors(
        inner, _scatter_if, new_row_state, inner_state, param_info=ids
    )
    new_updates = jax.tree.map(
        lambda u, r: u if r is None else _rows.SparseRows(r.ids, u, r.num_rows),
        new_row_updates,
        rows,
        is_leaf=_is_sparse_or_none,
    )
    return new_updates, new_state


def _gather_if(leaf, ids):
    return leaf if ids is None else _rows.gather_rows(leaf, ids)


def _scatter_if(new_rows, full, ids):
    return new_rows if ids is None else _rows.scatter_rows(full, ids, new_rows)


def _check_row_wise(inner, rows, params, probed: set) -> None:
    """Refuses an ``inner`` whose sampled rows depend on the other rows.

    Runs ``inner`` on stand-in params (the sparse tables cut to 4 rows, other
    leaves to at most 4 per axis, float32, random) with 2 of the 4 rows sampled,
    once densely (then keeping the unsampled rows, as
    ``lazy_mask(freeze_state=True)`` would) and once on the gathered rows, and
    compares; at unit scale, with gradients 1000 times larger and with params
    1000 times smaller, so that thresholds on a whole table's statistics act.
    Compiles once per tree signature, at trace time, and runs on the host.
    """
    sparse = jax.tree.map(lambda r: r is not None, rows, is_leaf=_is_sparse_or_none)
    signature = (
        jax.tree.structure(params),
        tuple((jnp.shape(p), str(jnp.result_type(p))) for p in jax.tree.leaves(params)),
        tuple(jax.tree.leaves(sparse)),
    )
    if signature in probed:
        return
    try:
        differs = _probe_differs(inner, sparse, params)
    except Exception:  # noqa: BLE001 - e.g. an optimizer that needs extra args
        differs = None  # cannot tell; the state-shape check still applies
    if differs:
        raise ValueError(
            "sparse_lazy: the wrapped optimizer does not treat the rows of"
            f" {differs} independently: its update of the sampled rows depends"
            " on the rows that were not sampled (for example LAMB, LARS and"
            " scale_by_trust_ratio use a whole table's norm, Muon"
            " orthogonalises a whole matrix), so it cannot run on the sampled"
            " rows alone. Use lazy_mask(inner, freeze_state=False) with a dense"
            " gradient, or a row-wise optimizer (Adam, AdamW, momentum,"
            " Adagrad, RMSProp) in sparse_lazy."
        )
    probed.add(signature)


def _probe_differs(inner, sparse, params):
    """The name of a leaf where the sparse and dense steps differ, or None."""
    rng = np.random.default_rng(0)
    sampled = np.array([False, True, False, True])
    ids = np.flatnonzero(sampled)

    def stand_in(is_sparse, param):
        shape = jnp.shape(param)
        shape = (4,) + shape[1:] if is_sparse else tuple(min(d, 4) for d in shape)
        return rng.standard_normal(shape).astype(np.float32)

    def gradient(is_sparse, param):
        grad = rng.standard_normal(param.shape).astype(np.float32)
        if is_sparse:
            grad[~sampled] = 0
        return grad

    stand_ins = jax.tree.map(stand_in, sparse, params)
    warm_grads = jax.tree.map(
        lambda p: rng.standard_normal(p.shape).astype(np.float32), stand_ins
    )
    grads = jax.tree.map(gradient, sparse, stand_ins)

    def both_ways(stand_ins, warm_grads, grads):
        _, state = inner.update(warm_grads, inner.init(stand_ins), stand_ins)
        dense_updates, dense_state = inner.update(grads, state, stand_ins)
        row_flags = jax.tree.map(lambda s: jnp.asarray(sampled) if s else None, sparse)
        dense_state = _state_tree.map_param_mirrors(
            inner,
            lambda new, old, flags: (
                new
                if flags is None
                else jnp.where(_rows.broadcast_rows(flags, new), new, old)
            ),
            dense_state,
            state,
            param_info=row_flags,
        )
        sparse_grads = jax.tree.map(
            lambda s, g: _rows.SparseRows(jnp.asarray(ids), g[ids], 4) if s else g,
            sparse,
            grads,
        )
        rows = _checked_rows(sparse_grads, stand_ins)
        row_updates, row_state = _row_step(inner, rows, sparse_grads, state, stand_ins)
        return dense_updates, dense_state, row_updates, row_state

    # Compiled and called directly: it runs now, also while an outer jit traces.
    inputs = (stand_ins, warm_grads, grads)
    compiled = jax.jit(both_ways).lower(*inputs).compile()

    # Thresholds (clip_by_block_rms, adaptive_grad_clip) act on whole tables
    # only at some scales: run at unit scale, with large gradients, and with
    # small params.
    def scaled(tree, factor):  # NumPy arrays: jnp operations would join the trace
        return jax.tree.map(lambda x: x * np.float32(factor), tree)

    for param_scale, grad_scale in ((1.0, 1.0), (1.0, 1e3), (1e-3, 1.0)):
        outputs = compiled(
            scaled(stand_ins, param_scale),
            scaled(warm_grads, grad_scale),
            scaled(grads, grad_scale),
        )
        outputs = jax.tree.map(np.asarray, outputs)  # on the host, as above
        differs = _first_difference(sparse, ids, *outputs)
        if differs:
            return differs
    return None


def _first_difference(sparse, ids, dense_updates, dense_state, row_updates, row_state):
    """The name of a leaf where the dense and row steps differ, or None."""

    def close(a, b):
        return np.allclose(a, b, rtol=1e-4, atol=1e-6)

    flat_sparse = jax.tree_util.tree_leaves_with_path(sparse)
    flat_dense = jax.tree.leaves(dense_updates)
    flat_rows = jax.tree.leaves(row_updates, is_leaf=_rows.is_sparse)
    for (path, is_sparse), dense, got in zip(
        flat_sparse, flat_dense, flat_rows, strict=True
    ):
        want = dense[ids] if is_sparse else dense
        got = got.values if is_sparse else got
        if not close(got, want):
            return _name(path)
    for dense, got in zip(
        jax.tree.leaves(dense_state), jax.tree.leaves(row_state), strict=True
    ):
        if not close(got, dense):
            return "its state"
    return None


def _name(path) -> str:
    return jax.tree_util.keystr(path) or "the params"
