"""Runs that survive: SIGKILL or Ctrl-C, then --resume, gives the uninterrupted run's losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import RECIPES, REPO, joker_recipe, read_records

from loraft.errors import LoraftError
from loraft.recipe_files import load_recipe
from loraft.trainer import RunInterrupted
from loraft.training import train_recipe

# A from-scratch model with dropout: the resumed run must also restore the RNG, the saved base
# and the tokenizer trained on the data.
SCRATCH = [
    "train.precision=fp32",
    "model.config.n_layer=1",
    "model.config.n_embd=32",
    "model.config.dropout=0.1",
    "model.tokenizer_vocab_size=400",
    "method=full",
    "train.max_steps=60",
    "train.batch_size=4",
    "train.log_every=1",
    "train.save_every=4",
    "train.eval_every=30",
    "eval.generate=false",
]


def start(args: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "loraft", "train", *args]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(run: Path, step: int, process: subprocess.Popen, timeout: float = 120) -> None:
    """Poll metrics.jsonl until a training record of `step` or later is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()[-2000:]
        if (run / "metrics.jsonl").exists() and any(r["step"] >= step for r in read_records(run, "train")):
            return
        time.sleep(0.01)
    raise AssertionError(f"step {step} never came")


def losses(run: Path) -> dict[int, float]:
    records = read_records(run, "train")
    steps = [record["step"] for record in records]
    assert len(steps) == len(set(steps)), f"a step is logged twice: {steps}"
    return {record["step"]: record["loss"] for record in records}


def test_sigkill_then_resume_gives_the_uninterrupted_losses(tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    train_recipe(load_recipe(RECIPES / "quickstart.yaml", [*SCRATCH, f"output_dir={whole}"]))
    killed = tmp_path / "killed"
    args = ["recipes/quickstart.yaml", *SCRATCH, f"output_dir={killed}"]
    process = start(args)
    wait_for_step(killed, 10, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "summary.json").exists()
    before = max(losses(killed))
    train_recipe(
        load_recipe(RECIPES / "quickstart.yaml", [*SCRATCH, f"output_dir={killed}", "train.resume=true"])
    )
    expected, resumed = losses(whole), losses(killed)
    assert sorted(resumed) == list(range(1, 61)) and before < 60
    np.testing.assert_allclose([resumed[s] for s in expected], list(expected.values()), rtol=1e-6)
    eval_steps = [record["step"] for record in read_records(killed, "eval")]
    assert eval_steps == [0, 30, 60]


def test_ctrl_c_saves_the_state_says_how_to_resume_and_resume_matches(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    common = [
        "train.precision=fp32",
        f"model.name={tiny_model_dir}",
        "data.max_length=48",
        "eval.generate=false",
        "lora.dropout=0.1",
        "train.lr=1e-3",
        "train.max_steps=80",
        "train.log_every=1",
        "train.eval_every=40",
        "train.batch_size=2",
    ]
    whole = tmp_path / "whole"
    train_recipe(load_recipe(RECIPES / "joker.yaml", [*common, f"output_dir={whole}"]))
    stopped = tmp_path / "stopped"
    process = start(["recipes/joker.yaml", *common, f"output_dir={stopped}"])
    wait_for_step(stopped, 5, process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted after step ") and "Traceback" not in err
    assert last.endswith(f"resume with: loraft train {stopped / 'recipe.yaml'} --resume")
    step = int(last.split()[3])
    assert (stopped / "train_state" / f"step-{step:08d}").is_dir()
    assert json.loads((stopped / "checkpoints" / "last" / "state.json").read_text())["step"] == step
    train_recipe(load_recipe(stopped / "recipe.yaml", ["train.resume=true"]))  # the command it printed
    expected, resumed = losses(whole), losses(stopped)
    assert sorted(resumed) == list(range(1, 81))
    np.testing.assert_allclose([resumed[s] for s in expected], list(expected.values()), rtol=1e-6)


def test_resume_refuses_another_recipe_and_extends_a_finished_run(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    train_recipe(joker_recipe(tiny_model_dir, run, "train.max_steps=4", "train.log_every=1"))
    with pytest.raises(LoraftError, match=r"--resume: .* another recipe \(train.lr: 0.001 vs 2e-05"):
        train_recipe(
            joker_recipe(tiny_model_dir, run, "train.max_steps=6", "train.lr=1e-3", "train.resume=true")
        )
    with pytest.raises(LoraftError, match="has finished its 4 steps; raise train.max_steps"):
        train_recipe(
            joker_recipe(tiny_model_dir, run, "train.max_steps=4", "train.log_every=1", "train.resume=true")
        )
    summary = train_recipe(
        joker_recipe(tiny_model_dir, run, "train.max_steps=6", "train.log_every=1", "train.resume=true")
    ).summary
    assert summary["steps"] == 6 and sorted(losses(run)) == [1, 2, 3, 4, 5, 6]
    assert load_recipe(run / "recipe.yaml").train.max_steps == 6


def test_resume_auto_starts_fresh_or_continues(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    fresh = train_recipe(joker_recipe(tiny_model_dir, run, "train.max_steps=2", "train.resume=auto")).summary
    assert fresh["steps"] == 2
    longer = train_recipe(joker_recipe(tiny_model_dir, run, "train.max_steps=3", "train.resume=auto")).summary
    assert longer["steps"] == 3
    with pytest.raises(LoraftError, match="is not a loraft run"):
        train_recipe(joker_recipe(tiny_model_dir, tmp_path / "none", "train.resume=true"))
    with pytest.raises(LoraftError, match="--overwrite and --resume"):
        train_recipe(joker_recipe(tiny_model_dir, run, "train.resume=true"), overwrite=True)


def test_keep_last_keeps_that_many_training_states(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_recipe(
        joker_recipe(tiny_model_dir, run, "train.max_steps=6", "train.save_every=2", "train.keep_last=2")
    )
    assert sorted(p.name for p in (run / "train_state").iterdir()) == ["step-00000004", "step-00000006"]
    state = run / "train_state" / "step-00000006"
    counters = json.loads((state / "trainer_state.json").read_text())
    assert counters["step"] == 6 and counters["num_processes"] == 1
    assert {"optimizer.bin", "random_states_0.pkl", "trainable.safetensors"} <= set(os.listdir(state))
    assert "custom_checkpoint_0.pkl" not in os.listdir(state)  # the schedule is in the JSON
    assert counters["scheduler"]["last_epoch"] == 6


def test_a_stop_during_the_final_evaluation_says_how_to_finish(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C after the last step: the state of that step is saved; --resume finishes the run."""
    import loraft.training

    run = tmp_path / "run"
    real = loraft.training.final_metrics

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends, in the middle of the evaluation
        return real(*args, **kwargs)

    monkeypatch.setattr(loraft.training, "final_metrics", interrupted)
    with pytest.raises(RunInterrupted, match=r"after the last step \(4\), before the final evaluation"):
        train_recipe(joker_recipe(tiny_model_dir, run, "train.max_steps=4"))
    assert not (run / "summary.json").exists()
    monkeypatch.setattr(loraft.training, "final_metrics", real)
    summary = train_recipe(load_recipe(run / "recipe.yaml", ["train.resume=true"])).summary
    assert summary["steps"] == 4 and (run / "summary.json").is_file()
