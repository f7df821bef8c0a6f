"""The `loraft` command: parse, call one library function, print, exit.

User mistakes (`LoraftError`) print as one line on stderr and exit with code 2; a run stopped
by Ctrl-C or SIGTERM says where it stopped and exits with 130. Libraries are imported inside
the commands that need them, so `loraft --help` and `loraft validate` start in a blink.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from loraft import __version__
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
Margin = Annotated[
    str | None,
    typer.Option(
        help="how far from full fine-tuning still counts as as good: a number in the metric's units, "
        "or a percentage of full's value (default: 1 point, or 2% for losses)"
    ),
]
TrustRemoteCode = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code", help="allow the model's own Python code (model.trust_remote_code) to run"
    ),
]
AllowLocalMetricCode = Annotated[
    bool,
    typer.Option(
        "--allow-local-metric-code", help="allow evaluate:/local/dir metrics, which run its Python code"
    ),
]
CheckpointOption = Annotated[str, typer.Option(help="best or last")]


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"loraft {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    """Fine-tune GPT-2 with LoRA or full fine-tuning from YAML recipes."""


@app.command()
def train(
    recipe: RecipeArg,
    overrides: Overrides = None,
    data_root: DataRoot = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run (its own files only)")] = False,
    resume: Annotated[bool, typer.Option(help="continue the run in output_dir from its last state")] = False,
    trust_remote_code: TrustRemoteCode = False,
    allow_local_metric_code: AllowLocalMetricCode = False,
    allow_changed_inputs: Annotated[
        bool, typer.Option(help="resume although data files or the base model changed (recorded)")
    ] = False,
) -> None:
    """Train a recipe and write its run directory."""
    from loraft.recipe_files import CodeGrants, apply_grants, load_recipe
    from loraft.run_dir import RunDirectory

    given = [*(overrides or []), *(["train.resume=true"] if resume else [])]
    in_run = RunDirectory(recipe.parent).is_run()
    if in_run and not any(o.startswith("output_dir=") for o in given):
        given.append(f"output_dir={recipe.parent}")  # a run's own recipe.yaml: that run, wherever it is now
    # older run folders wrote every method's section into recipe.yaml
    loaded = load_recipe(recipe, given, other_methods="drop" if in_run else "refuse")
    loaded = apply_grants(loaded, CodeGrants(trust_remote_code, allow_local_metric_code), recipe)
    _check_before_loading_torch(loaded, data_root, overwrite)
    _quiet_libraries()
    from loraft.trainer import RunInterrupted
    from loraft.training import train_recipe

    try:
        result = train_recipe(loaded, data_root, overwrite, allow_changed_inputs)
    except RunInterrupted as stopped:
        raise _Interrupted(str(stopped)) from None
    if result.is_main_process:
        typer.echo(summary_lines(result.summary))


@app.command()
def validate(
    recipes: Annotated[list[Path], typer.Argument(help="recipe files, then dotted overrides (key=value)")],
    data_root: DataRoot = None,
    no_data: Annotated[
        bool, typer.Option("--no-data", help="check the recipes only, not their data")
    ] = False,
    trust_remote_code: TrustRemoteCode = False,
    allow_local_metric_code: AllowLocalMetricCode = False,
) -> None:
    """Check recipes and the first rows of their data files, without loading a model; no code
    from a model or a metric runs (the flags only say that training will be allowed to)."""
    from loraft.checks import check_recipe
    from loraft.data import data_roots
    from loraft.recipe_files import CodeGrants, apply_grants, load_recipe

    grants = CodeGrants(trust_remote_code, allow_local_metric_code)
    # key=value arguments that are not files are overrides, applied to every recipe (as train's)
    overrides = [str(arg) for arg in recipes if "=" in str(arg) and not arg.exists()]
    paths = [arg for arg in recipes if str(arg) not in overrides]
    failures = 0
    for path in paths:
        try:
            loaded = apply_grants(load_recipe(path, overrides), grants, path)
            notes = check_recipe(loaded, None if no_data else data_roots(data_root))
            typer.echo(f"ok    {path} (task {loaded.task}, method {loaded.method})")
            for note in notes:
                typer.echo(f"      {note}")
        except LoraftError as error:
            failures += 1
            message = str(error)
            named = message if message.startswith(str(path)) else f"{path}: {message}"
            typer.echo(f"error: {named}", err=True)  # several recipes: each error names its file
    if failures:
        raise typer.Exit(2)


@app.command()
def plan(recipe: RecipeArg, overrides: Overrides = None, as_json: JsonFlag = False) -> None:
    """Parameter counts and a memory estimate for a recipe, without downloading weights."""
    from loraft.checks import check_recipe
    from loraft.recipe_files import load_recipe

    loaded = load_recipe(recipe, overrides)
    check_recipe(loaded)
    _quiet_libraries()
    from loraft.plan import format_plan, plan_recipe

    result = plan_recipe(loaded)
    typer.echo(json.dumps(result, indent=2) if as_json else format_plan(result))


@app.command("eval")
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by `loraft train`")],
    overrides: Overrides = None,
    checkpoint: CheckpointOption = "best",
    data_root: DataRoot = None,
    as_json: JsonFlag = False,
    trust_remote_code: TrustRemoteCode = False,
    allow_local_metric_code: AllowLocalMetricCode = False,
) -> None:
    """Re-evaluate a saved run (LoRA adapter, head-only or full) and print its metrics."""
    from loraft.evaluation import check_eval, evaluate_run
    from loraft.recipe_files import CodeGrants

    grants = CodeGrants(trust_remote_code, allow_local_metric_code)
    check_eval(run_dir, overrides, checkpoint, data_root, grants)
    _quiet_libraries()

    metrics = evaluate_run(run_dir, overrides, checkpoint, data_root, grants)
    typer.echo(json.dumps(metrics, indent=2) if as_json else metric_lines(metrics))


@app.command()
def generate(
    target: Annotated[str, typer.Argument(help="a run directory, a model path or a hub id")],
    prompt: Annotated[list[str] | None, typer.Option("--prompt", help="a prompt (repeatable)")] = None,
    prompts_file: Annotated[Path | None, typer.Option(help="one prompt per line; \\n for a newline")] = None,
    checkpoint: Annotated[str, typer.Option(help="best or last (run directories)")] = "best",
    raw: Annotated[bool, typer.Option("--raw", help="do not frame prompts with the run's template")] = False,
    chat: Annotated[
        bool,
        typer.Option(
            "--chat", help="a prompt is a user message, or a JSON list of messages, in the chat template"
        ),
    ] = False,
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
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Continue prompts with a trained run or a model; options override the run's recipe."""
    from loraft.inference import read_prompts

    prompts = read_prompts(prompt or [], prompts_file)
    given = {
        "strategy": strategy,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "num_beams": num_beams,
        "seed": seed,
        "prefix": prefix,
        "repetition_penalty": repetition_penalty,
        "batch_size": batch_size,
        "context_window": _parse_window(context_window),
        "context_mode": context_mode,
    }
    from loraft.inference import planned_settings

    settings = planned_settings(target, checkpoint, {k: v for k, v in given.items() if v is not None})
    _quiet_libraries()
    from loraft.checks import check_generation, context_of
    from loraft.generation import generate as generate_texts
    from loraft.inference import load_generator
    from loraft.recipe_files import CodeGrants

    if chat and raw:
        raise LoraftError("--chat and --raw: choose one (the chat template frames prompts; --raw does not)")
    generator = load_generator(target, checkpoint, raw, CodeGrants(trust_remote_code), chat)
    # again with the loaded config: a hub model's context is known only now
    check_generation(settings, context_of(generator.model.config), "generation")
    framed = [generator.frame(text) for text in prompts]
    continuations = generate_texts(generator.model, generator.tokenizer, framed, settings, generator.encode)
    for text, continuation in zip(prompts, continuations, strict=True):
        record = {"prompt": text, "continuation": continuation}
        shown = f"\033[1m{continuation}\033[0m" if sys.stdout.isatty() else continuation  # bold: the model's
        typer.echo(json.dumps(record) if as_json else f"{text}{shown}\n")


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by `loraft train`")],
    out: Annotated[Path, typer.Option(help="a new folder for the model, tokenizer and model card")],
    merge: Annotated[bool, typer.Option(help="fold a LoRA adapter into a standalone model")] = False,
    checkpoint: CheckpointOption = "best",
    push_to_hub: Annotated[
        str | None, typer.Option(help="also upload to this hub repo (needs a token)")
    ] = None,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Export a run's checkpoint for transformers/PEFT (adapter, or merged model) with a model card."""
    _quiet_libraries()
    from loraft.export import export_run
    from loraft.recipe_files import CodeGrants

    written = export_run(run_dir, out, merge, checkpoint, push_to_hub, CodeGrants(trust_remote_code))
    typer.echo(f"exported {run_dir} ({checkpoint}{', merged' if merge else ''}) to {written}")
    if push_to_hub:
        typer.echo(f"pushed to https://huggingface.co/{push_to_hub}")


