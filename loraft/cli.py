"""The `loraft` command: parse, call one library function, print, exit.

User mistakes (`LoraftError`) print as one line on stderr and exit with code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from loraft.errors import LoraftError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fine-tune GPT-2 with LoRA or full fine-tuning from YAML recipes.",
)

RecipeArg = Annotated[Path, typer.Argument(help="recipe YAML file", show_default=False)]
Overrides = Annotated[list[str] | None, typer.Argument(help="dotted overrides, e.g. train.lr=3e-4 lora.r=16")]
DataRoot = Annotated[
    Path | None,
    typer.Option(
        "--data-root", help="where recipe data files are looked up first", envvar="LORAFT_DATA_ROOT"
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


@app.command()
def train(
    recipe: RecipeArg,
    overrides: Overrides = None,
    data_root: DataRoot = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
) -> None:
    """Train a recipe and write its run directory."""
    from loraft.recipe import load_recipe
    from loraft.trainer import train_recipe

    result = train_recipe(load_recipe(recipe, overrides), data_root, overwrite)
    if result.is_main_process:
        typer.echo(_summary_lines(result.summary))


@app.command()
def validate(recipes: Annotated[list[Path], typer.Argument(help="recipe files")]) -> None:
    """Check recipes without running them."""
    from loraft.recipe import load_recipe

    failures = 0
    for path in recipes:
        try:
            loaded = load_recipe(path)
            typer.echo(f"ok    {path} (task {loaded.task}, method {loaded.method})")
        except LoraftError as error:
            failures += 1
            typer.echo(f"error {error}", err=True)
    if failures:
        raise typer.Exit(2)


@app.command()
def fields() -> None:
    """Every recipe key with its default and meaning (the schema is the source of truth)."""
    from loraft.recipe import field_reference

    typer.echo("| key | default | meaning |\n|---|---|---|\n" + "\n".join(field_reference()))


@app.command()
def plan(recipe: RecipeArg, overrides: Overrides = None, as_json: JsonFlag = False) -> None:
    """Parameter counts and a memory estimate for a recipe, without downloading weights."""
    from loraft.plan import format_plan, plan_recipe
    from loraft.recipe import load_recipe

    result = plan_recipe(load_recipe(recipe, overrides))
    typer.echo(json.dumps(result, indent=2) if as_json else format_plan(result))


@app.command("eval")
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by `loraft train`")],
    overrides: Overrides = None,
    checkpoint: Annotated[str, typer.Option(help="best or last")] = "best",
    data_root: DataRoot = None,
    as_json: JsonFlag = False,
) -> None:
    """Re-evaluate a saved run (LoRA adapter, head-only or full) and print its metrics."""
    from loraft.evaluation import evaluate_run

    metrics = evaluate_run(run_dir, overrides, checkpoint, data_root)
    typer.echo(json.dumps(metrics, indent=2) if as_json else _metric_lines(metrics))


def _metric_lines(metrics: dict) -> str:
    return "\n".join(f"{key:<24}{value}" for key, value in metrics.items())


def _summary_lines(summary: dict) -> str:
    final = ", ".join(
        f"{key}={value:.4f}" if isinstance(value, float) else f"{key}={value}"
        for key, value in summary["final_eval"].items()
        if not isinstance(value, (list, dict))
    )
    return (
        f"done in {summary['wall_s']:.1f}s: {summary['steps']} steps, "
        f"{summary['train_tokens_per_s']:,.0f} tokens/s, peak memory {summary['peak_memory_mb']:,.0f} MB\n"
        f"final eval: {final}\n"
        f"run directory: {summary['run_dir']}"
    )


def _quiet_libraries() -> None:
    """Hide the libraries' per-file progress bars and advisory warnings; ours show progress."""
    import warnings

    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def main() -> None:
    """Entry point: run the app, turning user mistakes into one line and exit code 2."""
    _quiet_libraries()
    try:
        app()
    except LoraftError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
