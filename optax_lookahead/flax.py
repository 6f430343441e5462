"""Flax helpers: slow-weight evaluation, the fused train state, sparse embeddings.

Both Flax APIs use ``lookahead`` and ``lazy_mask`` unchanged: linen's
``TrainState.apply_gradients`` and ``nnx.Optimizer.update`` call
``tx.update(grads, opt_state, params)``. What they cannot do on their own is
put the slow weights into a model for evaluation (:func:`slow_train_state`,
:func:`slow_model`, without copying any array), run the fused step
(:class:`LookaheadTrainState`), or take an embedding's gradient as its
looked-up rows (:class:`SparseEmbed`, :func:`sparse_embed_grads`). This module
imports Flax (``pip install 'optax_lookahead[flax]'``); the rest of the package
does not.
"""

import jax
import jax.numpy as jnp
import optax

try:
    from flax import linen as nn
    from flax import nnx
    from flax.training import train_state as linen_train_state
except ImportError as error:  # pragma: no cover - exercised without flax
    raise ImportError(
        "optax_lookahead.flax needs Flax: pip install 'optax_lookahead[flax]'."
    ) from error

from optax_lookahead._lookahead_in_tree import slow_params
from optax_lookahead._rows import gather_rows, sparse_rows
from optax_lookahead._update_and_apply import update_and_apply

__all__ = (
    "LookaheadTrainState",
    "SparseEmbed",
    "slow_model",
    "slow_train_state",
    "sparse_embed_grads",
)


class SparseEmbed(nn.Embed):
    """``nn.Embed`` whose gradient can be taken as the looked-up rows only.

    The same parameter (``embedding``), attributes and output as ``nn.Embed``,
    but the table is read through ``stop_gradient`` and the looked-up rows pass
    through ``self.perturb("rows", ...)``: differentiate with respect to the
    ``perturbations`` collection to get one gradient row per looked-up id, and
    turn those into :class:`~optax_lookahead.SparseRows` with
    :func:`sparse_embed_grads`, for :func:`~optax_lookahead.sparse_lazy`. No
    table-size gradient is built. Ids outside the table (padding) give zero
    rows and no gradient.

    Two things a dense ``nn.Embed`` allows cannot be served this way, and are
    refused with a ``ValueError`` instead of giving a wrong gradient:

    - ``attend`` (weight tying): it gives every row of the table a gradient, so
      the gradient is dense; use ``nn.Embed`` with ``lazy_mask`` for tied
      tables.
    - calling one ``SparseEmbed`` more than once per step (found at ``init``):
      the calls would share one perturbation. Look up the concatenated ids in
      one call and split the result.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import optax
      >>> from optax_lookahead import sparse_lazy, update_and_apply
      >>> from optax_lookahead.flax import SparseEmbed, sparse_embed_grads
      >>> model = SparseEmbed(num_embeddings=10, features=2)
      >>> ids = jnp.array([[3, 3, -1]])  # -1 is padding
      >>> variables = model.init(jax.random.key(0), ids)
      >>> params, perturbations = variables["params"], variables["perturbations"]
      >>> def loss(params, perturbations):
      ...     variables = {"params": params, "perturbations": perturbations}
      ...     return model.apply(variables, ids).sum()
      >>> grads, row_grads = jax.grad(loss, argnums=(0, 1))(params, perturbations)
      >>> grads = sparse_embed_grads(grads, row_grads, ids)
      >>> grads["embedding"].ids, grads["embedding"].values
      (Array([ 3, 10, 10], dtype=int32), Array([[2., 2.],
             [0., 0.],
             [0., 0.]], dtype=float32))
      >>> tx = sparse_lazy(optax.adam(1e-3))
      >>> params, state = update_and_apply(tx, params, tx.init(params), grads)
    """

    def __call__(self, inputs: jax.Array) -> jax.Array:
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError(f"SparseEmbed: ids must be integers, got {inputs.dtype}.")
        if self.is_initializing() and self.has_variable("perturbations", "rows"):
            raise ValueError(
                f"SparseEmbed {self.name!r} is called more than once: its calls"
                " would share one perturbation, and the row gradients could not"
                " be told apart. Look up all ids in one call (concatenate them)"
                " and split the result."
            )
        rows = gather_rows(jax.lax.stop_gradient(self.embedding), inputs)
        return self.perturb("rows", rows.astype(self.dtype or rows.dtype))

    def attend(self, query: jax.Array) -> jax.Array:
        raise ValueError(
            "SparseEmbed.attend (weight tying) gives every row of the table a"
            " gradient, which a sparse gradient of looked-up rows cannot hold."
            " Use flax.linen.Embed for a tied table, with lazy_mask(...) if its"
            " rows should be lazy."
        )


