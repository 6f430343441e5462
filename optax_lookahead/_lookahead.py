"""Lookahead, with the slow weights kept in the optimizer state."""

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding
from optax._src import base

from optax_lookahead import _checks
from optax_lookahead._mirrors import map_param_mirrors
from optax_lookahead._sparse_rows import apply_sparse_updates, is_sparse

InnerStateOnSync = Literal["keep", "reset", "pullback"]
INNER_STATE_ON_SYNC = ("keep", "reset", "pullback")


class LookaheadState(NamedTuple):
    """State of :func:`lookahead`.

    Attributes:
      count: number of updates taken so far (int32 scalar). Update number
        ``count`` (counting from 0) is a sync step when
        ``count % sync_period == sync_period - 1``. It saturates at the int32
        maximum (``optax.safe_increment``), so after about 2.1e9 updates the
        syncs stop.
      slow: the slow weights, a copy of the params' tree with the params' dtypes.
        Evaluate and export with these (see :func:`slow_params`).
      inner_state: the state of the inner (fast) optimizer.
      inner_state_at_sync: with ``inner_state_on_sync="pullback"``, the inner
        state as it was left by the last sync (or by ``init``); ``None`` for the
        other options.
    """

    count: jax.Array
    slow: base.Params
    inner_state: base.OptState
    inner_state_at_sync: Any = None


class LookaheadTransformation(base.GradientTransformationExtraArgs):
    """The type :func:`lookahead` returns: an ordinary optax transformation.

    A subclass so that :func:`lazy_mask` can tell, at construction, that it was
    wrapped around a lookahead instead of the other way round, and so that it
    can carry the fused step that :func:`update_and_apply` runs.

    Attributes:
      update_and_apply: ``(updates, state, params, **extra_args) -> (params,
        state)``; use it through :func:`update_and_apply`.
    """

    # No __slots__: unlike its NamedTuple bases, each instance has a __dict__
    # to carry update_and_apply, since a third tuple field would break
    # ``init, update = tx``.
    update_and_apply: Callable[..., tuple[base.Params, LookaheadState]]


