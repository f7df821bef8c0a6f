"""News-style text generation on AG News: each article is `title` + newline + `description`."""

from __future__ import annotations

import html
import re

from loraft.data import Table, column_for, require_columns
from loraft.errors import LoraftError
from loraft.tasks.causal_lm import CausalLMTask

AG_NEWS_COLUMNS = ["class", "title", "description"]


class NewsTask(CausalLMTask):
    """AG News rows (`"class","title","description"`, no header) or any table with a text column.

    Hub copies of AG News (fancyzhx/ag_news) have a single `text` column; it is used as is.
    """

    def column_names(self) -> list[str] | None:
        return None if self.recipe.data.columns else AG_NEWS_COLUMNS

    def rows_from_table(self, table: Table) -> list[dict[str, str]]:
        data = self.recipe.data
        text_column = column_for(data, "text")
        if text_column in table.columns:
            fields = [text_column]
        else:
            fields = [column_for(data, "title"), column_for(data, "description")]
            require_columns(table, fields)
        rows = []
        for index, row in enumerate(table.rows):
            parts = [row.get(field) for field in fields]
            if not all(isinstance(part, str) for part in parts) or not "".join(parts).strip():
                raise LoraftError(f"{table.place(index)}: expected text in {', '.join(fields)}")
            rows.append({"text": clean_ag_news("\n".join(part.strip() for part in parts))})
        return rows


def clean_ag_news(text: str) -> str:
    """Undo AG News escapes: `\\` for a line break, `#39;` for an apostrophe, HTML entities."""
    text = re.sub(r" ?#(\d+);", lambda match: chr(int(match.group(1))), text.replace("\\", " "))
    return re.sub(r"[ \t]+", " ", html.unescape(text)).strip()