@app.command()
def compare(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="run directories, or sweep folders (their compared runs)")
    ],
    out: Annotated[
        Path | None, typer.Option(help="write comparison.md, comparison.csv and figures here")
    ] = None,
    metric: Annotated[
        str | None, typer.Option(help="the metric compared; default: the runs' eval.metric")
    ] = None,
    image_format: Annotated[str, typer.Option("--format", help="figure format: png, svg or pdf")] = "png",
    margin: Margin = None,
    as_json: JsonFlag = False,
) -> None:
    """Runs side by side, seeds grouped, against full fine-tuning: a recommendation, then
    trainable %, speed, memory and the metric with 95% intervals."""
    from loraft.report import compare_runs, format_comparison, recommendation, table_rows
    from loraft.sweep import swept_runs

    comparison = compare_runs(swept_runs(run_dirs), metric)
    if as_json:
        typer.echo(
            json.dumps(
                {"recommendation": recommendation(comparison, margin), "points": table_rows(comparison)},
                indent=2,
            )
        )
    else:
        typer.echo(format_comparison(comparison, margin))
    if out is not None:
        _write_report(comparison, out, image_format, margin)


@app.command()
def sweep(
    recipe: RecipeArg,
    overrides: Overrides = None,
    grid: Annotated[
        list[str] | None, typer.Option("--grid", help="KEY=V1,V2,... (repeatable: the cartesian grid)")
    ] = None,
    tune: Annotated[
        list[str] | None,
        typer.Option(
            "--tune",
            help="KEY=V1,V2,...: each point at each value (one seed); --seeds runs at its best on validation",
        ),
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, help="runs a point, train.seed = the recipe's + 0..N-1")] = 1,
    out: Annotated[Path | None, typer.Option(help="folder of the runs; default: runs/sweep-<recipe>")] = None,
    metric: Annotated[
        str | None, typer.Option(help="the metric compared; default: the runs' eval.metric")
    ] = None,
    image_format: Annotated[str, typer.Option("--format", help="figure format: png, svg or pdf")] = "png",
    margin: Margin = None,
    data_root: DataRoot = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list the points with their plan; run nothing")
    ] = False,
    trust_remote_code: TrustRemoteCode = False,
    allow_local_metric_code: AllowLocalMetricCode = False,
) -> None:
    """Run a grid of overrides (x seeds), one process a run; skip finished points on a rerun; compare."""
    from loraft.run_dir import default_run_dir
    from loraft.sweep import parse_grid, plan_points, run_sweep, run_tuned_sweep, sweep_points

    folder = out or default_run_dir(f"sweep-{recipe.stem}")
    if dry_run:
        _quiet_libraries()
        tuned = parse_grid(tune or [])
        points, notes = sweep_points(
            recipe, overrides or [], parse_grid(grid or []) + tuned, 1 if tuned else seeds
        )
        if tuned:
            notes.append(f"tuning runs, one seed each; then {seeds} seed(s) at each point's best value")
        for note in notes:
            typer.echo(f"note: {note}")
        for row in plan_points(recipe, points):
            typer.echo(
                f"{row['name']}: {row['trainable_params']:,} trainable ({row['trainable_pct']:.4f}%), "
                f"about {row['memory_mb']:,.0f} MiB"
            )
        return
    from loraft.recipe_files import CodeGrants

    grants = CodeGrants(trust_remote_code, allow_local_metric_code)
    tuned = []
    if tune:
        points, tuned = run_tuned_sweep(
            recipe, overrides or [], parse_grid(grid or []), parse_grid(tune), seeds, folder, data_root,
            grants=grants, metric=metric,
        )  # fmt: skip
    else:
        points = run_sweep(
            recipe, overrides or [], parse_grid(grid or []), seeds, folder, data_root, grants=grants
        )
    from loraft.report import compare_runs, format_comparison, write_tuning

    comparison = compare_runs([folder / point.name for point in points], metric)
    typer.echo(format_comparison(comparison, margin))
    _write_report(comparison, folder, image_format, margin)
    if tuned:
        for path in write_tuning(tuned, folder, image_format):
            typer.echo(f"wrote {path}")
    failed = [point.name for point in points if point.status == "failed"]
    if failed:
        raise LoraftError(
            f"sweep: {len(failed)} of {len(points)} points failed ({', '.join(failed[:3])}); see above"
        )