def sparse_embed_grads(grads, perturbation_grads, ids):
    """Puts the sparse gradient of every :class:`SparseEmbed` into ``grads``.

    Each ``SparseEmbed``'s ``embedding`` gradient is replaced by a
    :class:`~optax_lookahead.SparseRows` built from its row gradients and the
    ids it looked up (repeats summed, padding dropped). The dense gradient it
    replaces is zero, since a ``SparseEmbed`` reads its table through
    ``stop_gradient``; do not read the table elsewhere in the model.

    Args:
      grads: the gradient with respect to the params.
      perturbation_grads: the gradient with respect to the ``perturbations``
        collection, with one ``rows`` entry per ``SparseEmbed``.
      ids: the ids each ``SparseEmbed`` looked up: one array for all of them,
        or a dict from the module's path (a tuple of names, as in the params,
        e.g. ``("Embed_0",)``) to its ids.

    Returns:
      ``grads`` with a :class:`~optax_lookahead.SparseRows` for each table.

    Raises:
      ValueError: if a perturbation gradient has no ``embedding`` gradient
        beside it, or the ids do not match the looked-up rows' shape.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from optax_lookahead.flax import SparseEmbed, sparse_embed_grads
      >>> model = SparseEmbed(num_embeddings=10, features=2)
      >>> ids = jnp.array([[3, 3, -1]])  # -1 is padding
      >>> variables = model.init(jax.random.key(0), ids)
      >>> def loss(params, perturbations):
      ...     variables = {"params": params, "perturbations": perturbations}
      ...     return model.apply(variables, ids).sum()
      >>> grads, row_grads = jax.grad(loss, argnums=(0, 1))(
      ...     variables["params"], variables["perturbations"]
      ... )
      >>> sparse_embed_grads(grads, row_grads, ids)["embedding"].ids
      Array([ 3, 10, 10], dtype=int32)
    """
    row_grads = {
        _names(path)[:-1]: leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(perturbation_grads)
        if _names(path)[-1:] == ("rows",)
    }
    found = set()

    def swap(path, leaf):
        module = _names(path)[:-1]
        if _names(path)[-1:] != ("embedding",) or module not in row_grads:
            return leaf
        found.add(module)
        if isinstance(ids, dict) and module not in ids:
            raise ValueError(
                f"sparse_embed_grads: ids is a dict without the key {module!r},"
                f" the path of a SparseEmbed (its keys: {sorted(ids, key=str)});"
                " key the ids by each module's path as a tuple of names, as in"
                " the params, or pass one array for all of them."
            )
        module_ids = jnp.asarray(ids[module] if isinstance(ids, dict) else ids)
        rows = row_grads[module]
        if rows.shape[: module_ids.ndim] != module_ids.shape:
            raise ValueError(
                f"sparse_embed_grads: the ids for {'/'.join(module)} have shape"
                f" {module_ids.shape}, but the module looked up rows of shape"
                f" {rows.shape}; pass the ids it was called with."
            )
        return sparse_rows(module_ids, rows, num_rows=leaf.shape[0])

    grads = jax.tree_util.tree_map_with_path(swap, grads)
    if missing := set(row_grads) - found:
        raise ValueError(
            f"sparse_embed_grads: no 'embedding' gradient for the perturbations of"
            f" {sorted(missing)}; pass the gradient with respect to the params."
        )
    return grads


def _pure(tree):
    """``tree`` with each ``nnx.Variable`` replaced by its value.

    What ``nnx.as_pure`` does in recent Flax, also on Flax 0.11, which lacks it.
    """
    is_variable = lambda x: isinstance(x, nnx.Variable)
    # get_value, not x[...]: a variable may hold optax.MaskedNode (optax.masked).
    value = lambda x: x.get_value() if hasattr(x, "get_value") else x.value
    return jax.tree.map(
        lambda x: value(x) if is_variable(x) else x, tree, is_leaf=is_variable
    )


def _names(path) -> tuple:
    """A key path as plain names: ``('Embed_0', 'embedding')``."""
    return tuple(jax.tree_util.keystr(path, simple=True, separator="/").split("/"))


