"""A run folder someone hands you is safe to open: nothing in a training state runs code, and a
damaged or missing file is one line naming it (never a silently different resume)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from conftest import joker_recipe

from loraft.errors import LoraftError
from loraft.training import train_recipe


class RunsAShellCommand:
    """What a crafted pickle holds: unpickling it would call os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def stopped_run(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A run that saved a state at step 2 and is resumable to step 4."""
    run = tmp_path / "run"
    train_recipe(joker_recipe(tiny_model_dir, run, "train.max_steps=2", "train.save_every=2"))
    (run / "summary.json").unlink()  # as if killed after its state was saved
    return run


def resume(tiny_model_dir: Path, run: Path):
    overrides = ["train.max_steps=4", "train.save_every=2", "train.resume=true"]
    return train_recipe(joker_recipe(tiny_model_dir, run, *overrides))


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "random_states_0.pkl"])
def test_a_crafted_pickle_in_a_training_state_never_runs(
    name: str, stopped_run: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    state = stopped_run / "train_state" / "step-00000002"
    marker = tmp_path / "pwned"
    (state / name).write_bytes(pickle.dumps(RunsAShellCommand(marker)))
    if name == "custom_checkpoint_0.pkl":  # never read: the schedule is in the JSON
        with pytest.raises(LoraftError, match=r"custom_checkpoint_0.pkl: not written by loraft"):
            resume(tiny_model_dir, stopped_run)
    else:
        with pytest.raises(
            LoraftError, match=r"random_states_0.pkl: cannot be read as plain data.*never runs code"
        ):
            resume(tiny_model_dir, stopped_run)
    assert not marker.exists()


def test_a_legacy_state_with_a_crafted_schedule_is_refused(
    stopped_run: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """loraft 0.2 kept the schedule in accelerate's pickle: it is read as data only."""
    import json

    state = stopped_run / "train_state" / "step-00000002"
    counters = json.loads((state / "trainer_state.json").read_text())
    import torch

    torch.save(counters.pop("scheduler"), state / "custom_checkpoint_0.pkl")  # as loraft 0.2 did
    (state / "trainer_state.json").write_text(json.dumps(counters))
    marker = tmp_path / "pwned"
    schedule = state / "custom_checkpoint_0.pkl"
    real = schedule.read_bytes()
    schedule.write_bytes(pickle.dumps(RunsAShellCommand(marker)))
    with pytest.raises(LoraftError, match="custom_checkpoint_0.pkl: cannot be read as plain data"):
        resume(tiny_model_dir, stopped_run)
    assert not marker.exists()
    schedule.write_bytes(real)  # the genuine one (plain numbers) resumes as before
    resume(tiny_model_dir, stopped_run)


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("random_states_0.pkl", "delete", "random_states_0.pkl: missing from the training state"),
        ("random_states_0.pkl", "truncate", "random_states_0.pkl: cannot be read as plain data"),
        ("optimizer.bin", "truncate", "step-00000002: cannot be resumed from"),
        ("trainable.safetensors", "truncate", "step-00000002: cannot be resumed from"),
        ("trainer_state.json", "truncate", "trainer_state.json: not a readable training state"),
    ],
)
def test_a_damaged_state_is_one_line_naming_the_file(
    name: str, damage: str, message: str, stopped_run: Path, tiny_model_dir: Path
) -> None:
    path = stopped_run / "train_state" / "step-00000002" / name
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(LoraftError, match=message) as error:
        resume(tiny_model_dir, stopped_run)
    assert "\n" not in str(error.value) and "--overwrite" in str(error.value)


