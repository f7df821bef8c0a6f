"""Chat (`task: chat`): conversations rendered by a chat template; the loss on the assistant's
turns only (by default), EOS or the template's end-of-turn token included.

Rows come as `messages` (TRL's and axolotl's format), `prompt` + `completion` (each a string or
a list of messages), Alpaca (`instruction`, optional `input`, `output`) or ShareGPT
(`conversations` of `{from, value}`): detected from a file's first row, or named by
`data.format`, and turned into one list of `{role, content}` messages.

The text is the tokenizer's own chat template (`apply_chat_template`), the recipe's
`data.chat_template`, or, for a tokenizer without one (GPT-2's), `DEFAULT_TEMPLATE`; the run's
tokenizer keeps it, so checkpoints, exports, `loraft generate` and a plain transformers
pipeline format prompts as training did. Which tokens train comes from characters, not from
searching token ids for a marker: each trained turn's span is what rendering the conversation
up to it adds (from its content to its end-of-turn), and a token trains when any character of
it (the tokenizer's offsets) lies in a span.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from loraft.data import Table
from loraft.errors import LoraftError
from loraft.recipe import Recipe
from loraft.tasks.base import IGNORE_INDEX
from loraft.tasks.causal_lm import CausalLMTask, GenerationCase

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}
FORMAT_KEYS = {  # format -> the keys that name it in a row, checked in this order
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
}
CONTENT_MARKER = "\u2063loraft-content\u2063"  # invisible separators: in no real conversation
# GPT-2's tokenizer has no chat template; this plain one is the default for any that has none.
DEFAULT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'User: ' + message['content'] + '\\n' }}"
    "{%- else -%}{{ 'Assistant: ' + message['content'] + eos_token + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)


class ChatTask(CausalLMTask):
    """JSON Lines conversations in any of `FORMAT_KEYS`' formats (see the module doc)."""

    data_fields: ClassVar[tuple[str, ...]] = ("format", "chat_template", "train_on")

    def __init__(self, recipe: Recipe, roots: list[Path], evaluation_only: bool = False) -> None:
        super().__init__(recipe, roots, evaluation_only)
        self.template_source = "the tokenizer's"
        self.tokenizer = None  # the run's, once `fit_tokenizer` gave it the template
        self.formats: dict[str, str] = {}  # file -> its format, as read

    @classmethod
    def check_recipe(cls, recipe: Recipe) -> None:
        super().check_recipe(recipe)
        recipe_template(recipe)  # a template file that cannot be read is a recipe mistake

    # --- rows -----------------------------------------------------------------------------

    def rows_from_table(self, table: Table) -> list[dict[str, Any]]:
        """Each row as messages; `data.columns` renames a file's keys (completion: response)."""
        if not table.rows:
            return []
        fields = {column: field for field, column in self.recipe.data.columns.items()}
        rows = [{fields.get(key, key): value for key, value in row.items()} for row in table.rows]
        fmt = self.recipe.data.format or detect_format(rows[0], table.place(0))
        self.formats[table.where] = fmt
        return [
            {"messages": to_messages(row, fmt, table.place(index)), "where": table.place(index)}
            for index, row in enumerate(rows)
        ]

    def check_data(self) -> None:
        """The rows' structure; and, where the tokenizer is on this machine, each previewed
        conversation rendered by the run's template (its refusals: roles out of order)."""
        from loraft.hub import is_local
        from loraft.tasks.base import PREVIEW_ROWS
        from loraft.tokenizer import load_tokenizer

        super().check_data()
        source = self.recipe.model.tokenizer or self.recipe.model.name
        if self.reads_hub() or not source or not is_local(source):
            return
        tokenizer = load_tokenizer(source)
        self.fit_tokenizer(tokenizer)
        for table in self._read_tables(preview=PREVIEW_ROWS):
            for row in self.rows_from_table(table) if table is not None else []:
                encode_conversation(
                    tokenizer, row["messages"], self.recipe.data.train_on or "assistant", row["where"]
                )

    def data_notes(self) -> list[str]:
        given = self.recipe.data.format is not None
        return [
            f"{where}: {fmt} format ({'data.format' if given else 'detected'})"
            for where, fmt in self.formats.items()
        ]

    def texts_for_tokenizer(self, rows):
        for row in rows:
            yield "\n".join(message["content"] for message in row["messages"])

    # --- the template -----------------------------------------------------------------------

    def fit_tokenizer(self, tokenizer) -> None:
        """Give the run's tokenizer the template it trains with (saved with it from now on)."""
        self.tokenizer, template = tokenizer, recipe_template(self.recipe)
        if template is not None:
            tokenizer.chat_template, self.template_source = template, "the recipe's data.chat_template"
        elif not tokenizer.chat_template or tokenizer.chat_template == DEFAULT_TEMPLATE:  # or saved so
            tokenizer.chat_template, self.template_source = (
                DEFAULT_TEMPLATE,
                "loraft's default (the tokenizer has none)",
            )

    def adopt_tokenizer(self, tokenizer) -> None:
        """A run's saved tokenizer carries the template it trained with: that one, not the
        recipe's file read again (it may have changed, or be relative to another folder)."""
        if not tokenizer.chat_template:
            self.fit_tokenizer(tokenizer)
        self.tokenizer = tokenizer

    def summary_facts(self) -> dict[str, Any]:
        return {"chat_template_source": self.template_source}

    # --- tokens -----------------------------------------------------------------------------

    def tokenize(self, rows, tokenizer):
        """Each conversation rendered whole, cut at `data.max_length`; labels on the trained spans."""
        if self.tokenizer is not tokenizer:  # a run's adopted tokenizer keeps its template
            self.fit_tokenizer(tokenizer)
        if not tokenizer.is_fast:
            raise LoraftError("task chat: needs a fast tokenizer (character offsets map turns to tokens)")
        max_length, train_on = self.recipe.data.max_length, self.recipe.data.train_on or "assistant"

        def encode(row: dict[str, Any]) -> dict[str, list[int]]:
            ids, trained = encode_conversation(tokenizer, row["messages"], train_on, row["where"])
            labels = [token if keep else IGNORE_INDEX for token, keep in zip(ids, trained, strict=True)]
            return {"input_ids": ids[:max_length], "labels": labels[:max_length]}

        return rows.map(encode, remove_columns=rows.column_names, keep_in_memory=True)

    def encode_prompt(self, tokenizer, text: str) -> list[int]:
        return template_ids(tokenizer, text)

    def format_prompt(self, text: str) -> str:
        """A user's message, or a JSON list of messages, rendered with the generation prompt."""
        return generation_prompt(self.tokenizer, messages_of_prompt(text))

    def generation_cases(self) -> list[GenerationCase]:
        """Each held-out conversation up to its last assistant turn; that turn is the reference."""
        _, evaluation = self.rows()
        cases = []
        for row in evaluation.select(range(min(self.generate_size, len(evaluation)))):
            messages = row["messages"]
            last = max(i for i, message in enumerate(messages) if message["role"] == "assistant")
            prompt = generation_prompt(self.tokenizer, messages[:last])
            cases.append(GenerationCase(prompt, messages[last]["content"]))
        return cases


