"""Reading recipes: YAML files, `extends:` chains, `key.sub=value` overrides, one-line errors.

An error names where the mistake is: `file:line` for a key written in a recipe (or in the base
it extends), `override 'key=value'` for one given on the command line.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from loraft.errors import LoraftError
from loraft.methods import METHODS, other_sections
from loraft.recipe import Recipe, _is_model

MAX_DEPTH = 32  # levels of nesting in a recipe file (its sections need 4)
MAX_EXTENDS = 32  # files in one `extends:` chain


def load_recipe(
    path: str | Path,
    overrides: list[str] | None = None,
    other_methods: Literal["refuse", "drop"] = "refuse",
) -> Recipe:
    """Read a recipe file, follow `extends:`, apply `key.sub=value` overrides, validate.

    A section of another method than the recipe's (`lora:` with `method: full`) is an error
    where it is written; one inherited from a base whose method the file (or an override)
    changed is dropped. `other_methods="drop"` drops them all instead: a run folder's own
    recipe.yaml (older ones wrote every section), a sweep's grid over methods.
    """
    path = Path(path)
    raw = _read_with_extends(path, seen=(), refuse=other_methods == "refuse")
    raw.setdefault("name", run_name_from(path.stem))
    overrides = list(overrides or [])
    method = _method_of(raw, overrides)
    if method is not None:
        raw = _without_sections(raw, other_sections(method))  # a method= override changed it
        overrides = _own_overrides(overrides, method, refuse=other_methods == "refuse")
    with_overrides = raw
    for override in overrides:
        with_overrides = apply_override(with_overrides, override)
    try:
        return Recipe.model_validate(with_overrides)
    except ValidationError as error:
        raise LoraftError(_describe(error, path, raw, overrides)) from None


def _method_of(raw: dict[str, Any], overrides: list[str] = ()) -> str | None:
    """The method a recipe will have (the last `method=` override's, else the file's, else the
    default); None if it is not a method's name (validation says so)."""
    method = raw.get("method", Recipe.model_fields["method"].default)
    for override in overrides:
        key, sep, _ = override.partition("=")
        if sep and key.strip() == "method":
            method = parse_override(override)[1]
    return method if isinstance(method, str) and method in METHODS else None


def _without_sections(raw: dict[str, Any], sections: dict[str, str]) -> dict[str, Any]:
    return {key: value for key, value in raw.items() if key not in sections}


def _own_overrides(overrides: list[str], method: str, refuse: bool) -> list[str]:
    """The overrides without other methods' settings: one-line error for the first, or dropped."""
    sections = other_sections(method)
    own = []
    for override in overrides:
        section = override.partition("=")[0].strip().split(".")[0]
        if section not in sections:
            own.append(override)
        elif refuse:
            raise LoraftError(
                f"override {override!r}: {section}.* belongs to method {sections[section]}; this "
                f"run's method is {method}: drop it, or add method={sections[section]}"
            )
    return own


def run_name_from(stem: str) -> str:
    """A run name from any file name: what a folder name may not hold (spaces, accents, "/")
    becomes "-" ("my recipé v2" -> "my-recip-v2"), never at either end; "run" if nothing is left."""
    name = re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9._-]+", "-", stem)).strip("-._")
    return name or "run"


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Merge `update` into a copy of `base`: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_override(raw: dict[str, Any], override: str) -> dict[str, Any]:
    """A copy of `raw` with one `key.sub=value` override (the value parsed as YAML) set."""
    key, value = parse_override(override)
    result = copy.deepcopy(raw)
    node, parts = result, key.split(".")
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise LoraftError(f"override {override!r}: {part} is not a section")
        node = node[part]
    # a mapping merges into the section it names (`lora={r: 2}` keeps lora.alpha), never resets
    # it; a mapping that is a value (data.columns) is replaced whole
    existing = node.get(parts[-1])
    merges = isinstance(value, dict) and isinstance(existing, dict) and _names_a_section(parts)
    node[parts[-1]] = deep_merge(existing, value) if merges else value
    return result


def _names_a_section(parts: list[str]) -> bool:
    """Whether a dotted key names a recipe section (a schema model), not a value."""
    model: Any = Recipe
    for part in parts:
        field = model.model_fields.get(part) if _is_model(model) else None
        if field is None:
            return False
        members = getattr(field.annotation, "__args__", (field.annotation,))
        model = next((member for member in members if _is_model(member)), None)
    return model is not None


