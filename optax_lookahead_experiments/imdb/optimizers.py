"""The optimizers the IMDB demo compares, all built on Adam(1e-3, eps=1e-7).

The LazyOptimizer post reported Adam at 83.7% and lazy Adam at 84.9% best
validation accuracy. Its Keras wrapper also advanced Adam's step counter twice
per step, which makes the early steps larger (Adam's bias correction of the
second moment divides by ``1 - b2**t``, smaller for a smaller ``t``: up to
``sqrt(2)`` times larger steps while ``t`` is much less than 1 / (1 - b2) =
1000). ``adam_double_count`` reproduces that alone, and ``lazy_double_count``
is the seed's actual configuration (lazy with the doubled counter), so that the
two effects can be separated and their combination measured.
"""

from collections.abc import Callable

import optax

from optax_lookahead import lazy_mask, lookahead

LEARNING_RATE = 1e-3
EPS = 1e-7  # Keras' default, not optax's 1e-8
SYNC_PERIOD, SLOW_STEP_SIZE = 5, 0.5  # the Lookahead paper's defaults


def adam() -> optax.GradientTransformation:
    return optax.adam(LEARNING_RATE, eps=EPS)


def double_count(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """Advances the inner optimizer's ``count`` once more after each update.

    ``inner``'s state must hold exactly one field named ``count`` (Adam's).
    """

    def update_fn(updates, state, params=None):
        updates, state = inner.update(updates, state, params)
        count = optax.tree.get(state, "count")
        return updates, optax.tree.set(state, count=optax.safe_increment(count))

    return optax.GradientTransformation(inner.init, update_fn)


OPTIMIZERS: dict[str, tuple[Callable[[], optax.GradientTransformation], str]] = {
    "adam": (adam, "optax.adam(1e-3, eps=1e-7)"),
    "adam_double_count": (
        lambda: double_count(adam()),
        "adam whose step count advances twice per step (the seed's Keras wrapper)",
    ),
    "lazy": (lambda: lazy_mask(adam()), "lazy_mask(adam): Su's LazyOptimizer"),
    "lazy_double_count": (
        lambda: lazy_mask(double_count(adam())),
        "lazy_mask(adam) whose step count advances twice per step: the seed's"
        " actual configuration",
    ),
    "lazy_frozen": (
        lambda: lazy_mask(adam(), freeze_state=True),
        "lazy_mask(adam, freeze_state=True): TF LazyAdam",
    ),
    "lookahead": (
        lambda: lookahead(adam(), SYNC_PERIOD, SLOW_STEP_SIZE),
        "lookahead(adam), k=5, alpha=0.5",
    ),
    "lookahead_lazy": (
        lambda: lookahead(lazy_mask(adam()), SYNC_PERIOD, SLOW_STEP_SIZE),
        "lookahead(lazy_mask(adam)), k=5, alpha=0.5",
    ),
}


def make_optimizer(name: str) -> optax.GradientTransformation:
    """Builds the optimizer registered under ``name`` in ``OPTIMIZERS``."""
    return OPTIMIZERS[name][0]()
