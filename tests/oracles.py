"""Independent references: the papers' algorithms as plain NumPy loops.

Written from the algorithms' definitions, in float64, without JAX or optax, so
that a bug shared by the library and optax cannot hide.
"""

import numpy as np


class NumpySGD:
    """SGD, with optional heavy-ball momentum as optax.sgd defines it."""

    def __init__(self, learning_rate, momentum=0.0):
        self.learning_rate, self.momentum = learning_rate, momentum

    def init(self, params):
        return {"trace": [np.zeros_like(p) for p in params]}

    def step(self, grads, state, params):
        del params
        trace = [
            g + self.momentum * t for g, t in zip(grads, state["trace"], strict=True)
        ]
        return [-self.learning_rate * t for t in trace], {"trace": trace}

    def mirrors(self):
        return ["trace"]


class NumpyAdam:
    """Adam as in Kingma & Ba, with optax's epsilon placement.

    ``rows``, when given, is a list with a bool row vector (or None) per param:
    the moments of rows that are False stay as they were (lazy Adam with
    frozen state, as TF LazyAdam and torch SparseAdam); the step count stays
    global.
    """

    def __init__(self, learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
        self.learning_rate, self.b1, self.b2, self.eps = learning_rate, b1, b2, eps
        self.weight_decay = weight_decay

    def init(self, params):
        zeros = [np.zeros_like(p) for p in params]
        return {"mu": zeros, "nu": list(zeros), "count": 0}

    def step(self, grads, state, params, rows=None):
        count = state["count"] + 1
        mu, nu, updates = [], [], []
        for i, g in enumerate(grads):
            m = self.b1 * state["mu"][i] + (1 - self.b1) * g
            v = self.b2 * state["nu"][i] + (1 - self.b2) * g * g
            if rows is not None and rows[i] is not None:
                keep = rows[i].reshape((-1,) + (1,) * (g.ndim - 1))
                m = np.where(keep, m, state["mu"][i])
                v = np.where(keep, v, state["nu"][i])
            m_hat = m / (1 - self.b1**count)
            v_hat = v / (1 - self.b2**count)
            u = m_hat / (np.sqrt(v_hat) + self.eps)
            if self.weight_decay:
                u = u + self.weight_decay * params[i]
            updates.append(-self.learning_rate * u)
            mu.append(m)
            nu.append(v)
        return updates, {"mu": mu, "nu": nu, "count": count}

    def mirrors(self):
        return ["mu", "nu"]


def lookahead_trajectory(
    inner, params, grad_fn, sync_period, slow_step_size, steps, on_sync="keep"
):
    """Runs the paper's Algorithm 1, one fast step per iteration.

    Args:
      inner: a NumPy optimizer above.
      params: list of float64 arrays, the initial weights.
      grad_fn: maps the list of fast weights to the list of gradients.
      sync_period, slow_step_size: k and alpha.
      steps: how many fast steps to take.
      on_sync: "keep", "reset" (the inner optimizer starts over, its step
        count included) or "pullback" (momenta interpolated toward their value
        at the last sync with alpha, as in the Lookahead authors' PyTorch
        code).

    Returns:
      A list with, after every step, the pair (fast weights, slow weights).
    """
    fast = [p.copy() for p in params]
    slow = [p.copy() for p in params]
    state = inner.init(params)
    cached = {name: [x.copy() for x in state[name]] for name in inner.mirrors()}
    history = []
    for step in range(1, steps + 1):
        updates, state = inner.step(grad_fn(fast), state, fast)
        fast = [f + u for f, u in zip(fast, updates, strict=True)]
        if step % sync_period == 0:
            slow = [
                s + slow_step_size * (f - s) for s, f in zip(slow, fast, strict=True)
            ]
            fast = [s.copy() for s in slow]
            if on_sync == "reset":
                state = inner.init(fast)
            for name in inner.mirrors():
                if on_sync == "pullback":
                    state[name] = [
                        slow_step_size * x + (1 - slow_step_size) * c
                        for x, c in zip(state[name], cached[name], strict=True)
                    ]
                    cached[name] = [x.copy() for x in state[name]]
        history.append(([f.copy() for f in fast], [s.copy() for s in slow]))
    return history


class NumpyLazy:
    """Lazy Adam: rows of the tables whose gradient row is all zero do not move.

    ``freeze_state=False`` is Su's LazyOptimizer (moments decay for every row,
    only the step is masked); ``True`` also freezes the moments of unsampled
    rows. ``tables`` holds a bool per param, True for embedding tables.
    """

    def __init__(self, adam, tables, freeze_state):
        self.adam, self.tables, self.freeze_state = adam, tables, freeze_state

    def init(self, params):
        return self.adam.init(params)

    def mirrors(self):
        return self.adam.mirrors()

    def step(self, grads, state, params):
        rows = [
            np.abs(g).reshape(g.shape[0], -1).sum(axis=1) != 0 if table else None
            for g, table in zip(grads, self.tables, strict=True)
        ]
        updates, state = self.adam.step(
            grads, state, params, rows=rows if self.freeze_state else None
        )
        for i, r in enumerate(rows):
            if r is not None:
                keep = r.reshape((-1,) + (1,) * (updates[i].ndim - 1))
                updates[i] = np.where(keep, updates[i], 0.0)
        return updates, state


def plain_trajectory(inner, params, grads_per_step):
    """Applies a NumPy optimizer to a fixed sequence of gradients."""
    params = [p.copy() for p in params]
    state = inner.init(params)
    history = []
    for grads in grads_per_step:
        updates, state = inner.step(grads, state, params)
        params = [p + u for p, u in zip(params, updates, strict=True)]
        history.append(params)
    return history, state
