"""The step number a program is being compiled for, when the host knows it.

:func:`~optax_lookahead.lookahead_jit` reads a lookahead state's step count on
the host and compiles one program per phase (first update, sync, neither).
While it traces, :func:`known_phase` answers a lookahead update's question
"is this the first update, is it a sync?" with Python bools, so the program
holds only the branch that runs. It does so only for a state whose step is
exactly the array the host read (the tracer of that argument): a state handed
on inside the program (a second update in a loop, a ``lax.cond`` operand, a
nested ``jax.jit``) gets ``None`` and the in-graph conditional, which is
always right. So does an update whose ``sync_period`` is traced
(``optax.inject_hyperparams(lookahead)``).

``jax.jit`` traces a program again for new static arguments or shapes, at a
later call than the one that made the program; :func:`tracing` is therefore
given the step of the call that is running when the trace happens.
"""

import contextlib
import contextvars
import dataclasses

import jax


@dataclasses.dataclass
class Trace:
    """What one trace under :func:`tracing` was told and what it saw."""

    step: int
    # id() of the step tracers of the lookahead states passed in as arguments.
    argument_steps: frozenset[int]
    # The sync periods of the updates that used ``step``.
    periods: set[int] = dataclasses.field(default_factory=set)
    # The number of lookahead updates that could not use ``step``.
    in_graph_updates: int = 0
    # The step counts those updates return, to tell the host which outputs
    # hold ``step``'s successor.
    next_steps: list[jax.Array] = dataclasses.field(default_factory=list)


_CURRENT: contextvars.ContextVar[Trace | None] = contextvars.ContextVar(
    "optax_lookahead_host_step", default=None
)


@contextlib.contextmanager
def tracing(step: int, argument_steps):
    """Traces with ``step`` known for the states whose step is in ``argument_steps``."""
    trace = Trace(step, frozenset(id(leaf) for leaf in argument_steps))
    token = _CURRENT.set(trace)
    try:
        yield trace
    finally:
        _CURRENT.reset(token)


def known_phase(step: jax.Array, sync_period: int) -> tuple[bool, bool] | None:
    """``(first, sync)`` as Python bools where the host knows ``step``; else None."""
    trace = _CURRENT.get()
    if trace is None:
        return None
    if id(step) not in trace.argument_steps or not isinstance(sync_period, int):
        trace.in_graph_updates += 1
        return None
    trace.periods.add(sync_period)
    return trace.step == 0, trace.step % sync_period == sync_period - 1


def record_next_step(previous: jax.Array, following: jax.Array) -> None:
    """Notes that ``following`` is the host-known ``previous`` step plus one."""
    trace = _CURRENT.get()
    if trace is not None and id(previous) in trace.argument_steps:
        trace.next_steps.append(following)