def _write_report(comparison, out: Path, image_format: str, margin: str | None) -> None:
    from loraft.plots import write_plots
    from loraft.report import write_tables

    written = [*write_tables(comparison, out, margin), *write_plots(comparison, out, image_format)]
    typer.echo("wrote " + ", ".join(str(path) for path in written))


@app.command()
def study(
    recipe: RecipeArg,
    overrides: Overrides = None,
    data_root: DataRoot = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing study.json")] = False,
    as_json: JsonFlag = False,
    trust_remote_code: TrustRemoteCode = False,
    allow_local_metric_code: AllowLocalMetricCode = False,
) -> None:
    """Compare decoders (standard vs shortened context) on one model and the same prompts."""
    from loraft.recipe_files import CodeGrants, apply_grants, load_recipe

    loaded = load_recipe(recipe, overrides)
    loaded = apply_grants(loaded, CodeGrants(trust_remote_code, allow_local_metric_code), recipe)
    _quiet_libraries()
    from loraft.study import format_study, run_study

    results = run_study(loaded, data_root, overwrite)
    typer.echo(json.dumps(results, indent=2) if as_json else format_study(results))


@app.command()
def fields() -> None:
    """Every recipe key with its default and meaning (the schema is the source of truth)."""
    from loraft.recipe import choices_reference, field_reference

    typer.echo("| key | default | meaning |\n|---|---|---|\n" + "\n".join(field_reference()))
    typer.echo("\n" + "\n".join(f"- {line}" for line in choices_reference()))