@pytest.mark.parametrize(
    "place",
    [
        "train_state",
        "checkpoints",
        "base_model",
        "tensorboard",
        "checkpoints/best",
        "train_state/step-00000002",
    ],
)
def test_nothing_is_deleted_or_written_through_a_symlink(
    place: str, stopped_run: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """--overwrite and --resume refuse a run whose own entry is a symbolic link to the user's."""
    import shutil

    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("step-00000001", "best", "last.old", "notes.txt"):
        (mine / name).mkdir() if "." not in name or name.endswith(".old") else (mine / name).write_text("x")
    link = stopped_run / place
    if link.exists():
        shutil.rmtree(link)
    link.symlink_to(mine, target_is_directory=True)
    before = sorted(p.name for p in mine.iterdir())
    for extra in (["train.resume=true", "train.max_steps=4"], []):
        recipe = joker_recipe(tiny_model_dir, stopped_run, "train.save_every=2", *extra)
        with pytest.raises(LoraftError, match="a symbolic link where loraft keeps its own files"):
            train_recipe(recipe, overwrite=not extra)
    assert sorted(p.name for p in mine.iterdir()) == before


def shared_run(run: Path, tmp_path: Path, **recipe_changes) -> Path:
    """A copy of a finished run as someone might hand it over, its recipe.yaml edited."""
    import shutil

    import yaml

    copy = tmp_path / "handed-over"
    shutil.copytree(run, copy)
    recipe = yaml.safe_load((copy / "recipe.yaml").read_text())
    for dotted, value in recipe_changes.items():
        section, key = dotted.split("__")
        recipe[section][key] = value
    recipe["output_dir"] = str(copy)
    (copy / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return copy


def metric_that_leaves_a_mark(folder: Path, marker: Path) -> Path:
    """A local `evaluate` metric module whose import writes `marker`."""
    folder.mkdir()
    (folder / "marking.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return folder / "marking.py"


def test_a_run_folder_never_grants_code_to_run(runs: dict, tmp_path: Path, loraft) -> None:
    """Its recipe.yaml may say trust_remote_code or name local metric code: loraft eval,
    generate and export refuse with one line until the command line says so."""
    marker = tmp_path / "ran"
    metric = metric_that_leaves_a_mark(tmp_path / "metric", marker)
    trusting = shared_run(runs["lora"], tmp_path, model__trust_remote_code=True)
    for command in (
        ["eval", trusting],
        ["generate", trusting, "--prompt", "hi"],
        ["export", trusting, "--out", tmp_path / "out"],
    ):
        code, _, err = loraft(*command)
        assert code == 2 and "model.trust_remote_code is true" in err and "--trust-remote-code" in err, err
        assert err.count("\n") == 1
    import shutil

    shutil.rmtree(trusting)
    scoring = shared_run(
        runs["lora"], tmp_path, eval__metrics=[f"evaluate:{metric}"], eval__allow_local_metric_code=True
    )
    code, _, err = loraft("eval", scoring)
    assert code == 2 and "--allow-local-metric-code" in err and not marker.exists()


def test_validate_never_runs_metric_code(tmp_path: Path, loraft) -> None:
    from conftest import RECIPES

    marker = tmp_path / "ran"
    metric = metric_that_leaves_a_mark(tmp_path / "metric", marker)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"extends: {RECIPES / 'joker.yaml'}\neval:\n  metrics: ['evaluate:{metric}']\n")
    code, _, err = loraft("validate", recipe, "--no-data")
    assert code == 2 and "--allow-local-metric-code" in err
    code, out, err = loraft("validate", recipe, "--no-data", "--allow-local-metric-code")
    assert code == 0 and "ok" in out and not marker.exists(), err


def train_args(model: Path, run: Path, *overrides: str) -> list:
    """`loraft train` of the Joker recipe on `model` into `run`, quick and in fp32."""
    quick = ["eval.generate=false", "train.precision=fp32"]
    return ["train", "recipes/joker.yaml", f"model.name={model}", f"output_dir={run}", *quick, *overrides]


def joker_copy(tmp_path: Path) -> Path:
    """The shipped Joker data in a folder of the test's own, to change it."""
    import shutil

    from conftest import JOKER

    data = tmp_path / "data" / "joker.jsonl"
    data.parent.mkdir(parents=True)
    shutil.copy(JOKER, data)
    return data


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.mark.parametrize("change", ["cut", "extend", "rewrite", "eval_file", "base_weights", "tokenizer"])
def test_a_resume_refuses_changed_inputs_unless_told(
    change: str, tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    import json
    import shutil

    data = joker_copy(tmp_path)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    run = tmp_path / "run"
    (data.parent / "eval.jsonl").write_text("\n".join(lines_of(data)[-6:]) + "\n")
    overrides = [f"data.train={data}", f"data.eval={data.parent / 'eval.jsonl'}", "train.save_every=2"]
    train_recipe(joker_recipe(model, run, "train.max_steps=2", *overrides))
    (run / "summary.json").unlink()
    lines = data.read_text().splitlines()
    if change == "cut":
        data.write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    elif change == "extend":
        data.write_text(data.read_text() + lines[0] + "\n")
    elif change == "rewrite":
        data.write_text("\n".join(reversed(lines)) + "\n")
    elif change == "eval_file":
        (tmp_path / "data" / "eval.jsonl").write_text("\n".join(lines[:6]) + "\n")
    elif change == "base_weights":
        weights = model / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8] + bytes(8))
    else:
        config = json.loads((model / "tokenizer_config.json").read_text())
        (model / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 7}))
    resumed = [*overrides, "train.max_steps=4", "train.resume=true"]
    what = {"eval_file": "data.eval", "base_weights": "model/", "tokenizer": "model/"}.get(
        change, "data.train"
    )
    with pytest.raises(LoraftError, match=f"inputs of .* changed since it started: {what}"):
        train_recipe(joker_recipe(model, run, *resumed))
    if change == "cut":  # the rows it would need are gone: allowed or not, it cannot be that run
        return
    train_recipe(joker_recipe(model, run, *resumed), allow_changed_inputs=True)
    notes = [
        json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"note"' in line
    ]
    assert notes and notes[0]["step"] == 2 and what in notes[0]["changed_inputs"][0]


