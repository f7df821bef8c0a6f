"""The run directory: a self-describing record of one run.

recipe.yaml        the fully resolved recipe
metrics.jsonl      one JSON object per logged step and per evaluation, each with `step`
summary.json       parameters, speed, memory, final and best metrics (written last)
base_model/        a from-scratch base model (LoRA/head runs need it to reload)
checkpoints/best/  the checkpoint with the best `eval.metric`
checkpoints/last/  the latest checkpoint
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from loraft.errors import LoraftError
from loraft.recipe import Recipe, load_recipe


class RunDirectory:
    """Paths and files of one run; never replaces an existing run unless told to."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def check_available(cls, path: str | Path, overwrite: bool = False) -> RunDirectory:
        """Fail early when `path` cannot become this run's directory; deletes nothing.

        A non-empty directory is refused unless `overwrite`, and even then only if it is a
        loraft run (it has a recipe.yaml): `--overwrite` never deletes anything else.
        """
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise LoraftError(f"output_dir: {run.path} is a file, not a directory")
        if run.path.is_dir() and any(run.path.iterdir()):
            if not run.recipe_path.is_file():
                raise LoraftError(
                    f"output_dir: {run.path} is not empty and is not a loraft run; "
                    "choose another output_dir=... (loraft never deletes it)"
                )
            if not overwrite:
                state = "a finished run" if run.summary_path.exists() else "an unfinished run"
                raise LoraftError(
                    f"{run.path}: {state} is already there; pass --overwrite to replace it "
                    "or choose another output_dir=..."
                )
        return run

    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False) -> RunDirectory:
        """A fresh run directory, replacing an earlier run only if `overwrite` (see above)."""
        run = cls.check_available(path, overwrite)
        if run.path.is_dir() and any(run.path.iterdir()):
            shutil.rmtree(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDirectory:
        """An existing run directory (for eval, generate, compare)."""
        run = cls(path)
        if not run.recipe_path.is_file():
            raise LoraftError(f"{run.path}: not a loraft run directory (no recipe.yaml)")
        return run

    @property
    def recipe_path(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def base_model_path(self) -> Path:
        return self.path / "base_model"

    def checkpoint(self, name: str) -> Path:
        return self.path / "checkpoints" / name

    def write_recipe(self, recipe: Recipe) -> None:
        self.recipe_path.write_text(recipe.to_yaml(), encoding="utf-8")

    def read_recipe(self, overrides: list[str] | None = None) -> Recipe:
        return load_recipe(self.recipe_path, overrides)

    def log(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    def read_summary(self) -> dict[str, Any]:
        if not self.summary_path.is_file():
            raise LoraftError(f"{self.path}: the run has not finished (no summary.json)")
        return json.loads(self.summary_path.read_text(encoding="utf-8"))
