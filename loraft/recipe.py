"""Recipes: YAML files that declare a whole run, validated by one strict schema.

The pydantic models below are the single source of truth for every field, its default and
its help text. `load_recipe` reads a file (following `extends:`), applies command-line
overrides, and validates; every mistake becomes one `LoraftError` line.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loraft.errors import LoraftError

TASKS = ("news", "persona", "sonnets", "text", "classification")


class Section(BaseModel):
    """A recipe section: unknown keys are errors, never silently dropped."""

    model_config = ConfigDict(extra="forbid")


class ScratchConfig(Section):
    """Shape of a GPT-2 built from scratch (random init) instead of loaded."""

    n_layer: int = Field(4, ge=1, description="transformer blocks")
    n_head: int = Field(4, ge=1, description="attention heads")
    n_embd: int = Field(256, ge=8, description="hidden width; a multiple of n_head")
    n_positions: int = Field(256, ge=8, description="context length in tokens")
    dropout: float = Field(0.1, ge=0, lt=1, description="residual, embedding and attention dropout")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ScratchConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        return self


class ModelSection(Section):
    name: str | None = Field(
        "gpt2", description="hub id (gpt2, gpt2-medium, ...) or local path; null with `config`"
    )
    config: ScratchConfig | None = Field(None, description="train a GPT-2 of this shape from scratch")
    tokenizer: str | None = Field(
        None, description="tokenizer hub id or path; default: the model's, or trained on the data"
    )
    tokenizer_vocab_size: int = Field(
        8000, ge=300, description="vocabulary of a byte-level BPE trained on the recipe's data"
    )
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    trust_remote_code: bool = Field(False, description="allow custom modelling code from the hub")

    @model_validator(mode="after")
    def _one_source(self) -> ModelSection:
        if self.config is not None and self.name and "name" in self.model_fields_set:
            raise ValueError("give either model.name (a checkpoint) or model.config (from scratch)")
        if self.config is not None:
            self.name = None
        elif not self.name:
            raise ValueError("model.name is required unless model.config is given")
        return self


class LoraSection(Section):
    r: int = Field(8, ge=1, description="rank of the update matrices")
    alpha: float = Field(16, gt=0, description="scaling numerator: the update is scaled by alpha/r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["c_attn"], min_length=1, description="GPT-2 modules to adapt"
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="which biases train")


class HubData(Section):
    id: str = Field(description="hub dataset id, e.g. fancyzhx/ag_news")
    config: str | None = Field(None, description="dataset configuration, e.g. mrpc for nyu-mll/glue")
    train_split: str = "train"
    eval_split: str = "test"


class DataSection(Section):
    train: str | None = Field(None, description="training file, relative to the data root")
    eval: str | None = Field(None, description="evaluation file; default: split off `train`")
    hub: HubData | None = Field(None, description="hub dataset used when the local files are absent")
    columns: dict[str, str] = Field(
        default_factory=dict, description="task field -> column name in the data, e.g. text: body"
    )
    max_length: int = Field(128, ge=8, description="tokens per example; longer ones are truncated")
    train_size: int | None = Field(None, ge=1, description="use this many training rows")
    eval_size: int | None = Field(None, ge=1, description="use this many evaluation rows")
    eval_fraction: float = Field(
        0.1, gt=0, lt=1, description="share of `train` held out when there is no `eval`"
    )
    template: str | None = Field(None, description="task-specific text template (see the task)")
    labels: list[str] | None = Field(None, description="classification: the label names, in order")
    predict: str | None = Field(None, description="classification: unlabelled file to predict")
    prompts: str | None = Field(None, description="generation prompts (sonnets: first 3 lines of each)")


class TrainSection(Section):
    epochs: float = Field(1, gt=0, description="passes over the training data")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    batch_size: int = Field(8, ge=1, description="examples per device per micro-step")
    eval_batch_size: int | None = Field(None, ge=1, description="default: batch_size")
    grad_accum: int = Field(1, ge=1, description="micro-steps per optimizer step")
    lr: float = Field(2e-4, gt=0, description="peak learning rate (AdamW)")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="share of steps of linear warm-up")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping; null: off")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="mixed precision")
    seed: int = Field(42, description="seeds init, dropout and data order")
    eval_every: int | None = Field(None, ge=1, description="evaluate every N steps; null: per epoch")
    save_every: int | None = Field(None, ge=1, description="save the last checkpoint every N steps")
    log_every: int = Field(10, ge=1, description="write metrics.jsonl every N steps")
    gradient_checkpointing: bool = Field(False, description="trade compute for activation memory")
    tracker: Literal["none", "wandb", "tensorboard"] = Field("none", description="extra logger")


class EvalSection(Section):
    at_start: bool = Field(True, description="evaluate once before training (the baseline)")
    metric: str | None = Field(None, description="picks the best checkpoint; default: the task's")
    max_batches: int | None = Field(None, ge=1, description="cap evaluation batches (quick runs)")
    generate: bool = Field(True, description="run generation metrics (chrF, BLEU) at the end")
    generate_size: int | None = Field(
        None, ge=1, description="held-out texts used for generation metrics; default: task's"
    )
    metrics: list[str] = Field(
        default_factory=list, description="extra Hugging Face evaluate metrics, e.g. evaluate:rouge"
    )


class GenerationSection(Section):
    strategy: Literal["greedy", "sample", "beam"] = Field("greedy", description="decoding rule")
    max_new_tokens: int = Field(64, ge=1, description="tokens to generate per prompt")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    top_k: int = Field(0, ge=0, description="sample from the k most likely tokens; 0: off")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass; 1: off")
    num_beams: int = Field(4, ge=1, description="beams for strategy: beam")
    repetition_penalty: float = Field(1.0, gt=0, description="CTRL-style penalty; 1: off")
    seed: int = Field(0, description="seeds sampling and random context windows")
    prefix: str = Field("", description="priming text prepended to every prompt")
    batch_size: int = Field(8, ge=1, description="prompts decoded together (left padding)")
    context_window: int | tuple[int, int] | None = Field(
        None, description="attend to only the last W tokens; [lo, hi]: W drawn per step"
    )
    context_mode: Literal["reencode", "cache"] = Field(
        "cache", description="how the window is applied (see README)"
    )

    @model_validator(mode="after")
    def _window_range(self) -> GenerationSection:
        window = self.context_window
        if isinstance(window, tuple) and not 1 <= window[0] <= window[1]:
            raise ValueError(f"context_window range {list(window)} needs 1 <= lo <= hi")
        if isinstance(window, int) and window < 1:
            raise ValueError("context_window must be at least 1")
        return self


class StudySection(Section):
    """`loraft study`: several decoders on one model and the same held-out prompts."""

    run: str | None = Field(None, description="run directory whose model is studied; default: model.name")
    checkpoint: Literal["best", "last"] = Field("best", description="which checkpoint of `run`")
    decoders: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"standard": {}},
        description="name -> generation overrides, e.g. {context_window: 32, context_mode: cache}",
    )


class Recipe(Section):
    """A whole run: model, method, task, data, training, evaluation and generation."""

    name: str = Field("run", description="run name; default: the recipe file's stem")
    description: str = Field("", description="one line for humans")
    task: Literal[TASKS] = Field(description="what is learnt: " + ", ".join(TASKS))
    method: Literal["full", "lora", "head"] = Field(
        "lora", description="full: every weight; lora: adapters; head: the output layer only"
    )
    model: ModelSection = Field(default_factory=ModelSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    generation: GenerationSection = Field(default_factory=GenerationSection)
    study: StudySection = Field(default_factory=StudySection)
    output_dir: str | None = Field(None, description="run directory; default: runs/<name>")

    @model_validator(mode="after")
    def _head_needs_a_classifier(self) -> Recipe:
        if self.method == "head" and self.task != "classification":
            raise ValueError(
                f"method 'head' trains only a classification head; task '{self.task}' "
                "generates text (GPT-2 ties its LM head to the embeddings): use lora or full"
            )
        return self

    @model_validator(mode="after")
    def _decoders_are_generation_settings(self) -> Recipe:
        for name in self.study.decoders:
            try:
                self.decoder_settings(name)
            except ValidationError as error:
                first = error.errors()[0]
                where = ".".join(["study.decoders", name, *(str(part) for part in first["loc"])])
                message = first["msg"].removeprefix("Value error, ")
                raise ValueError(f"{where}: {message}") from None
        return self

    def decoder_settings(self, name: str) -> GenerationSection:
        """`generation` with the overrides of study decoder `name`."""
        merged = {**self.generation.model_dump(), **self.study.decoders[name]}
        return GenerationSection.model_validate(merged)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def field_reference(model: type[BaseModel] = Recipe, prefix: str = "") -> list[str]:
    """Markdown table rows `| key | default | meaning |` for every recipe field (README, CLI)."""
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        sections = [a for a in getattr(annotation, "__args__", (annotation,)) if _is_model(a)]
        if sections:
            if annotation not in sections:  # an optional section such as model.config
                rows.append(f"| `{prefix}{name}` | `null` | {field.description or ''} |")
            rows += field_reference(sections[0], f"{prefix}{name}.")
            continue
        default = field.default_factory() if field.default_factory else field.default
        shown = "required" if field.is_required() else yaml.safe_dump(default).strip().removesuffix("...")
        rows.append(f"| `{prefix}{name}` | `{shown.strip()}` | {field.description or ''} |")
    return rows


# --- reading, merging, overriding ---------------------------------------------------------


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe file, follow `extends:`, apply `key.sub=value` overrides, validate."""
    path = Path(path)
    raw = _read_with_extends(path, seen=())
    for override in overrides or []:
        _apply_override(raw, override)
    raw.setdefault("name", path.stem)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as error:
        raise LoraftError(_describe_validation_error(error, path)) from None


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise LoraftError(f"{path}: recipe file not found")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise LoraftError(f"{path}:{where} {problem}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise LoraftError(f"{path}: a recipe must be a mapping of keys, got {type(content).__name__}")
    return content


def _read_with_extends(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in seen:
        chain = " -> ".join(str(p) for p in (*seen, resolved))
        raise LoraftError(f"{path}: `extends` forms a cycle: {chain}")
    raw = _read_yaml_mapping(path)
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw
    if not isinstance(base_name, str):
        raise LoraftError(f"{path}: `extends` must be a file path, got {base_name!r}")
    base = _read_with_extends(path.parent / base_name, seen=(*seen, resolved))
    base.pop("name", None)  # a variant is named after its own file unless it says otherwise
    return deep_merge(base, raw)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Merge `update` into a copy of `base`: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise LoraftError(f"override {override!r}: expected key.sub=value, e.g. train.lr=3e-4")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise LoraftError(f"override {override!r}: the value is not valid YAML") from None
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise LoraftError(f"override {override!r}: {part} is not a section")
        node = child
    node[parts[-1]] = value


# --- error messages -----------------------------------------------------------------------


def _describe_validation_error(error: ValidationError, path: Path) -> str:
    """One line for the first problem (pydantic may find several; fixing one at a time is fine)."""
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"] if not str(part).startswith("function-")]
    loc = [part for part in loc if part not in ("int", "tuple[int,int]", "literal[...]")]
    dotted = ".".join(loc) or "(top level)"
    where = _where(path, loc)
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown key '{dotted}'{_suggestion(loc)}"
    if first["type"] == "missing":
        return f"{where}: missing required key '{dotted}'"
    message = first["msg"].removeprefix("Value error, ")
    if not loc:  # a whole-recipe check: its message names the fields itself
        return f"{where}: {message}"
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{where}: {dotted}: {message}{shown}"


def _where(path: Path, loc: list[str]) -> str:
    """`file:line` of the key in the recipe or the base it extends; just the file if not found
    there (the value came from a default or a command-line override)."""
    current: Path | None = path
    while current is not None and current.is_file():
        root = yaml.compose(current.read_text(encoding="utf-8"))
        line = _line_of(root, loc)
        if line is not None:
            return f"{current}:{line}"
        extends = _read_yaml_mapping(current).get("extends")
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


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
