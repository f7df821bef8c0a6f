"""Experiment trackers besides metrics.jsonl: TensorBoard and Weights & Biases (optional extras).

accelerate's tracker classes do the writing. Each tracker receives the resolved recipe and the
parameter counts as its configuration, every logged step and evaluation, and the final summary.
A tracker that fails prints one warning and is dropped: the run and metrics.jsonl go on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from loraft.errors import LoraftError

EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # tracker -> module to import


def require_trackers(names: list[str]) -> None:
    """An extra logger must be installed before anything runs."""
    for name in names:
        if importlib.util.find_spec(EXTRAS[name]) is None:
            raise LoraftError(f"train.trackers: {name} is not installed; pip install 'loraft[{name}]'")


def flat_scalars(tree: dict[str, Any], prefix: str = "") -> dict[str, int | float | str | bool]:
    """Nested settings as `a.b: scalar` (lists and nulls as text): what trackers accept."""
    flat: dict[str, int | float | str | bool] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_scalars(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


class Trackers:
    """The recipe's trackers on the main process (an empty set elsewhere)."""

    def __init__(self, names: list[str], run_dir: Path, run_name: str, created: str) -> None:
        self.trackers = []
        for name in names:
            self._guard(
                name, lambda name=name: self.trackers.append(_start(name, run_dir, run_name, created))
            )

    def start(self, config: dict[str, Any]) -> None:
        for tracker in list(self.trackers):
            self._guard(
                tracker.name, lambda t=tracker: t.store_init_configuration(flat_scalars(config)), tracker
            )

    def log(self, record: dict[str, Any]) -> None:
        values = {k: v for k, v in record.items() if isinstance(v, int | float) and k != "step"}
        for tracker in list(self.trackers):
            self._guard(tracker.name, lambda t=tracker: t.log(values, step=record["step"]), tracker)

    def finish(self, summary: dict[str, Any]) -> None:
        scalars = {f"summary/{k}": v for k, v in flat_scalars(summary).items() if not isinstance(v, str)}
        for tracker in list(self.trackers):
            self._guard(tracker.name, lambda t=tracker: _finish(t, scalars, summary["steps"]), tracker)
        self.trackers = []

    def close(self) -> None:
        """End the trackers without a summary (an interrupted run)."""
        for tracker in list(self.trackers):
            self._guard(tracker.name, tracker.finish, tracker)
        self.trackers = []

    def _guard(self, name: str, action, tracker=None) -> None:
        try:
            action()
        except Exception as error:  # a logger must never end a training run
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            print(f"warning: tracker {name} failed and is turned off: {reason}", file=sys.stderr)
            if tracker in self.trackers:
                self.trackers.remove(tracker)


def _start(name: str, run_dir: Path, run_name: str, created: str):
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    if name == "tensorboard":
        tracker = TensorBoardTracker(run_name="tensorboard", logging_dir=str(run_dir))
    else:
        # One W&B run per run directory, the same id when the run is resumed.
        run_id = hashlib.sha1(f"{run_dir.resolve()}|{created}".encode()).hexdigest()[:16]
        project = os.environ.get("WANDB_PROJECT", "loraft")
        tracker = WandBTracker(project, name=run_name, dir=str(run_dir), id=run_id, resume="allow")
    tracker.start()
    return tracker


def _finish(tracker, scalars: dict[str, Any], step: int) -> None:
    tracker.log(scalars, step=step)
    if tracker.name == "wandb":
        tracker.run.summary.update(scalars)
    tracker.finish()
