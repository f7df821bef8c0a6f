"""The `loraft` command end to end: what a user sees, exit codes, and the run directory it writes.

Most commands run in this process (`loraft` fixture); a few start `python -m loraft` for what
only a real process shows (the entry point, no traceback, start-up time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RECIPES, loraft_process, read_records

from loraft.recipe_files import load_recipe

SUMMARY_KEYS = {
    "trainable_params",
    "total_params",
    "trainable_pct",
    "train_tokens_per_s",
    "peak_memory_mb",
    "wall_s",
    "train_s",
    "eval_s",
    "save_s",
    "final_eval",
    "best_eval",
    "steps",
}


def test_train_writes_a_complete_run_directory_and_eval_replays_it(
    tiny_model_dir: Path, tmp_path: Path, loraft
) -> None:
    run = tmp_path / "run"
    args = [
        "train",
        RECIPES / "joker.yaml",
        f"model.name={tiny_model_dir}",
        f"output_dir={run}",
        "train.lr=3e-3",
        "train.max_steps=20",
        "train.eval_every=10",
        "data.max_length=48",
        "eval.generate_size=4",
        "generation.max_new_tokens=8",
    ]
    code, out, err = loraft(*args)
    assert code == 0, err[-2000:]
    assert "trainable params: 2,048 || all params: 182,528 || trainable%: 1.1220" in out
    assert "done in " in out and "evaluation" in out and f"run directory: {run}" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary.keys() >= SUMMARY_KEYS and summary["steps"] == 20
    losses = [record["eval_loss"] for record in read_records(run, "eval")]
    assert [record["step"] for record in read_records(run, "eval")] == [0, 10, 20]
    assert losses[0] > losses[-1] + 0.02, losses  # the step-0 baseline against the end
    assert summary["final_eval"]["eval_loss"] == losses[-1]
    assert load_recipe(run / "recipe.yaml").method == "lora"
    for name in ("best", "last"):
        assert {"adapter_model.safetensors", "tokenizer.json", "state.json"} <= {
            p.name for p in (run / "checkpoints" / name).iterdir()
        }
    assert len((run / "generations.jsonl").read_text().splitlines()) == 4
    code, out, err = loraft("eval", run)
    assert code == 0, err
    assert out.splitlines()[0].split() == ["checkpoint", "best"]
    assert "eval_loss" in out and "  chrf" in out and "gen_sentence_bleu_bottom10 " in out
    assert (run / "eval-best" / "generations.jsonl").is_file()
    code, _, err = loraft(*args)
    assert code == 2 and "a finished run is already there; pass --overwrite" in err
    code, _, err = loraft(*args, "--overwrite")
    assert code == 0, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["recipes/joker.yaml", "train.lrr=1"],
            "override 'train.lrr=1': unknown key 'train.lrr'; did you mean 'train.lr'?",
        ),
        (
            ["recipes/joker.yaml", "train.batch_size=x"],
            "override 'train.batch_size=x': train.batch_size: Input should be",
        ),
        (["recipes/missing.yaml"], "recipes/missing.yaml: recipe file not found"),
        (
            ["recipes/joker.yaml", "data.train=nowhere.jsonl"],
            "data.train: file 'nowhere.jsonl' not found under",
        ),
        (["recipes/joker.yaml", "eval.metric=eval_bleu"], "eval.metric: 'eval_bleu' is not computed"),
        (
            ["recipes/joker.yaml", "train.trackers=[wandb]", "--overwrite", "--resume"],
            "contradict each other",
        ),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(tmp_path: Path, loraft, args: list[str], message: str) -> None:
    code, _, err = loraft("train", *args, f"output_dir={tmp_path / 'r'}")
    assert code == 2 and message in err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert not (tmp_path / "r").exists()


def test_a_missing_tracker_is_named_before_anything_runs(tmp_path: Path, loraft, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    code, _, err = loraft(
        "train", RECIPES / "quickstart.yaml", "train.trackers=[wandb]", f"output_dir={tmp_path / 'r'}"
    )
    assert code == 2 and "train.trackers: wandb is not installed; pip install 'loraft[wandb]'" in err
    assert not (tmp_path / "r").exists()


def test_ctrl_c_outside_training_is_one_line_and_130(loraft, monkeypatch, tmp_path) -> None:
    import os
    import signal

    from loraft import training

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(training, "train_recipe", interrupted)
    # output_dir: never the user's runs/ (the README's quickstart may have left runs/quickstart)
    code, out, err = loraft("train", RECIPES / "quickstart.yaml", f"output_dir={tmp_path / 'run'}")
    assert (code, err) == (130, "interrupted\n")


def test_fields_version_and_plan(loraft) -> None:
    code, out, _ = loraft("fields")
    assert code == 0 and "| `data.seed` | `42` |" in out and "| `train.resume` | `false` |" in out
    code, out, _ = loraft("--version")
    assert code == 0 and out.startswith("loraft ")
    code, out, _ = loraft("plan", RECIPES / "joker.yaml", "--json")
    numbers = json.loads(out)
    assert (numbers["trainable_params"], numbers["total_params"]) == (147_456, 124_587_264)
    assert round(numbers["trainable_pct"], 4) == 0.1184


def test_the_real_entry_point_gives_one_line_and_no_traceback() -> None:
    result = loraft_process("train", "recipes/joker.yaml", "method=qlora")
    assert result.returncode == 2
    assert result.stderr.startswith("error: override 'method=qlora': method: Input should be 'full', 'lora'")
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    version = loraft_process("--version")
    assert version.returncode == 0 and version.stdout.startswith("loraft ")


def test_a_mini_gpt_trains_from_scratch_on_a_text_file(tmp_path: Path, loraft) -> None:
    """The text task: a tokenizer trained on the file, passages packed into full blocks."""
    text = tmp_path / "text.txt"
    text.write_text(
        "\n\n".join(f"Act {i}. To be, or not to be: that is question number {i}." for i in range(300))
    )
    run = tmp_path / "mini"
    code, out, err = loraft(
        "train",
        RECIPES / "mini-gpt-scratch.yaml",
        f"data.train={text}",
        f"output_dir={run}",
        "train.max_steps=12",
        "train.eval_every=6",
        "model.config.n_layer=1",
        "model.config.n_embd=32",
        "model.tokenizer_vocab_size=300",
        "data.max_length=32",
        "eval.generate_size=2",
        "generation.max_new_tokens=8",
        "train.precision=fp32",
    )
    assert code == 0, err[-2000:]
    losses = [record["eval_loss"] for record in read_records(run, "eval")]
    assert losses[0] > losses[-1] and len(losses) == 3
    assert (run / "base_model" / "tokenizer.json").is_file()


def test_importing_loraft_bounds_onednns_kernel_cache_unless_the_user_set_it() -> None:
    """Without the bound, a bf16 CPU run's memory grows with every new packed-row length."""
    script = "import loraft, os; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    for given, expected in ((None, "16"), ("5", "5")):
        env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
        if given:
            env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = given
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
        assert done.stdout.strip() == expected, done.stderr


def test_validate_takes_overrides_as_train_does(loraft) -> None:
    code, out, _ = loraft("validate", RECIPES / "joker.yaml", "lora.r=4", "--no-data")
    assert code == 0 and out.startswith("ok")
    code, _, err = loraft("validate", RECIPES / "joker.yaml", "train.lrr=3", "--no-data")
    assert code == 2 and "override 'train.lrr=3': unknown key 'train.lrr'; did you mean 'train.lr'?" in err


def test_a_rank_wider_than_the_layers_is_one_line(tiny_model_dir, tmp_path, loraft) -> None:
    code, _, err = loraft(
        "train",
        RECIPES / "joker.yaml",
        f"model.name={tiny_model_dir}",
        "lora.r=1000",
        f"output_dir={tmp_path / 'run'}",
    )
    assert code == 2 and "lora.r: 1000 is more than the narrowest adapted layer's width (64)" in err
