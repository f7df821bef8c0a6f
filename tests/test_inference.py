"""`loraft generate` on a LoRA run, a full run and a plain model path; `loraft study`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SHARED_DATA, shared_file

from loraft.recipe import load_recipe
from loraft.trainer import train_recipe

PROMPTS = ["Oil prices rose on Monday as", "The team won its third"]


def loraft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loraft", *args], capture_output=True, text=True, cwd=REPO, timeout=600
    )


def generated(*args: str) -> list[dict]:
    result = loraft("generate", *args, "--json", "--max-new-tokens", "12", "--strategy", "greedy")
    assert result.returncode == 0, result.stderr[-2000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_generate_from_a_lora_run_a_full_run_and_a_model_path(runs: dict, tiny_model_dir: Path) -> None:
    prompt_args = [arg for prompt in PROMPTS for arg in ("--prompt", prompt)]
    outputs = {name: generated(str(run), *prompt_args) for name, run in runs.items()}
    outputs["base"] = generated(str(tiny_model_dir), *prompt_args)
    for records in outputs.values():
        assert [record["prompt"] for record in records] == PROMPTS
        assert all(record["continuation"] for record in records)
    continuations = {name: [r["continuation"] for r in records] for name, records in outputs.items()}
    assert continuations["lora"] != continuations["base"] != continuations["full"]


def test_generate_reads_a_prompts_file_and_is_reproducible(runs: dict, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n\n")
    sampled = ["--strategy", "sample", "--top-k", "20", "--seed", "3", "--context-window", "4,8"]
    first = loraft("generate", str(runs["lora"]), "--prompts-file", str(prompts), "--json", *sampled)
    second = loraft("generate", str(runs["lora"]), "--prompts-file", str(prompts), "--json", *sampled)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout == second.stdout and len(first.stdout.splitlines()) == 2


def test_generate_errors_are_one_line(runs: dict, tmp_path: Path) -> None:
    for args, message in [
        ([str(runs["lora"])], "give at least one --prompt"),
        ([str(tmp_path / "none"), "--prompt", "x"], "not a run directory, and not a loadable model"),
        ([str(runs["lora"]), "--prompt", "x", "--top-p", "2"], "--top-p: Input should be less than"),
        ([str(runs["lora"]), "--prompt", "x", "--context-window", "a"], "--context-window: expected W"),
    ]:
        result = loraft("generate", *args)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_study_compares_decoders_and_a_whole_context_window_changes_nothing(
    runs: dict, tmp_path: Path
) -> None:
    recipe = yaml.safe_load((REPO / "recipes" / "news.yaml").read_text())
    recipe.update(
        {
            "output_dir": str(tmp_path / "study"),
            "eval": {"generate_size": 6},
            "generation": {"strategy": "greedy", "max_new_tokens": 10},
            "study": {
                "run": str(runs["lora"]),
                "decoders": {
                    "standard": {},
                    "whole": {"context_window": 500, "context_mode": "cache"},
                    "short": {"context_window": 4, "context_mode": "reencode"},
                },
            },
        }
    )
    recipe["data"].update({"train_size": 80, "eval_size": 16, "max_length": 32})
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = loraft("study", str(path), "--json", "--data-root", str(SHARED_DATA))
    assert result.returncode == 0, result.stderr[-2000:]
    scores = json.loads(result.stdout)
    assert set(scores) == {"standard", "whole", "short"}
    for key in ("gen_sentence_bleu_mean", "gen_sentence_bleu_top10", "gen_chrf", "gen_distinct_2"):
        assert scores["whole"][key] == scores["standard"][key]
    assert scores["short"]["tokens_per_s"] > 0
    assert json.loads((tmp_path / "study" / "study.json").read_text())["prompts"] == 6
    again = loraft("study", str(path), "--data-root", str(SHARED_DATA))
    assert again.returncode == 2 and "pass --overwrite" in again.stderr


def test_sonnet_training_ends_with_course_chrf_that_eval_reproduces(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from sacrebleu.metrics import CHRF

    shared_file("cs224n/sonnets.txt")
    run = tmp_path / "sonnets"
    overrides = [
        f"model.name={tiny_model_dir}",
        f"output_dir={run}",
        "train.max_steps=3",
        "generation.max_new_tokens=12",
        "generation.strategy=greedy",
        "data.max_length=64",
    ]
    summary = train_recipe(load_recipe(REPO / "recipes" / "sonnets.yaml", overrides), SHARED_DATA).summary
    records = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
    assert len(records) == 12 and all(len(r["prompt"].splitlines()) == 3 for r in records)
    hypotheses = [(r["prompt"] + r["continuation"]).strip() for r in records]
    expected = CHRF().corpus_score(hypotheses, [[r["reference"] for r in records]]).score
    assert summary["best_eval"]["gen_chrf"] == pytest.approx(expected)
    assert "nc:6" in summary["best_eval"]["gen_signatures"]["chrf"]  # sacrebleu defaults
    replay = loraft("eval", str(run), "--json", "--data-root", str(SHARED_DATA))
    assert replay.returncode == 0, replay.stderr[-2000:]
    assert json.loads(replay.stdout)["gen_chrf"] == pytest.approx(expected)
