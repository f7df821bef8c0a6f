"""`loraft eval`: re-evaluate a saved run on its recipe's eval split (with optional overrides)."""

from __future__ import annotations

import json
from pathlib import Path

from loraft.checks import check_recipe
from loraft.data import data_roots
from loraft.recipe_files import NO_GRANTS, CodeGrants
from loraft.run_dir import RunDirectory


def evaluate_run(
    run_dir: str | Path,
    overrides: list[str] | None = None,
    checkpoint: str = "best",
    data_root: str | Path | None = None,
    grants: CodeGrants = NO_GRANTS,
) -> dict:
    """The metrics of checkpoint `best` or `last` of a run, computed as the trainer does.

    Generations and predictions go to `RUN_DIR/eval-<checkpoint>/`, never over the run's own.
    """
    run, recipe, roots = check_eval(run_dir, overrides, checkpoint, data_root, grants)
    from loraft.checkpoint import load_trained_model
    from loraft.system import keep_freed_memory, resolve_precision
    from loraft.tasks import build_task
    from loraft.trainer import evaluate_model
    from loraft.training import eval_loader_for, make_accelerator

    note_changed_inputs(run, recipe, roots)
    task = build_task(recipe, roots, evaluation_only=True)
    _, eval_rows = task.rows()
    model, tokenizer = load_trained_model(run, checkpoint, recipe)
    task.adopt_tokenizer(tokenizer)
    for line in task.fit_to_model(model):
        print(line)
    eval_set = task.with_targets(task.tokenize(eval_rows, tokenizer), "evaluation")
    precision = resolve_precision(recipe.train.precision)
    accelerator = make_accelerator(precision)
    if accelerator.device.type == "cpu" and task.kind == "causal_lm":
        keep_freed_memory()
    model, loader = accelerator.prepare(model, eval_loader_for(recipe, task, eval_set, tokenizer))
    metrics = evaluate_model(model, task, loader, accelerator)
    output = run.output_folder(checkpoint)
    output.mkdir(exist_ok=True)
    metrics.update(task.final_evaluation(lambda: accelerator.unwrap_model(model), tokenizer, output))
    return {"checkpoint": checkpoint, **metrics}


def check_eval(
    run_dir: str | Path,
    overrides: list[str] | None,
    checkpoint: str,
    data_root,
    grants: CodeGrants = NO_GRANTS,
):
    """The run, its recipe with `overrides`, the checkpoint and the data, checked in a second
    (before torch is imported): the run directory, recipe and data roots."""
    run = RunDirectory.open(run_dir)
    run.saved_checkpoint(checkpoint)
    run.require_writable()  # eval-best/ or eval-last/ is written there
    recipe = run.read_recipe(overrides, grants)
    roots = data_roots(data_root or recorded_data_root(run))
    check_recipe(recipe, roots, evaluation_only=True)
    return run, recipe, roots


def recorded_data_root(run: RunDirectory) -> str | None:
    """The `--data-root` the run trained with, if it is still a folder here."""
    try:
        root = json.loads(run.inputs_path.read_text(encoding="utf-8")).get("data_root")
    except (OSError, ValueError, AttributeError):
        return None
    return root if root and Path(root).is_dir() else None


def note_changed_inputs(run: RunDirectory, recipe, roots: list[Path]) -> None:
    """One line before the figures when the files they come from are not the run's own."""
    from loraft.fingerprint import changes, fingerprint, read_fingerprint

    recorded = read_fingerprint(run.inputs_path)
    now = fingerprint(recipe, roots, run.base_model_path)
    if recorded and recipe.data.eval:  # eval reads its own file, not the training one
        recorded.pop("data.train", None)
        now.pop("data.train", None)
    changed = changes(recorded, now) if recorded else []
    if changed:
        what = "; ".join(changed[:3])
        print(f"note: the inputs changed since {run.path} trained: {what}; these figures are not its own")
