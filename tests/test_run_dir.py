"""The run directory never loses anything loraft did not write, even with --overwrite."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import joker_recipe

from loraft.errors import LoraftError
from loraft.run_dir import MARKER, RunDirectory
from loraft.training import train_recipe


def test_a_project_folder_with_a_recipe_yaml_is_not_a_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "thesis").mkdir(parents=True)
    (project / "recipe.yaml").write_text("task: persona\n")
    (project / "notes.txt").write_text("precious")
    with pytest.raises(LoraftError, match="is not empty and is not a loraft run"):
        train_recipe(joker_recipe(tiny_model_dir, project, "train.max_steps=1"), overwrite=True)
    assert sorted(p.name for p in project.iterdir()) == ["notes.txt", "recipe.yaml", "thesis"]


def test_overwrite_removes_only_what_loraft_wrote(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_recipe(joker_recipe(tiny_model_dir, run, "train.max_steps=2"))
    (run / "my-notes.txt").write_text("mine")
    (run / "plots").mkdir()
    with pytest.raises(LoraftError, match="a finished run is already there; pass --overwrite"):
        train_recipe(joker_recipe(tiny_model_dir, run, "train.max_steps=2"))
    # names loraft uses, holding what loraft did not write there
    mine = [run / "tensorboard" / "my-plots.txt", run / "checkpoints" / "my-export" / "x", run / ".tmp-keep"]
    for path in mine:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("mine")
    train_recipe(joker_recipe(tiny_model_dir, run, "train.max_steps=3"), overwrite=True)
    assert (run / "my-notes.txt").read_text() == "mine" and (run / "plots").is_dir()
    assert all(path.read_text() == "mine" for path in mine)  # no trackers in this run: its folder stays
    assert '"steps": 3' in (run / "summary.json").read_text()


def test_one_process_at_a_time_trains_a_run(tmp_path: Path) -> None:
    first = RunDirectory.create(tmp_path / "run")
    with pytest.raises(LoraftError, match="another loraft process is using this run right now"):
        RunDirectory(tmp_path / "run").lock()  # its own open file: as another process would
    first.unlock()
    RunDirectory(tmp_path / "run").lock()


def test_output_dir_is_a_real_folder_path(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert joker_recipe(tiny_model_dir, Path("~/x")).run_dir == tmp_path / "x"
    with pytest.raises(LoraftError, match="output_dir: expected a folder path"):
        joker_recipe(tiny_model_dir, Path("~"), "output_dir=''")


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (lambda tmp, home: Path("/"), "the filesystem root"),
        (lambda tmp, home: home, "your home folder"),
        (lambda tmp, home: Path.cwd(), "the current folder or one of its parents"),
        (lambda tmp, home: Path.cwd() / "runs", "the runs folder"),
        (lambda tmp, home: tmp / "repo", "a repository"),
        (lambda tmp, home: tmp / "runs-of-mine", "a folder of runs"),
        (lambda tmp, home: tmp / "runs-of-mine" / "a" / "inner", "inside another run"),
    ],
)
def test_output_dir_may_not_be_a_folder_that_holds_more_than_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where, message: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    (tmp_path / "runs-of-mine" / "a").mkdir(parents=True)
    (tmp_path / "runs-of-mine" / "a" / MARKER).write_text("{}")
    with pytest.raises(LoraftError, match=re.escape(message)):
        RunDirectory.check_available(where(tmp_path, home), overwrite=True)


def test_a_run_name_must_be_a_folder_name(tiny_model_dir: Path, tmp_path: Path) -> None:
    for name in ["''", "../up", "a/b", "' x'"]:
        with pytest.raises(LoraftError, match="name: expected letters, digits"):
            joker_recipe(tiny_model_dir, tmp_path / "r", f"name={name}")


def test_a_file_is_not_a_run_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(LoraftError, match="is a file, not a directory"):
        RunDirectory.check_available(tmp_path / "file")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.train=nope.jsonl", "data.train: file 'nope.jsonl' not found"),
        ("eval.metric=eval_acc", "eval.metric: 'eval_acc' is not computed by the persona task"),
        ("data.max_length=4096", "data.max_length: 4096 is longer than the model's context (256 positions)"),
        ("generation.max_new_tokens=300", "generation.max_new_tokens: 300 leaves no room for a prompt"),
        ("data.template='Q: {question}'", "data.template: expected exactly one {prompt} placeholder"),
        ("lora.target_modules=[q_proj]", "lora.target_modules: 'q_proj' is not a GPT-2 layer"),
        ("data.max_length=8", "no training row has a target token"),  # found once tokenized
    ],
)
def test_a_bad_rerun_with_overwrite_keeps_the_earlier_run(
    tiny_model_dir: Path, tmp_path: Path, override: str, message: str
) -> None:
    train_recipe(joker_recipe(tiny_model_dir, tmp_path, "train.max_steps=2"))
    before = (tmp_path / "summary.json").read_text()
    with pytest.raises(LoraftError, match=re.escape(message)):
        train_recipe(joker_recipe(tiny_model_dir, tmp_path, "train.max_steps=2", override), overwrite=True)
    assert (tmp_path / "summary.json").read_text() == before
