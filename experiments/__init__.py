"""The project's experiments: the IMDB reproduction and Lookahead's robustness.

An importable package (the editable install puts the repository root on
``sys.path``), used by the examples, the notebooks, the tests and
``RESULTS.md``'s generator. Every script runs as a module, from anywhere:

- ``python -m experiments.imdb.demo``: the short IMDB demo
  (``examples/imdb_lazy.py`` runs the same);
- ``python -m experiments.imdb.reproduce``: the full IMDB grid, resumable;
- ``python -m experiments.imdb.throughput``: several seeds in one program?
- ``experiments/gpu_grid.sh``: the whole IMDB grid on one GPU, in one call;
- ``python -m experiments.digits_lr_sweep``: Lookahead and the learning rate;
- ``python -m experiments.digits_grids``: Lookahead's k x alpha grid, and SGD
  near its stability edge;
- ``python -m experiments.noisy_quadratic``: the noisy quadratic model;
- ``python -m experiments.make_results``: writes ``RESULTS.md`` from the logs.

Shared pieces: ``run_info`` (machine facts for logs), ``stats`` (paired
statistics), ``synthetic`` (the quick starts' synthetic sentences).
"""
