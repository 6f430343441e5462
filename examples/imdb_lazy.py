"""Lazy Adam and Lookahead on IMDB sentiment: the LazyOptimizer experiment.

The short demo of ``optax_lookahead_experiments.imdb.demo`` (see ``--help``):
trains the LazyOptimizer post's Embedding -> LSTM -> Dense model on IMDB
reviews with each optimizer, prints a table, and writes a plot and logs to
``out/imdb/``. The full, paired reproduction is
``python -m optax_lookahead_experiments.imdb.reproduce``; its results are in RESULTS.md.

Run: python examples/imdb_lazy.py [--optimizers adam lazy] [--epochs 2]
"""

from optax_lookahead_experiments.imdb.demo import main

if __name__ == "__main__":
    main()
