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


@app.command()
def generate(
    target: Annotated[str, typer.Argument(help="a run directory, a model path or a hub id")],
    prompt: Annotated[list[str] | None, typer.Option("--prompt", help="a prompt (repeatable)")] = None,
    prompts_file: Annotated[Path | None, typer.Option(help="one prompt per line; \\n for a newline")] = None,
    checkpoint: Annotated[str, typer.Option(help="best or last (run directories)")] = "best",
    strategy: Annotated[str | None, typer.Option(help="greedy, sample or beam")] = None,
    max_new_tokens: Annotated[int | None, typer.Option()] = None,
    temperature: Annotated[float | None, typer.Option()] = None,
    top_k: Annotated[int | None, typer.Option()] = None,
    top_p: Annotated[float | None, typer.Option()] = None,
    num_beams: Annotated[int | None, typer.Option()] = None,
    repetition_penalty: Annotated[float | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    prefix: Annotated[str | None, typer.Option(help="priming text before every prompt")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    context_window: Annotated[
        str | None, typer.Option(help="attend to the last W tokens; LO,HI draws W per step")
    ] = None,
    context_mode: Annotated[str | None, typer.Option(help="reencode or cache")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Continue prompts with a trained run or a model; options override the run's recipe."""
    from loraft.generation import generate as generate_texts
    from loraft.inference import load_generator, read_prompts

    prompts = read_prompts(prompt or [], prompts_file)
    model, tokenizer, settings = load_generator(target, checkpoint)
    given = {
        "strategy": strategy, "max_new_tokens": max_new_tokens, "temperature": temperature,
        "top_k": top_k, "top_p": top_p, "num_beams": num_beams, "seed": seed, "prefix": prefix,
        "repetition_penalty": repetition_penalty, "batch_size": batch_size,
        "context_window": _parse_window(context_window), "context_mode": context_mode,
    }  # fmt: skip
    settings = _with_overrides(settings, {k: v for k, v in given.items() if v is not None})
    for text, continuation in zip(prompts, generate_texts(model, tokenizer, prompts, settings), strict=True):
        record = {"prompt": text, "continuation": continuation}
        typer.echo(json.dumps(record) if as_json else f"{text}\033[1m{continuation}\033[0m\n")


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="finished run directories")],
    plot: Annotated[Path | None, typer.Option(help="also write a PNG of curves and bars")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Runs side by side: trainable %, time, tokens/s, peak memory and best metrics."""
    from loraft.report import compare_runs, format_comparison, plot_comparison

    rows = compare_runs(run_dirs)
    typer.echo(json.dumps(rows, indent=2) if as_json else format_comparison(rows))
    if plot is not None:
        typer.echo(f"plot: {plot_comparison(run_dirs, rows, plot)}")


@app.command()
def plan(recipe: RecipeArg, overrides: Overrides = None, as_json: JsonFlag = False) -> None:
    """Parameter counts and a memory estimate for a recipe, without downloading weights."""
    from loraft.plan import format_plan, plan_recipe
    from loraft.recipe import load_recipe

    result = plan_recipe(load_recipe(recipe, overrides))
    typer.echo(json.dumps(result, indent=2) if as_json else format_plan(result))


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
def study(
    recipe: RecipeArg,
    overrides: Overrides = None,
    data_root: DataRoot = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing study.json")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Compare decoders (standard vs shortened context) on one model and the same prompts."""
    from loraft.recipe import load_recipe
    from loraft.study import format_study, run_study

    results = run_study(load_recipe(recipe, overrides), data_root, overwrite)
    typer.echo(json.dumps(results, indent=2) if as_json else format_study(results))


@app.command()
def fields() -> None:
    """Every recipe key with its default and meaning (the schema is the source of truth)."""
    from loraft.recipe import field_reference

    typer.echo("| key | default | meaning |\n|---|---|---|\n" + "\n".join(field_reference()))


def _parse_window(text: str | None) -> int | list[int] | None:
    """`W` or `LO,HI` from the command line."""
    if text is None:
        return None
    try:
        parts = [int(part) for part in text.split(",")]
    except ValueError:
        raise LoraftError(f"--context-window: expected W or LO,HI (integers), got {text!r}") from None
    return parts[0] if len(parts) == 1 else parts


def _with_overrides(settings, changes: dict):
    """The settings with command-line changes, validated by the recipe schema."""
    from pydantic import ValidationError

    try:
        return type(settings).model_validate({**settings.model_dump(), **changes})
    except ValidationError as error:
        first = error.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:  # a check across fields names them itself
            raise LoraftError(f"generation settings: {message}") from None
        raise LoraftError(f"--{str(first['loc'][0]).replace('_', '-')}: {message}") from None


def _metric_lines(metrics: dict) -> str:
    return "\n".join(f"{key:<24}{value}" for key, value in metrics.items())


def _summary_lines(summary: dict) -> str:
    return (
        f"done in {summary['wall_s']:.1f}s: {summary['steps']} steps, "
        f"{summary['train_tokens_per_s']:,.0f} tokens/s, peak memory {summary['peak_memory_mb']:,.0f} MB\n"
        f"final eval: {_scalars(summary['final_eval'])}\n"
        f"best checkpoint: {_scalars(summary['best_eval'])}\n"
        f"run directory: {summary['run_dir']}"
    )


def _scalars(metrics: dict) -> str:
    return ", ".join(
        f"{key}={value:.4f}" if isinstance(value, float) else f"{key}={value}"
        for key, value in metrics.items()
        if not isinstance(value, (list, dict))
    )


def _quiet_libraries() -> None:
    """Hide the libraries' per-file progress bars and advisory warnings; ours show progress."""
    import warnings

    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    hub_logging.set_verbosity_error()  # no retry chatter when the hub is unreachable
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
