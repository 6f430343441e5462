"""Lookahead, with the slow weights kept in the optimizer state.

One step, as :func:`_update` runs it: check the inputs; find the phase (is
this the first update, is it a sync?); the inner step (take the slow weights
from the params if this is the first update, run the inner optimizer); on a
sync step, move the slow weights toward where the inner step would put the
params and land the params on them; count the step.
:func:`_update_and_apply` is the same step for loops that let the optimizer
apply its own updates; the two share every helper below them.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_lookahead import _checks, _host_step, _rows, _state_tree, _touched_rows

InnerStateOnSync = Literal["keep", "reset", "pullback"]
SyncStaging = Literal["auto", "cond", "select"]

_INT32_MAX = 2**31 - 1
# Where a lookahead sync must come back to the params it cannot apply itself.
_SPARSE_FIX = (
    "Apply sparse updates with optax_lookahead.update_and_apply(tx, params,"
    " opt_state, grads), which adds the rows in place and syncs afterwards, and"
    " put sparse_lazy directly inside: lookahead(sparse_lazy(optax.adam(1e-3)))."
)


class LookaheadState(NamedTuple):
    """State of :func:`lookahead`.

    Attributes:
      step: the number of updates taken (int32 scalar). Update number ``step``
        (from 0) syncs when ``step % sync_period == sync_period - 1``. Near the
        int32 limit it wraps back to ``sync_period``, so syncs go on at period
        ``sync_period`` forever.
      slow: the slow weights, a tree like the params with the params' dtypes.
        They are taken from the params at the first update (before it, they
        hold a copy of the params given to ``init``), and after each sync they
        equal the params the sync's updates land on, bit for bit. Evaluate and
        export with these (see :func:`slow_params`).
      inner_state: the state of the inner (fast) optimizer.
      mirrors_at_sync: with ``inner_state_on_sync="pullback"``, the parts of
        ``inner_state`` that mirror the params (momenta, moments; each a tree
        like the params) as the last sync left them, in the order they appear
        in ``inner_state``; an empty tuple for the other options.
      touched_rows: with an inner :func:`sparse_lazy`, a tree like the params
        holding for every leaf a ``TouchedRows`` record (rows along axis 0;
        two int32 per row, their number, and a flag that a dense update sets)
        that lists the rows sparse updates touched since the last sync: the
        only rows a sync has to move, unless a dense update moved them all.
        An empty tuple for other inner optimizers (not ``None``, so that
        ``flax.serialization`` refuses to restore one kind into the other).
    """

    step: jax.Array
    slow: optax.Params
    inner_state: optax.OptState
    mirrors_at_sync: tuple = ()
    touched_rows: optax.Params = ()  # a tree of TouchedRows


@dataclasses.dataclass(frozen=True)
class LookaheadConfig:
    """The arguments of :func:`lookahead`, checked and normalised."""

    inner: optax.GradientTransformationExtraArgs
    sync_period: Any
    slow_step_size: Any
    inner_state_on_sync: InnerStateOnSync
    sync_staging: SyncStaging


class LookaheadTransformation(optax.GradientTransformationExtraArgs):
    """What :func:`lookahead` returns: an ordinary optax transformation.

    ``init, update = tx`` works as for any optax transformation. The subclass
    carries the checked arguments (``config``), so that :func:`lazy_mask` can
    tell at construction that it was wrapped around a lookahead instead of the
    other way round, and so that :func:`update_and_apply` can run the fused step
    (:meth:`update_and_apply`).
    """

    config: LookaheadConfig

    def __new__(cls, config: LookaheadConfig):
        tx = super().__new__(
            cls, functools.partial(_init, config), functools.partial(_update, config)
        )
        tx.config = config
        return tx

    def __getnewargs__(self):
        return (self.config,)

    def update_and_apply(self, updates, state, params, **extra_args):
        """The fused step; use it through :func:`update_and_apply`."""
        return _update_and_apply(self.config, updates, state, params, **extra_args)


def lookahead(
    inner: optax.GradientTransformation,
    sync_period: int = 5,
    slow_step_size: float | Callable[[jax.Array], jax.Array] = 0.5,
    inner_state_on_sync: InnerStateOnSync = "keep",
    *,
    sync_staging: SyncStaging = "auto",
) -> LookaheadTransformation:
    """Lookahead: ``sync_period`` fast steps forward, then one step back.

    The inner optimizer moves the params (the fast weights) every step. On every
    ``sync_period``-th step the slow weights move ``slow_step_size`` of the way to
    the fast weights that step produced, and the returned updates land the params
    on the new slow weights::

      slow <- slow + slow_step_size * (params + inner_updates - slow)
      params <- slow

    On the other steps the inner updates pass through unchanged and the slow
    weights keep their values. Put it last in a chain (gradient clipping goes
    before it or inside it): a transformation after it, such as
    ``optax.scale``, would change the updates that land the params on the slow
    weights, and the two would part.

    The slow weights start from the params of the first update, not from those
    given to ``init``, so params loaded or replaced after building the
    optimizer state (``TrainState.create`` and then
    ``.replace(params=pretrained)``) are the ones lookahead starts from.
    Replacing the params later, mid-training, keeps the slow weights: the next
    sync interpolates from them toward the new params. To start over from new
    params, build a new optimizer state with ``init``.

    Unlike ``optax.lookahead``, the slow weights live in the optimizer state, not
    in a ``LookaheadParams`` pair, so this is a drop-in for any loop that calls
    ``tx.update(grads, opt_state, params)`` on plain params (Flax ``TrainState``,
    ``nnx.Optimizer``). Evaluate with :func:`slow_params`. For the fastest step,
    compile the training step with :func:`lookahead_jit` in place of
    ``jax.jit``: between syncs it runs the inner optimizer's own program.

    With :func:`sparse_lazy` inside (updates given as :class:`SparseRows`,
    applied with :func:`update_and_apply`), a sync moves only the rows that
    sparse updates touched since the previous sync (the state records them in
    ``touched_rows``); every other row already has fast == slow. So its cost
    follows the rows sampled, not the table. A row changed outside the
    optimizer (params replaced mid-training) is synced only once an update
    touches it.

    Args:
      inner: the fast optimizer, any optax transformation. Extra keyword
        arguments given to ``update`` are forwarded to it.
      sync_period: ``k``, the number of fast steps per sync; an integer in
        ``[1, 2**30]``. ``sync_period=1`` syncs every step.
      slow_step_size: ``alpha`` in (0, 1], how far the slow weights move toward
        the fast ones at a sync, or a schedule: a callable taking the step count
        (``LookaheadState.step``) and returning it. With ``1`` the params follow
        ``inner`` exactly, bit for bit.
      inner_state_on_sync: what happens to the inner optimizer's state at a sync.

        - ``"keep"`` (default, the paper's choice): nothing.
        - ``"reset"``: the inner optimizer starts over from ``inner.init`` (at
          the new slow weights): momenta, moments and their step counts, so
          Adam's bias correction restarts as in
          ``optax.lookahead(reset_state=True)``. Unlike that, learning-rate
          schedules keep running: the counts of ``optax.scale_by_schedule``
          (used by optax optimizers given a schedule) and of
          ``optax.inject_hyperparams`` are kept, and so is the state of
          ``optax.contrib.reduce_on_plateau``.
        - ``"pullback"``: the Lookahead authors' "pullback" momentum: each part
          of the inner state that mirrors the params (momenta, Adam's two
          moments) moves toward its value at the previous sync as the weights
          do, ``state <- state_at_sync + slow_step_size * (state -
          state_at_sync)``. The state keeps one copy of those parts; step
          counts and hyperparameters are not copied and not touched.
      sync_staging: how the sync is compiled. ``"cond"`` runs it under a
        ``lax.cond``, so between syncs the step does no work on the slow
        weights; XLA:CPU keeps donated buffers in place through it. ``"select"``
        computes it every step and selects, which fuses into the inner
        optimizer's kernel; XLA:GPU, which copies buffers a ``cond`` passes
        through, is faster this way. ``"auto"`` (default) picks ``"cond"`` on
        CPU and ``"select"`` elsewhere. Results are the same. Under
        :func:`lookahead_jit` nothing is staged, so this has no effect.

    Returns:
      A :class:`LookaheadTransformation` (an optax
      ``GradientTransformationExtraArgs``) whose state is a
      :class:`LookaheadState`. ``update`` needs ``params``. Its updates have the
      params' dtype where that is wider than the inner updates' (float32 params
      with bfloat16 gradients), so that a sync lands exactly on the slow
      weights.

    Raises:
      TypeError: if ``inner`` is not an optax transformation.
      ValueError: if ``sync_period`` is not an integer in ``[1, 2**30]``,
        ``slow_step_size`` is not in (0, 1] (or is 0 in float32) and not a
        schedule, or ``inner_state_on_sync`` or ``sync_staging`` is not one of
        the options.

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
    _checks.check_choice(
        "inner_state_on_sync", inner_state_on_sync, _checks.choices(InnerStateOnSync)
    )
    _checks.check_choice("sync_staging", sync_staging, _checks.choices(SyncStaging))
    config = LookaheadConfig(
        inner=optax.with_extra_args_support(inner),
        sync_period=_checks.check_sync_period(sync_period),
        slow_step_size=_checks.check_slow_step_size(slow_step_size),
        inner_state_on_sync=inner_state_on_sync,
        sync_staging=sync_staging,
    )
    return LookaheadTransformation(config)


def _init(config: LookaheadConfig, params) -> LookaheadState:
    inner_state = config.inner.init(params)
    mirrors = ()
    if config.inner_state_on_sync == "pullback":
        mirrors = jax.tree.map(
            _copy, _state_tree.mirror_trees(config.inner, inner_state)
        )
    state = LookaheadState(
        step=jnp.zeros([], jnp.int32),
        # Distinct buffers, so that params and state can be donated together.
        slow=jax.tree.map(_copy, params),
        inner_state=inner_state,
        mirrors_at_sync=mirrors,
        touched_rows=_touched_rows.init(params) if _is_sparse(config) else (),
    )
    return _state_tree.place_counters_like_params(state, params)


def _update(config: LookaheadConfig, updates, state, params=None, **extra_args):
    """``tx.update``: the inner step, then the sync, as updates to apply."""
    _rows.refuse_sparse(updates, "lookahead(...).update", _SPARSE_FIX)
    _check_step_inputs(updates, state, params)
    first, is_sync = _phase(config, state)
    slow, inner_updates, inner_state = _inner_step(
        config, first, updates, state, params, extra_args
    )
    _rows.refuse_sparse(inner_updates, "lookahead(...).update", _SPARSE_FIX)
    inner_updates = jax.tree.map(_in_params_precision, inner_updates, params)
    alpha = _slow_step_size(config, state.step)

    # Dense updates only (sparse ones were refused): with sparse_lazy inside,
    # they may move any row, so the record asks the next sync for every row.
    touched = state.touched_rows
    if _is_sparse(config):
        touched = _touched_rows.note(touched, inner_updates)

    def land(updates_and_touched, slow):
        """The updates that land the params on the new slow weights, and those."""
        updates, touched = updates_and_touched
        fast = _rows.apply_sparse_updates(params, updates)
        target = jax.tree.map(functools.partial(_interpolate, alpha), slow, fast)
        if not _is_one(config.slow_step_size):
            updates = jax.tree.map(_difference, target, params, updates)
        # The slow weights: exactly the params the user's apply_updates gives.
        slow = _rows.apply_sparse_updates(params, updates)
        return (updates, _touched_rows.emptied(touched)), slow

    (updates, touched), slow, inner_state, mirrors = _sync_if_due(
        config, is_sync, state, alpha, land, (inner_updates, touched), slow, inner_state
    )
    return updates, _next_state(config, state, slow, inner_state, mirrors, touched)


def _update_and_apply(config: LookaheadConfig, updates, state, params, **extra_args):
    """The fused step: apply the inner updates, then sync the params."""
    if not _is_sparse(config):
        _rows.refuse_sparse(updates, "lookahead's inner optimizer", _SPARSE_FIX)
    _check_step_inputs(updates, state, params)
    first, is_sync = _phase(config, state)
    slow, inner_updates, inner_state = _inner_step(
        config, first, updates, state, params, extra_args
    )
    fast = _rows.apply_sparse_updates(params, inner_updates)
    touched = state.touched_rows
    if _is_sparse(config):
        touched = _touched_rows.note(touched, inner_updates)
    alpha = _slow_step_size(config, state.step)
    interpolate = functools.partial(
        jax.tree.map, functools.partial(_interpolate, alpha)
    )

    def land(fast_and_touched, slow):
        """The params on the new slow weights, and those; rows touched reset."""
        fast, touched = fast_and_touched
        if not _is_sparse(config):
            slow = interpolate(slow, fast)
            return (slow, touched), slow
        params, slow, touched = _touched_rows.sync(
            interpolate, touched, inner_updates, fast, slow
        )
        return (params, touched), slow

    (params, touched), slow, inner_state, mirrors = _sync_if_due(
        config, is_sync, state, alpha, land, (fast, touched), slow, inner_state
    )
    return params, _next_state(config, state, slow, inner_state, mirrors, touched)


def _phase(config: LookaheadConfig, state):
    """Whether this is the first update, and whether it syncs.

    Python bools in a program that :func:`~optax_lookahead.lookahead_jit`
    compiles for a step it read on the host, so that only the branch that runs
    is compiled; otherwise traced from the state's step count.
    """
    known = _host_step.known_phase(state.step, config.sync_period)
    if known is not None:
        return known
    k = config.sync_period
    return state.step == 0, state.step % k == k - 1


def _inner_step(config: LookaheadConfig, first, updates, state, params, extra_args):
    """The slow weights for this step, and the inner update."""
    slow = _slow_from_first_params(config, first, state, params)
    inner_updates, inner_state = config.inner.update(
        updates, state.inner_state, params, **extra_args
    )
    return slow, inner_updates, inner_state


def _next_state(config: LookaheadConfig, state, slow, inner_state, mirrors, touched):
    step = _next_step(config, state.step)
    _host_step.record_next_step(state.step, step)
    return LookaheadState(step, slow, inner_state, mirrors, touched)


def _check_step_inputs(updates, state, params) -> None:
    """Refuses params missing, or a tree that is not the one ``init`` saw."""
    if params is None:
        raise ValueError(_checks.NO_PARAMS_MSG)
    if not isinstance(state, LookaheadState):
        raise ValueError(
            "lookahead: opt_state must be the LookaheadState that this"
            f" transformation's init returned, got a {type(state).__name__}."
        )
    expected = jax.tree.structure(state.slow)
    for name, tree in (("updates", updates), ("params", params)):
        structure = jax.tree.structure(tree, is_leaf=_rows.is_sparse)
        if structure != expected:  # type: ignore[operator]  # stub lacks __ne__
            raise ValueError(
                f"lookahead: the {name} do not have the tree structure the"
                f" optimizer state was initialised with: got {structure}, expected"
                f" {expected}. Initialise the optimizer state (tx.init) with the"
                " params you train."
            )
        for path, leaf, slow in zip(
            *_paths_and_leaves(tree), jax.tree.leaves(state.slow), strict=True
        ):
            if _rows.is_sparse(leaf):  # checked row by row where it is applied
                shape, want = leaf.values.shape[1:], jnp.shape(slow)[1:]
            else:
                shape, want = jnp.shape(leaf), jnp.shape(slow)
            if shape != want:
                raise ValueError(
                    f"lookahead: {name}{jax.tree_util.keystr(path)} has shape"
                    f" {shape}, but the optimizer state was initialised for shape"
                    f" {want}. Initialise the optimizer state (tx.init) with the"
                    " params you train."
                )
            if name != "params":  # gradients may be narrower than the params
                continue
            dtype, slow_dtype = jnp.result_type(leaf), jnp.result_type(slow)
            if dtype != slow_dtype:
                raise ValueError(
                    f"lookahead: params{jax.tree_util.keystr(path)} has dtype"
                    f" {dtype}, but the optimizer state was initialised for"
                    f" {slow_dtype}: the slow weights keep the dtype of the"
                    " params given to init. Initialise the optimizer state"
                    " (tx.init) with the params you train, in the dtype you"
                    " train them in."
                )


def _slow_from_first_params(config: LookaheadConfig, first, state, params):
    """The slow weights; at the first update, the params as they are now.

    In-graph, a staged branch that passes the slow weights through on every
    other step. In the fused step the params are then updated in place beside
    it, and XLA:CPU copies them on every step (a cost that
    :func:`~optax_lookahead.lookahead_jit` avoids by compiling the first
    update apart).
    """

    def take_params(slow):
        return (
            jax.tree.map(lambda p, s: jnp.asarray(p).astype(s.dtype), params, slow),
        )

    (slow,) = _run_if(config, first, take_params, state.slow)
    return slow


def _sync_if_due(
    config: LookaheadConfig, is_sync, state, alpha, land, output, slow, inner_state
):
    """On a sync step, ``land`` and sync the inner state; else pass through.

    ``land(output, slow)`` gives the step's output and the new slow weights.
    With ``inner_state_on_sync="keep"`` the inner state stays out of the staged
    sync: it never changes there, and routing it through a branch could only
    cost copies.
    """

    def sync(output, slow, inner_state, mirrors):
        output, slow = land(output, slow)
        inner_state, mirrors = _synced_inner_state(
            config, alpha, inner_state, mirrors, slow
        )
        return output, slow, inner_state, mirrors

    if config.inner_state_on_sync == "keep":
        output, slow, _, _ = _run_if(config, is_sync, sync, output, slow, None, ())
        return output, slow, inner_state, state.mirrors_at_sync
    return _run_if(
        config, is_sync, sync, output, slow, inner_state, state.mirrors_at_sync
    )


def _synced_inner_state(config: LookaheadConfig, alpha, inner_state, mirrors, slow):
    """The inner state and pullback mirrors after a sync, as the option asks."""
    if config.inner_state_on_sync == "reset":
        fresh = config.inner.init(slow)
        return _state_tree.restart_keeping_schedules(inner_state, fresh), mirrors
    if config.inner_state_on_sync == "pullback":
        now = _state_tree.mirror_trees(config.inner, inner_state)
        pulled = jax.tree.map(functools.partial(_interpolate, alpha), mirrors, now)
        return _state_tree.with_mirror_trees(config.inner, inner_state, pulled), pulled
    return inner_state, mirrors


def _run_if(config: LookaheadConfig, pred, fn, *operands):
    """``fn(*operands)`` if ``pred`` else ``operands``, staged as configured.

    A Python bool ``pred`` (a phase known on the host) stages nothing.
    """
    if isinstance(pred, bool):
        return fn(*operands) if pred else operands

    def cond(*operands):
        return jax.lax.cond(pred, fn, lambda *kept: kept, *operands)

    def select(*operands):
        return jax.tree.map(
            lambda new, kept: jnp.where(pred, new, kept), fn(*operands), operands
        )

    if config.sync_staging == "cond":
        return cond(*operands)
    if config.sync_staging == "select":
        return select(*operands)
    return jax.lax.platform_dependent(*operands, cpu=cond, default=select)


def _is_sparse(config: LookaheadConfig) -> bool:
    """Whether the inner optimizer takes sparse rows (``sparse_lazy``)."""
    return isinstance(config.inner, _rows.SparseTransformation)


def _next_step(config: LookaheadConfig, step):
    """``step + 1``, wrapping from a multiple of the period back to the period."""
    following = step + 1
    return jnp.where(
        following == wrap_point(config.sync_period), config.sync_period, following
    ).astype(jnp.int32)


def wrap_point(sync_period: int) -> int:
    """The step count that :func:`_next_step` replaces by ``sync_period``."""
    return _INT32_MAX // sync_period * sync_period


def _slow_step_size(config: LookaheadConfig, step):
    if callable(config.slow_step_size):
        return config.slow_step_size(step)
    return config.slow_step_size


def _interpolate(alpha, start, end):
    """``start + alpha * (end - start)`` in at least float32, in start's dtype."""
    start = jnp.asarray(start)
    if not jnp.issubdtype(start.dtype, jnp.inexact):
        return jnp.asarray(end).astype(start.dtype)
    if _is_one(alpha):
        return jnp.asarray(end).astype(start.dtype)
    wide_start, wide_end = _widen(start), _widen(jnp.asarray(end))
    alpha = jnp.asarray(alpha).astype(wide_start.dtype)
    return (wide_start + alpha * (wide_end - wide_start)).astype(start.dtype)


def _difference(target, param, update):
    """``target - param`` (the update that lands there), in the update's dtype."""
    target, param = jnp.asarray(target), jnp.asarray(param)
    if not jnp.issubdtype(param.dtype, jnp.inexact):
        return (target - param).astype(update.dtype)
    return (_widen(target) - _widen(param)).astype(update.dtype)


def _in_params_precision(update, param):
    """A floating update, widened to its param's dtype where that is wider."""
    update, param = jnp.asarray(update), jnp.asarray(param)
    if not (
        jnp.issubdtype(update.dtype, jnp.floating)
        and jnp.issubdtype(param.dtype, jnp.floating)
    ):
        return update
    if jnp.finfo(param.dtype).bits > jnp.finfo(update.dtype).bits:
        return update.astype(param.dtype)
    return update


def _widen(x: jax.Array) -> jax.Array:
    """Casts low-precision floats to float32 so interpolation does not lose bits."""
    # Not jnp.promote_types: under strict promotion it refuses bfloat16 + float32.
    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32:
        return x.astype(jnp.float32)
    return x


def _is_one(alpha) -> bool:
    """Whether ``alpha`` is concretely 1 (then a sync lands on the fast weights)."""
    return not callable(alpha) and _checks.concrete_value(alpha) == 1


def _copy(leaf):
    """A new buffer like ``leaf``; zeros for an abstract ``jax.ShapeDtypeStruct``."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jnp.zeros(leaf.shape, leaf.dtype, device=leaf.sharding)
    return jnp.array(leaf, copy=True)


def _paths_and_leaves(tree):
    flat = jax.tree_util.tree_leaves_with_path(tree, is_leaf=_rows.is_sparse)
    return [path for path, _ in flat], [leaf for _, leaf in flat]
