"""``lookahead_jit``: ``jax.jit`` that picks the lookahead phase on the host.

A training loop knows its step number, as PyTorch's Lookahead does with a
Python ``if``: this wrapper reads the lookahead state's step count before each
call and runs one of (at most) three compiled programs: the first update, a
sync, or an update between syncs, which is the inner optimizer's own program.
Reading the count costs nothing in the usual loop: the count a call returns is
remembered on the host, so the next call, given that same array, does not wait
for the device.
"""

import functools
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from optax_lookahead import _host_step
from optax_lookahead._lookahead import LookaheadState, wrap_point


def lookahead_jit(fun: Callable | None = None, /, *, jit=jax.jit, **jit_kwargs):
    """``jax.jit`` for a training step, compiled once per lookahead phase.

    A drop-in for ``jax.jit`` on a function that updates a :func:`lookahead`
    state (``tx.update`` or :func:`update_and_apply`, directly or through
    Flax's ``TrainState.apply_gradients`` or ``nnx.Optimizer.update``). Before
    each call it reads the step count of the lookahead state among the
    arguments, and calls the program compiled for that step's phase:

    - the first update, which takes the slow weights from the params;
    - a sync step (update ``sync_period - 1``, ``2 * sync_period - 1``, ...);
    - any other update, whose program is the inner optimizer's own: no
      conditional, no work on the slow weights, no copies.

    The results are those of ``jit(fun)`` up to floating-point rounding (XLA
    may fuse the inner optimizer's arithmetic differently in a program without
    the conditionals). With plain ``jax.jit`` every step carries the sync and
    the first update as conditionals, which cost temporaries and copies: on
    CPU the plain ``tx.update`` step moves about twice the bytes of the inner
    optimizer's step.

    The step is read from the state, so the host's choice always agrees with
    the state's count, after a restore from a checkpoint in the middle of a
    period too. The count a call returns is remembered (by identity), so in a
    loop that passes each call's state to the next the host does not wait for
    the device; given any other array (a restored or rebuilt state) it reads
    the count from the device once.

    Only an update applied to a state passed in as an argument uses the host's
    step. One that runs on a state made inside ``fun`` (the second of two
    updates, a ``lax.scan`` over steps, ``optax.MultiSteps``, whose update runs
    inside a ``lax.cond``, or a ``jax.jit``-wrapped function called by ``fun``)
    uses the in-graph conditionals instead: still right, but no faster; so does
    a lookahead whose ``sync_period`` is traced
    (``optax.inject_hyperparams(lookahead)``). A ``UserWarning`` says so when
    a trace holds such updates and none that used the host's step. Programs
    that ``jit`` traces again (for new static arguments or shapes) use the
    step of the call that traces them.

    Args:
      fun: the function to compile. With no ``fun``, returns a decorator:
        ``@lookahead_jit(donate_argnums=(0,))``.
      jit: the compiling transformation, called as
        ``jit(fun, **jit_kwargs)``: ``jax.jit`` (default), ``flax.nnx.jit``
        (for ``nnx.Optimizer`` loops), ``jax.pmap``, ...
      **jit_kwargs: passed to ``jit``: ``donate_argnums``, ``static_argnums``,
        shardings.

    Returns:
      A callable with ``fun``'s signature. Every lookahead state among its
      arguments must be at the same step count. Call it from Python, not
      inside another traced function.

    Raises:
      TypeError: if ``fun`` or ``jit`` is not callable.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> from optax_lookahead import lookahead, lookahead_jit, slow_params
      >>> tx = lookahead(optax.sgd(1.0), sync_period=2, slow_step_size=0.5)
      >>> @lookahead_jit
      ... def train_step(params, opt_state, grads):
      ...     updates, opt_state = tx.update(grads, opt_state, params)
      ...     return optax.apply_updates(params, updates), opt_state
      >>> params = jnp.array([4.0])
      >>> opt_state = tx.init(params)
      >>> for _ in range(4):
      ...     params, opt_state = train_step(params, opt_state, jnp.array([1.0]))
      >>> params, slow_params(opt_state)
      (Array([2.], dtype=float32), Array([2.], dtype=float32))
    """
    if fun is None:
        return functools.partial(lookahead_jit, jit=jit, **jit_kwargs)
    return LookaheadJit(fun, jit, jit_kwargs)


