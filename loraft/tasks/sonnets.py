"""Shakespeare sonnet generation on the CS224n files (blocks of `<number>` then 14 lines)."""

from __future__ import annotations

import re
from typing import ClassVar

from loraft.data import read_text, require_data_file
from loraft.errors import LoraftError
from loraft.recipe import Recipe
from loraft.tasks.causal_lm import GenerationCase, TextFileTask

SONNET_SPLIT = re.compile(r"\n\s*\d+\s*\n")  # the course's own splitter


def read_sonnets(path) -> list[str]:
    """The sonnets of a CS224n sonnet file, in order, without their numbers or the header."""
    blocks = [block.strip() for block in SONNET_SPLIT.split(read_text(path))[1:]]
    sonnets = [block for block in blocks if block]
    if not sonnets:
        raise LoraftError(f"{path}: no numbered sonnet blocks found (expected '\\n<number>\\n')")
    return sonnets


class SonnetsTask(TextFileTask):
    """Each sonnet is one training text; `data.eval` (the gold held-out sonnets) gives perplexity."""

    default_generate_size = 1000  # every held-out sonnet
    data_fields: ClassVar[tuple[str, ...]] = ("prompts",)

    @classmethod
    def check_recipe(cls, recipe: Recipe) -> None:
        super().check_recipe(recipe)
        data = recipe.data
        if recipe.eval.generate and not (data.prompts and data.eval):
            raise LoraftError(
                "data.prompts and data.eval: sonnet chrF needs the prompt and gold files "
                "(or eval.generate: false)"
            )

    def check_data(self) -> None:
        super().check_data()
        if self.recipe.eval.generate:
            self.generation_cases()

    def texts(self) -> tuple[list[str], list[str]]:
        data = self.recipe.data
        if self.evaluation_only:
            return [], read_sonnets(require_data_file("data.eval", data.eval, self.roots))
        train = read_sonnets(require_data_file("data.train", data.train, self.roots))
        if data.eval:
            evaluation = read_sonnets(require_data_file("data.eval", data.eval, self.roots))
        else:
            held_out = max(1, round(len(train) * data.eval_fraction))
            train, evaluation = train[:-held_out], train[-held_out:]
        if not train:
            raise LoraftError(f"data.train: '{data.train}' has too few sonnets to hold out an eval split")
        return train, evaluation

    def generation_cases(self) -> list[GenerationCase]:
        """The course's protocol: the first 3 lines of each held-out sonnet, its gold text."""
        data = self.recipe.data
        prompts = read_sonnets(require_data_file("data.prompts", data.prompts, self.roots))
        gold = read_sonnets(require_data_file("data.eval", data.eval, self.roots))
        if len(prompts) != len(gold):
            raise LoraftError(f"data.prompts: {len(prompts)} prompts but {len(gold)} gold sonnets")
        pairs = list(zip(prompts, gold, strict=True))[: self.generate_size]
        return [GenerationCase(prompt.strip() + "\n", reference) for prompt, reference in pairs]

    def hypothesis(self, case: GenerationCase, continuation: str) -> str:
        """The whole sonnet (prompt lines included), as the course scores it."""
        return (case.prompt + continuation).strip()
