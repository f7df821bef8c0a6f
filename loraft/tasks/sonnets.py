"""Shakespeare sonnet generation on the CS224n files (blocks of `<number>` then 14 lines)."""

from __future__ import annotations

import re

import datasets

from loraft.data import read_text, require_data_file
from loraft.errors import LoraftError
from loraft.tasks.causal_lm import CausalLMTask

SONNET_SPLIT = re.compile(r"\n\s*\d+\s*\n")  # the course's own splitter


def read_sonnets(path) -> list[str]:
    """The sonnets of a CS224n sonnet file, in order, without their numbers or the header."""
    blocks = [block.strip() for block in SONNET_SPLIT.split(read_text(path))[1:]]
    sonnets = [block for block in blocks if block]
    if not sonnets:
        raise LoraftError(f"{path}: no numbered sonnet blocks found (expected '\\n<number>\\n')")
    return sonnets


class SonnetsTask(CausalLMTask):
    """Each sonnet is one training text; `data.eval` (the gold held-out sonnets) gives perplexity."""

    def load_rows(self) -> tuple[datasets.Dataset, datasets.Dataset]:
        data = self.recipe.data
        if not data.train:
            raise LoraftError("data.train: the sonnets task needs a sonnet file (cs224n/sonnets.txt)")
        train = read_sonnets(require_data_file("data.train", data.train, self.roots))
        if data.eval:
            evaluation = read_sonnets(require_data_file("data.eval", data.eval, self.roots))
        else:
            held_out = max(1, round(len(train) * data.eval_fraction))
            train, evaluation = train[:-held_out], train[-held_out:]
        return (
            datasets.Dataset.from_dict({"text": train}),
            datasets.Dataset.from_dict({"text": evaluation}),
        )