def lookahead(
    inner: optax.GradientTransformation,
    sync_period: int = 5,
    slow_step_size: float = 0.5,
    inner_state_on_sync: InnerStateOnSync = "keep",
) -> LookaheadTransformation:
    """Lookahead: ``sync_period`` fast steps forward, then one step back.

    The inner optimizer moves the params (the fast weights) every step. On every
    ``sync_period``-th step the slow weights move ``slow_step_size`` of the way to
    the fast weights that step produced, and the returned updates land the params
    on the new slow weights (exactly, up to one rounding in the params' dtype)::

      slow <- slow + slow_step_size * (params + inner_updates - slow)
      params <- slow

    On the other steps the inner updates pass through unchanged and the slow
    weights keep their values. On CPU the sync runs inside a ``lax.cond``, so
    between syncs the step does no work on the slow weights at all; on other
    platforms, whose XLA copies buffers passed through a ``cond``, the sync is a
    select that fuses into the inner optimizer's own kernel (the measured
    figures are in BENCHMARKS.md).

    Unlike ``optax.lookahead``, the slow weights live in the optimizer state, not
    in a ``LookaheadParams`` pair, so this is a drop-in for any loop that calls
    ``tx.update(grads, opt_state, params)`` on plain params (Flax ``TrainState``,
    ``nnx.Optimizer``). Evaluate with :func:`slow_params`.

    Args:
      inner: the fast optimizer, any optax transformation. Extra keyword
        arguments given to ``update`` are forwarded to it.
      sync_period: ``k``, the number of fast steps per sync; an integer >= 1.
        ``sync_period=1`` syncs every step.
      slow_step_size: ``alpha`` in (0, 1], how far the slow weights move toward
        the fast ones at a sync. ``1`` makes lookahead equal to ``inner``.
      inner_state_on_sync: what happens to the inner optimizer's state at a sync.
        Only the parts of the state that mirror the params (momenta, Adam's
        moments, accumulators) are affected; step counts are never touched.

        - ``"keep"`` (default, the paper's choice): leave it as it is.
        - ``"reset"``: set those parts back to what ``inner.init`` gives (zeros
          for Adam and momentum). Unlike ``optax.lookahead(reset_state=True)``,
          which re-runs ``inner.init`` and so restarts the inner step count,
          learning-rate schedules keep running and Adam's bias correction is not
          restarted. Note the consequence for Adam: with zeroed moments and a
          large step count, the first steps after a sync are larger than usual
          (by up to ``(1 - b1) / sqrt(1 - b2)``, about 3.2x for the defaults).
        - ``"pullback"``: the Lookahead authors' "pullback" momentum: each of
          those parts moves toward its value at the previous sync as the weights
          do, ``state <- state_at_sync + slow_step_size * (state -
          state_at_sync)``. This applies to all of them, Adam's second moment
          included, and keeps one more copy of them in the state.

    Returns:
      An optax ``GradientTransformationExtraArgs`` whose state is a
      :class:`LookaheadState`. ``update`` needs ``params``.

    Raises:
      TypeError: if ``inner`` is not an optax transformation.
      ValueError: if ``sync_period`` is not an integer >= 1, ``slow_step_size`` is
        not in (0, 1], or ``inner_state_on_sync`` is not one of the options.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> from optax_lookahead import lookahead, slow_params
      >>> tx = lookahead(optax.sgd(1.0), sync_period=2, slow_step_size=0.5)
      >>> params = jnp.array([4.0])
      >>> state = tx.init(params)
      >>> for _ in range(2):  # the gradient is 1, so each fast step moves -1
      ...   updates, state = tx.update(jnp.array([1.0]), state, params)
      ...   params = optax.apply_updates(params, updates)
      ...   print(params, slow_params(state))
      [3.] [4.]
      [3.] [3.]

      The second step would take the fast weights to 2; the sync moves the slow
      weights half way there, from 4 to 3, and puts the params on them.

    References:
      Zhang, Lucas, Hinton, Ba, `Lookahead Optimizer: k steps forward, 1 step
      back <https://arxiv.org/abs/1907.08610>`_, 2019.
    """
    if not _checks.is_transformation(inner):
        raise TypeError(
            "lookahead(inner, ...): inner must be an optax GradientTransformation"
            f" such as optax.adam(1e-3), got {inner!r}."
        )
    _checks.check_sync_period(sync_period)
    _checks.check_slow_step_size(slow_step_size)
    _checks.check_choice(
        "inner_state_on_sync", inner_state_on_sync, INNER_STATE_ON_SYNC
    )
    inner = base.with_extra_args_support(inner)

    def init_fn(params):
        inner_state = inner.init(params)
        state = LookaheadState(
            count=jnp.zeros([], jnp.int32),
            # Distinct buffers, so that params and state can be donated together.
            slow=jax.tree.map(jnp.copy, params),
            inner_state=inner_state,
            inner_state_at_sync=(
                jax.tree.map(jnp.copy, inner_state)
                if inner_state_on_sync == "pullback"
                else None
            ),
        )
        return _replicate_scalars_on_params_mesh(state, params)

    def synced_inner_state(inner_state, inner_state_at_sync, params):
        """The inner state after a sync, as ``inner_state_on_sync`` asks."""
        if inner_state_on_sync == "reset":
            fresh = inner.init(params)
            return (
                map_param_mirrors(inner, lambda _, new, __: new, inner_state, fresh),
                inner_state_at_sync,
            )
        if inner_state_on_sync == "pullback":
            pulled = map_param_mirrors(
                inner,
                lambda now, before, _: _interpolate(before, now),
                inner_state,
                inner_state_at_sync,
            )
            return pulled, pulled
        return inner_state, inner_state_at_sync

    def sync_if_due(state, inner_state, params, output, sync_output):
        """Runs the sync on sync steps; between syncs everything passes through.

        ``output`` is what the step returns between syncs (the inner updates,
        or the fast params); ``sync_output(output, slow)`` gives the new slow
        weights and what the step returns at a sync instead.
        """
        is_sync = state.count % sync_period == sync_period - 1

        def sync(output, slow, inner_state, inner_state_at_sync):
            slow, output = sync_output(output, slow)
            inner_state, inner_state_at_sync = synced_inner_state(
                inner_state, inner_state_at_sync, params
            )
            return output, slow, inner_state, inner_state_at_sync

        def no_sync(*operands):
            return operands

        def branch(*operands):
            return jax.lax.cond(is_sync, sync, no_sync, *operands)

        def select(*operands):
            return jax.tree.map(
                lambda synced, kept: jnp.where(is_sync, synced, kept),
                sync(*operands),
                operands,
            )

        if inner_state_on_sync == "keep":
            # The inner state stays out of the sync: it never changes there,
            # and routing it through a branch could only cost copies.
            operands = (output, state.slow, None, None)
        else:
            operands = (output, state.slow, inner_state, state.inner_state_at_sync)
        output, slow, synced_inner, inner_state_at_sync = _sync_strategy(
            operands, branch, select
        )
        if inner_state_on_sync != "keep":
            inner_state = synced_inner
        new_state = LookaheadState(
            count=optax.safe_increment(state.count),
            slow=slow,
            inner_state=inner_state,
            inner_state_at_sync=inner_state_at_sync,
        )
        return output, new_state

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(base.NO_PARAMS_MSG)
        inner_updates, inner_state = inner.update(
            updates, state.inner_state, params, **extra_args
        )
        if any(map(is_sparse, jax.tree.leaves(inner_updates, is_leaf=is_sparse))):
            raise ValueError(
                "lookahead: the inner optimizer returned sparse (SparseRows)"
                " updates, which a sync cannot return; use"
                " optax_lookahead.update_and_apply(tx, params, opt_state, grads),"
                " which applies them in place and syncs afterwards."
            )

        def land_on_slow(inner_updates, slow):
            new_slow = jax.tree.map(
                _interpolate, slow, optax.apply_updates(params, inner_updates)
            )
            # new_slow - params, in the dtype the inner optimizer chose for updates.
            landing = jax.tree.map(
                lambda s, p, u: (_widen(s) - _widen(p)).astype(u.dtype),
                new_slow,
                params,
                inner_updates,
            )
            return new_slow, landing

        return sync_if_due(state, inner_state, params, inner_updates, land_on_slow)

    def update_and_apply_fn(updates, state, params, **extra_args):
        """The fused step: apply the inner updates, then sync the params."""
        inner_updates, inner_state = inner.update(
            updates, state.inner_state, params, **extra_args
        )
        fast = apply_sparse_updates(params, inner_updates)

        def jump_to_slow(fast, slow):
            new_slow = jax.tree.map(_interpolate, slow, fast)
            return new_slow, new_slow

        return sync_if_due(state, inner_state, params, fast, jump_to_slow)

    def _interpolate(start, end):
        """``start + slow_step_size * (end - start)``, in at least float32."""
        if not jnp.issubdtype(start.dtype, jnp.inexact):
            return end
        step = jnp.asarray(slow_step_size, _widen(start).dtype)
        return (_widen(start) + step * (_widen(end) - _widen(start))).astype(
            start.dtype
        )

    transformation = LookaheadTransformation(init_fn, update_fn)
    transformation.update_and_apply = update_and_apply_fn
    return transformation


