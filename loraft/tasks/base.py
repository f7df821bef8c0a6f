"""What every task provides to the trainer, and the shared way tables become train/eval rows.

A task is the only place that knows what a task is: how rows become tokenized batches, what
the loss is, and how it is evaluated. The trainer calls the methods below and nothing else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import datasets
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from loraft.data import find_data_file, load_hub_split, read_table, require_data_file
from loraft.errors import LoraftError
from loraft.recipe import Recipe

Batch = dict[str, torch.Tensor]


class Task(ABC):
    """One kind of training problem. Subclasses set `kind` and implement the abstract methods."""

    kind: ClassVar[str]  # "causal_lm" or "classification": picks the model head
    default_metric: ClassVar[str] = "eval_loss"
    metric_names: ClassVar[tuple[str, ...]] = ("eval_loss",)  # what `evaluate` returns

    def __init__(self, recipe: Recipe, roots: list[Path]) -> None:
        self.recipe = recipe
        self.roots = roots
        self._rows: tuple[datasets.Dataset, datasets.Dataset] | None = None

    def rows(self) -> tuple[datasets.Dataset, datasets.Dataset]:
        """`load_rows`, read once: training and generative evaluation share the same rows."""
        if self._rows is None:
            self._rows = self.load_rows()
        return self._rows

    def model_options(self) -> dict[str, Any]:
        """Extra arguments for building the model (e.g. the number of labels)."""
        return {}

    # --- data ---------------------------------------------------------------------------

    def load_rows(self) -> tuple[datasets.Dataset, datasets.Dataset]:
        """Train and eval rows in the task's own fields, sized as the recipe asks."""
        train_table, train_where, eval_table, eval_where = self._read_tables()
        train = self.rows_from_table(train_table, train_where)
        if eval_table is None:
            split = train.train_test_split(
                test_size=self.recipe.data.eval_fraction, seed=self.recipe.train.seed
            )
            train, evaluation = split["train"], split["test"]
        else:
            evaluation = self.rows_from_table(eval_table, eval_where)
        data, seed = self.recipe.data, self.recipe.train.seed
        return _sample(train, data.train_size, seed), _sample(evaluation, data.eval_size, seed)

    def rows_from_table(self, table: datasets.Dataset, where: str) -> datasets.Dataset:
        """Map a raw table to the task's fields, with one-line errors for bad rows.

        Table-based tasks implement this; tasks with their own file format override
        `load_rows` instead.
        """
        raise NotImplementedError(f"{type(self).__name__} does not read tables")

    def texts_for_tokenizer(self, rows: datasets.Dataset) -> Iterator[str]:
        """Texts a from-scratch tokenizer is trained on."""
        for row in rows:
            yield " ".join(str(value) for value in row.values() if isinstance(value, str))

    @abstractmethod
    def tokenize(self, rows: datasets.Dataset, tokenizer: PreTrainedTokenizerBase) -> datasets.Dataset:
        """Turn rows into model features (input ids and targets)."""

    @abstractmethod
    def collate(self, features: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase) -> Batch:
        """Pad a list of features into a batch of tensors."""

    # --- training and evaluation ----------------------------------------------------------

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """The training loss of one micro-batch."""
        return model(**batch).loss

    @abstractmethod
    def evaluate(self, model: torch.nn.Module, loader: DataLoader, accelerator: Accelerator) -> dict:
        """Metrics on the eval split, named `eval_*`; runs under inference mode."""

    def final_evaluation(
        self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, run_dir: Path
    ) -> dict:
        """Extra end-of-run metrics (generation scores, predictions files); none by default."""
        return {}

    # --- helpers ----------------------------------------------------------------------------

    def _read_tables(self):
        """The train and eval tables: local files when present, else the recipe's hub dataset."""
        data = self.recipe.data
        train_path = find_data_file(data.train, self.roots) if data.train else None
        if train_path is None and data.hub is not None:
            missing = f"'{data.train}' is not under the data roots, " if data.train else ""
            train = load_hub_split(data.hub, data.hub.train_split, missing)
            evaluation = load_hub_split(data.hub, data.hub.eval_split, missing)
            return (
                train,
                f"{data.hub.id}:{data.hub.train_split}",
                evaluation,
                (f"{data.hub.id}:{data.hub.eval_split}"),
            )
        if not data.train:
            raise LoraftError("data.train: no training file given (and no data.hub)")
        train_path = require_data_file("data.train", data.train, self.roots)
        train = read_table(train_path, self.column_names())
        if not data.eval:
            return train, str(train_path), None, None
        eval_path = require_data_file("data.eval", data.eval, self.roots)
        return train, str(train_path), read_table(eval_path, self.column_names()), str(eval_path)

    def column_names(self) -> list[str] | None:
        """Names for the columns of header-less files; None when files have a header."""
        return None


def _sample(rows: datasets.Dataset, size: int | None, seed: int) -> datasets.Dataset:
    """A seeded random subset of `size` rows (all of them when size is None or larger)."""
    if size is None or size >= len(rows):
        return rows
    return rows.shuffle(seed=seed).select(range(size))
