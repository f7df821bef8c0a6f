"""Trackers receive the recipe, the parameter counts and ratio, every metric and the summary;
a failing tracker is a warning, never the end of a run. W&B runs offline and is read back from
its own file; TensorBoard from its event files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import joker_recipe, read_records

from loraft.training import train_recipe


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline `.wandb` file (a LevelDB-style log of 32 KiB blocks:
    each chunk is a 4-byte checksum, a 2-byte length, a 1-byte type, then the bytes)."""
    from wandb.proto import wandb_internal_pb2

    data, position, pending, records = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block ends in zero padding
            position += 32768 - position % 32768
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def key(item) -> str:
    return item.key or "/".join(item.nested_key)


def test_tensorboard_and_wandb_receive_the_ratio_the_metrics_and_the_summary(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    overrides = [
        "train.max_steps=4",
        "train.log_every=1",
        "train.eval_every=2",
        "train.trackers=[tensorboard, wandb]",
    ]
    summary = train_recipe(joker_recipe(tiny_model_dir, run, *overrides)).summary

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert [event.step for event in events.Scalars("loss")] == [1, 2, 3, 4]
    assert [event.step for event in events.Scalars("eval_loss")] == [0, 2, 4]
    assert events.Scalars("eval_loss")[-1].value == pytest.approx(summary["final_eval"]["eval_loss"])
    hparams = yaml.safe_load(next((run / "tensorboard").glob("*/hparams.yml")).read_text())
    assert hparams["trainable_pct"] == pytest.approx(summary["trainable_pct"]) and hparams["lora.r"] == 4

    records = wandb_records(next((run / "wandb").glob("offline-run-*/run-*.wandb")))
    config = {key(item): item.value_json for r in records if r.HasField("config") for item in r.config.update}
    assert float(config["trainable_pct"]) == pytest.approx(summary["trainable_pct"])
    assert config["trainable_params"] == "2048" and config["lora.target_modules"] == '"[\\"attention\\"]"'
    history = [{key(i): i.value_json for i in r.history.item} for r in records if r.HasField("history")]
    losses = [record["loss"] for record in read_records(run, "train")]
    assert [float(row["loss"]) for row in history if "loss" in row] == pytest.approx(losses)
    assert [int(row["_step"]) for row in history if "eval_loss" in row] == [0, 2, 4]
    summaries = {key(i) for r in records if r.HasField("summary") for i in r.summary.update}
    assert {"summary/trainable_pct", "summary/train_tokens_per_s", "summary/best_eval.eval_loss"} <= summaries


def test_a_failing_tracker_is_a_warning_and_the_run_goes_on(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("tensorboard")
    from accelerate.tracking import TensorBoardTracker

    def broken(self, values, step=None, **kwargs):
        raise RuntimeError("disk full")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TensorBoardTracker, "log", broken)
        summary = train_recipe(
            joker_recipe(
                tiny_model_dir, tmp_path / "run", "train.max_steps=2", "train.trackers=[tensorboard]"
            )
        ).summary
    assert summary["steps"] == 2
    assert "warning: tracker tensorboard failed and is turned off: disk full" in capsys.readouterr().err
