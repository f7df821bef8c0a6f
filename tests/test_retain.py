"""`eval.retain`: the loss on text like the base's pretraining data before and after training,
measured on the base itself and on the selected checkpoint as it reloads."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate import Accelerator
from conftest import RECIPES, joker_recipe
from transformers import GPT2LMHeadModel

from loraft.checkpoint import load_trained_model
from loraft.errors import LoraftError
from loraft.plots import write_plots
from loraft.recipe_files import load_recipe
from loraft.report import compare_runs, write_tables
from loraft.retain import retain_features, retain_loss
from loraft.run_dir import RunDirectory
from loraft.tokenizer import load_tokenizer
from loraft.training import train_recipe

TEXTS = [
    "The committee met on Tuesday to discuss the budget for the coming year.",
    "Rain is expected across the north of the country by the weekend.",
    "She opened the window and listened to the birds in the garden.",
]


@pytest.fixture(scope="module")
def retain_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("retain") / "retain.txt"
    path.write_text("\n".join(TEXTS) + "\n\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("method", ["lora", "full"])
def test_retain_loss_before_is_the_base_and_after_is_the_selected_checkpoint(
    tiny_model_dir: Path, tmp_path: Path, retain_file: Path, method: str
) -> None:
    recipe = joker_recipe(
        tiny_model_dir, tmp_path / method, f"method={method}", f"eval.retain={retain_file}", "train.lr=1e-2"
    )
    summary = train_recipe(recipe).summary
    retain = summary["retain"]
    tokenizer = load_tokenizer(str(tiny_model_dir))
    features = retain_features(TEXTS, tokenizer, recipe.data.max_length)
    accelerator = Accelerator(cpu=True)
    base = GPT2LMHeadModel.from_pretrained(tiny_model_dir)
    before = retain_loss(base, features, tokenizer, 2, accelerator)
    assert retain["texts"] == 3 and retain["tokens"] == before["tokens"] > 20
    assert retain["loss_before"] == pytest.approx(before["loss"], rel=1e-6)
    reloaded, _ = load_trained_model(RunDirectory(tmp_path / method), "best", recipe)
    after = retain_loss(reloaded, features, tokenizer, 5, accelerator)
    assert retain["loss_after"] == pytest.approx(after["loss"], rel=1e-5)
    assert retain["loss_change"] == pytest.approx(retain["loss_after"] - retain["loss_before"])
    assert abs(retain["loss_change"]) > 1e-4  # training moved it


def test_compare_shows_what_each_setting_forgot(
    tiny_model_dir: Path, tmp_path: Path, retain_file: Path
) -> None:
    runs = []
    for method in ("lora", "full"):
        recipe = joker_recipe(
            tiny_model_dir, tmp_path / method, f"method={method}", f"eval.retain={retain_file}"
        )
        runs.append(Path(train_recipe(recipe).summary["run_dir"]))
    comparison = compare_runs(runs)
    table = (write_tables(comparison, tmp_path / "out")[1]).read_text()
    assert "retain loss change" in table.splitlines()[2]
    assert "forgetting.png" in [path.name for path in write_plots(comparison, tmp_path / "out")]


def test_retain_mistakes_are_one_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    from loraft.checks import check_recipe
    from loraft.data import data_roots

    roots = [*data_roots(), tmp_path]

    with pytest.raises(LoraftError, match="eval.retain: needs a causal language-model task"):
        check_recipe(load_recipe(RECIPES / "sst-lora.yaml", ["eval.retain=retain.txt"]))
    missing = joker_recipe(tiny_model_dir, tmp_path / "run", "eval.retain=nowhere.txt")
    with pytest.raises(LoraftError, match="eval.retain: file 'nowhere.txt' not found"):
        check_recipe(missing, roots)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(LoraftError, match="eval.retain: .*empty.txt holds no text"):
        check_recipe(
            joker_recipe(tiny_model_dir, tmp_path / "run", f"eval.retain={tmp_path / 'empty.txt'}"),
            roots,
        )
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(LoraftError, match="eval.retain: cannot read .*binary.txt as UTF-8 text"):
        check_recipe(
            joker_recipe(tiny_model_dir, tmp_path / "run", f"eval.retain={tmp_path / 'binary.txt'}"),
            roots,
        )
