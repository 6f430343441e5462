"""Lazy embedding updates: rows that were not sampled do not move."""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_lookahead import _checks, _lookahead_in_tree, _rows, _state_tree

EMBEDDING_NAME = "embedding"

# Keys that wrap a value rather than name it: Flax NNX's init sees
# `Param` variables, whose array sits under `.value`.
_WRAPPER_KEYS = ("value", "raw_value")

_FOR_SPARSE_ROWS = (
    "For SparseRows gradients use sparse_lazy(inner) with"
    " optax_lookahead.update_and_apply."
)


class LazyMaskState(NamedTuple):
    """State of :func:`lazy_mask`.

    Attributes:
      inner_state: the wrapped optimizer's state, for all params (the mask only
        decides which rows of the selected tables may move).
    """

    inner_state: optax.OptState


Mask = Any | Callable[[optax.Params], Any] | None


def lazy_mask(
    inner: optax.GradientTransformation | None = None,
    mask: Mask = None,
    freeze_state: bool = False,
    *,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Wraps an optimizer so rows of embedding tables that were not sampled stay put.

    With a momentum optimizer (Adam, SGD with momentum) a row of an embedding
    table whose word is not in the batch has a zero gradient but still moves,
    because its stored momentum keeps pushing it. Wrapped in ``lazy_mask``, the
    rows of the selected tables get a zero update unless they were sampled in
    this batch. Leaves that are not selected are updated by ``inner`` as usual.

    A row counts as sampled when its gradient row is not all zero (a row holding
    a NaN counts as sampled, so NaNs stay visible). When every row has a non-zero
    gradient anyway (an L2 term in the loss, gradient noise), pass the sampled
    rows explicitly: ``update(..., sampled_rows=ids)``. For weight decay, use a
    decoupled one inside the wrapped optimizer (``optax.adamw``): it then decays
    only the sampled rows.

    ``lazy_mask`` must wrap the optimizer: a transformation placed before Adam
    in a chain can only change gradients, and unsampled rows already have zero
    gradient. With lookahead, put ``lazy_mask`` inside: ``lookahead(lazy_mask(
    optax.adam(1e-3)))``; masking a sync step would leave the fast and slow
    weights apart.

    Data parallel code under ``pmap`` or ``shard_map`` that gives each device
    its own ``sampled_rows`` (or a table sharded by columns, where a device sees
    only some columns of each gradient row) must name the mapped axes in
    ``axis_name``: the row flags are then OR-ed across them, one all-reduce of
    a row vector per table, so every device masks the same rows. Under ``jit``
    with sharded global arrays nothing is needed.

    With ``optax.MultiSteps`` (outside, ``optax.MultiSteps(lazy_mask(...))``:
    the other order is refused at ``init``), the wrapped optimizer runs once per
    ``every_k_schedule`` micro-batches, on the accumulated gradient, and sees
    only the extra arguments of the last micro-batch. Detection from the
    gradient (the default) then sees every micro-batch's rows; explicit
    ``sampled_rows`` must be the union of all the micro-batches' ids, given at
    every micro-step (at least at the last one).

    Args:
      inner: the optimizer to wrap, any optax transformation.
      mask: which leaves are embedding tables (rows along axis 0; a 1-D leaf,
        such as per-token biases, has one element per row). ``None`` (default)
        selects every leaf whose key path ends in ``"embedding"``, the parameter
        name of Flax's ``nn.Embed`` and ``nnx.Embed``. Otherwise a tree of bools
        with the params' structure (or a prefix of it), or a callable taking the
        params (at ``init``) or the updates (at ``update``) and returning such a
        tree, as for ``optax.masked``.
      freeze_state: ``False`` (default) is Su Jianlin's LazyOptimizer: the inner
        state (momenta) keeps evolving for every row, only the step of unsampled
        rows is masked. ``True`` also keeps the inner state rows of unsampled
        rows unchanged, as TensorFlow's LazyAdam and PyTorch's SparseAdam do;
        step counts stay global. It needs an inner optimizer whose state holds
        one row per table row (Adam, momentum, Adagrad, RMSProp), which is
        checked at ``init``.
      axis_name: the mapped axis name (or a tuple of names) over which sampled
        rows are combined, for ``pmap`` / ``shard_map`` code; ``None`` (default)
        for single-device and ``jit`` code. Never the axis a table's rows are
        sharded over.

    Returns:
      An optax ``GradientTransformationExtraArgs`` whose state is a
      :class:`LazyMaskState`. Its ``update`` takes an optional keyword argument
      ``sampled_rows``: for each selected table, either a boolean vector with one
      flag per row or an integer array of sampled row ids (ids outside the
      table, such as ``-1`` padding, are ignored; repeats are fine). Give one
      array (a Python list of ids counts as one) to use it for every selected
      table, or a tree with the params' structure holding an array (or
      ``None`` to detect) per selected table.
      Other extra arguments are forwarded to ``inner``.

    Raises:
      TypeError: if ``inner`` is missing or not an optax transformation, or
        ``freeze_state`` is not a bool.
      ValueError: if ``inner`` is a :func:`lookahead` (the order is reversed), or,
        at ``init``, if ``inner`` holds an ``optax.MultiSteps`` or a
        lookahead, if the mask does not match the params, selects nothing or
        a scalar, or ``freeze_state=True`` meets an optimizer whose state does
        not hold one row per table row.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> from optax_lookahead import lazy_mask
      >>> params = {"embedding": jnp.ones((3, 2))}
      >>> tx = lazy_mask(optax.sgd(1.0, momentum=0.9))
      >>> state = tx.init(params)
      >>> grads = {"embedding": jnp.array([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])}
      >>> _, state = tx.update(grads, state, params)
      >>> grads = {"embedding": jnp.array([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])}
      >>> updates, state = tx.update(grads, state, params)
      >>> updates["embedding"]  # row 0 has momentum but was not sampled
      Array([[ 0.,  0.],
             [-1., -1.],
             [ 0.,  0.]], dtype=float32)

    References:
      Su Jianlin, `Keras Implementation of LazyOptimizer
      <https://kexue.fm/archives/6869>`_, 2019.
    """
    if inner is None:
        raise TypeError(
            "lazy_mask(inner, ...) needs the optimizer to wrap: a transformation"
            " placed before the optimizer in optax.chain can only change"
            " gradients, and the optimizer's momentum would still move the"
            " unsampled rows. Write"
            f" {_lookahead_in_tree.working_form('lazy_mask')}."
        )
    _lookahead_in_tree.check_wrappable("lazy_mask", inner)
    _checks.check_bool("lazy_mask(freeze_state=...)", freeze_state)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        inner_state = inner.init(params)
        if _state_tree.is_layout_probe(params):
            return LazyMaskState(inner_state=inner_state)
        _lookahead_in_tree.check_no_lookahead_inside("lazy_mask", inner_state)
        _check_no_multisteps_inside(inner_state)
        selected = _selection(mask, params)
        if freeze_state:
            _state_tree.check_state_holds_rows(
                inner, inner_state, _selected_tables(selected, params), _NOT_ROW_WISE
            )
        state = LazyMaskState(inner_state=inner_state)
        return _state_tree.place_counters_like_params(state, params)

    def update_fn(updates, state, params=None, sampled_rows=None, **extra_args):
        _rows.refuse_sparse(updates, "lazy_mask", _FOR_SPARSE_ROWS)
        rows = _sampled_rows_per_leaf(
            _selection(mask, updates), updates, sampled_rows, axis_name
        )
        inner_updates, inner_state = inner.update(
            updates, state.inner_state, params, **extra_args
        )
        masked_updates = jax.tree.map(
            _mask_rows, inner_updates, rows, is_leaf=lambda x: x is None
        )
        if freeze_state:
            inner_state = _state_tree.map_param_mirrors(
                inner,
                _keep_unsampled_rows,
                inner_state,
                state.inner_state,
                param_info=rows,
            )
        return masked_updates, LazyMaskState(inner_state=inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


_NOT_ROW_WISE = (
    "lazy_mask(freeze_state=True) keeps the optimizer state of unsampled rows,"
    " so it needs an inner optimizer whose state holds one row per table row"
    " (Adam, SGD with momentum, Adagrad, RMSProp); its state holds a leaf of"
    " shape {got} for a table of shape {want}. Use freeze_state=False with this"
    " optimizer (for example optax.adafactor or optax.sm3, which factor their state)."
)


def _mask_rows(update, rows):
    if rows is None:
        return update
    # A select, not a multiply: 0 * NaN momentum would still be NaN.
    return jnp.where(_rows.broadcast_rows(rows, update), update, 0)


def _check_no_multisteps_inside(inner_state) -> None:
    """Refuses ``lazy_mask(optax.MultiSteps(...))``, found from its state."""
    is_multisteps = lambda x: isinstance(x, optax.MultiStepsState)
    if any(map(is_multisteps, jax.tree.leaves(inner_state, is_leaf=is_multisteps))):
        raise ValueError(
            "lazy_mask is wrapped around an optax.MultiSteps: it would mask the"
            " accumulated update with the rows of the last micro-batch only, so"
            " rows sampled in earlier micro-batches would never move. Put"
            " MultiSteps outside: optax.MultiSteps(lazy_mask(optax.adam(1e-3)),"
            " every_k_schedule=k)."
        )


def _keep_unsampled_rows(new, old, rows):
    """Frozen-state rule for one state leaf that mirrors a param."""
    if rows is None:  # the param is not a selected table
        return new
    return jnp.where(_rows.broadcast_rows(rows, new), new, old)


def _selected_tables(selected, params):
    """A tree like ``params``: each selected table, else None."""
    return jax.tree.map(lambda flag, leaf: leaf if flag else None, selected, params)


def _selection(mask: Mask, tree) -> Any:
    """Returns a tree like ``tree`` with True at the selected leaves, checked."""
    if mask is None:
        selected = jax.tree_util.tree_map_with_path(
            lambda path, _: _ends_in_embedding(path), tree
        )
    else:
        mask_tree = mask(tree) if callable(mask) else mask
        for flag in jax.tree.leaves(mask_tree):
            _check_flag(flag)
        try:
            selected = jax.tree.map(
                lambda flag, subtree: jax.tree.map(lambda _: bool(flag), subtree),
                mask_tree,
                tree,
            )
        except (ValueError, TypeError) as error:
            raise ValueError(
                "lazy_mask: the mask must be a tree of bools with the params'"
                " structure (or a prefix of it), or a callable returning one;"
                f" it does not match the params: {error}"
            ) from None
    flagged = jax.tree_util.tree_leaves_with_path(selected)
    if not any(flag for _, flag in flagged):
        raise ValueError(
            "lazy_mask: the mask selects no parameter, so nothing would be lazy."
            " The default mask selects leaves whose path ends in 'embedding'"
            f" (found: {[jax.tree_util.keystr(p) for p, _ in flagged]}); pass"
            " mask= to choose the embedding tables."
        )
    for (path, flag), leaf in zip(flagged, jax.tree.leaves(tree), strict=True):
        if flag and jnp.ndim(leaf) < 1:
            raise ValueError(
                f"lazy_mask: the mask selects {jax.tree_util.keystr(path)}, a"
                " scalar; only tables (rows along axis 0, at least 1-D) can be"
                " masked by row."
            )
    return selected


def _is_scalar_id(x) -> bool:
    """Whether ``x`` is one row id or flag: a scalar integer or bool of any kind."""
    if not (isinstance(x, int) or hasattr(x, "dtype")) or np.ndim(x) != 0:
        return False
    dtype = jnp.result_type(x)
    return jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_


def _check_flag(flag) -> None:
    """A mask leaf must be a boolean: a string or a number is no answer."""
    if np.ndim(flag) != 0 or np.asarray(flag).dtype != np.bool_:
        raise TypeError(
            f"lazy_mask: the mask's leaves must be True or False, got {flag!r}."
        )


def _ends_in_embedding(path) -> bool:
    names = jax.tree_util.keystr(path, simple=True, separator="/").split("/")
    while names and names[-1] in _WRAPPER_KEYS:
        names.pop()
    return bool(names) and names[-1] == EMBEDDING_NAME


def _sampled_rows_per_leaf(selected, updates, sampled_rows, axis_name):
    """A tree like ``updates``: a bool row vector per selected leaf, else None."""
    if isinstance(sampled_rows, list | tuple) and all(map(_is_scalar_id, sampled_rows)):
        # A Python list of ids (or flags) is one array, not a tree of tables
        # (under jit its entries arrive as scalar tracers).
        on_host = all(isinstance(x, int | np.generic) for x in sampled_rows)
        sampled_rows = (
            np.asarray(sampled_rows)  # NumPy: clean_ids checks int64 on the host
            if on_host
            else jnp.stack([jnp.asarray(x) for x in sampled_rows])
        )
    if sampled_rows is None or isinstance(sampled_rows, (jax.Array, np.ndarray)):
        given = jax.tree.map(lambda _: sampled_rows, updates)
    else:
        try:
            given = jax.tree.map(lambda _, s: s, updates, sampled_rows)
        except (ValueError, TypeError) as error:
            raise ValueError(
                "lazy_mask: sampled_rows must be one array (used for every selected"
                " table) or a tree with the structure of the updates lazy_mask"
                " sees, holding an array or None per table (under optax.masked"
                " or an nnx.Optimizer that tree holds MaskedNode or nnx.State"
                " nodes: pass one array there); it does not match the updates:"
                f" {error}"
            ) from None

    def rows_for(path, flag, update, given_rows):
        if not flag:
            return None
        if given_rows is None:
            rows = _rows.detect_sampled_rows(update)
        else:
            where = jax.tree_util.keystr(path)
            rows = _rows.given_sampled_rows(given_rows, update.shape[0], where)
        return _rows.combine_across(rows, axis_name)

    return jax.tree_util.tree_map_with_path(
        rows_for, selected, updates, given, is_leaf=lambda x: x is None
    )