def test_eval_says_when_a_run_s_inputs_changed_and_reads_its_data_root(
    tiny_model_dir: Path, tmp_path: Path, loraft
) -> None:
    data = joker_copy(tmp_path)
    run = tmp_path / "run"
    code, _, err = loraft(
        *train_args(tiny_model_dir, run, "train.max_steps=2", "data.train=joker.jsonl"),
        "--data-root",
        data.parent,
    )
    assert code == 0, err
    code, out, err = loraft("eval", run)  # no --data-root: the run remembers where its data was
    assert code == 0 and "inputs changed" not in out, err
    data.write_text(data.read_text() + data.read_text().splitlines()[0] + "\n")
    code, out, err = loraft("eval", run)
    assert (
        code == 0 and out.splitlines()[0].startswith("note: the inputs changed since") and "data.train" in out
    )


def test_a_copied_run_resumes_itself(tiny_model_dir: Path, tmp_path: Path, loraft, monkeypatch) -> None:
    """`loraft train COPY/recipe.yaml --resume` continues COPY (not the run it was copied
    from), from any working folder."""
    import shutil

    run = tmp_path / "run"
    train_recipe(joker_recipe(tiny_model_dir, run, "train.max_steps=2", "train.save_every=2"))
    (run / "summary.json").unlink()
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    before = (run / "metrics.jsonl").read_text()
    monkeypatch.chdir(tmp_path / "copy")
    code, _, err = loraft("train", copy / "recipe.yaml", "--resume", "train.max_steps=4")
    assert code == 0, err
    assert (copy / "summary.json").is_file() and not (run / "summary.json").exists()
    assert (run / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize(
    "failure",
    [
        OSError(28, "No space left on device", "model.safetensors"),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 1234"),
    ],
    ids=["ENOSPC", "torch-writer"],
)
def test_a_full_disk_is_one_line_naming_what_is_left(
    failure: Exception, tiny_model_dir: Path, tmp_path: Path, monkeypatch, loraft
) -> None:
    from loraft import trainer as trainer_module

    calls = []
    real = trainer_module.save_training_state

    def fails_the_second_time(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise failure
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "save_training_state", fails_the_second_time)
    run = tmp_path / "run"
    code, _, err = loraft(*train_args(tiny_model_dir, run, "train.max_steps=4", "train.save_every=2"))
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]  # stderr: progress bar too
    assert code == 2 and "Traceback" not in err
    assert line.startswith("error: step 4: ") and "the last complete training state is step 2's" in err
    assert ("no space left" in line) if isinstance(failure, OSError) else ("is the disk full?" in line)


def test_a_folder_that_cannot_be_written_is_refused_before_the_model_loads(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch, loraft
) -> None:
    import tempfile

    from loraft.models import loading

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    monkeypatch.setattr(loading, "load_base_model", lambda *a, **k: pytest.fail("loaded"))
    code, _, err = loraft(
        "train", "recipes/joker.yaml", f"model.name={tiny_model_dir}", f"output_dir={tmp_path / 'r'}"
    )
    assert code == 2 and "output_dir: cannot write in" in err and "Read-only file system" in err


