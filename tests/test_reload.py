"""What a run saved reloads to the very model it trained: `loraft eval` reproduces every recorded
metric, and `loraft generate` gives the in-memory model's greedy text, for every method, on a
from-scratch base and on a local model (no ../shared/data needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import RECIPES

from loraft.generation import generate
from loraft.recipe_files import load_recipe
from loraft.training import train_recipe

SCRATCH_MODEL = [
    "model.name=null",
    "model.config={n_layer: 2, n_head: 2, n_embd: 32, n_positions: 64}",
    "model.tokenizer_vocab_size=400",
]
QUICK = [
    "train.precision=fp32",
    "train.max_steps=8",
    "train.eval_every=4",
    "train.lr=1e-2",
    "train.batch_size=8",
    "data.max_length=48",
]


def model_source(kind: str, tiny_model_dir: Path) -> list[str]:
    return SCRATCH_MODEL if kind == "scratch" else [f"model.name={tiny_model_dir}"]


def assert_reproduced(replayed: dict, recorded: dict) -> None:
    shared = [key for key in recorded if key not in ("step",)]
    assert shared and {key: replayed[key] for key in shared} == {key: recorded[key] for key in shared}


@pytest.mark.parametrize("base", ["scratch", "local"])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_generative_run_reloads_exactly(
    tiny_model_dir: Path, tmp_path: Path, loraft, base: str, method: str
) -> None:
    run = tmp_path / "run"
    overrides = [*model_source(base, tiny_model_dir), f"method={method}", f"output_dir={run}", *QUICK]
    overrides += ["eval.generate_size=4", "generation.strategy=greedy", "generation.max_new_tokens=8"]
    result = train_recipe(load_recipe(RECIPES / "joker.yaml", overrides))
    code, out, err = loraft("eval", run, "--json")
    assert code == 0, err
    assert_reproduced(json.loads(out), result.summary["best_eval"])
    code, out, err = loraft("eval", run, "--json", "--checkpoint", "last")
    assert_reproduced(json.loads(out), result.summary["final_eval"])
    prompt = "Do you like cards?"
    code, out, err = loraft("generate", run, "--checkpoint", "last", "--prompt", prompt, "--json")
    assert code == 0, err
    settings = load_recipe(run / "recipe.yaml").generation
    expected = generate(result.model, result.tokenizer, [f"Person: {prompt}\nJoker:"], settings)
    assert json.loads(out)["continuation"] == expected[0]


def write_sentiment(path: Path, rows: int) -> Path:
    """A small two-label set: the label is whether the review praises or pans."""
    words = [
        ("a fine and moving film", "1"),
        ("a dull and lifeless mess", "0"),
        ("truly wonderful acting", "1"),
        ("boring , tedious , too long", "0"),
    ]
    lines = ["sentence\tlabel"] + [f"{words[i % 4][0]} number {i}\t{words[i % 4][1]}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("base", ["scratch", "local"])
@pytest.mark.parametrize("method", ["head", "lora", "full"])
def test_a_classifier_run_reloads_exactly(
    tiny_model_dir: Path, tmp_path: Path, loraft, base: str, method: str
) -> None:
    train = write_sentiment(tmp_path / "train.csv", 96)
    dev = write_sentiment(tmp_path / "dev.csv", 24)
    run = tmp_path / "run"
    overrides = [
        *model_source(base, tiny_model_dir),
        f"method={method}",
        f"output_dir={run}",
        *QUICK,
        f"data.train={train}",
        f"data.eval={dev}",
        "data.predict=null",
        "data.columns={text: sentence}",
    ]
    result = train_recipe(load_recipe(RECIPES / "sst-lora.yaml", [*overrides, "data.labels=['0', '1']"]))
    code, out, err = loraft("eval", run, "--json")
    assert code == 0, err
    # the recipe holds a validation split out: the eval file is its test set, scored once
    assert result.summary["selection_split"] == "validation"
    assert_reproduced(json.loads(out), result.summary["test_eval"])
