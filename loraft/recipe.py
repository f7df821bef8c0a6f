"""The recipe schema: the single source of truth for every field, its default and its help.

Sections are strict pydantic models (an unknown key is an error, never dropped). Reading files,
`extends:` and command-line overrides live in `loraft.recipe_files`; checks that need the task,
the data or the model's shape live in `loraft.checks`.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

TASKS = ("news", "persona", "sonnets", "text", "classification")
TRACKERS = ("tensorboard", "wandb")
# Keys that may change when a run is resumed: the step budget (and the switch itself).
BUDGET_KEYS = ("train.max_steps", "train.epochs", "train.resume")
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


SEED_RANGE = {"ge": 0, "le": 2**32 - 1}  # what numpy and torch seeding accept


class Section(BaseModel):
    """A recipe section: unknown keys are errors, never silently dropped; numbers are finite
    and never `true`/`false` (pydantic would read `batch_size: true` as 1)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and bool not in _member_types(annotation) and _is_numeric(annotation):
            raise ValueError("expected a number, not true/false")
        return value


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

    @field_validator("target_modules")
    @classmethod
    def _distinct_names(cls, names: list[str]) -> list[str]:
        if any(not name.strip() for name in names) or len(set(names)) != len(names):
            raise ValueError(f"expected distinct, non-empty module names, got {names}")
        return names


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
    seed: int = Field(
        42,
        **SEED_RANGE,
        description="seeds the held-out split and row sampling; train.seed does not change the data",
    )
    packing: bool = Field(
        True,
        description="causal tasks: a micro-batch's examples in one row, no padding, each seeing only itself",
    )
    group_by_length: bool = Field(
        True, description="classification: batch texts of similar length together (less padding)"
    )
    template: str | None = Field(None, description="task-specific text template (see the task)")
    labels: list[str] | None = Field(None, description="classification: the label names, in order")
    predict: str | None = Field(None, description="classification: unlabelled file to predict")
    prompts: str | None = Field(None, description="generation prompts (sonnets: first 3 lines of each)")

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_text(cls, labels: Any) -> Any:
        """`[0, 1, 2]` means the labels "0", "1", "2": data files hold them as text."""
        if not isinstance(labels, list):
            return labels
        named = [
            str(label) if isinstance(label, int | float) and not isinstance(label, bool) else label
            for label in labels
        ]
        if any(isinstance(label, str) and label != label.strip() for label in named):
            raise ValueError(f"label names must not start or end with spaces: {named}")
        return named


class TrainSection(Section):
    epochs: float = Field(1, gt=0, description="passes over the training data")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    batch_size: int = Field(8, ge=1, description="examples per device per micro-step")
    eval_batch_size: int | None = Field(
        None, ge=1, description="examples per evaluation batch; default: 2 x batch_size (no gradients kept)"
    )
    grad_accum: int = Field(1, ge=1, description="micro-steps per optimizer step")
    lr: float = Field(2e-4, gt=0, description="peak learning rate (AdamW)")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="share of steps of linear warm-up")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping; null: off")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 where matmul is native (Ampere+ GPUs, CPUs with AMX/avx512_bf16), else fp32",
    )
    seed: int = Field(42, **SEED_RANGE, description="seeds initialisation, dropout and the order of batches")
    eval_every: int | None = Field(None, ge=1, description="evaluate every N steps; null: per epoch")
    save_every: int | None = Field(
        None, ge=1, description="save the training state and `last` every N steps; null: at each eval"
    )
    keep_last: int = Field(1, ge=1, description="training states kept for resuming")
    resume: bool | Literal["auto"] = Field(
        False, description="continue the run in output_dir; auto: when an unfinished one is there"
    )
    log_every: int = Field(10, ge=1, description="write metrics.jsonl every N steps")
    gradient_checkpointing: bool = Field(False, description="trade compute for activation memory")
    compile: bool = Field(
        False, description="torch.compile the model: minutes to compile, faster steps after"
    )
    trackers: list[Literal[TRACKERS]] = Field(
        default_factory=list, description="loggers besides metrics.jsonl: tensorboard, wandb"
    )


class EvalSection(Section):
    at_start: bool = Field(True, description="evaluate once before training (the baseline)")
    metric: str | None = Field(None, description="picks the best checkpoint; default: the task's")
    periodic_size: int | None = Field(
        None, ge=1, description="eval examples used during training (seeded sample); the end uses all"
    )
    generate: bool = Field(True, description="run generation metrics (chrF, BLEU) at the end")
    generate_size: int | None = Field(
        None, ge=1, description="held-out texts used for generation metrics; default: task's"
    )
    metrics: list[str] = Field(
        default_factory=list, description="extra Hugging Face evaluate metrics, e.g. evaluate:rouge"
    )
    allow_local_metric_code: bool = Field(
        False, description="allow `evaluate:/local/dir` metrics, which run Python code from that folder"
    )


class GenerationSection(Section):
    strategy: Literal["greedy", "sample", "beam"] = Field("greedy", description="decoding rule")
    max_new_tokens: int = Field(64, ge=1, description="tokens to generate per prompt")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    top_k: int = Field(0, ge=0, description="sample from the k most likely tokens; 0: off")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass; 1: off")
    num_beams: int = Field(4, ge=1, description="beams for strategy: beam")
    repetition_penalty: float = Field(1.0, gt=0, description="CTRL-style penalty; 1: off")
    seed: int = Field(0, **SEED_RANGE, description="seeds sampling and random context windows")
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
        min_length=1,
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

    @field_validator("output_dir")
    @classmethod
    def _a_folder(cls, output_dir: str | None) -> str | None:
        if output_dir is not None and not output_dir.strip():
            raise ValueError("expected a folder path, or null for runs/<name>")
        return output_dir

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, name: str) -> str:
        if not RUN_NAME.match(name):
            raise ValueError("expected letters, digits, '.', '_' or '-' (it names the run's folder)")
        return name

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
                if first["type"] == "extra_forbidden":
                    close = difflib.get_close_matches(
                        str(first["loc"][-1]), GenerationSection.model_fields, 1
                    )
                    message = "unknown generation setting" + (
                        f"; did you mean '{close[0]}'?" if close else ""
                    )
                raise ValueError(f"{where}: {message}") from None
        return self

    def decoder_settings(self, name: str) -> GenerationSection:
        """`generation` with the overrides of study decoder `name`."""
        merged = {**self.generation.model_dump(), **self.study.decoders[name]}
        return GenerationSection.model_validate(merged)

    @property
    def eval_batch_size(self) -> int:
        return self.train.eval_batch_size or 2 * self.train.batch_size

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir).expanduser() if self.output_dir else Path("runs") / self.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def first_difference(self, other: Recipe, ignore: tuple[str, ...] = ()) -> str | None:
        """The first dotted key whose value differs from `other`'s, as `key: ours vs theirs`."""
        ours, theirs = _flatten(self.model_dump(mode="json")), _flatten(other.model_dump(mode="json"))
        for key in dict.fromkeys([*ours, *theirs]):
            if key not in ignore and ours.get(key) != theirs.get(key):
                return f"{key}: {ours.get(key)!r} vs {theirs.get(key)!r}"
        return None


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key not in ("columns", "decoders"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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


def _member_types(annotation: Any) -> tuple:
    """The types of a field annotation: (int, NoneType) for `int | None`."""
    return getattr(annotation, "__args__", (annotation,))


def _is_numeric(annotation: Any) -> bool:
    return any(member in (int, float) for member in _member_types(annotation))


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