def recipe_template(recipe: Recipe) -> str | None:
    """`data.chat_template`: Jinja text, or the path of a file holding it."""
    given = recipe.data.chat_template
    if given is None or "{%" in given or "{{" in given:
        return given
    path = Path(given).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise LoraftError(
            f"data.chat_template: '{given}' is neither a Jinja template nor a readable file "
            f"({error.__class__.__name__})"
        ) from None


def detect_format(row: dict[str, Any], where: str) -> str:
    for fmt, keys in FORMAT_KEYS.items():
        if all(key in row for key in keys):
            return fmt
    raise LoraftError(
        f"{where}: not a chat row: expected messages, prompt + completion, instruction + output "
        f"(Alpaca) or conversations (ShareGPT); got keys {', '.join(sorted(row)) or 'none'} "
        "(or set data.format)"
    )


def to_messages(row: dict[str, Any], fmt: str, where: str) -> list[dict[str, Any]]:
    """A row as `{role, content, completion}` messages (`completion`: may be trained on), checked."""
    missing = [key for key in FORMAT_KEYS[fmt] if key not in row]
    if missing:
        raise LoraftError(f"{where}: expected a {fmt} row like the file's first (no '{missing[0]}')")
    if fmt == "messages":
        messages = _message_list(row["messages"], where, "messages")
    elif fmt == "sharegpt":
        messages = _sharegpt(row["conversations"], where)
    elif fmt == "alpaca":
        instruction, extra = _text(row["instruction"], where, "instruction"), row.get("input") or ""
        prompt = instruction + ("\n\n" + _text(extra, where, "input") if str(extra).strip() else "")
        messages = [_message("user", prompt), _message("assistant", _text(row["output"], where, "output"))]
    else:
        prompt = _side(row["prompt"], where, "prompt", "user")
        messages = [{**m, "completion": False} for m in prompt] + _side(
            row["completion"], where, "completion", "assistant"
        )
    for number, message in enumerate(messages, 1):
        if not message["content"].strip():
            raise LoraftError(f"{where}: message {number} ({message['role']}) has empty content")
    if not any(message["role"] == "assistant" and message["completion"] for message in messages):
        raise LoraftError(f"{where}: no assistant turn to train on")
    return messages


def encode_conversation(tokenizer, messages: list[dict[str, Any]], train_on: str, where: str):
    """(ids, trained) of a whole conversation, as `apply_chat_template(tokenize=True)` gives
    its ids; the trained tokens are those of `train_on`'s spans (see the module doc)."""
    text = render(tokenizer, messages, where)
    if train_on == "all":
        spans = [(0, len(text))]
    else:
        chosen = [i for i, m in enumerate(messages) if m["role"] == "assistant" and m["completion"]]
        spans = [
            turn_span(tokenizer, messages, i, text, where)
            for i in (chosen[-1:] if train_on == "last_assistant" else chosen)
        ]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    trained = [
        any(start < end_span and end > start_span for start_span, end_span in spans)
        for start, end in encoded["offset_mapping"]
    ]
    return encoded["input_ids"], trained


