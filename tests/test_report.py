"""`loraft sweep` and `loraft compare`: the grid, skip and resume, failures, seeds grouped,
ratios to full fine-tuning, runs that cannot be compared, tables and figures."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import statistics
from pathlib import Path

import pytest
from conftest import RECIPES

from loraft.cli import run as run_cli
from loraft.errors import LoraftError
from loraft.plots import frontier, series_style, write_plots
from loraft.report import compare_runs, format_comparison, recommendation, table_rows, write_tables
from loraft.run_dir import RunDirectory
from loraft.sweep import parse_grid, run_sweep, sweep_points, swept_runs

GRID = parse_grid(["method=lora,full", "lora.r=1,2"])


def in_process(arguments: list[str]) -> tuple[int, str]:
    """The sweep's launcher, in this process (the real one starts `python -m loraft`)."""
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        code = run_cli(arguments)
    return code, errors.getvalue().strip().splitlines()[-1].removeprefix("error: ") if code else ""


def quick(tiny_model_dir: Path) -> list[str]:
    return [
        f"model.name={tiny_model_dir}",
        "train.precision=fp32",
        "train.max_steps=4",
        "train.eval_every=2",
        "train.lr=1e-2",
        "data.max_length=48",
        "eval.generate=false",
    ]


@pytest.fixture(scope="module")
def sweep(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("sweep")
    points = run_sweep(
        RECIPES / "joker.yaml", quick(tiny_model_dir), GRID, 2, out, launch=in_process, report=print
    )
    return out, points


def test_the_grid_runs_each_distinct_point_for_each_seed(sweep: tuple[Path, list]) -> None:
    out, points = sweep
    names = sorted(point.name for point in points)
    assert names == sorted(f"joker_{m}_seed-{s}" for m in ["lora_r-1", "lora_r-2", "full"] for s in (42, 43))
    assert {point.status for point in points} == {"finished"}
    recorded = json.loads((out / "sweep.json").read_text())
    assert [row["status"] for row in recorded] == ["finished"] * 6


def test_a_rank_with_full_fine_tuning_runs_once_with_a_note(tiny_model_dir: Path) -> None:
    points, notes = sweep_points(RECIPES / "joker.yaml", quick(tiny_model_dir), GRID, 1)
    assert len(points) == 3 and notes == [
        "method=full lora.r=2 is the same run as method=full lora.r=1 "
        "(lora.* means nothing for method full): run once"
    ]
    assert parse_grid(["lora.target_modules=[c_attn],[c_attn,c_proj]"]) == [
        ("lora.target_modules", ["[c_attn]", "[c_attn,c_proj]"])
    ]
    with pytest.raises(LoraftError, match="--grid lora.r=0: .*lora.r"):
        sweep_points(RECIPES / "joker.yaml", [], parse_grid(["lora.r=0"]), 1)
    # a fixed lora setting goes to the lora points only; without a method grid it is an error
    points, _ = sweep_points(RECIPES / "joker.yaml", ["lora.alpha=8"], GRID, 1)
    assert [("lora.alpha=8" in point.overrides) for point in points] == [True, True, False]
    with pytest.raises(LoraftError, match="lora.alpha=8'?: lora.\\* belongs to method lora"):
        sweep_points(RECIPES / "joker-full.yaml", ["lora.alpha=8"], parse_grid(["train.lr=1e-3"]), 1)


def test_the_report_groups_seeds_and_measures_against_full(sweep: tuple[Path, list], tmp_path: Path) -> None:
    out, points = sweep
    comparison = compare_runs(sorted(out / point.name for point in points))
    rows = {row["point"]: row for row in table_rows(comparison)}
    assert (
        set(rows) == {"lora r=1 attention", "lora r=2 attention", "full"} and comparison.metric == "eval_loss"
    )
    for label, row in rows.items():
        summaries = [
            json.loads((Path(run["run"]) / "summary.json").read_text())
            for point in comparison.points
            if point.label == label
            for run in point.runs
        ]
        losses = [summary["best_eval"]["eval_loss"] for summary in summaries]
        assert row["runs"] == 2 and row["eval_loss"] == pytest.approx(statistics.fmean(losses))
        assert row["eval_loss_std"] == pytest.approx(statistics.stdev(losses))
        assert row["peak_memory_mb"] == pytest.approx(
            statistics.fmean(s["peak_memory_mb"] for s in summaries)
        )
    full, lora = rows["full"], rows["lora r=1 attention"]
    assert lora["trainable_params_vs_full"] == pytest.approx(
        lora["trainable_params"] / full["trainable_params"]
    )
    assert lora["eval_loss_minus_full"] == pytest.approx(lora["eval_loss"] - full["eval_loss"])
    assert full["wall_s_vs_full"] == pytest.approx(1.0)
    assert max(len(line) for line in format_comparison(comparison).splitlines()) <= 100
    written = write_tables(comparison, tmp_path) + write_plots(comparison, tmp_path)
    assert [path.name for path in written] == [
        "comparison.csv",
        "comparison.md",
        "frontier.png",
        "curves.png",
        "resources.png",
    ]
    for figure in written[2:]:
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < figure.stat().st_size < 200_000
    with (tmp_path / "comparison.csv").open() as stream:
        assert len(list(csv.DictReader(stream))) == 3
    assert "| lora r=2 attention | 2 |" in (tmp_path / "comparison.md").read_text()
    with pytest.raises(LoraftError, match="--format: 'bmp' is not one of png, svg, pdf"):
        write_plots(comparison, tmp_path, "bmp")


def test_runs_that_cannot_be_compared_are_named_and_left_out(
    sweep: tuple[Path, list], tiny_model_dir: Path, tmp_path: Path
) -> None:
    out, points = sweep
    unfinished = RunDirectory.create(tmp_path / "unfinished")
    unfinished.write_recipe(RunDirectory(out / points[0].name).read_recipe())
    other_task = tmp_path / "classifier"
    data = tmp_path / "d.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"text {i}\t{i % 2}\n" for i in range(20)))
    assert (
        in_process(
            [
                "train",
                str(RECIPES / "sst-lora.yaml"),
                *quick(tiny_model_dir),
                f"output_dir={other_task}",
                f"data.train={data}",
                "data.eval=null",
                "data.predict=null",
                "data.columns={text: sentence}",
                "data.labels=['0', '1']",
                "eval.metric=eval_loss",
            ]
        )[0]
        == 0
    )
    comparison = compare_runs([out / points[0].name, unfinished.path, other_task, tmp_path / "nothing"])
    assert [point.label for point in comparison.points] == ["lora r=1 attention"]
    reasons = "\n".join(comparison.left_out)
    assert f"{unfinished.path}: unfinished (no summary.json)" in reasons
    assert f"{other_task}: the task or its evaluation split differs from the other runs'" in reasons
    assert f"{tmp_path / 'nothing'}: not a loraft run" in reasons


def test_runs_on_another_base_model_are_left_out(
    sweep: tuple[Path, list], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The same setting on another base (here: the same files, one weight changed) is not a
    seed of the point, and full fine-tuning on one base is no baseline for the other."""
    out, _ = sweep
    other_base = tmp_path / "other-base"
    shutil.copytree(tiny_model_dir, other_base)
    from safetensors.torch import load_file, save_file

    weights = load_file(other_base / "model.safetensors")
    first = sorted(weights)[0]
    weights[first] = weights[first] + 1
    save_file(weights, other_base / "model.safetensors", metadata={"format": "pt"})
    elsewhere = tmp_path / "elsewhere"
    arguments = ["train", str(RECIPES / "joker.yaml"), *quick(tiny_model_dir), "lora.r=1"]
    arguments[arguments.index(f"model.name={tiny_model_dir}")] = f"model.name={other_base}"
    assert in_process([*arguments, f"output_dir={elsewhere}", "train.seed=42"])[0] == 0
    runs = [out / "joker_lora_r-1_seed-42", out / "joker_full_seed-42", elsewhere]
    comparison = compare_runs(runs)
    assert [len(point.runs) for point in comparison.points] == [1, 1]
    (reason,) = comparison.left_out
    assert reason.startswith(
        f"{elsewhere}: the base model differs from the other runs' ({other_base}, weights "
    )
    moved = tmp_path / "moved"  # the same weights in another folder are the same base
    shutil.copytree(tiny_model_dir, moved)
    arguments[arguments.index(f"model.name={other_base}")] = f"model.name={moved}"
    assert in_process([*arguments, f"output_dir={tmp_path / 'renamed'}", "train.seed=7"])[0] == 0
    together = compare_runs([*runs[:2], tmp_path / "renamed"])
    assert together.left_out == [] and len(together.points) == 3  # model.name is part of what a point is


def test_points_that_share_a_label_are_told_apart_and_one_run_shows_no_spread(
    sweep: tuple[Path, list], tiny_model_dir: Path, tmp_path: Path
) -> None:
    out, _ = sweep
    lower = tmp_path / "lower-lr"
    arguments = ["train", str(RECIPES / "joker.yaml"), *quick(tiny_model_dir), "lora.r=1", "train.lr=5e-3"]
    assert in_process([*arguments, f"output_dir={lower}"])[0] == 0
    comparison = compare_runs([out / "joker_lora_r-1_seed-42", lower])
    assert sorted(point.label for point in comparison.points) == [
        "lora r=1 attention train.lr=0.005",
        "lora r=1 attention train.lr=0.01",
    ]
    table = format_comparison(comparison)
    assert "±" not in table and "no full fine-tuning run among these" in table


def test_a_rerun_skips_finished_points_resumes_or_restarts_the_others_and_survives_a_failure(
    sweep: tuple[Path, list], tiny_model_dir: Path, tmp_path: Path
) -> None:
    out, _ = sweep
    grid = parse_grid(["train.lr=1e-2,1e9"])  # 1e9: the loss turns NaN, that point fails
    first = run_sweep(
        RECIPES / "joker.yaml",
        quick(tiny_model_dir)[:4]
        + ["data.max_length=48", "eval.generate=false", "train.max_grad_norm=null", "train.eval_every=1"],
        grid,
        1,
        tmp_path,
        launch=in_process,
    )
    assert [point.status for point in first] == ["finished", "failed"]
    assert first[1].message.startswith("step ") and "is nan" in first[1].message
    again = run_sweep(
        RECIPES / "joker.yaml",
        quick(tiny_model_dir)[:4]
        + ["data.max_length=48", "eval.generate=false", "train.max_grad_norm=null", "train.eval_every=1"],
        grid,
        1,
        tmp_path,
        launch=in_process,
    )
    assert [point.status for point in again] == ["skipped", "failed"]
    resumable = RunDirectory(out / "joker_full_seed-43")
    resumable.summary_path.unlink()  # killed after its last state: it resumes
    restartable = RunDirectory(out / "joker_full_seed-42")
    restartable.summary_path.unlink()
    shutil.rmtree(restartable.train_state_path)  # killed before its first state: it starts again
    calls = []

    def recording(arguments: list[str]) -> tuple[int, str]:
        calls.append(arguments)
        return in_process(arguments)

    points = run_sweep(RECIPES / "joker.yaml", quick(tiny_model_dir), GRID, 2, out, launch=recording)
    assert len(calls) == 2 and all("train.resume=auto" in call for call in calls)
    assert [point.status for point in points].count("finished") == 2
    assert resumable.is_finished() and restartable.is_finished()


def test_a_second_sweep_on_one_folder_is_refused(tmp_path: Path) -> None:
    from loraft.errors import LoraftError
    from loraft.sweep import hold_sweep_lock

    held = hold_sweep_lock(tmp_path)
    with pytest.raises(LoraftError, match="another loraft sweep is running in"):
        hold_sweep_lock(tmp_path)
    held.close()
    hold_sweep_lock(tmp_path).close()  # free again once the first one is gone


def test_a_killed_sweep_takes_its_child_with_it(tmp_path: Path) -> None:
    """The child of a sweep gets SIGTERM when the sweep dies (it then saves and stops)."""
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import subprocess, sys; from loraft.sweep import die_with_parent; "
        "sleeper = [sys.executable, '-c', 'import time; time.sleep(60)']; "
        "child = subprocess.Popen(sleeper, preexec_fn=die_with_parent); "
        "print(child.pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the child outlived the sweep")


@pytest.mark.matrix  # 5 s of six runs: in .ci/run, not the README command
def test_a_sweep_over_methods_draws_one_frontier_line_per_method(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Every PEFT method and LoRA variant in one grid; what means nothing for a method runs once."""
    grid = parse_grid(
        [
            "method=lora,ia3,vera,adalora,prompt_tuning,full",
            "lora.use_dora=false,true",
            "lora.r=1,2",
        ]
    )
    settings = [*quick(tiny_model_dir), "vera.r=8", "adalora.init_r=2", "adalora.target_r=1"]
    points = run_sweep(RECIPES / "joker.yaml", settings, grid, 1, tmp_path, launch=in_process, report=print)
    assert len(points) == 9 and {point.status for point in points} == {"finished"}
    comparison = compare_runs(sorted(tmp_path / point.name for point in points))
    labels = {point.label for point in comparison.points}
    assert labels == {
        "lora r=1 attention",
        "lora r=2 attention",
        "dora r=1 attention",
        "dora r=2 attention",
        "ia3 default",
        "vera r=8 default",
        "adalora r=2->1 default",
        "prompt_tuning 20 tokens random",
        "full",
    }
    _, legend = frontier(comparison).axes[0].get_legend_handles_labels()
    assert sorted(legend) == sorted(
        [
            "lora attention",
            "dora attention",
            "ia3 default",
            "vera default",
            "adalora default",
            "prompt_tuning random",
            "full fine-tuning",
        ]
    )
    rows = {row["point"]: row for row in table_rows(comparison)}
    assert rows["ia3 default"]["trainable_params"] == 2 * (3 * 64 + 4 * 64)  # c_attn out, c_proj in
    assert all(row["trainable_params_vs_full"] < 0.1 for label, row in rows.items() if label != "full")
    assert rows["dora r=1 attention"]["trainable_params"] > rows["lora r=1 attention"]["trainable_params"]


def test_the_issues_method_sweep_lists_its_points_with_their_counts(loraft) -> None:
    code, out, err = loraft(
        "sweep",
        "recipes/sst-lora.yaml",
        "--grid",
        "method=lora,ia3,full",
        "--grid",
        "lora.use_dora=false,true",
        "--dry-run",
    )
    assert code == 0, err
    listed = [line for line in out.splitlines() if " trainable (" in line]
    assert [line.split(":")[1].split(" trainable")[0].strip() for line in listed] == [
        "814,848",  # lora r=8 on c_attn + the head
        "860,928",  # dora: one magnitude per output more
        "68,352",
        "124,443,648",
    ]


def test_a_training_size_grid_draws_learning_curves(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`--grid data.train_size=...`: one learning curve a method (metric against training
    examples), and no frontier line joins two training sizes."""
    from loraft.plots import learning_curves

    points = []
    for size, lr in (("20", "1e-2"), ("40", "3e-3")):  # each size at its own rate, as --tune picks
        grid = parse_grid(["method=lora,full", f"data.train_size={size}"])
        overrides = [*quick(tiny_model_dir), f"train.lr={lr}"]
        points += run_sweep(
            RECIPES / "joker.yaml", overrides, grid, 1, tmp_path, launch=in_process, report=print
        )
    comparison = compare_runs([tmp_path / point.name for point in points])
    assert comparison.full.train_size == 40  # measured against full fine-tuning on the most examples
    rows = {row["point"]: row for row in table_rows(comparison)}
    smaller_full = next(row for label, row in rows.items() if label.startswith("full") and "20" in label)
    assert not smaller_full["baseline"]  # full on 20 examples is measured against full on 40
    assert smaller_full["eval_loss_minus_full"] is not None
    assert [row["baseline"] for row in rows.values()].count(True) == 1
    assert not recommendation(comparison).startswith("recommendation: full")
    assert sorted(point.line for point in comparison.points if point.line) == [
        "lora attention, 20 examples",
        "lora attention, 40 examples",
    ]
    axis = learning_curves(comparison).axes[0]
    drawn = {bars.get_label(): list(bars.lines[0].get_xdata()) for bars in axis.containers}
    assert drawn == {"full": [20, 40], "lora r=4 attention": [20, 40]}  # one line across the rates
    assert axis.get_xlabel() == "training examples (log scale)"
    assert "learning.png" in [path.name for path in write_plots(comparison, tmp_path / "figures")]


def test_a_sweep_folder_stands_for_its_runs_and_a_bad_record_is_one_line(sweep, tmp_path: Path) -> None:
    """`loraft compare SWEEP_DIR` compares the runs its sweep.json names; a run folder is itself;
    a record that is not a list of plain folder names is refused, naming the file."""
    out, points = sweep
    assert swept_runs([out, out / points[0].name]) == [*(out / p.name for p in points), out / points[0].name]
    record = tmp_path / "sweep.json"
    bad = {"{": "not a sweep record", '[{"name": "../up"}]': "point name '../up' is not a folder name"}
    for text, why in bad.items():
        record.write_text(text)
        with pytest.raises(LoraftError, match=f"{record}: {why}"):
            swept_runs([tmp_path])


@pytest.mark.parametrize("count", [5, 13, 20])
def test_no_two_series_share_a_colour_and_marker(count: int) -> None:
    styles = {
        (str(style["color"]), style["marker"]) for style in map(series_style, range(count), [count] * count)
    }
    assert len(styles) == count
    assert all(style[0] != "black" for style in styles)  # black is full fine-tuning's
