"""`loraft eval`: re-evaluate a saved run on its recipe's eval split (with optional overrides)."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from loraft.checkpoint import load_checkpoint
from loraft.data import data_roots
from loraft.run_dir import RunDirectory
from loraft.tasks import build_task


def evaluate_run(
    run_dir: str | Path,
    overrides: list[str] | None = None,
    checkpoint: str = "best",
    data_root: str | Path | None = None,
) -> dict:
    """The metrics of checkpoint `best` or `last` of a run, computed as the trainer does."""
    run = RunDirectory.open(run_dir)
    recipe = run.read_recipe(overrides)
    task = build_task(recipe, data_roots(data_root))
    _, eval_rows = task.rows()
    model, tokenizer = load_checkpoint(run, checkpoint, recipe, task.kind, **task.model_options())
    accelerator = Accelerator(
        mixed_precision="no" if recipe.train.precision == "fp32" else recipe.train.precision
    )
    loader = DataLoader(
        task.tokenize(eval_rows, tokenizer),
        batch_size=recipe.train.eval_batch_size or recipe.train.batch_size,
        collate_fn=lambda features: task.collate(features, tokenizer),
    )
    model, loader = accelerator.prepare(model, loader)
    model.eval()
    with torch.inference_mode():
        metrics = task.evaluate(model, loader, accelerator)
    # Files it writes (generations, predictions) go beside the run's own, never over them.
    output = run.path / f"eval-{checkpoint}"
    output.mkdir(exist_ok=True)
    metrics.update(task.final_evaluation(accelerator.unwrap_model(model), tokenizer, output))
    return {"checkpoint": checkpoint, **metrics}
