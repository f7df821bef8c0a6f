"""Plain text (tiny Shakespeare) for training a mini GPT-2 from scratch, packed into blocks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loraft.data import read_text, require_data_file
from loraft.errors import LoraftError
from loraft.tasks.causal_lm import TextFileTask

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class TextTask(TextFileTask):
    """A text file split at blank lines into passages; the eval split is the file's last part.

    Passages are tokenized and packed end to end into `data.max_length` blocks ("wrapped"
    packing): the file is one continuous text, so a block spanning two passages is faithful.
    """

    def texts(self) -> tuple[list[str], list[str]]:
        data = self.recipe.data
        if self.evaluation_only:
            return [], _passages(read_text(require_data_file("data.eval", data.eval, self.roots)))
        passages = _passages(read_text(require_data_file("data.train", data.train, self.roots)))
        if data.eval:
            evaluation = _passages(read_text(require_data_file("data.eval", data.eval, self.roots)))
        else:
            held_out = max(1, round(len(passages) * data.eval_fraction))
            passages, evaluation = passages[:-held_out], passages[-held_out:]
        if not passages:
            count = len(evaluation)
            raise LoraftError(
                f"data.train: '{data.train}' has {count} passage{'s' * (count != 1)} (passages are split at "
                "blank lines): too few to hold out an eval split; separate passages with blank lines, "
                "or give data.eval"
            )
        return passages, evaluation

    def tokenize(self, rows, tokenizer: PreTrainedTokenizerBase):
        from trl import pack_dataset

        from loraft.tokenizer import encode_text, special_tokens_around

        leading, _ = special_tokens_around(tokenizer)  # each passage starts as the tokenizer starts a text
        encoded = rows.map(
            lambda row: {"input_ids": leading + encode_text(tokenizer, row["text"] + "\n\n")},
            remove_columns=rows.column_names,
            keep_in_memory=True,
        )
        return pack_dataset(
            encoded,
            self.recipe.data.max_length,
            strategy="wrapped",
            map_kwargs={"keep_in_memory": True},
        )


def _passages(text: str) -> list[str]:
    return [passage.strip() for passage in text.split("\n\n") if passage.strip()]
