"""Persona (the Joker recipe): prompt/response pairs; loss only on the response tokens."""

from __future__ import annotations

from typing import Any

import datasets

from loraft.data import column_for, require_columns
from loraft.errors import LoraftError
from loraft.tasks.causal_lm import CausalLMTask, GenerationCase

DEFAULT_TEMPLATE = "Q: {prompt}\nA:"


class PersonaTask(CausalLMTask):
    """JSON Lines (or a table) with `prompt` and `response`; `data.template` frames the prompt."""

    @property
    def template(self) -> str:
        template = self.recipe.data.template or DEFAULT_TEMPLATE
        if "{prompt}" not in template:
            raise LoraftError(f"data.template: must contain {{prompt}}, got {template!r}")
        return template

    def rows_from_table(self, table: datasets.Dataset, where: str) -> datasets.Dataset:
        data = self.recipe.data
        prompt_column, response_column = column_for(data, "prompt"), column_for(data, "response")
        require_columns(table, [prompt_column, response_column], where)

        def to_pair(row: dict, index: int) -> dict[str, str]:
            pair = {"prompt": row[prompt_column], "response": row[response_column]}
            for field, value in pair.items():
                if not isinstance(value, str) or not value.strip():
                    raise LoraftError(f"{where}: row {index + 1}: '{field}' must be non-empty text")
            return pair

        return table.map(to_pair, with_indices=True, remove_columns=table.column_names, keep_in_memory=True)

    def prompt_and_target(self, row: dict[str, Any]) -> tuple[str, str]:
        return self.template.format(prompt=row["prompt"].strip()), " " + row["response"].strip()

    def generation_cases(self) -> list[GenerationCase]:
        """Held-out prompts in the template; the persona's own response is the reference."""
        _, evaluation = self.rows()
        rows = evaluation.select(range(min(self.generate_size, len(evaluation))))
        return [GenerationCase(*self.prompt_and_target(row)) for row in rows]