# --- output -------------------------------------------------------------------------------


def summary_lines(summary: dict) -> str:
    """What `loraft train` prints at the end: where the time went, and the metrics."""
    other = summary["wall_s"] - summary["train_s"] - summary["eval_s"] - summary["save_s"]
    return (
        f"done in {summary['wall_s']:.1f}s (training {summary['train_s']:.1f}s, evaluation "
        f"{summary['eval_s']:.1f}s, saving {summary['save_s']:.1f}s, start-up and the rest {other:.1f}s): "
        f"{summary['steps']} steps, {summary['train_tokens_per_s']:,.0f} tokens/s, "
        f"peak memory {summary['peak_memory_mb']:,.0f} MB\n"
        f"final eval ({_selection(summary)}): {_scalars(summary['final_eval'])}\n"
        f"best checkpoint ({_selection(summary)}): {_scalars(summary['best_eval'])}\n"
        + (f"test (best checkpoint): {_scalars(summary['test_eval'])}\n" if "test_eval" in summary else "")
        + f"run directory: {summary['run_dir']}"
    )


def _selection(summary: dict) -> str:
    """The split the run selected its checkpoints on."""
    return f"{summary.get('selection_split', 'eval')} split"


def metric_lines(metrics: dict) -> str:
    """Aligned `name  value` lines; floats to 4 decimals, mappings one entry a line."""
    width = max(len(key) for key in metrics) + 2
    lines = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            lines.append(key)
            lines += [f"  {name:<{width - 2}}{shown}" for name, shown in value.items()]
        else:
            lines.append(f"{key:<{width}}{_format_value(value)}")
    return "\n".join(lines)


