"""Trained weights on disk, in formats other tools load, and the one way to load them back.

lora: a PEFT adapter directory (`PeftModel.from_pretrained` loads it; a classifier head rides
along as `modules_to_save`). full: `save_pretrained` safetensors. head: only the trained head,
`head.safetensors`, applied on top of the base model at load time.

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
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from loraft.errors import LoraftError
from loraft.model import auto_class, load_base_model, task_kind, with_fast_kernels
from loraft.recipe import Recipe
from loraft.run_dir import RunDirectory

HEAD_FILE = "head.safetensors"
STATE_FILE = "state.json"


def save_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    state_dict: dict[str, torch.Tensor],
    tokenizer: PreTrainedTokenizerBase,
    method: str,
    info: dict[str, Any],
) -> None:
    """Write `model`'s trained weights (taken from `state_dict`, gathered on every rank by the
    caller) with the tokenizer and `state.json`, then switch the folder in."""
    staging = directory.with_name(f".tmp-{directory.name}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if method == "head":
        trained = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
        save_file({name: state_dict[name].contiguous() for name in trained}, staging / HEAD_FILE)
    elif isinstance(model, PeftModel):
        # save_embedding_layers=False: "auto" would look the base model up on the hub.
        model.save_pretrained(staging, state_dict=state_dict, save_embedding_layers=False)
    else:
        model.save_pretrained(staging, state_dict=state_dict)
    tokenizer.save_pretrained(staging)
    (staging / STATE_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    swap_in(staging, directory)


def swap_in(staging: Path, target: Path) -> None:
    """Replace `target` by the complete folder `staging`: target -> target.old, staging ->
    target, then drop target.old. A crash anywhere leaves `target` or `target.old` complete."""
    old = target.with_name(target.name + ".old")
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
    kind = task_kind(recipe)
    if recipe.method == "full":
        return _from_pretrained(auto_class(kind), directory), tokenizer
    base = load_base_model(recipe, kind, tokenizer, run.base_model_path)
    if recipe.method == "lora":
        return PeftModel.from_pretrained(base, directory), tokenizer
    load_head(base, directory)
    return base, tokenizer


def load_head(model: torch.nn.Module, directory: Path) -> None:
    """Put a `head` checkpoint's trained layer into `model` (a base classifier)."""
    weights = load_file(directory / HEAD_FILE)
    result = model.load_state_dict(weights, strict=False)
    if result.unexpected_keys:
        raise LoraftError(
            f"{directory / HEAD_FILE}: weights for layers the model lacks: {result.unexpected_keys[:3]}"
        )


def _from_pretrained(auto, directory: Path) -> torch.nn.Module:
    try:
        return with_fast_kernels(auto.from_pretrained(directory))
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0]
        raise LoraftError(f"{directory}: cannot load the checkpoint: {reason}") from None
