"""Text classification: one text (SST-5, CFIMDB) or a text pair (Quora, MRPC) -> one label.

The model is the family's `...ForSequenceClassification` (GPT-2's on GPT-2): a linear `score`
head on the hidden state of the last token that is not the pad id. Batches are right-padded,
because GPT-2 numbers positions 0..n-1 whatever the attention mask says: left padding would
shift every position, right padding leaves the real tokens (and the pooled one) exactly as at
batch size 1. The pad id is the end-of-text id where the tokenizer has no pad token, so inputs
never contain it (no end-of-text is appended, the pair separator is a newline, and a literal
"<|endoftext|>" in the data is encoded as plain text): the "last non-pad token" is then always
the last attended token. A tokenizer that starts texts with BOS (Llama) gets it once, first.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from loraft.data import (
    Table,
    column_for,
    find_data_file,
    read_table,
    require_columns,
    require_data_file,
    to_dataset,
)
from loraft.errors import LoraftError
from loraft.recipe import Recipe
from loraft.run_dir import PREDICTIONS_FILE
from loraft.tasks.base import IGNORE_INDEX, PREVIEW_ROWS, Batch, Task, pad_inputs

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

# A newline joins the two texts of a pair: GPT-2 read newlines between related sentences in
# pretraining, while end-of-text taught it that what follows is a new, unrelated document
# (and end-of-text is our pad id, which must never appear inside an input).
PAIR_SEPARATOR = "\n"
# Hub copies name their columns differently from the local files a recipe's `data.columns`
# describes (SetFit/sst5: text, label; GLUE mrpc: sentence1, sentence2, label; GLUE qqp:
# question1, question2, label); these names are tried for hub tables only.
HUB_COLUMNS = {
    "text": ("text", "sentence", "sentence1", "question1"),
    "text_pair": ("text_pair", "sentence2", "question2"),
    "label": ("label",),
}


class ClassificationTask(Task):
    """Rows with `text` (and `text_pair` for pair tasks) and a `label` among `data.labels`.

    Recipes map their columns with `data.columns`, e.g. `{text: sentence, label: sentiment}`
    for the CS224n files; a task is a pair task when `text_pair` is mapped or present.
    """

    kind: ClassVar[str] = "classification"
    default_metric: ClassVar[str] = "eval_accuracy"
    metric_names: ClassVar[tuple[str, ...]] = ("eval_accuracy", "eval_macro_f1", "eval_loss")
    data_fields: ClassVar[tuple[str, ...]] = ("labels", "predict")

    @classmethod
    def check_recipe(cls, recipe: Recipe) -> None:
        super().check_recipe(recipe)
        labels = [str(label) for label in recipe.data.labels or []]
        if len(labels) < 2:
            raise LoraftError("data.labels: list two or more label names in order, e.g. [negative, positive]")
        if len(set(labels)) != len(labels):
            raise LoraftError(f"data.labels: label names repeat: {labels}")

    def __init__(self, recipe: Recipe, roots: list[Path], evaluation_only: bool = False) -> None:
        super().__init__(recipe, roots, evaluation_only)
        self.check_recipe(recipe)
        labels = [str(label) for label in recipe.data.labels]
        self.labels = labels
        self.label_index = {name: index for index, name in enumerate(labels)}
        self.predict_path: Path | None = None
        self.predict_rows = None  # read with the training rows: a bad row stops the run before it starts

    def model_options(self) -> dict[str, Any]:
        return {"num_labels": len(self.labels)}

    # --- data ---------------------------------------------------------------------------

    def check_data(self) -> None:
        super().check_data()
        path = self._find_predict_file()
        if path is not None:
            self.rows_from_table(read_table(path, preview=PREVIEW_ROWS), labelled=False)

    def load_rows(self, preview: int | None = None):
        """Train and eval rows; the file to predict is read now too, so that its mistakes stop
        the run before training, not after."""
        train, evaluation = super().load_rows(preview)
        self.predict_path = self._find_predict_file()
        if self.predict_path is not None:
            table = read_table(self.predict_path, preview=preview)
            self.predict_rows = to_dataset(self.rows_from_table(table, labelled=False), table.where)
        return train, evaluation

    def rows_from_table(self, table: Table, labelled: bool = True) -> list[dict[str, Any]]:
        """Rows `text`, [`text_pair`], `label` (an index) or, unlabelled, `id` instead of a label."""
        fields = ["text", "text_pair"] if self.is_pair(table) else ["text"]
        fields += ["label"] if labelled else ["id"]
        columns = {field: self._column(table, field) for field in fields}
        rows = []
        for index, row in enumerate(table.rows):
            where = table.place(index)
            out: dict[str, Any] = {}
            for field, column in columns.items():
                if field == "label":
                    out[field] = self.label_id(row.get(column), where)
                elif field == "id":
                    out[field] = str(row.get(column)).strip()
                else:
                    out[field] = _text(row.get(column), where, column)
            rows.append(out)
        return rows

    def is_pair(self, table: Table) -> bool:
        """Pair tasks map `text_pair` in the recipe or have a `text_pair` column."""
        return "text_pair" in self.recipe.data.columns or "text_pair" in table.columns

    def label_id(self, value: Any, where: str) -> int:
        """The index of a file label: a label name ("positive", "1"), or an integer index.

        Names are matched first, so with labels [1, 2, 3] the file label 1 means the first
        one; `1.0` (Quora) is read as `1`.
        """
        text = "" if value is None else str(value).strip()
        if not text:
            raise LoraftError(f"{where}: the label is missing")
        if text in self.label_index:
            return self.label_index[text]
        number = _as_integer(text)
        if number is not None and str(number) in self.label_index:
            return self.label_index[str(number)]
        if number is not None and 0 <= number < len(self.labels):
            return number
        raise LoraftError(f"{where}: label '{text}' is not one of {self._label_choices()} (data.labels)")

    def _label_choices(self) -> str:
        last = len(self.labels) - 1
        if self.labels == [str(index) for index in range(len(self.labels))]:
            return f"0..{last}"
        return f"{', '.join(self.labels)} (or 0..{last})"

    def _column(self, table: Table, field: str) -> str:
        named = column_for(self.recipe.data, field)
        if named in table.columns:
            return named
        hub = self.recipe.data.hub
        if hub is not None and table.where.startswith(f"{hub.id}:"):
            for alias in HUB_COLUMNS.get(field, ()):
                if alias in table.columns:
                    return alias
        require_columns(table, [named])
        return named  # not reached: require_columns raised

    def _find_predict_file(self) -> Path | None:
        data = self.recipe.data
        if not data.predict:
            return None
        training_from_hub = data.hub is not None and (
            not data.train or find_data_file(data.train, self.roots) is None
        )
        if training_from_hub and find_data_file(data.predict, self.roots) is None:
            print(f"data.predict: '{data.predict}' not found; no predictions file for this hub run")
            return None
        return require_data_file("data.predict", data.predict, self.roots)

    # --- features -----------------------------------------------------------------------

    def tokenize(self, rows, tokenizer: PreTrainedTokenizerBase):
        """Input ids (text, or text + newline + text_pair) truncated to data.max_length."""
        from loraft.tokenizer import encode_text, special_tokens_around

        leading, _ = special_tokens_around(tokenizer)  # BOS where the tokenizer adds one
        budget = self.recipe.data.max_length - len(leading)
        separator = encode_text(tokenizer, PAIR_SEPARATOR)

        def encode(row: dict[str, Any]) -> dict[str, Any]:
            ids = encode_text(tokenizer, row["text"])
            if "text_pair" in row:
                first, second = truncate_pair(
                    ids, encode_text(tokenizer, row["text_pair"]), budget - len(separator)
                )
                ids = first + separator + second
            feature: dict[str, Any] = {"input_ids": leading + ids[:budget]}
            if "label" in row:
                feature["labels"] = row["label"]
            return feature

        return rows.map(encode, remove_columns=rows.column_names, keep_in_memory=True)

    def collate(self, features: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase) -> Batch:
        """Right padding with the pad id (see the module docstring for why right)."""
        import torch

        batch = pad_inputs(features, tokenizer.pad_token_id)
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([feature["labels"] for feature in features])
        return batch

    # --- evaluation ---------------------------------------------------------------------

    def count_targets(self, batch: Batch) -> int:
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def loss_sum(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        import torch.nn.functional as F

        logits = logits_of(model, batch).float()
        return F.cross_entropy(logits, batch["labels"], ignore_index=IGNORE_INDEX, reduction="sum")

    def example_values(self, model: torch.nn.Module, loader, accelerator) -> dict[str, list]:
        """Each example's gold and predicted label ids and its loss, gathered across processes
        (only these, never logits)."""
        import torch
        import torch.nn.functional as F

        predicted, gold, losses = [], [], []
        for batch in loader:
            logits = logits_of(model, batch).float()
            loss = F.cross_entropy(logits, batch["labels"], reduction="none")
            ids, labels, loss = accelerator.gather_for_metrics((logits.argmax(-1), batch["labels"], loss))
            predicted.append(ids.cpu())
            gold.append(labels.cpu())
            losses.append(loss.double().cpu())
        empty = [torch.zeros(0)]
        return {
            "gold": torch.cat(gold or empty).long().tolist(),
            "predicted": torch.cat(predicted or empty).long().tolist(),
            "loss": torch.cat(losses or empty).tolist(),
        }

    def metrics(self, values: dict[str, list]) -> dict:
        """Accuracy, macro-F1, mean loss and the confusion matrix."""
        import torch

        gold, predicted = (
            torch.tensor(values["gold"], dtype=torch.long),
            torch.tensor(values["predicted"], dtype=torch.long),
        )
        loss_sum = float(torch.tensor(values["loss"], dtype=torch.float64).sum())
        return classification_metrics(gold, predicted, loss_sum, len(self.labels))

    def final_evaluation(
        self, model: Callable[[], torch.nn.Module], tokenizer: PreTrainedTokenizerBase, output: Path
    ) -> dict:
        """Predict `data.predict` with the model given and write `<output>/predictions.csv`."""
        from accelerate import PartialState

        if self.predict_rows is None:
            return {"labels": self.labels}
        rows = self.predict_rows
        predicted = self.predict(model(), rows, tokenizer)
        path = Path(output) / PREDICTIONS_FILE
        if PartialState().is_main_process:
            write_predictions(path, rows["id"], [self.labels[index] for index in predicted])
        return {"labels": self.labels, "predictions_file": str(path)}

    def predict(self, model: torch.nn.Module, rows, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """Predicted label indices for rows, in order."""
        import torch
        from torch.utils.data import DataLoader

        features = self.tokenize(rows, tokenizer)
        batch_size = self.recipe.eval_batch_size
        loader = DataLoader(features, batch_size=batch_size, collate_fn=lambda f: self.collate(f, tokenizer))
        device = next(model.parameters()).device
        model.eval()
        predicted: list[int] = []
        with torch.inference_mode():
            for batch in loader:
                batch = {key: value.to(device) for key, value in batch.items()}
                predicted.extend(logits_of(model, batch).argmax(-1).tolist())
        return predicted


def logits_of(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Pooled class logits of a batch, shape (batch, labels)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def classification_metrics(
    gold: torch.Tensor, predicted: torch.Tensor, loss_sum: float, num_labels: int
) -> dict:
    """eval_* metrics from gold and predicted label indices (macro-F1 as the course's sklearn)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    gold_list, predicted_list = gold.tolist(), predicted.tolist()
    count = max(len(gold_list), 1)
    return {
        "eval_accuracy": float(accuracy_score(gold_list, predicted_list)) if gold_list else 0.0,
        "eval_macro_f1": float(f1_score(gold_list, predicted_list, average="macro", zero_division=0)),
        "eval_loss": loss_sum / count,
        "eval_examples": len(gold_list),
        "eval_confusion_matrix": confusion_matrix(
            gold_list, predicted_list, labels=list(range(num_labels))
        ).tolist(),
    }


def truncate_pair(first: list[int], second: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Fit a pair in `budget` tokens: the shorter text keeps up to half, the longer the rest."""
    if len(first) + len(second) <= budget:
        return first, second
    if len(first) < len(second):
        keep = min(len(first), budget // 2)
        return first[:keep], second[: budget - keep]
    keep = min(len(second), budget // 2)
    return first[: budget - keep], second[:keep]


def write_predictions(path: Path, ids: list[str], labels: list[str]) -> None:
    """`id,label` CSV, one row per input: the two fields the course's prediction files hold."""
    with path.open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["id", "label"])
        writer.writerows(zip(ids, labels, strict=True))


def _text(value: Any, where: str, column: str) -> str:
    if isinstance(value, dict | list):
        raise LoraftError(f"{where}: column '{column}' holds {type(value).__name__}, expected text")
    text = "" if value is None else str(value).strip()
    if not text:
        raise LoraftError(f"{where}: the text in column '{column}' is missing or empty")
    return text


def _as_integer(text: str) -> int | None:
    """`"3"` and `"3.0"` -> 3; anything else (`"2.5"`, `"pos"`, `"nan"`) -> None."""
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None
