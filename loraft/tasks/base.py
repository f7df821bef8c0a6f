"""What every task provides to the trainer, and the shared way tables become train/eval rows.

A task is the only place that knows what a task is: which recipe fields it needs, how rows
become tokenized batches, what a target is, what the loss and the metrics are. The trainer
calls the methods below and nothing else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from loraft.data import (
    Table,
    find_data_file,
    load_hub_split,
    read_table,
    require_data_file,
    require_hub_copy,
    to_dataset,
)
from loraft.errors import LoraftError
from loraft.recipe import Recipe

if TYPE_CHECKING:  # task modules import torch inside functions: `loraft validate` stays fast
    import torch
    from transformers import PreTrainedTokenizerBase

Batch = dict[str, "torch.Tensor"]
IGNORE_INDEX = -100  # label value the loss skips (prompt tokens, padding, placeholders)
OPTIONAL_DATA_FIELDS = ("template", "labels", "predict", "prompts", "format", "chat_template", "train_on")
PREVIEW_ROWS = 50  # rows per file that `loraft validate` reads


class Task(ABC):
    """One kind of training problem. Subclasses set `kind` and implement the abstract methods."""

    kind: ClassVar[str]  # "causal_lm" or "classification": picks the model head
    default_metric: ClassVar[str] = "eval_loss"
    metric_names: ClassVar[tuple[str, ...]] = ("eval_loss",)  # what `evaluate` returns
    data_fields: ClassVar[tuple[str, ...]] = ()  # which of OPTIONAL_DATA_FIELDS the task reads
    reads_tables: ClassVar[bool] = True  # CSV/TSV/JSON Lines files, or a hub dataset instead

    def __init__(self, recipe: Recipe, roots: list[Path], evaluation_only: bool = False) -> None:
        self.recipe = recipe
        self.roots = roots
        self._rows = None
        self._validation = None
        # `loraft eval` of a recipe with its own eval file reads that file alone, not data.train
        self.evaluation_only = evaluation_only and bool(recipe.data.eval)

    # --- checks before anything runs ------------------------------------------------------

    @classmethod
    def check_recipe(cls, recipe: Recipe) -> None:
        """Recipe mistakes this task can see without data or a model."""
        for name in OPTIONAL_DATA_FIELDS:
            if getattr(recipe.data, name) is not None and name not in cls.data_fields:
                raise LoraftError(f"data.{name}: the {recipe.task} task does not use it; remove it")
        if not recipe.data.train and (recipe.data.hub is None or not cls.reads_tables):
            alternative = " (or data.hub)" if cls.reads_tables else ""
            raise LoraftError(f"data.train: the {recipe.task} task needs a training file{alternative}")
        metric = recipe.eval.metric
        if metric is not None and metric not in cls.metric_names:
            choices = ", ".join(cls.metric_names)
            raise LoraftError(
                f"eval.metric: '{metric}' is not computed by the {recipe.task} task; use {choices}"
            )

    def check_data(self) -> None:
        """Read the first rows of every data file through the training code; raise the first
        problem (missing file, encoding, structure, columns, values). A hub copy is checked
        when training loads it (validation downloads nothing); offline, it must be cached."""
        if self.reads_hub():
            require_hub_copy(self.recipe.data.hub, self._why_hub())
            return
        for table in self._read_tables(preview=PREVIEW_ROWS):
            if table is not None:
                self.rows_from_table(table)

    def reads_hub(self) -> bool:
        """True when the training file is absent and the recipe's hub dataset stands in."""
        data = self.recipe.data
        needed = data.eval if self.evaluation_only else data.train
        return data.hub is not None and (not needed or find_data_file(needed, self.roots) is None)

    # --- data ---------------------------------------------------------------------------

    def rows(self):
        """`load_rows`, read once: training and generative evaluation share the same rows.
        With `data.validation_fraction`, the eval rows are the test set (see `validation_rows`)."""
        if self._rows is None:
            self._rows = self.load_rows()
        return self._rows

    def validation_rows(self):
        """The rows checkpoints are selected on, held out of the training rows before
        `data.train_size` samples them (so every training size shares one validation set);
        None without `data.validation_fraction` (the eval rows select and report)."""
        self.rows()
        return self._validation

    def hold_out_validation(self, train, where: str):
        """`train` without its validation rows (`data.validation_fraction`, seeded by `data.seed`),
        which are kept for `validation_rows`."""
        fraction = self.recipe.data.validation_fraction
        if fraction is None or self.evaluation_only:  # `loraft eval` scores the eval rows alone
            return train
        if len(train) < 2:
            raise LoraftError(f"{where}: {len(train)} row(s): too few to hold out a validation split")
        split = train.train_test_split(test_size=fraction, seed=self.recipe.data.seed)
        self._validation = split["test"]
        return split["train"]

    def model_options(self) -> dict[str, Any]:
        """Extra arguments for building the model (e.g. the number of labels)."""
        return {}

    def load_rows(self, preview: int | None = None):
        """Train and eval rows in the task's own fields, sized as the recipe asks.

        `data.seed` (never `train.seed`) picks the held-out split and the sampled rows.
        """
        train_table, eval_table = self._read_tables(preview)
        data = self.recipe.data
        if train_table is None:  # evaluation only
            evaluation = to_dataset(self.rows_from_table(eval_table), eval_table.where)
            return to_dataset([], "data.train"), sample_rows(evaluation, data.eval_size, data.seed)
        train = to_dataset(self.rows_from_table(train_table), train_table.where)
        if eval_table is None:
            if len(train) < 2:
                raise LoraftError(
                    f"{train_table.where}: {len(train)} row(s): too few to hold out an eval split"
                )
            split = train.train_test_split(test_size=data.eval_fraction, seed=data.seed)
            train, evaluation = split["train"], split["test"]
        else:
            evaluation = to_dataset(self.rows_from_table(eval_table), eval_table.where)
        train = self.hold_out_validation(train, train_table.where)
        return sample_rows(train, data.train_size, data.seed), sample_rows(
            evaluation, data.eval_size, data.seed
        )

    def rows_from_table(self, table: Table) -> list[dict[str, Any]]:
        """Map a raw table to the task's fields, with one-line errors naming file and row.

        Table-based tasks implement this; tasks with their own file format override
        `load_rows` instead.
        """
        raise NotImplementedError(f"{type(self).__name__} does not read tables")

    def adopt_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:  # noqa: B027 (a no-op by default)
        """Take a trained run's saved tokenizer as it is (chat: with the template it trained with)."""

    def encode_prompt(self, tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
        """A framed prompt's ids for generation, by the rule training uses (`loraft.tokenizer`)."""
        from loraft.tokenizer import encode_prompt

        return encode_prompt(tokenizer, text)

    def data_notes(self) -> list[str]:
        """What `loraft validate` says about the data it read (chat: each file's format)."""
        return []

    def summary_facts(self) -> dict[str, Any]:
        """Task facts for summary.json and the model card (chat: which template)."""
        return {}

    def texts_for_tokenizer(self, rows) -> Iterator[str]:
        """Texts a from-scratch tokenizer is trained on."""
        for row in rows:
            yield " ".join(str(value) for value in row.values() if isinstance(value, str))

    @abstractmethod
    def tokenize(self, rows, tokenizer: PreTrainedTokenizerBase):
        """Turn rows into model features (input ids and targets)."""

    def fit_to_model(self, model: torch.nn.Module) -> list[str]:
        """Adapt to what the loaded model can do; lines saying what changed (none by default)."""
        return []

    def with_targets(self, features, split: str):
        """Features that carry at least one target (others would add nothing, or a NaN)."""
        return features

    @abstractmethod
    def collate(self, features: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase) -> Batch:
        """Pad a list of features into a batch of tensors with `labels`."""

    # --- training and evaluation ----------------------------------------------------------

    @abstractmethod
    def count_targets(self, batch: Batch) -> int:
        """How many loss terms the batch has (target tokens, or labelled examples)."""

    @abstractmethod
    def loss_sum(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """The sum (not the mean) of the batch's loss terms, as a float32 scalar."""

    @abstractmethod
    def example_values(self, model: torch.nn.Module, loader, accelerator) -> dict[str, list]:
        """Per-example values the metrics are computed from (in the loader's order): what
        bootstrap intervals and paired comparisons resample (`loraft.statistics`)."""

    @abstractmethod
    def metrics(self, values: dict[str, list]) -> dict:
        """Metrics named `eval_*` from `example_values`."""

    def evaluate(self, model: torch.nn.Module, loader, accelerator) -> dict:
        """Metrics on the eval split, named `eval_*`; runs under inference mode."""
        return self.metrics(self.example_values(model, loader, accelerator))

    def final_evaluation(
        self, model: Callable[[], torch.nn.Module], tokenizer: PreTrainedTokenizerBase, output: Path
    ) -> dict:
        """Extra end-of-run metrics (generation scores, predictions files); none by default."""
        return {}

    def format_prompt(self, text: str) -> str:
        """A user's prompt framed as the task trained on it (see `loraft generate`)."""
        return text

    # --- helpers ----------------------------------------------------------------------------

    def _read_tables(self, preview: int | None = None) -> tuple[Table | None, Table | None]:
        """The train and eval tables: local files when present, else the recipe's hub dataset."""
        data = self.recipe.data
        if self.reads_hub():
            why = self._why_hub()
            return load_hub_split(data.hub, data.hub.train_split, why), load_hub_split(
                data.hub, data.hub.eval_split, why
            )
        if self.evaluation_only:
            return None, read_table(
                require_data_file("data.eval", data.eval, self.roots), self.column_names(), preview
            )
        train = read_table(
            require_data_file("data.train", data.train, self.roots), self.column_names(), preview
        )
        if not data.eval:
            return train, None
        return train, read_table(
            require_data_file("data.eval", data.eval, self.roots), self.column_names(), preview
        )

    def _why_hub(self) -> str:
        """Why the hub copy stands in: the local file that is missing."""
        train = self.recipe.data.train
        if not train:
            return ""
        roots = ", ".join(str(root) for root in self.roots) or "none"
        return f"'{train}' is not under the data roots ({roots}), "

    def column_names(self) -> list[str] | None:
        """Names for the columns of header-less files; None when files have a header."""
        return None


def pad_inputs(features: list[dict[str, Any]], pad_id: int) -> Batch:
    """`input_ids` right-padded with `pad_id` and the `attention_mask` of the real tokens.
    Right, not left: positions then count from each row's first token, as at batch size 1."""
    import torch

    rows = [list(feature["input_ids"]) for feature in features]
    longest = max(len(row) for row in rows)
    ids = [row + [pad_id] * (longest - len(row)) for row in rows]
    mask = [[1] * len(row) + [0] * (longest - len(row)) for row in rows]
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}


def sample_rows(rows, size: int | None, seed: int):
    """A seeded random subset of `size` rows (all of them when size is None or larger)."""
    if size is None or size >= len(rows):
        return rows
    return rows.shuffle(seed=seed).select(range(size))
