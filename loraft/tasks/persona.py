"""Persona (the Joker recipe): prompt/response pairs; loss only on the response tokens."""

from __future__ import annotations

import string
from typing import Any, ClassVar

from loraft.data import Table, column_for, require_columns
from loraft.errors import LoraftError
from loraft.recipe import Recipe
from loraft.tasks.causal_lm import CausalLMTask, GenerationCase

DEFAULT_TEMPLATE = "Q: {prompt}\nA:"


class PersonaTask(CausalLMTask):
    """JSON Lines (or a table) with `prompt` and `response`; `data.template` frames the prompt."""

    data_fields: ClassVar[tuple[str, ...]] = ("template",)

    @classmethod
    def check_recipe(cls, recipe: Recipe) -> None:
        super().check_recipe(recipe)
        template = recipe.data.template or DEFAULT_TEMPLATE
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
        except ValueError as error:
            raise LoraftError(
                f"data.template: {error} in {template!r} (write a literal brace as {{{{)"
            ) from None
        if fields != ["prompt"]:
            raise LoraftError(f"data.template: expected exactly one {{prompt}} placeholder, got {template!r}")
        try:  # conversions and format specs ({prompt!r}, {prompt:>{x}}) fail only when applied
            template.format(prompt="text")
        except (ValueError, KeyError, IndexError) as error:
            raise LoraftError(f"data.template: {template!r} cannot be filled in: {error}") from None

    @property
    def template(self) -> str:
        return self.recipe.data.template or DEFAULT_TEMPLATE

    def format_prompt(self, text: str) -> str:
        return self.template.format(prompt=text.strip())

    def rows_from_table(self, table: Table) -> list[dict[str, str]]:
        data = self.recipe.data
        prompt_column, response_column = column_for(data, "prompt"), column_for(data, "response")
        require_columns(table, [prompt_column, response_column])
        rows = []
        for index, row in enumerate(table.rows):
            pair = {"prompt": row.get(prompt_column), "response": row.get(response_column)}
            for field, value in pair.items():
                if not isinstance(value, str) or not value.strip():
                    raise LoraftError(f"{table.place(index)}: '{field}' must be non-empty text")
            rows.append(pair)
        return rows

    def prompt_and_target(self, row: dict[str, Any]) -> tuple[str, str]:
        return self.template.format(prompt=row["prompt"].strip()), " " + row["response"].strip()

    def generation_cases(self) -> list[GenerationCase]:
        """Held-out prompts in the template; the persona's own response is the reference."""
        _, evaluation = self.rows()
        rows = evaluation.select(range(min(self.generate_size, len(evaluation))))
        return [GenerationCase(*self.prompt_and_target(row)) for row in rows]