def turn_span(
    tokenizer, messages: list[dict[str, Any]], index: int, text: str, where: str
) -> tuple[int, int]:
    """The characters of turn `index` that train: from its content to its end-of-turn (the
    template's closing text, trailing whitespace left out)."""
    before = render(tokenizer, messages[:index], where) if index else ""
    through = render(tokenizer, messages[: index + 1], where)
    if not (through.startswith(before) and text.startswith(through)):
        raise LoraftError(
            f"{where}: the chat template does not render a conversation as its turns one after another "
            "(it rewrites earlier turns); loraft cannot find the assistant's span: use another "
            "data.chat_template"
        )
    # where the template puts a turn's content: rendered once with a marker in its place (a
    # search for the content itself could match inside the turn's header: "A" in "Assistant")
    marked = render(tokenizer, [*messages[:index], {**messages[index], "content": CONTENT_MARKER}], where)
    start = marked.find(CONTENT_MARKER) - len(before)
    added, content = through[len(before) :], messages[index]["content"]
    if start < 0 or not added[start:].startswith((content, content.strip())):
        raise LoraftError(
            f"{where}: the chat template changes the text of message {index + 1}; its span cannot be found"
        )
    return len(before) + start, len(before) + len(added.rstrip())


def render(tokenizer, messages: list[dict[str, Any]], where: str, add_generation_prompt: bool = False) -> str:
    """The template's text; its own refusal (alternation, roles) as one line."""
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    try:
        return tokenizer.apply_chat_template(
            plain, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as error:  # jinja's TemplateError, or the template's raise_exception
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise LoraftError(f"{where}: the chat template refuses this conversation: {reason}") from None


def end_of_turn_id(tokenizer) -> int | None:
    """The special token the chat template puts right after an assistant's content, if any."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    turn = [{"role": "user", "content": "x"}, {"role": "assistant", "content": CONTENT_MARKER}]
    try:
        text = tokenizer.apply_chat_template(turn, tokenize=False)
    except Exception:  # a template that refuses this conversation names no end of turn
        return None
    after = template_ids(tokenizer, text.split(CONTENT_MARKER, 1)[-1].lstrip(" "))[:1]
    return after[0] if after and after[0] in tokenizer.all_special_ids else None


def template_ids(tokenizer, text: str) -> list[int]:
    """A rendered prompt's ids: the template wrote its special tokens (BOS among them)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def generation_prompt(tokenizer, messages: list[dict[str, Any]]) -> str:
    return render(tokenizer, messages, "prompt", add_generation_prompt=True)


def messages_of_prompt(text: str) -> list[dict[str, Any]]:
    """`loraft generate`'s prompt as messages: a JSON list of them, or one user message."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = None  # "[joke] tell me one" is a user's text
    if isinstance(parsed, list):
        return _message_list(parsed, "--prompt", "messages")
    return [_message("user", text)]


def _message(role: str, content: str, completion: bool = True) -> dict[str, Any]:
    return {"role": role, "content": content, "completion": completion}


def _text(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str):
        raise LoraftError(f"{where}: '{field}' must be text, got {type(value).__name__}")
    return value


def _message_list(value: Any, where: str, field: str) -> list[dict[str, Any]]:
    return _turns(value, where, field, ("role", "content"), {role: role for role in ROLES})


def _sharegpt(value: Any, where: str) -> list[dict[str, Any]]:
    return _turns(value, where, "conversations", ("from", "value"), SHAREGPT_ROLES)


def _turns(value: Any, where: str, field: str, keys: tuple[str, str], roles: dict[str, str]):
    """Messages from a list of `{role, content}` objects under the names `keys`, their roles
    read through `roles` (ShareGPT's human -> user)."""
    role_key, content_key = keys
    if not isinstance(value, list) or not value:
        raise LoraftError(
            f"{where}: '{field}' must be a non-empty list of {{{role_key}, {content_key}}} objects"
        )
    messages = []
    for number, item in enumerate(value, 1):
        if not isinstance(item, dict) or role_key not in item or content_key not in item:
            raise LoraftError(
                f"{where}: {field} {number} must be an object with '{role_key}' and '{content_key}'"
            )
        role = roles.get(item[role_key]) if isinstance(item[role_key], str) else None
        if role is None:
            raise LoraftError(
                f"{where}: {field} {number}: {role_key} '{item[role_key]}' is not one of {', '.join(roles)}"
            )
        messages.append(_message(role, _text(item[content_key], where, f"{field} {number} {content_key}")))
    return messages


def _side(value: Any, where: str, field: str, role: str) -> list[dict[str, Any]]:
    """A prompt or completion: a string (one `role` message) or a list of messages."""
    if isinstance(value, str):
        return [_message(role, value)]
    return _message_list(value, where, field)