# How the sync is staged out, per platform, as measured by
# benchmarks/bench_step.py (BENCHMARKS.md). XLA:CPU keeps donated buffers in
# place through a lax.cond whose other branch passes them through, so between
# syncs the step does no work on the slow weights (about 1.2x adam, where a
# select every step costs 2.3x). XLA:GPU copies every buffer a cond branch
# passes through (1.6x on an H200), while a select fuses into the inner
# optimizer's kernel (1.2x), so other platforms select. None picks per
# platform; tests and benchmarks may force one.
FORCE_SYNC_STRATEGY: Literal["branch", "select"] | None = None


def _sync_strategy(operands, branch, select):
    if FORCE_SYNC_STRATEGY == "branch":
        return branch(*operands)
    if FORCE_SYNC_STRATEGY == "select":
        return select(*operands)
    return jax.lax.platform_dependent(*operands, cpu=branch, default=select)


def _replicate_scalars_on_params_mesh(state, params):
    """Puts eagerly created step counters on the params' mesh, replicated.

    ``jnp.zeros([])`` lands on one device, while a jitted step returns the
    counter replicated over the mesh, so the second step would see a new input
    sharding and trace and compile again. When the params all live on one
    mesh, the counters (of the inner optimizer too) start out replicated on it.
    """
    shardings = [
        leaf.sharding
        for leaf in jax.tree.leaves(params)
        if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer)
    ]
    meshes = {getattr(s, "mesh", None) for s in shardings}
    if not shardings or len(meshes) != 1 or None in meshes:
        return state
    replicated = NamedSharding(meshes.pop(), PartitionSpec())

    def place(leaf):
        if (
            isinstance(leaf, jax.Array)
            and not isinstance(leaf, jax.core.Tracer)
            and leaf.ndim == 0
            and isinstance(leaf.sharding, SingleDeviceSharding)
        ):
            return jax.device_put(leaf, replicated)
        return leaf

    return jax.tree.map(place, state)


def _widen(x: jax.Array) -> jax.Array:
    """Casts low-precision floats to float32 so interpolation does not lose bits."""
    # Not jnp.promote_types: under strict promotion it refuses bfloat16 + float32.
    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32:
        return x.astype(jnp.float32)
    return x