def _format_value(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _scalars(metrics: dict) -> str:
    return ", ".join(
        f"{key}={_format_value(value)}"
        for key, value in metrics.items()
        if not isinstance(value, list | dict)
    )


def _parse_window(text: str | None) -> int | list[int] | None:
    """`W` or `LO,HI` from the command line."""
    if text is None:
        return None
    try:
        parts = [int(part) for part in text.split(",")]
    except ValueError:
        raise LoraftError(f"--context-window: expected W or LO,HI (integers), got {text!r}") from None
    return parts[0] if len(parts) == 1 else parts


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


def _check_before_loading_torch(recipe, data_root: Path | None, overwrite: bool) -> None:
    """The recipe, its data and a fresh run's folder, checked in a second (importing torch and
    transformers takes several): a mistake is one line at once. `train_recipe` checks again."""
    from loraft.checks import check_recipe
    from loraft.data import data_roots
    from loraft.run_dir import RunDirectory

    if overwrite and recipe.train.resume is True:  # before anything is checked or loaded
        raise LoraftError("--overwrite and --resume (train.resume) contradict each other: pick one")
    check_recipe(recipe, data_roots(data_root))
    if not recipe.train.resume:
        RunDirectory.check_available(recipe.run_dir, overwrite)


class _Interrupted(BaseException):
    """Ctrl-C, or a stopped run with the command that resumes it (a BaseException, as
    KeyboardInterrupt is: a library's `except Exception` must not swallow it)."""


@contextlib.contextmanager
def _ctrl_c_raises_interrupted():
    """Typer turns a KeyboardInterrupt into a silent exit 130: raise our own exception instead,
    so the user always reads what happened (the trainer installs its own handler meanwhile)."""

    def interrupted(number: int, frame: object) -> None:
        raise _Interrupted("interrupted")

    try:
        previous = signal.signal(signal.SIGINT, interrupted)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run(args: list[str] | None = None) -> int:
    """Run one command; user mistakes are one line on stderr and code 2, interruptions 130."""
    with _ctrl_c_raises_interrupted():
        return _run(args)


def _run(args: list[str] | None) -> int:
    try:
        code = app(args, standalone_mode=False, prog_name="loraft")
    except LoraftError as error:
        typer.echo(f"error: {error}", err=True)
        return 2
    except _Interrupted as stopped:
        typer.echo(str(stopped), err=True)
        return 130
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("interrupted", err=True)
        return 130
    except typer.TyperException as error:  # usage errors: typer's own message and code
        error.show()
        return error.exit_code
    except Exception as error:  # the disk, not loraft: full, read-only, over a size limit
        from loraft.errors import unwritable

        message = unwritable(error)
        if message is None:
            raise
        typer.echo(f"error: {message}; free space or choose another output_dir", err=True)
        return 2
    return code if isinstance(code, int) else 0


def main() -> None:
    """The `loraft` console script and `python -m loraft`."""
    # over `ulimit -f` a write fails with EFBIG (one line, above) instead of killing the process
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    sys.exit(run())
