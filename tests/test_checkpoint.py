"""Checkpoints: a failure at any point of a save leaves a complete, loadable checkpoint."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

import loraft.checkpoint as checkpoint
from loraft.checkpoint import load_trained_model, save_checkpoint
from loraft.methods import METHODS
from loraft.run_dir import RunDirectory


class Crash(Exception):
    pass


def fail_at(monkeypatch: pytest.MonkeyPatch, operation: int) -> None:
    """Make the `operation`-th file operation of a checkpoint swap raise (a kill there)."""
    calls = {"count": 0}

    def counted(real):
        def wrapper(*args, **kwargs):
            calls["count"] += 1
            if calls["count"] == operation:
                raise Crash(f"killed at operation {operation}")
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(checkpoint.os, "rename", counted(os.rename))
    monkeypatch.setattr(checkpoint.shutil, "rmtree", counted(shutil.rmtree))


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(input_ids=torch.tensor([[5, 9, 13, 2]])).logits


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("operation", [1, 2, 3, 4, "staging"])
def test_a_crash_anywhere_in_a_save_leaves_a_loadable_checkpoint(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, operation: int | str
) -> None:
    shutil.copytree(runs[method], tmp_path / "run")
    run = RunDirectory.open(tmp_path / "run")
    old_model, tokenizer = load_trained_model(run, "last")
    old = logits(old_model)
    new_model, _ = load_trained_model(run, "last")
    with torch.no_grad():
        for parameter in new_model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.5)
    new = logits(new_model)
    if operation == "staging":
        monkeypatch.setattr(tokenizer, "save_pretrained", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    else:
        fail_at(monkeypatch, operation)
    with pytest.raises(Crash):
        save_checkpoint(
            run.checkpoint("last"),
            new_model,
            new_model.state_dict(),
            tokenizer,
            METHODS[method],
            {"step": 99},
        )
    monkeypatch.undo()
    reloaded = logits(load_trained_model(run, "last")[0])
    assert torch.equal(reloaded, old) or torch.equal(reloaded, new)
    # The next save cleans up whatever the crash left and puts the new weights in place.
    save_checkpoint(
        run.checkpoint("last"), new_model, new_model.state_dict(), tokenizer, METHODS[method], {"step": 99}
    )
    assert torch.equal(logits(load_trained_model(run, "last")[0]), new)
    assert sorted(p.name for p in run.checkpoint("last").parent.iterdir()) == ["best", "last"]
    assert run.saved_checkpoint("last") == run.checkpoint("last")
