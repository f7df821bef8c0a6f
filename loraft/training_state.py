"""Full training states, for an exact resume: accelerate's `save_state` plus loraft's counters.

A state folder `train_state/step-00000120/` holds the trainable weights, the optimizer, the
learning-rate schedule, the gradient scaler, every process's RNG states (accelerate writes
these; FSDP and DeepSpeed shards included) and `trainer_state.json` (step, best-so-far and the
counters behind summary.json). It is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from loraft.errors import LoraftError
from loraft.run_dir import staging_copy, state_folder, state_step

TRAINER_STATE = "trainer_state.json"
TRAINABLE_FILE = "trainable.safetensors"


def keep_only_trainable_weights(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """Make `save_state`/`load_state` store only the trainable weights (a LoRA state is
    megabytes, not the whole model); frozen weights come from the base at resume."""

    def save(models: list, weights: list, output_dir: str) -> None:
        if weights:  # FSDP and DeepSpeed save their own shards and pass no weights here
            save_file(_trainable(accelerator.unwrap_model(model)), Path(output_dir) / TRAINABLE_FILE)
            weights.clear()

    def load(models: list, input_dir: str) -> None:
        if models:
            _load_trainable(accelerator.unwrap_model(model), Path(input_dir) / TRAINABLE_FILE)
            models.clear()

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


def save_training_state(
    accelerator: Accelerator, folder: Path, step: int, counters: dict[str, Any], keep_last: int
) -> None:
    """Write the state after optimizer step `step` (every process takes part; the main one
    renames it into place), then keep the newest `keep_last` states in `folder`."""
    final = state_folder(folder, step)
    staging = staging_copy(final)
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)  # before any process writes into it
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()  # every process's files are written before the rename
    if accelerator.is_main_process:
        (staging / TRAINER_STATE).write_text(json.dumps({"step": step, **counters}, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.rename(staging, final)
        for old in saved_states(folder)[:-keep_last]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def saved_states(folder: Path) -> list[Path]:
    """Complete training states, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if state_step(p) is not None and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=state_step)


def load_training_state(accelerator: Accelerator, folder: Path) -> dict[str, Any]:
    """Restore weights, optimizer, schedule, scaler and RNG states; return loraft's counters."""
    counters = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
    if counters.get("num_processes") != accelerator.num_processes:
        raise LoraftError(
            f"{folder}: saved by {counters.get('num_processes')} process(es); resume it with the "
            f"same number (now {accelerator.num_processes}): the data order depends on it"
        )
    accelerator.load_state(str(folder))
    return counters


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: torch.nn.Module, path: Path) -> None:
    weights = load_file(path)
    expected = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    if set(weights) != expected:
        missing = sorted(expected - set(weights))[:2] or sorted(set(weights) - expected)[:2]
        raise LoraftError(f"{path}: the saved trainable weights do not match the model ({missing})")
    model.load_state_dict(weights, strict=False)
