"""The README's examples run as written, its test command is what CI runs, and
the benchmark figures it quotes are those of the committed results."""

import pathlib
import re

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def code_blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


@pytest.mark.parametrize("index", range(len(code_blocks("python"))))
def test_python_block_runs(index):
    """Each block runs on its own, with JAX's default promotion, as a user would."""
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        exec(compile(code_blocks("python")[index], f"README block {index}", "exec"), {})


def test_ci_runs_the_readme_test_command():
    commands = [line for block in code_blocks("bash") for line in block.splitlines()]
    test_command = next(c for c in commands if "pytest" in c)
    ci_script = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci_script.splitlines()


def test_readme_cost_table_quotes_the_committed_benchmark_results():
    # The README's table of lookahead's forms, rebuilt from
    # benchmarks/results/cpu.json: re-running the benchmark without updating
    # the README fails here.
    import json

    runs = json.loads((ROOT / "benchmarks/results/cpu.json").read_text())["runs"]
    dense = {malloc: run["results"]["dense"] for malloc, run in runs.items()}
    forms = {
        "`lookahead_jit`, `tx.update`": "lookahead(adam) [lookahead_jit]",
        "`lookahead_jit`, `update_and_apply`": (
            "update_and_apply(lookahead(adam)) [lookahead_jit]"
        ),
        "`jax.jit`, `tx.update` (in-graph)": "lookahead(adam)",
        "`jax.jit`, `update_and_apply` (in-graph)": "update_and_apply(lookahead(adam))",
        "`optax.lookahead(adam)`, for comparison": "optax.lookahead(adam)",
    }
    for form, variant in forms.items():
        figure = dense["default"][variant]
        bytes_, copies = figure["bytes_ratio"], figure["param_copies"]
        mean = " / ".join(
            f"{dense[m][variant]['time_ratio']['mean']:.2f}x"
            for m in ("default", "tuned")
        )
        row = (
            f"| {form} | {bytes_['non_sync']:.2f}x / {bytes_['sync']:.2f}x |"
            f" {copies['non_sync']} / {copies['sync']} | {mean} |"
        )
        assert row in README, f"README's row for {form} should read: {row}"


def test_readme_sparse_figures_quote_the_committed_benchmark_results():
    from benchmarks import write_report

    sparse = write_report.load("sparse-cpu.json")

    def at(variant, rows, fraction):
        return write_report._sparse_figures(sparse, variant)[(rows, fraction)]

    def ratios(variant, digits):  # default / tuned malloc, at 1% of 200,000 rows
        figures = at(variant, 200_000, 0.01)
        return " / ".join(
            f"{figures[m]['time_ratio']:.{digits}f}x" for m in ("default", "tuned")
        )

    text = " ".join(README.split())
    jit, alone = "lookahead(sparse_lazy(adam)) [lookahead_jit]", "sparse_lazy(adam)"
    assert (
        f"{ratios(jit, 3)}, against {ratios(alone, 3)} for `sparse_lazy` alone"
        f" and {ratios('lookahead(sparse_lazy(adam))', 2)} under plain `jax.jit`"
        in text
    )
    small, large = (
        {v: at(v, rows, fraction)["default"]["seconds"] for v in (jit, alone)}
        for rows, fraction in ((200_000, 0.01), (2_000_000, 0.001))
    )
    assert (
        f"the mean step goes from {1e3 * small[jit]:.1f} ms to"
        f" {1e3 * large[jit]:.1f} ms (`sparse_lazy` alone:"
        f" {1e3 * small[alone]:.1f} and {1e3 * large[alone]:.1f} ms)" in text
    )
