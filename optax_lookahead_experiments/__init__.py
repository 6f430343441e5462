"""The project's experiments: the IMDB reproduction and Lookahead's robustness.

A top-level package of its own, shipped in the same wheel as
``optax_lookahead`` (its third-party needs are the ``examples`` extra), so that
the notebooks run from an installed package with no clone of the repository.
Used by the examples, the notebooks, the tests and ``RESULTS.md``'s generator.
Every script runs as a module, from anywhere (the scripts that write logs
default to the checkout's ``results/``; run them from a checkout):

- ``python -m optax_lookahead_experiments.imdb.demo``: the short IMDB demo
  (``examples/imdb_lazy.py`` runs the same);
- ``python -m optax_lookahead_experiments.imdb.reproduce``: the full IMDB grid,
  resumable;
- ``python -m optax_lookahead_experiments.imdb.throughput``: several seeds in one
  program?
- ``optax_lookahead_experiments/gpu_grid.sh``: the whole IMDB grid on one GPU, in one
  call;
- ``python -m optax_lookahead_experiments.digits_lr_sweep``: Lookahead and the
  learning rate;
- ``python -m optax_lookahead_experiments.digits_grids``: Lookahead's k x alpha grid,
  and SGD near its stability edge;
- ``python -m optax_lookahead_experiments.noisy_quadratic``: the noisy quadratic model;
- ``python -m optax_lookahead_experiments.make_results``: writes ``RESULTS.md`` from
  the logs.

Shared pieces: ``run_info`` (machine facts for logs), ``stats`` (paired
statistics), ``synthetic`` (the quick starts' synthetic sentences).
"""
