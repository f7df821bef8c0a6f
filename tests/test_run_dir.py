"""The run directory never loses anything silently, even with --overwrite."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO

from loraft.errors import LoraftError
from loraft.recipe import load_recipe
from loraft.run_dir import RunDirectory
from loraft.trainer import train_recipe


def test_overwrite_never_deletes_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(LoraftError, match="is not empty and is not a loraft run"):
        RunDirectory.create(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_a_file_is_not_a_run_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(LoraftError, match="is a file, not a directory"):
        RunDirectory.check_available(tmp_path / "file")


def test_overwrite_replaces_a_run_and_refuses_without_the_flag(tmp_path: Path) -> None:
    (tmp_path / "recipe.yaml").write_text("task: news\n")
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(LoraftError, match="a finished run is already there; pass --overwrite"):
        RunDirectory.create(tmp_path)
    assert RunDirectory.create(tmp_path, overwrite=True).path == tmp_path
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.train=nope.jsonl", "data.train: file 'nope.jsonl' not found"),
        ("eval.metric=eval_acc", "eval.metric: 'eval_acc' is not computed"),
        ("data.max_length=4096", "data.max_length: 4096 is longer than the model's context (256 positions)"),
    ],
)
def test_a_bad_rerun_with_overwrite_keeps_the_earlier_run(
    tiny_model_dir: Path, tmp_path: Path, override: str, message: str
) -> None:
    quick = [f"model.name={tiny_model_dir}", f"output_dir={tmp_path}", "train.max_steps=2",
             "data.train_size=16", "data.eval_size=8", "eval.generate=false"]  # fmt: skip
    train_recipe(load_recipe(REPO / "recipes" / "joker.yaml", quick))
    before = (tmp_path / "summary.json").read_text()
    with pytest.raises(LoraftError, match=re.escape(message)):
        train_recipe(load_recipe(REPO / "recipes" / "joker.yaml", [*quick, override]), overwrite=True)
    assert (tmp_path / "summary.json").read_text() == before
