"""Evaluating Flax models on the slow weights.

Both Flax APIs use ``lookahead`` and ``lazy_mask`` unchanged: linen's
``TrainState.apply_gradients`` and ``nnx.Optimizer.update`` call
``tx.update(grads, opt_state, params)``. What they cannot do on their own is
put the slow weights into a model for evaluation; these two helpers do, without
copying any array. This module imports Flax; the rest of the package does not.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx
from flax.training import train_state as linen_train_state

from optax_lookahead._slow_params import slow_params
from optax_lookahead._sparse_rows import gather_rows, sparse_rows
from optax_lookahead._update_and_apply import update_and_apply


class SparseEmbed(nn.Embed):
    """``nn.Embed`` whose gradient can be taken as the looked-up rows only.

    The same parameter (``embedding``) and the same output as ``nn.Embed``, but
    the table is read through ``stop_gradient`` and the looked-up rows pass
    through ``self.perturb("rows", ...)``: differentiate with respect to the
    ``perturbations`` collection to get one gradient row per looked-up id, and
    turn those into :class:`~optax_lookahead.SparseRows` with
    :func:`sparse_embed_grads`, for :func:`~optax_lookahead.sparse_lazy`. No
    table-size gradient is built. Ids outside the table (padding) give zero
    rows.
    """

    def __call__(self, inputs: jax.Array) -> jax.Array:
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError(f"SparseEmbed: ids must be integers, got {inputs.dtype}.")
        rows = gather_rows(jax.lax.stop_gradient(self.embedding), inputs)
        return self.perturb("rows", rows.astype(self.dtype or rows.dtype))


def sparse_embed_grads(grads, perturbation_grads, ids):
    """Puts the sparse gradient of every :class:`SparseEmbed` into ``grads``.

    Args:
      grads: the gradient with respect to the params (each ``SparseEmbed``'s
        ``embedding`` entry is replaced; its dense zeros are never used, so XLA
        drops them under ``jit``).
      perturbation_grads: the gradient with respect to the ``perturbations``
        collection, with one ``rows`` entry per ``SparseEmbed``.
      ids: the ids each ``SparseEmbed`` looked up: one array for all of them,
        or a dict from the module's path (a tuple of names, as in the params)
        to its ids.

    Returns:
      ``grads`` with a :class:`~optax_lookahead.SparseRows` for each table.
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
        module_ids = ids[module] if isinstance(ids, dict) else ids
        return sparse_rows(module_ids, row_grads[module], num_rows=leaf.shape[0])

    grads = jax.tree_util.tree_map_with_path(swap, grads)
    if missing := set(row_grads) - found:
        raise ValueError(
            f"sparse_embed_grads: no 'embedding' gradient for the perturbations of"
            f" {sorted(missing)}; pass the gradient with respect to the params."
        )
    return grads


def _names(path) -> tuple:
    """A key path as plain names: ``('Embed_0', 'embedding')``."""
    return tuple(getattr(key, "key", key) for key in path)


class LookaheadTrainState(linen_train_state.TrainState):
    """A ``TrainState`` whose ``apply_gradients`` runs the fused lookahead step.

    Same fields, same results as ``TrainState`` (up to one rounding of the
    params at a sync), but ``apply_gradients`` calls :func:`update_and_apply`,
    so with ``tx=lookahead(...)`` the step costs about what the inner
    optimizer's own step costs. Use it where you would use ``TrainState``.

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
    return state.replace(params=slow_params(state.opt_state))


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
    slow = slow_params(nnx.as_pure(optimizer.opt_state))
    graphdef, trained, rest = nnx.split(model, optimizer.wrt, ...)
    nnx.replace_by_pure_dict(trained, nnx.to_pure_dict(slow))
    return nnx.merge(graphdef, trained, rest)