@pytest.mark.parametrize(
    ("place", "damage", "message"),
    [
        (
            "checkpoints/best/adapter_model.safetensors",
            "truncate",
            "checkpoints/best: cannot load the checkpoint",
        ),
        ("checkpoints/best/tokenizer.json", "wrong-structure", "model.tokenizer: cannot load"),
        ("base/model.safetensors", "truncate", "model.name: cannot load"),
        ("base/config.json", "list", "holds a JSON list, not a model config"),
    ],
)
def test_damaged_files_in_a_run_or_its_base_are_one_line(
    place: str, damage: str, message: str, runs: dict, tiny_model_dir: Path, tmp_path: Path, loraft
) -> None:
    import shutil

    import yaml

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    run = tmp_path / "run"
    shutil.copytree(runs["lora"], run)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["model"]["name"], recipe["output_dir"] = str(base), str(run)
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    (run / "inputs.json").unlink(missing_ok=True)
    path = tmp_path / place if place.startswith("base/") else run / place
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "list":
        path.write_text("[1, 2]")
    else:
        path.write_text('{"version": "1.0", "model": 3}')
    code, _, err = loraft("eval", run)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert "HF_HUB_OFFLINE" not in err  # a damaged local file is not about the hub


def test_an_exported_adapter_loads_from_any_folder_and_stale_staging_goes(
    runs: dict, tmp_path: Path, monkeypatch, loraft
) -> None:
    import json

    stale = tmp_path / ".loraft-export-adapter-abc123"
    stale.mkdir()
    code, _, err = loraft("export", runs["lora"], "--out", tmp_path / "adapter")
    assert code == 0, err
    assert not stale.exists()  # an export killed mid-write left it; the next export clears it
    base = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base).is_absolute() and (Path(base) / "config.json").is_file()
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "(a local file)" in card and "datasets:" not in card


def test_eval_reads_only_the_files_it_needs(tiny_model_dir: Path, tmp_path: Path, loraft) -> None:
    """A run with its own eval file is evaluated with the training file gone."""
    from conftest import JOKER

    lines = JOKER.read_text().splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:-8]) + "\n")
    (tmp_path / "eval.jsonl").write_text("\n".join(lines[-8:]) + "\n")
    run = tmp_path / "run"
    overrides = [f"data.train={tmp_path / 'train.jsonl'}", f"data.eval={tmp_path / 'eval.jsonl'}"]
    train_recipe(joker_recipe(tiny_model_dir, run, "train.max_steps=2", *overrides))
    (tmp_path / "train.jsonl").unlink()
    code, out, err = loraft("eval", run, "--json")
    assert code == 0 and "inputs changed" not in out, err


def test_a_resume_from_another_data_root_with_other_files_is_refused(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The same relative path under another --data-root is another file: refused; a copy of the
    same bytes there is the same input."""
    first = joker_copy(tmp_path / "one")
    second = joker_copy(tmp_path / "two")
    run = tmp_path / "run"
    train_recipe(
        joker_recipe(
            tiny_model_dir, run, "data.train=joker.jsonl", "train.max_steps=2", "train.save_every=2"
        ),
        data_root=first.parent,
    )
    (run / "summary.json").unlink()
    resumed = ["data.train=joker.jsonl", "train.max_steps=4", "train.save_every=2", "train.resume=true"]
    train_recipe(
        joker_recipe(tiny_model_dir, run, *resumed, "train.max_steps=3"), data_root=second.parent
    )  # same bytes
    second.write_text("\n".join(reversed(lines_of(second))) + "\n")
    with pytest.raises(LoraftError, match="changed since it started: data.train \\(content changed"):
        train_recipe(joker_recipe(tiny_model_dir, run, *resumed), data_root=second.parent)


def test_a_tokenizer_larger_than_the_model_s_embeddings_is_one_line(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from transformers import AutoTokenizer

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.add_tokens([f"<extra-{index}>" for index in range(50)])
    tokenizer.save_pretrained(model)
    with pytest.raises(LoraftError, match="has 1,000 token embeddings but its tokenizer 1,050 tokens"):
        train_recipe(joker_recipe(model, tmp_path / "run", "train.max_steps=1"))
