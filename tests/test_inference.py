"""`loraft generate` on a LoRA run, a full run and a plain model path; `loraft study`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import RECIPES, SHARED_DATA, shared_file

from loraft.recipe_files import load_recipe
from loraft.run_dir import RunDirectory
from loraft.training import train_recipe

PROMPTS = ["What do you think of Mondays?", "Tell me a secret."]


def generated(loraft, *args: str) -> list[dict]:
    code, out, err = loraft("generate", *args, "--json", "--max-new-tokens", "12", "--strategy", "greedy")
    assert code == 0, err[-2000:]
    return [json.loads(line) for line in out.splitlines()]


def test_generate_from_a_lora_run_a_full_run_and_a_model_path(
    runs: dict, tiny_model_dir: Path, loraft
) -> None:
    prompt_args = [arg for prompt in PROMPTS for arg in ("--prompt", prompt)]
    outputs = {name: generated(loraft, run, *prompt_args) for name, run in runs.items()}
    outputs["base"] = generated(loraft, tiny_model_dir, *prompt_args)
    for records in outputs.values():
        assert [record["prompt"] for record in records] == PROMPTS
        assert all(record["continuation"] for record in records)
    continuations = {name: [r["continuation"] for r in records] for name, records in outputs.items()}
    assert continuations["lora"] != continuations["base"] != continuations["full"]


def test_generate_frames_prompts_with_the_run_template_unless_raw(runs: dict, loraft, monkeypatch) -> None:
    """The Joker run trained on `Person: {prompt}\nJoker:` after its priming prefix."""
    from loraft import generation

    seen = []

    def spy(model, tokenizer, prompts, settings, encode=None):
        seen.append((prompts, settings.prefix))
        return ["" for _ in prompts]

    monkeypatch.setattr(generation, "generate", spy)
    prefix = RunDirectory.open(runs["full"]).read_recipe().generation.prefix
    assert prefix.startswith("The Joker never answers plainly")
    assert loraft("generate", runs["full"], "--prompt", PROMPTS[0])[0] == 0
    assert loraft("generate", runs["full"], "--prompt", PROMPTS[0], "--raw")[0] == 0
    assert seen == [([f"Person: {PROMPTS[0]}\nJoker:"], prefix), ([PROMPTS[0]], prefix)]


def test_generate_reads_a_prompts_file_and_is_reproducible(runs: dict, tmp_path: Path, loraft) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n\n")
    sampled = ["--strategy", "sample", "--top-k", "20", "--seed", "3", "--context-window", "4,8"]
    first = loraft("generate", runs["lora"], "--prompts-file", prompts, "--json", *sampled)
    second = loraft("generate", runs["lora"], "--prompts-file", prompts, "--json", *sampled)
    assert first[0] == 0, first[2][-2000:]
    assert first[1] == second[1] and len(first[1].splitlines()) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give at least one --prompt"),
        (["--prompt", "x", "--top-p", "2"], "--top-p: Input should be less than"),
        (["--prompt", "x", "--context-window", "a"], "--context-window: expected W"),
        (["--prompt", "x", "--strategy", "beam", "--context-window", "4"], "beam search is not supported"),
        (["--prompt", "x", "--max-new-tokens", "300"], "300 leaves no room for a prompt in the model's 256"),
        (["--prompt", "x", "--checkpoint", "middle"], "--checkpoint: expected best or last, got 'middle'"),
    ],
)
def test_generate_errors_are_one_line(runs: dict, loraft, args: list[str], message: str) -> None:
    code, _, err = loraft("generate", runs["lora"], *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_generate_on_something_that_is_no_model(tmp_path: Path, loraft) -> None:
    code, _, err = loraft("generate", tmp_path / "none", "--prompt", "x")
    assert code == 2 and "not a run directory, and not a loadable model" in err


def test_study_compares_decoders_and_a_whole_context_window_changes_nothing(
    runs: dict, tmp_path: Path, loraft
) -> None:
    recipe = yaml.safe_load((RECIPES / "joker.yaml").read_text())
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
    recipe["data"]["max_length"] = 48
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, out, err = loraft("study", path, "--json")
    assert code == 0, err[-2000:]
    scores = json.loads(out)
    assert set(scores) == {"standard", "whole", "short"}
    for key in ("gen_sentence_bleu_mean", "gen_sentence_bleu_top10", "gen_chrf", "gen_distinct_2"):
        assert scores["whole"][key] == scores["standard"][key]
    assert scores["short"]["tokens_per_s"] > 0
    assert json.loads((tmp_path / "study" / "study.json").read_text())["prompts"] == 6
    code, _, err = loraft("study", path)
    assert code == 2 and "pass --overwrite" in err


def test_sonnet_training_ends_with_course_chrf_that_eval_reproduces(
    tiny_model_dir: Path, tmp_path: Path, loraft
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
    summary = train_recipe(load_recipe(RECIPES / "sonnets.yaml", overrides), SHARED_DATA).summary
    records = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
    assert len(records) == 12 and all(len(r["prompt"].splitlines()) == 3 for r in records)
    hypotheses = [(r["prompt"] + r["continuation"]).strip() for r in records]
    expected = CHRF().corpus_score(hypotheses, [[r["reference"] for r in records]]).score
    assert summary["selection_split"] == "validation"  # the recipe holds 10% of the sonnets out
    assert summary["test_eval"]["gen_chrf"] == pytest.approx(expected)
    assert "nc:6" in summary["test_eval"]["gen_signatures"]["chrf"]  # sacrebleu defaults
    code, out, err = loraft("eval", run, "--json", "--data-root", SHARED_DATA)
    assert code == 0, err[-2000:]
    assert json.loads(out)["gen_chrf"] == pytest.approx(expected)