def parse_override(override: str) -> tuple[str, Any]:
    """`("train.lr", 0.0003)` from `"train.lr=3e-4"`; one-line errors for malformed ones."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise LoraftError(f"override {override!r}: expected key.sub=value, e.g. train.lr=3e-4")
    try:
        return key, yaml.safe_load(text)
    except yaml.YAMLError:
        raise LoraftError(f"override {override!r}: the value is not valid YAML") from None


# --- files --------------------------------------------------------------------------------


class RecipeLoader(yaml.SafeLoader):
    """YAML as recipes use it: a key given twice is an error (not "the last one wins"), and
    aliases are refused (`extends:` shares settings; aliases can blow a file up exponentially)."""

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(
                problem="YAML aliases (*name) are not supported in recipes; use extends:",
                problem_mark=event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # noqa: ANN001
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.MarkedYAMLError(
                    problem=f"key '{key}' is given twice in this mapping", problem_mark=key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping; every problem is one line naming the file."""
    if path.is_dir():
        raise LoraftError(f"{path}: is a folder; expected a recipe file")
    if not path.is_file():
        raise LoraftError(f"{path}: recipe file not found")
    try:
        content = yaml.load(path.read_text(encoding="utf-8"), Loader=RecipeLoader)  # noqa: S506 - safe loader
    except UnicodeDecodeError:
        raise LoraftError(f"{path}: not UTF-8 text") from None
    except OSError as error:
        raise LoraftError(f"{path}: cannot read: {error.strerror or error}") from None
    except RecursionError:
        raise LoraftError(
            f"{path}: nested deeper than YAML can be read; a recipe is a few levels deep"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise LoraftError(f"{path}:{where} {problem}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise LoraftError(f"{path}: a recipe must be a mapping of keys, got {type(content).__name__}")
    if any(not isinstance(key, str) for key in content):
        raise LoraftError(f"{path}: every top-level key must be text")
    if _depth(content) > MAX_DEPTH:
        raise LoraftError(
            f"{path}: nested {MAX_DEPTH}+ levels deep; a recipe's sections are a few levels deep"
        )
    return content


def _depth(value: Any, level: int = 0) -> int:
    """How deep mappings and lists nest (stops counting past MAX_DEPTH)."""
    if level > MAX_DEPTH or not isinstance(value, dict | list):
        return level
    children = value.values() if isinstance(value, dict) else value
    return max((_depth(child, level + 1) for child in children), default=level + 1)


def _read_with_extends(path: Path, seen: tuple[Path, ...], refuse: bool = True) -> dict[str, Any]:
    resolved = path.resolve()
    if len(seen) >= MAX_EXTENDS:
        raise LoraftError(f"{path}: `extends` chains more than {MAX_EXTENDS} files; shorten the chain")
    if resolved in seen:
        chain = " -> ".join(str(p) for p in (*seen, resolved))
        raise LoraftError(f"{path}: `extends` forms a cycle: {chain}")
    raw = read_yaml_mapping(path)
    base_name = raw.pop("extends", None)
    merged = raw
    if base_name is not None:
        if not isinstance(base_name, str):
            raise LoraftError(f"{path}: `extends` must be a file path, got {base_name!r}")
        base_path = path.parent / base_name
        if not base_path.is_file():
            raise LoraftError(f"{path}: extends '{base_name}': {base_path} is not a recipe file")
        base = _read_with_extends(base_path, seen=(*seen, resolved), refuse=refuse)
        base.pop("name", None)  # a variant is named after its own file unless it says otherwise
        merged = deep_merge(base, raw)
    method = _method_of(merged)
    if method is None:
        return merged
    sections = other_sections(method)
    written = next((section for section in raw if section in sections), None)
    if written is not None and refuse:
        owner = sections[written]
        default = "" if "method" in merged else " (the default)"
        raise LoraftError(
            f"{_where(path, [written])}: {written}: belongs to method {owner}; this recipe's method "
            f"is {method}{default}: remove the section, or set method: {owner}"
        )
    return _without_sections(merged, sections)  # a base's settings for the method it had


# --- error messages -----------------------------------------------------------------------


def _describe(error: ValidationError, path: Path, raw: dict[str, Any], overrides: list[str]) -> str:
    """One line for the first problem, blamed on the override or the recipe line that caused it."""
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"] if not str(part).startswith("function-")]
    loc = [part for part in loc if part not in ("int", "tuple[int,int]", "literal[...]", "bool")]
    message = _message(first, loc)
    if not loc:  # a whole-recipe check: its message may start with the key it is about
        named = re.match(r"([a-z_]+(?:\.[A-Za-z0-9_-]+)+):", message)
        loc = named.group(1).split(".") if named else []
    culprit = _override_for(loc, overrides)
    if culprit is not None:
        return f"override {culprit!r}: {message}"
    if not loc and overrides and _valid(raw):
        shown = ", ".join(repr(override) for override in overrides)
        return f"overrides {shown}: {message}"
    return f"{_where(path, loc)}: {message}"


def _message(first: dict[str, Any], loc: list[str]) -> str:
    dotted = ".".join(loc) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"unknown key '{dotted}'{_suggestion(loc)}"
    if first["type"] == "missing":
        return f"missing required key '{dotted}'"
    message = first["msg"].removeprefix("Value error, ")
    if not loc:  # a whole-recipe check: its message names the fields itself
        return message
    value = first.get("input")
    shown = "" if isinstance(value, dict) or value == "" else f" (got {_short(repr(value))})"
    return f"{dotted}: {message}{shown}"


def _short(text: str, limit: int = 80) -> str:
    """A value shown in an error, cut to fit one line."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _override_for(loc: list[str], overrides: list[str]) -> str | None:
    """The last override that set `loc` or a section containing it."""
    dotted = ".".join(loc)
    for override in reversed(overrides):
        key = override.partition("=")[0].strip()
        if dotted and (dotted == key or dotted.startswith(key + ".") or key.startswith(dotted + ".")):
            return override
    return None


def _valid(raw: dict[str, Any]) -> bool:
    try:
        Recipe.model_validate(raw)
    except ValidationError:
        return False
    return True


def _where(path: Path, loc: list[str]) -> str:
    """`file:line` of the key in the recipe or the base it extends; just the file if not found
    there (the value came from a default)."""
    current: Path | None = path
    while current is not None and current.is_file():
        root = yaml.compose(current.read_text(encoding="utf-8"))
        line = _line_of(root, loc)
        if line is not None:
            return f"{current}:{line}"
        extends = read_yaml_mapping(current).get("extends")
        current = current.parent / extends if isinstance(extends, str) else None
    return str(path)


def _line_of(node: yaml.Node | None, keys: list[str]) -> int | None:
    """1-based line of the deepest key of `keys` found along the path in a composed YAML tree."""
    line = None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            return line
        match = next(((k, v) for k, v in node.value if k.value == key), None)
        if match is None:
            return line
        line, node = match[0].start_mark.line + 1, match[1]
    return line


def _suggestion(loc: list[str]) -> str:
    section: type[BaseModel] = Recipe
    for part in loc[:-1]:
        field = section.model_fields.get(part)
        annotation = getattr(field, "annotation", None) if field else None
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if _is_model(a)]
        if not candidates:
            return ""
        section = candidates[0]
    matches = difflib.get_close_matches(loc[-1], list(section.model_fields), n=1, cutoff=0.6)
    prefix = ".".join(loc[:-1])
    if not matches:
        return f"; valid keys here: {', '.join(section.model_fields)}"
    return f"; did you mean '{prefix + '.' if prefix else ''}{matches[0]}'?"


@dataclass(frozen=True)
class CodeGrants:
    """What the command line allows to run. A recipe or a run folder may ask for code to run
    (`model.trust_remote_code`, `evaluate:/local/metric`); only a flag typed on the command line
    grants it, since recipes and run folders are things people download and share."""

    trust_remote_code: bool = False
    local_metric_code: bool = False


NO_GRANTS = CodeGrants()


def apply_grants(recipe: Recipe, grants: CodeGrants, source: str | Path) -> Recipe:
    """The recipe with the command line's grants; one line where it asks for what was not
    granted, and a note before any code is allowed to run."""
    from loraft.text_metrics import parse_metric_spec

    if recipe.model.trust_remote_code and not grants.trust_remote_code:
        raise LoraftError(
            f"{source}: model.trust_remote_code is true: the model's own Python code would run; "
            "loraft allows that only from the command line: add --trust-remote-code"
        )
    local = [spec for spec in recipe.eval.metrics if parse_metric_spec(spec)[1]]
    if local and not grants.local_metric_code:
        raise LoraftError(
            f"{source}: eval.metrics {local[0]!r} runs Python code from that folder; loraft allows "
            "that only from the command line: add --allow-local-metric-code"
        )
    if grants.trust_remote_code:
        model = recipe.model.name or "the model"
        print(f"note: --trust-remote-code: Python code that comes with {model} may run")
    if local and grants.local_metric_code:
        print(f"note: --allow-local-metric-code: the metric code in {', '.join(local)} will run")
    model = recipe.model.model_copy(update={"trust_remote_code": grants.trust_remote_code})
    evaluation = recipe.eval.model_copy(update={"allow_local_metric_code": grants.local_metric_code})
    return recipe.model_copy(update={"model": model, "eval": evaluation})
