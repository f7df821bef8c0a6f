"""End to end: `loraft train` on a tiny GPT-2 loaded by path, on real rows of ../shared/data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, SHARED_DATA, shared_file
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraft.recipe import load_recipe
from loraft.trainer import train_recipe

SUMMARY_KEYS = {
    "trainable_params",
    "total_params",
    "trainable_pct",
    "train_tokens_per_s",
    "peak_memory_mb",
    "wall_s",
    "final_eval",
}
# A short but real budget: 400 AG News articles, 48 tokens, 60 optimizer steps.
QUICK_NEWS = [
    "data.train_size=400",
    "data.eval_size=60",
    "data.max_length=48",
    "train.max_steps=60",
    "train.batch_size=8",
    "train.eval_every=30",
    "train.log_every=10",
]


def loraft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loraft", *args], capture_output=True, text=True, cwd=REPO, timeout=600
    )


def eval_losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("step" in record for record in records)
    return [record["eval_loss"] for record in records if "eval_loss" in record]


@pytest.mark.parametrize(
    ("method", "lr", "weights"),
    [
        ("lora", "3e-3", "adapter_model.safetensors"),
        ("full", "1e-3", "model.safetensors"),
    ],
)
def test_cli_trains_and_writes_a_complete_run_directory(
    tiny_model_dir: Path, tmp_path: Path, method: str, lr: str, weights: str
) -> None:
    shared_file("ag_news/news.csv")
    run = tmp_path / method
    result = loraft(
        "train",
        "recipes/news.yaml",
        f"model.name={tiny_model_dir}",
        f"method={method}",
        f"train.lr={lr}",
        f"output_dir={run}",
        *QUICK_NEWS,
        "--data-root",
        str(SHARED_DATA),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trainable params:" in result.stdout and "trainable%:" in result.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary.keys() >= SUMMARY_KEYS
    assert summary["train_tokens_per_s"] > 0 and summary["peak_memory_mb"] > 0
    losses = eval_losses(run)
    assert losses[0] > losses[-1] + 0.02, losses  # step-0 baseline vs the end (seeded run)
    assert summary["final_eval"]["eval_loss"] == pytest.approx(losses[-1])
    assert load_recipe(run / "recipe.yaml").method == method
    for checkpoint in ("best", "last"):
        assert (run / "checkpoints" / checkpoint / weights).is_file()
        assert (run / "checkpoints" / checkpoint / "tokenizer.json").is_file()
    replay = loraft("eval", str(run), "--checkpoint", "last", "--json", "--data-root", str(SHARED_DATA))
    assert replay.returncode == 0, replay.stderr[-2000:]
    assert json.loads(replay.stdout)["eval_loss"] == pytest.approx(summary["final_eval"]["eval_loss"])


def test_lora_adapter_reloads_with_plain_peft_and_gives_the_same_logits(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    shared_file("ag_news/news.csv")
    overrides = [f"model.name={tiny_model_dir}", f"output_dir={tmp_path / 'run'}", "train.lr=3e-3"]
    recipe = load_recipe(REPO / "recipes/news.yaml", overrides + QUICK_NEWS[:-3] + ["train.max_steps=20"])
    result = train_recipe(recipe, SHARED_DATA)
    trained = result.model.eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "run" / "checkpoints" / "last").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run" / "checkpoints" / "last")
    inputs = tokenizer(["Stocks rallied on Wall Street as"], return_tensors="pt")
    with torch.inference_mode():
        expected = trained(**inputs).logits
        assert torch.equal(reloaded(**inputs).logits, expected)
        assert not torch.allclose(base.base_model(**inputs).last_hidden_state.sum(), torch.tensor(0.0))
        untouched = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(**inputs).logits
    assert not torch.allclose(untouched, expected)  # the adapter changed something


def test_an_existing_run_is_never_overwritten_silently(tiny_model_dir: Path, tmp_path: Path) -> None:
    shared_file("ag_news/news.csv")
    run = tmp_path / "run"
    args = [
        "train",
        "recipes/news.yaml",
        f"model.name={tiny_model_dir}",
        f"output_dir={run}",
        "train.max_steps=2",
        "data.train_size=16",
        "data.eval_size=8",
        "--data-root",
        str(SHARED_DATA),
    ]
    assert loraft(*args).returncode == 0
    before = (run / "summary.json").read_text()
    again = loraft(*args)
    assert again.returncode == 2
    assert "a finished run is already there; pass --overwrite" in again.stderr
    assert (run / "summary.json").read_text() == before
    assert loraft(*args, "--overwrite").returncode == 0


def test_mini_gpt_from_scratch_trains_its_own_tokenizer(tmp_path: Path) -> None:
    shared_file("tinyshakespeare/input.txt")
    run = tmp_path / "mini"
    result = loraft(
        "train",
        "recipes/mini-gpt-scratch.yaml",
        f"output_dir={run}",
        "train.max_steps=12",
        "train.batch_size=8",
        "data.max_length=64",
        "model.config.n_layer=2",
        "model.config.n_embd=64",
        "model.tokenizer_vocab_size=500",
        "train.eval_every=6",
        "eval.max_batches=4",
        "--data-root",
        str(SHARED_DATA),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    losses = eval_losses(run)
    assert losses[0] > losses[-1]
    assert len(AutoTokenizer.from_pretrained(run / "checkpoints" / "last")) == 500


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["recipes/news.yaml", "data.train=nowhere/news.csv", "data.hub=null"],
            "data.train: file 'nowhere/news.csv' not found under the data roots",
        ),
        (["recipes/news.yaml", "train.lrr=1"], "unknown key 'train.lrr'; did you mean 'train.lr'?"),
        (["recipes/missing.yaml"], "recipes/missing.yaml: recipe file not found"),
        (["recipes/joker.yaml", "eval.metric=eval_bleu"], "eval.metric: 'eval_bleu' is not computed"),
    ],
)
def test_user_mistakes_exit_2_with_one_line_and_no_traceback(
    tiny_model_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    result = loraft("train", *args, f"model.name={tiny_model_dir}", f"output_dir={tmp_path / 'r'}")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error")]) == 1


def test_validate_and_plan_commands() -> None:
    assert loraft("validate", "recipes/news.yaml", "recipes/joker.yaml").returncode == 0
    plan = loraft("plan", "recipes/joker.yaml", "--json")
    assert plan.returncode == 0
    numbers = json.loads(plan.stdout)
    assert (numbers["trainable_params"], numbers["total_params"]) == (147_456, 124_587_264)
    assert round(numbers["trainable_pct"], 4) == 0.1184


def test_two_process_ddp_on_cpu_matches_a_single_process_evaluation(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`torchrun` with two gloo processes: one run directory, eval not skewed by sampler padding."""
    shared_file("ag_news/news.csv")
    run = tmp_path / "ddp"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "-m",
            "loraft",
            "train",
            "recipes/news.yaml",
            f"model.name={tiny_model_dir}",
            f"output_dir={run}",
            "data.train_size=64",
            "data.eval_size=27",
            "data.max_length=32",
            "train.max_steps=4",
            "--data-root",
            str(SHARED_DATA),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("run directory:") == 1
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["num_processes"], summary["distributed_type"]) == (2, "MULTI_CPU")
    replay = loraft("eval", str(run), "--checkpoint", "last", "--json", "--data-root", str(SHARED_DATA))
    single = json.loads(replay.stdout)
    assert single["eval_tokens"] == summary["final_eval"]["eval_tokens"]
    assert single["eval_loss"] == pytest.approx(summary["final_eval"]["eval_loss"], rel=1e-6)


def test_a_tracker_that_is_not_installed_is_named_before_anything_runs(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    result = loraft("train", "recipes/quickstart.yaml", "train.tracker=wandb", f"output_dir={tmp_path / 'r'}")
    assert result.returncode == 2
    assert "train.tracker: wandb is not installed; pip install 'loraft[wandb]'" in result.stderr
    assert not (tmp_path / "r").exists()
