"""Full training states, for an exact resume: accelerate's `save_state` plus loraft's counters.

A state folder `train_state/step-00000120/` holds the trainable weights, the optimizer, the
gradient scaler, every process's RNG states (accelerate writes these; FSDP and DeepSpeed shards
included) and `trainer_state.json` (step, best-so-far, the learning-rate schedule and the
counters behind summary.json). It is written under a temporary name and renamed when complete.

A state folder may come from someone else, so reading one runs no code: everything is read
with `torch.load(weights_only=True)` (tensors, numbers, numpy arrays) or as JSON and
safetensors. The schedule is in the JSON, not in accelerate's `custom_checkpoint_0.pkl` (which
accelerate reads with full unpickling); a missing or unreadable RNG state is an error, where
accelerate would go on with a silently different random stream.
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
RNG_STATE_NAME = "random_states"  # accelerate's: random_states_<process>.pkl
LEGACY_SCHEDULE = "custom_checkpoint_0.pkl"  # where loraft 0.2 let accelerate pickle the schedule
DAMAGED_HINT = "resume from an earlier state (train.keep_last) or start again with --overwrite"
TRAINABLE_FILE = "trainable.safetensors"
METHOD_FILE = "method_state.safetensors"


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
    accelerator: Accelerator,
    folder: Path,
    step: int,
    counters: dict[str, Any],
    keep_last: int,
    method_tensors: dict[str, torch.Tensor],
) -> None:
    """Write the state after optimizer step `step` (every process takes part; the main one
    renames it into place), then keep the newest `keep_last` states in `folder`.
    `method_tensors`: the method's own state (AdaLoRA's importance scores), if any."""
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
        if method_tensors:
            save_file(method_tensors, staging / METHOD_FILE)
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


def load_training_state(accelerator: Accelerator, folder: Path, scheduler) -> dict[str, Any]:
    """Restore weights, optimizer, schedule, scaler and RNG states; return loraft's counters.
    A damaged or crafted file is one line naming it, and nothing in it runs."""
    counters = read_counters(folder)
    if counters.get("num_processes") != accelerator.num_processes:
        raise LoraftError(
            f"{folder}: saved by {counters.get('num_processes')} process(es); resume it with the "
            f"same number (now {accelerator.num_processes}): the data order depends on it"
        )
    schedule = counters.get("scheduler")
    strays = sorted(folder.glob("custom_checkpoint_*.pkl"))
    if schedule is None:  # saved by loraft 0.2, in accelerate's pickle: read as data only first
        schedule = _safe_load(folder / LEGACY_SCHEDULE, folder)
    elif strays:
        raise LoraftError(
            f"{strays[0]}: not written by loraft (the schedule is in {TRAINER_STATE}); remove it"
        )
    _safe_load(folder / f"{RNG_STATE_NAME}_{accelerator.process_index}.pkl", folder)  # before accelerate
    # accelerate expects one registered object per custom_checkpoint file: a loraft 0.2 state's
    # schedule, proven plain data above, is read back into a holder and applied from there
    holder = _StateHolder() if strays and "scheduler" not in counters else None
    if holder is not None:
        accelerator.register_for_checkpointing(holder)
    try:
        accelerator.load_state(str(folder))
        scheduler.load_state_dict(schedule)
    except LoraftError:
        raise
    except Exception as error:  # a damaged optimizer.bin, trainable weights of another model, ...
        raise LoraftError(f"{folder}: cannot be resumed from: {_reason(error)}; {DAMAGED_HINT}") from None
    finally:
        if holder is not None:
            accelerator._custom_objects.remove(holder)
    return counters


class _StateHolder:
    """Receives a state dict that accelerate reads for a registered object (and keeps it)."""

    def state_dict(self) -> dict:
        return getattr(self, "state", {})

    def load_state_dict(self, state: dict) -> None:
        self.state = state


def read_method_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """The method's own tensors of a state folder (none for most methods)."""
    path = folder / METHOD_FILE
    if not path.is_file():
        return {}
    try:
        return load_file(path)
    except Exception as error:
        raise LoraftError(f"{path}: cannot be read ({_reason(error)}); {DAMAGED_HINT}") from None


def read_counters(folder: Path) -> dict[str, Any]:
    """`trainer_state.json` of a state folder, or one line saying what is wrong with it."""
    path = folder / TRAINER_STATE
    try:
        counters = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        reason = _reason(error)
        raise LoraftError(f"{path}: not a readable training state ({reason}); {DAMAGED_HINT}") from None
    if not isinstance(counters, dict) or not isinstance(counters.get("step"), int):
        raise LoraftError(f"{path}: not a loraft training state (no step); {DAMAGED_HINT}")
    return counters


def _safe_load(path: Path, folder: Path) -> Any:
    """A pickle read as data only (tensors, numbers, numpy arrays: accelerate's own safe list);
    one that would need to run code, or cannot be read, is refused with one line."""
    from accelerate.utils import load

    if not path.is_file():
        raise LoraftError(f"{path}: missing from the training state; {DAMAGED_HINT}")
    try:
        return load(path, weights_only=True)
    except Exception as error:
        raise LoraftError(
            f"{path}: cannot be read as plain data ({_reason(error)}); loraft never runs code from a "
            f"training state; {DAMAGED_HINT}"
        ) from None


def _reason(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: torch.nn.Module, path: Path) -> None:
    weights = load_file(path)
    expected = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    if set(weights) != expected:
        missing = sorted(expected - set(weights))[:2] or sorted(set(weights) - expected)[:2]
        raise LoraftError(f"{path}: the saved trainable weights do not match the model ({missing})")
    model.load_state_dict(weights, strict=False)