class LookaheadJit:
    """What :func:`lookahead_jit` returns: call it as you would ``fun``."""

    def __init__(self, fun: Callable, jit: Callable, jit_kwargs: dict[str, Any]):
        if not callable(fun):
            raise TypeError(f"lookahead_jit(fun): fun must be callable, got {fun!r}.")
        if not callable(jit):
            raise TypeError(
                "lookahead_jit(fun, jit=...): jit must be a compiling"
                f" transformation such as jax.jit or flax.nnx.jit, got {jit!r}."
            )
        jit(fun, **jit_kwargs)  # bad jit arguments fail here, not at a call
        self._fun = fun
        self._jit = jit
        self._jit_kwargs = jit_kwargs
        # The sync periods of the updates traced so far: a phase is the pair
        # (first update?, which of these periods sync at this step).
        self._periods: frozenset[int] = frozenset()
        self._programs: dict[Any, _Program] = {}
        # id(step count array) -> (that array, its value): the counts the last
        # call returned, known on the host without asking the device.
        self._known: dict[int, tuple[Any, int]] = {}
        # The step of the call running now: a program traces again for new
        # static arguments or shapes, and such a trace must use this step.
        self._step_of_call = 0
        functools.update_wrapper(self, fun)

    def __call__(self, *args, **kwargs):
        steps = _step_counts((args, kwargs))
        step = self._host_step(steps)
        program = self._programs.get(self._phase(step)) or self._compile()
        self._step_of_call = step
        out = program.compiled(*args, **kwargs)
        # The first call of a program traces it, and tells its sync periods.
        if not program.periods <= self._periods:
            self._periods |= program.periods
            self._programs.clear()
        self._programs[self._phase(step)] = program
        self._remember(program, step, steps, (out, args, kwargs))
        return out

    def lower(self, *args, **kwargs):
        """The program a call with these arguments would run, lowered.

        As ``jax.jit(fun).lower``, for the phase of the arguments' lookahead
        state: ``.compile().cost_analysis()`` and ``.as_text()`` show what that
        step costs. Needs a ``jit`` whose result has ``lower`` (``jax.jit``).
        """
        step = self._host_step(_step_counts((args, kwargs)))
        program = self._programs.get(self._phase(step)) or self._compile()
        self._step_of_call = step
        return program.compiled.lower(*args, **kwargs)

    def _phase(self, step: int):
        return step == 0, tuple(step % k == k - 1 for k in sorted(self._periods))

    def _compile(self) -> "_Program":
        program = _Program()

        @functools.wraps(self._fun)  # jit reads argument names from it
        def traced(*args, **kwargs):
            steps = _step_counts((args, kwargs))
            with _host_step.tracing(self._step_of_call, steps) as trace:
                out = self._fun(*args, **kwargs)
            if trace.in_graph_updates and not trace.periods:
                warnings.warn(
                    "lookahead_jit: no lookahead update in the function used the"
                    " step count read on the host, so every program keeps the"
                    " in-graph sync (right, but no faster than jax.jit). Update"
                    " a LookaheadState passed in as an argument, in a function"
                    " that is not itself wrapped in jax.jit, with a sync_period"
                    " that is not traced (optax.inject_hyperparams traces it).",
                    stacklevel=3,
                )
            passed_in = {id(leaf) for leaf in steps}
            returned = [
                leaf
                for leaf in _step_counts((out, args, kwargs))
                if id(leaf) not in passed_in
            ]
            successors = {id(leaf) for leaf in trace.next_steps}
            # jit keeps one trace per static arguments and shapes, and a call
            # does not say which one it runs: what the program knows must
            # hold for every trace.
            program.periods |= trace.periods
            program.advances_one &= bool(returned) and all(
                id(leaf) in successors for leaf in returned
            )
            return out

        program.compiled = self._jit(traced, **self._jit_kwargs)
        return program

    def _host_step(self, steps) -> int:
        if not steps:
            raise ValueError(
                "lookahead_jit: none of the arguments holds a LookaheadState (the"
                " state of optax_lookahead.lookahead), so there is no phase to"
                " choose. Pass the optimizer state (or a TrainState or"
                " nnx.Optimizer holding it) as an argument, or use jax.jit."
            )
        values = set()
        for leaf in steps:
            known = self._known.get(id(leaf))
            values.add(known[1] if known and known[0] is leaf else _read(leaf))
        if len(values) > 1:
            raise ValueError(
                "lookahead_jit: the lookahead states among the arguments are at"
                f" different step counts {sorted(values)}, and one program serves"
                " one phase. Update them in separate lookahead_jit functions, or"
                " use jax.jit."
            )
        return values.pop()

    def _remember(self, program: "_Program", step: int, steps, results) -> None:
        """Notes the step counts this call returned, if it is sure of them."""
        self._known = {}
        if not (program.advances_one and len(self._periods) == 1):
            return
        (period,) = self._periods
        following = step + 1
        if following == wrap_point(period):
            following = period
        passed_in = {id(leaf) for leaf in steps}
        for leaf in _step_counts(results):
            if id(leaf) not in passed_in:
                self._known[id(leaf)] = (leaf, following)


class _Program:
    """One compiled phase, and what its traces found."""

    compiled: Any  # what `jit` returned: jax.jit gives one with .lower
    # The sync periods of the updates that used the host's step, in any trace.
    periods: frozenset[int] = frozenset()
    # Whether every trace returns the step counts passed in plus one.
    advances_one: bool = True


def _step_counts(tree) -> list:
    """The step count arrays of the lookahead states in ``tree``."""
    states = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, LookaheadState))
    return [_unwrap(s.step) for s in states if isinstance(s, LookaheadState)]


def _unwrap(leaf):
    """The array inside a Flax NNX variable (``nnx.Optimizer``'s state)."""
    get_value = getattr(leaf, "get_value", None)
    if not isinstance(leaf, jax.Array) and callable(get_value):
        return get_value()
    return leaf


def _read(step) -> int:
    """A step count's value, read on the host; replicas must agree."""
    if isinstance(step, jax.core.Tracer):
        raise ValueError(
            "lookahead_jit: called inside a traced function (jax.jit, vmap, a"
            " loop): it chooses its program on the host, so call it from Python."
        )
    if not isinstance(step, jax.Array | np.ndarray | np.generic | int):
        raise ValueError(
            "lookahead_jit: the lookahead state's step count is"
            f" {type(step).__name__}, not an array, so it has no value to choose"
            " the program by (an abstract jax.ShapeDtypeStruct, in .lower). Pass"
            " a concrete state, or lower jax.jit(fun) for the program that"
            " keeps the in-graph sync."
        )
    if isinstance(step, jax.Array) and not step.is_fully_addressable:
        step = step.addressable_data(0)
    values = np.unique(np.asarray(step))
    if values.size != 1:
        raise ValueError(
            "lookahead_jit: the replicas of a lookahead state disagree on the"
            f" step count ({values.tolist()}); they must advance together."
        )
    return int(values[0])
