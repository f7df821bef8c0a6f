"""Trained weights on disk, in formats other tools load, and the one way to load them back.

Each method says what its checkpoint holds (`loraft.methods`): lora, a PEFT adapter directory
(`PeftModel.from_pretrained` loads it; a classifier head rides along as `modules_to_save`);
full, `save_pretrained` safetensors; head, only the trained head, applied on top of the base.

A checkpoint is written into a staging folder and switched in by renames, so that at every
instant one complete copy is on disk: `name/`, or `name.old/` between the two renames.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from loraft.errors import LoraftError
from loraft.methods import Method, method_of
from loraft.models.loading import load_base_model
from loraft.recipe import Recipe
from loraft.run_dir import RunDirectory, old_copy, staging_copy

STATE_FILE = "state.json"


def save_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    state_dict: dict[str, torch.Tensor],
    tokenizer: PreTrainedTokenizerBase,
    method: Method,
    info: dict[str, Any],
) -> None:
    """Write `model`'s trained weights (taken from `state_dict`, gathered on every rank by the
    caller) as `method` stores them, with the tokenizer and `state.json`, then switch the
    folder in."""
    staging = staging_copy(directory)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    method.save(staging, model, state_dict)
    tokenizer.save_pretrained(staging)
    (staging / STATE_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    swap_in(staging, directory)


def swap_in(staging: Path, target: Path) -> None:
    """Replace `target` by the complete folder `staging`: target -> target.old, staging ->
    target, then drop target.old. A crash anywhere leaves `target` or `target.old` complete."""
    old = old_copy(target)
    if old.exists() and target.exists():  # a finished swap whose clean-up was interrupted
        shutil.rmtree(old)
    if target.exists():
        os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def save_base_model(run: RunDirectory, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
    """A from-scratch model before any method is applied: nothing else can rebuild it."""
    model.save_pretrained(run.base_model_path)
    tokenizer.save_pretrained(run.base_model_path)


def load_trained_model(
    run: RunDirectory, name: str, recipe: Recipe | None = None
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """The trained model of checkpoint `name` (best or last) of a run, and its tokenizer."""
    from loraft.tokenizer import load_tokenizer

    recipe = recipe or run.read_recipe()
    directory = run.saved_checkpoint(name)
    tokenizer = load_tokenizer(str(directory))
    method, kind = method_of(recipe), recipe.task_kind
    base = load_base_model(recipe, kind, tokenizer, run.base_model_path) if method.needs_base else None
    try:
        return method.load(base, directory, kind), tokenizer
    except LoraftError:
        raise
    except Exception as error:  # a half-written or damaged weights file raises what its reader raises
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise LoraftError(
            f"{directory}: cannot load the checkpoint ({reason}); if it is damaged, use the other "
            "checkpoint (--checkpoint best|last) or resume from the training state to write it again"
        ) from None
