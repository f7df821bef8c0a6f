"""Saving and reloading trained weights in formats other tools load.

lora: a PEFT adapter directory (`PeftModel.from_pretrained` loads it; a classifier head rides
along as `modules_to_save`). full: `save_pretrained` safetensors. head: only the trained head,
`head.safetensors`, applied on top of the base model at load time.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from loraft.errors import LoraftError
from loraft.model import build_model
from loraft.recipe import Recipe
from loraft.run_dir import RunDirectory

HEAD_FILE = "head.safetensors"
STATE_FILE = "state.json"


def save_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    recipe: Recipe,
    state: dict[str, Any],
) -> None:
    """Write weights, tokenizer and `state.json` to a temporary folder, then swap it in.

    The swap means a crash while saving never leaves a half-written checkpoint behind.
    """
    staging = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if recipe.method == "head":
        trained = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trained, staging / HEAD_FILE)
    else:
        model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    (staging / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)


def save_base_model(run: RunDirectory, model: torch.nn.Module) -> None:
    """A from-scratch base must be kept for LoRA/head runs: nothing else can rebuild it."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    base.save_pretrained(run.base_model_path, safe_serialization=True)


def load_checkpoint(
    run: RunDirectory, name: str, recipe: Recipe, kind: str, num_labels: int = 0
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Rebuild the trained model of a run from checkpoint `name` (best or last)."""
    if name not in ("best", "last"):
        raise LoraftError(f"--checkpoint: expected best or last, got '{name}'")
    directory = run.checkpoint(name)
    if not directory.is_dir():
        raise LoraftError(f"{directory}: no such checkpoint (expected best or last)")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if recipe.method == "full":
        return _load_full(directory, kind), tokenizer
    base_recipe = recipe.model_copy(update={"method": "full"})
    if recipe.model.config is not None:  # from scratch: the saved base replaces the random init
        base_recipe = base_recipe.model_copy(
            update={
                "model": recipe.model.model_copy(update={"name": str(run.base_model_path), "config": None})
            }
        )
    base = build_model(base_recipe, kind, tokenizer, num_labels)
    if recipe.method == "lora":
        return PeftModel.from_pretrained(base, directory), tokenizer
    unexpected = base.load_state_dict(load_file(directory / HEAD_FILE), strict=False).unexpected_keys
    if unexpected:
        raise LoraftError(f"{directory / HEAD_FILE}: weights for layers the model lacks: {unexpected[:3]}")
    return base, tokenizer


def _load_full(directory: Path, kind: str) -> torch.nn.Module:
    auto = AutoModelForSequenceClassification if kind == "classification" else AutoModelForCausalLM
    return auto.from_pretrained(directory)
