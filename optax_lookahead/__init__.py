"""Lookahead and lazy embedding updates as optax transformations.

``lookahead(inner)`` keeps the slow weights in the optimizer state, so it works
with plain params in any optax training loop; ``lazy_mask(inner)`` keeps the
rows of embedding tables that were not sampled in a batch from moving, and
``sparse_lazy(inner)`` does the same at a cost that follows the sampled rows.
Compose them as ``lookahead(lazy_mask(optax.adam(1e-3)))``.
"""

from optax_lookahead._lazy import LazyMaskState, lazy_mask
from optax_lookahead._lookahead import (
    LookaheadConfig,
    LookaheadState,
    LookaheadTransformation,
    lookahead,
)
from optax_lookahead._lookahead_in_tree import slow_params
from optax_lookahead._lookahead_jit import LookaheadJit, lookahead_jit
from optax_lookahead._rows import (
    SparseRows,
    apply_sparse_updates,
    gather_rows,
    sparse_rows,
)
from optax_lookahead._sparse_lazy import SparseLazyState, sparse_lazy
from optax_lookahead._update_and_apply import update_and_apply

__version__ = "0.2.0.dev0"

__all__ = (
    "LazyMaskState",
    "LookaheadConfig",
    "LookaheadJit",
    "LookaheadState",
    "LookaheadTransformation",
    "SparseLazyState",
    "SparseRows",
    "apply_sparse_updates",
    "gather_rows",
    "lazy_mask",
    "lookahead",
    "lookahead_jit",
    "slow_params",
    "sparse_lazy",
    "sparse_rows",
    "update_and_apply",
)