class LookaheadTrainState(linen_train_state.TrainState):
    """A ``TrainState`` whose ``apply_gradients`` runs the fused lookahead step.

    Same fields, same results as ``TrainState`` (up to one rounding of the
    params at a sync), but ``apply_gradients`` calls :func:`update_and_apply`,
    so with ``tx=lookahead(...)`` the inner updates are applied without going
    through memory (see :func:`update_and_apply` for the cost on CPU). Use it
    where you would use ``TrainState``.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> from optax_lookahead import lookahead
      >>> from optax_lookahead.flax import LookaheadTrainState
      >>> state = LookaheadTrainState.create(
      ...     apply_fn=None,
      ...     params={"w": jnp.array(4.0)},
      ...     tx=lookahead(optax.sgd(1.0), sync_period=2),
      ... )
      >>> for _ in range(2):
      ...     state = state.apply_gradients(grads={"w": jnp.array(1.0)})
      >>> state.params["w"]
      Array(3., dtype=float32)
    """

    def apply_gradients(self, *, grads, extra_args=None, **kwargs):
        """Like ``TrainState.apply_gradients``; ``extra_args`` (a dict) is
        passed to the optimizer's update, e.g. ``{"sampled_rows": ids}`` for
        :func:`~optax_lookahead.lazy_mask`. Other keyword arguments replace
        fields, as in Flax."""
        # Same contract as TrainState.apply_gradients, including Flax's
        # "overwrite_with_gradient" collection, which bypasses the optimizer.
        extra_args = extra_args or {}
        overwrite = linen_train_state.OVERWRITE_WITH_GRADIENT
        if overwrite in grads:
            params, opt_state = update_and_apply(
                self.tx,
                self.params["params"],
                self.opt_state,
                grads["params"],
                **extra_args,
            )
            params = {"params": params, overwrite: grads[overwrite]}
        else:
            params, opt_state = update_and_apply(
                self.tx, self.params, self.opt_state, grads, **extra_args
            )
        return self.replace(
            step=self.step + 1, params=params, opt_state=opt_state, **kwargs
        )


def slow_train_state(
    state: linen_train_state.TrainState,
) -> linen_train_state.TrainState:
    """Returns ``state`` with its params replaced by the slow weights.

    The result shares every array with ``state`` (the slow weights are not
    copied), so it costs nothing to build for each evaluation. Evaluate with it;
    keep training with ``state``.

    Args:
      state: a Flax ``TrainState`` whose ``tx`` holds one :func:`lookahead`.

    Returns:
      A ``TrainState`` equal to ``state`` but for ``params``.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> from flax.training.train_state import TrainState
      >>> from optax_lookahead import lookahead
      >>> from optax_lookahead.flax import slow_train_state
      >>> state = TrainState.create(
      ...     apply_fn=lambda params, x: params["w"] * x,
      ...     params={"w": jnp.array(4.0)},
      ...     tx=lookahead(optax.sgd(1.0), sync_period=2),
      ... )
      >>> state = state.apply_gradients(grads={"w": jnp.array(1.0)})
      >>> float(state.params["w"]), float(slow_train_state(state).params["w"])
      (3.0, 4.0)
    """
    slow = slow_params(state.opt_state)
    return state.replace(params=_params_where_masked(slow, state.params))


def slow_model(model: nnx.Module, optimizer: nnx.Optimizer) -> nnx.Module:
    """Returns a new NNX model holding the slow weights; ``model`` is unchanged.

    The variables the optimizer trains (its ``wrt`` filter, usually
    ``nnx.Param``) take the slow weights; every other variable (batch
    statistics, RNG state) is shared with ``model``. No array is copied.

    Args:
      model: the model the optimizer trains.
      optimizer: an ``nnx.Optimizer`` whose ``tx`` holds one :func:`lookahead`.

    Returns:
      A model of the same type for evaluation with the slow weights.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> from flax import nnx
      >>> from optax_lookahead import lookahead
      >>> from optax_lookahead.flax import slow_model
      >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
      >>> optimizer = nnx.Optimizer(model, lookahead(optax.sgd(0.1)), wrt=nnx.Param)
      >>> grads = nnx.grad(lambda m: m(jnp.ones((1, 2))).sum())(model)
      >>> _ = optimizer.update(model, grads)
      >>> evaluated = slow_model(model, optimizer)
      >>> evaluated.bias[0], model.bias[0]
      (Array(0., dtype=float32), Array(-0.1, dtype=float32))
    """
    slow = slow_params(_pure(optimizer.opt_state))
    graphdef, trained, *rest = nnx.split(model, optimizer.wrt, ...)
    slow = _params_where_masked(nnx.to_pure_dict(slow), nnx.to_pure_dict(trained))
    nnx.replace_by_pure_dict(trained, slow)
    return nnx.merge(graphdef, trained, *rest)


def _params_where_masked(slow, params):
    """``slow``, with the params where the lookahead did not see them.

    Under ``optax.masked`` or ``optax.multi_transform`` the slow weights hold
    ``optax.MaskedNode()`` for the params the lookahead does not train; those
    have no slow copy, and their params are the weights to evaluate with.
    """
    is_masked = lambda x: isinstance(x, optax.MaskedNode)
    if not any(map(is_masked, jax.tree.leaves(slow, is_leaf=is_masked))):
        return slow  # the slow weights themselves, not a new tree of them
    return jax.tree.map(
        lambda s, p: p if is_masked(s) else s, slow, params, is_leaf=is_masked
    )
