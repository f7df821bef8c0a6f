"""Three roles for data: checkpoints are selected on a validation split held out of the
training rows, and the eval split becomes a test set, scored once with the selected checkpoint.

The runs train the 2-layer tiny GPT-2 as a classifier on small SST-format files written here
(no ../shared needed), several evaluations each, so that there is a choice to make.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import REPO, read_records

from loraft.recipe_files import load_recipe
from loraft.report import compare_runs, format_comparison
from loraft.tasks import build_task
from loraft.training import SHARED_SPLIT_NOTE, train_recipe

WORDS = {0: "awful", 1: "bad", 2: "plain", 3: "good", 4: "superb"}


def write_sst(path: Path, count: int, seed: int, poisoned: bool = False) -> Path:
    """`count` sentences whose label is the sentiment word they hold; `poisoned`: every label
    shifted by one, as if the test file's labels were wrong."""
    chooser = random.Random(seed)
    lines = ["\tid\tsentence\tsentiment"]
    for index in range(count):
        label = chooser.randrange(5)
        filler = " ".join(chooser.choice(["the", "film", "was", "quite", "a", "story"]) for _ in range(4))
        written = (label + 1) % 5 if poisoned else label
        lines.append(f"{index}\tid{index}\t {filler} {WORDS[label]} , scene {index} .\t{written}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def recipe_for(tmp_path: Path, model_dir: Path, run: str, test_file: Path, *overrides: str):
    train = write_sst(tmp_path / "train.tsv", 240, seed=1)
    return load_recipe(
        REPO / "recipes" / "sst-lora.yaml",
        [
            f"model.name={model_dir}", f"output_dir={tmp_path / run}", f"data.train={train}",
            f"data.eval={test_file}", "data.predict=null", "data.max_length=16", "method=full",
            "train.max_steps=12", "train.eval_every=3", "train.batch_size=8", "train.lr=3e-3",
            "train.precision=fp32", "eval.periodic_size=null", "eval.metric=eval_loss", *overrides,
        ],
    )  # fmt: skip


@pytest.fixture(scope="module")
def selected_runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The same run with the true test labels and with poisoned ones, validation held out."""
    tmp_path = tmp_path_factory.mktemp("selection")
    tests = {
        "true": write_sst(tmp_path / "test.tsv", 60, seed=2),
        "poisoned": write_sst(tmp_path / "test-poisoned.tsv", 60, seed=2, poisoned=True),
    }
    summaries = {}
    for name, test_file in tests.items():
        recipe = recipe_for(tmp_path, tiny_model_dir, name, test_file, "data.validation_fraction=0.25")
        summaries[name] = train_recipe(recipe).summary
    return summaries


def test_selection_never_reads_the_test_split(selected_runs: dict[str, dict]) -> None:
    """Poisoned test labels leave every periodic evaluation and the chosen checkpoint as they
    were; only the test figures change."""
    true, poisoned = selected_runs["true"], selected_runs["poisoned"]
    assert true["selection_split"] == poisoned["selection_split"] == "validation"
    assert true["validation_examples"] == 60 and true["train_examples"] == 180
    assert true["eval_examples"] == 60
    assert true["best_step"] == poisoned["best_step"] is not None
    assert true["best_eval"] == poisoned["best_eval"] and true["final_eval"] == poisoned["final_eval"]
    runs = [Path(true["run_dir"]), Path(poisoned["run_dir"])]
    evaluations = [[(r["step"], r["eval_loss"]) for r in read_records(run, "eval")] for run in runs]
    assert evaluations[0] == evaluations[1] and len(evaluations[0]) >= 4
    assert true["test_eval"]["step"] == true["best_step"]
    assert true["test_eval"]["eval_examples"] == 60
    assert true["test_eval"]["eval_loss"] != poisoned["test_eval"]["eval_loss"]
    assert true["test_eval"]["eval_accuracy"] != poisoned["test_eval"]["eval_accuracy"]


def test_compare_reports_the_test_split(selected_runs: dict[str, dict]) -> None:
    comparison = compare_runs([selected_runs["true"]["run_dir"]], "eval_loss")
    (point,) = comparison.points
    assert point.runs[0]["split"] == "test"
    assert point.mean("eval_loss") == selected_runs["true"]["test_eval"]["eval_loss"]
    assert "figures: the test split" in format_comparison(comparison)
    assert point.interval.low < point.interval.estimate < point.interval.high


def test_figures_say_which_split_what_units_and_what_the_bars_are(selected_runs: dict[str, dict]) -> None:
    """A classifier's loss is per example, the reported split is the test split, the bars are
    95% intervals, and accuracy is drawn against always guessing the majority class."""
    import matplotlib

    matplotlib.use("Agg")
    from loraft.plots import curves, frontier

    runs = [selected_runs["true"]["run_dir"]]
    axis = frontier(compare_runs(runs, "eval_loss")).axes[0]
    assert axis.get_ylabel() == "test loss (nats per example)"
    assert "95% interval over examples and seeds" in axis.get_title()
    assert (
        curves(compare_runs(runs, "eval_loss")).axes[0].get_ylabel() == "validation loss (nats per example)"
    )
    accuracy = frontier(compare_runs(runs, "eval_accuracy")).axes[0]
    assert "majority class" in [line.get_label() for line in accuracy.get_lines()]


def test_without_a_validation_split_the_run_says_so_once(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    test_file = write_sst(tmp_path / "test.tsv", 60, seed=2)
    recipe = recipe_for(tmp_path, tiny_model_dir, "shared", test_file, "data.validation_fraction=null")
    summary = train_recipe(recipe).summary
    assert capsys.readouterr().out.count(SHARED_SPLIT_NOTE) == 1
    assert summary["selection_split"] == "eval" and "test_eval" not in summary
    assert summary["validation_examples"] is None
    assert "which also selected the checkpoints" in format_comparison(compare_runs([summary["run_dir"]]))
    card = json.loads((Path(summary["run_dir"]) / "summary.json").read_text())
    assert card["best_eval"] == summary["best_eval"]


def test_the_validation_split_is_the_same_at_every_training_size(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Held out before `data.train_size` samples the rest: learning curves share one validation
    set, and no validation row is trained on."""
    test_file = write_sst(tmp_path / "test.tsv", 60, seed=2)
    validations, trains = [], []
    for size in (40, 120):
        recipe = recipe_for(
            tmp_path,
            tiny_model_dir,
            "rows",
            test_file,
            "data.validation_fraction=0.25",
            f"data.train_size={size}",
        )
        task = build_task(recipe, [])
        train, _ = task.rows()
        validations.append(task.validation_rows().to_list())
        trains.append(train.to_list())
    assert validations[0] == validations[1] and len(validations[0]) == 60
    assert len(trains[0]) == 40 and len(trains[1]) == 120
    assert not {json.dumps(row) for row in trains[1]} & {json.dumps(row) for row in validations[0]}


def test_tune_keeps_the_validation_best_value_and_runs_its_seeds(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from test_report import in_process

    from loraft.errors import LoraftError
    from loraft.sweep import parse_grid, run_tuned_sweep, swept_runs

    test_file = write_sst(tmp_path / "test.tsv", 60, seed=2)
    train = write_sst(tmp_path / "train.tsv", 240, seed=1)
    overrides = [
        f"model.name={tiny_model_dir}", f"data.train={train}", f"data.eval={test_file}", "data.predict=null",
        "data.max_length=16", "method=full", "train.max_steps=6", "train.eval_every=3", "train.batch_size=8",
        "train.precision=fp32", "eval.periodic_size=null", "eval.metric=eval_loss",
        "data.validation_fraction=0.25",
    ]  # fmt: skip
    recipe, lines = REPO / "recipes" / "sst-lora.yaml", []
    tune = parse_grid(["train.lr=1e-5,3e-3"])
    out = tmp_path / "sweep"
    points, tuned = run_tuned_sweep(
        recipe, overrides, [], tune, 2, out, launch=in_process, report=lines.append
    )
    (choice,) = tuned
    first_seed, scores = load_recipe(recipe).train.seed, {}  # the tuning runs: lr -> validation loss
    for folder in out.iterdir():
        if (folder / "summary.json").is_file():
            run_recipe = load_recipe(folder / "recipe.yaml")
            if run_recipe.train.seed == first_seed:
                scores[run_recipe.train.lr] = json.loads((folder / "summary.json").read_text())["best_eval"][
                    "eval_loss"
                ]
    assert sorted(scores) == [1e-5, 3e-3] and len(set(scores.values())) == 2
    assert float(choice.chosen[0]) == min(scores, key=scores.get)
    assert choice.scores == [scores[1e-5], scores[3e-3]]
    assert [point.status for point in points] == ["skipped", "finished"]  # seed 42 is the tuning run
    assert all(f"train.lr={choice.chosen[0]}" in point.overrides for point in points)
    comparison = compare_runs([out / point.name for point in points])
    assert [len(point.runs) for point in comparison.points] == [2]
    assert swept_runs([out]) == [out / point.name for point in points]  # not the other value's run
    assert json.loads((out / "tuning.json").read_text())[0]["chosen"] == choice.chosen
    assert any("train.lr=" in line and "the best validation eval_loss" in line for line in lines)
    without = [*overrides, "data.validation_fraction=null"]
    with pytest.raises(LoraftError, match="--tune: needs data.validation_fraction"):
        run_tuned_sweep(recipe, without, [], tune, 1, tmp_path / "refused", launch=in_process)
    with pytest.raises(LoraftError, match="--tune train.lrr=1: "):
        run_tuned_sweep(
            recipe, overrides, [], parse_grid(["train.lrr=1"]), 1, tmp_path / "refused", launch=in_process
        )
    with pytest.raises(LoraftError, match="--tune train.lr: also a --grid key"):
        run_tuned_sweep(recipe, overrides, tune, tune, 1, tmp_path / "refused", launch=in_process)


@pytest.mark.matrix  # three runs, each in its own process: in .ci/run, not the README command
def test_the_sweep_command_tunes_and_writes_the_tuning_report(
    tiny_model_dir: Path, tmp_path: Path, loraft
) -> None:
    test_file = write_sst(tmp_path / "test.tsv", 60, seed=2)
    train = write_sst(tmp_path / "train.tsv", 240, seed=1)
    out = tmp_path / "sweep"
    code, stdout, stderr = loraft(
        "sweep", REPO / "recipes" / "sst-lora.yaml",
        f"model.name={tiny_model_dir}", f"data.train={train}", f"data.eval={test_file}", "data.predict=null",
        "data.max_length=16", "method=full", "train.max_steps=4", "train.eval_every=2",
        "train.precision=fp32", "eval.periodic_size=null", "--tune", "train.lr=1e-5,3e-3", "--seeds", "2",
        "--out", out,
    )  # fmt: skip
    assert code == 0, stderr[-2000:]
    assert "recommendation: none: only full fine-tuning among these" in stdout
    tuning = (out / "tuning.md").read_text()
    assert tuning.count("**yes**") == 1 and "train.lr=1e-5" in tuning and "train.lr=3e-3" in tuning
    assert (out / "tuning.png").read_bytes()[:4] == b"\x89PNG"
    assert "Figures: the test split" in (out / "comparison.md").read_text()


def test_a_value_chosen_at_the_edge_of_its_grid_is_flagged(tmp_path: Path) -> None:
    from loraft.report import write_tuning
    from loraft.sweep import TunedPoint

    def choice(chosen: str, tried: tuple[str, ...] = ("1e-3", "3e-3", "1e-2")) -> TunedPoint:
        return TunedPoint("", ["train.lr"], [[v] for v in tried], [0.1] * len(tried), [chosen], "eval_loss")

    assert choice("1e-2").edges() == ["the highest train.lr tried"]
    assert choice("1e-3").edges() == ["the lowest train.lr tried"]
    assert choice("3e-3").edges() == []
    assert choice("1e-3", ("1e-3", "1e-2")).edges() == []  # two values: no inside to be in
    named = TunedPoint("", ["lora.init"], [["gaussian"], ["pissa"], ["olora"]], [0.1] * 3, ["gaussian"], "x")
    assert named.edges() == []  # not numbers: no order
    write_tuning([choice("1e-2"), choice("3e-3")], tmp_path)
    tuning = (tmp_path / "tuning.md").read_text()
    assert tuning.count("**yes** (the highest train.lr tried)") == 1 and tuning.count("**yes**") == 2
