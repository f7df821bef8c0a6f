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

from loraft.methods import METHODS, other_sections
from loraft.models import DEFAULT_ARCHITECTURE, FAMILIES

TRACKERS = ("tensorboard", "wandb")
# Keys that may change when a run is resumed: the step budget (and the switch itself).
BUDGET_KEYS = ("train.max_steps", "train.epochs", "train.resume")
# Keys that say where a run lives, not what it computes: a copied or moved run resumes.
PLACE_KEYS = ("output_dir",)
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
    """Shape of a model built from scratch (random init) instead of loaded, in neutral terms;
    a family's own key names (GPT-2's `n_layer`, `n_head`, `n_embd`, `n_positions`) work too."""

    architecture: str = Field(DEFAULT_ARCHITECTURE, description="model family: " + ", ".join(FAMILIES))
    layers: int = Field(4, ge=1, le=1024, description="transformer blocks")
    heads: int = Field(4, ge=1, le=1024, description="attention heads")
    kv_heads: int | None = Field(
        None, ge=1, le=1024, description="key/value heads (grouped-query attention); default: heads"
    )
    width: int = Field(256, ge=8, le=65536, description="hidden width; a multiple of heads")
    mlp_width: int | None = Field(
        None, ge=1, le=262144, description="MLP width; default: the family's (4 x width; Llama-like 8/3)"
    )
    context: int = Field(256, ge=8, le=1048576, description="context length in tokens")
    dropout: float = Field(
        0.1, ge=0, lt=1, description="the family's dropout (GPT-2: residual, embedding, attention)"
    )

    @model_validator(mode="before")
    @classmethod
    def _family_names(cls, values: Any) -> Any:
        """`n_layer: 4` means `layers: 4`: the config key names of every family (GPT-2's,
        Llama's `num_hidden_layers`, ...) name the same neutral fields."""
        if not isinstance(values, dict):
            return values
        renamed = dict(values)
        families = FAMILIES.values()
        aliases = {(key, name) for family in families for name, key in family.config_keys.items() if key}
        for key, name in sorted(aliases):
            if key in renamed and key != name:
                if name in renamed:
                    raise ValueError(f"give {name} or {key}, not both (they are the same field)")
                renamed[name] = renamed.pop(key)
        return renamed

    @model_validator(mode="after")
    def _a_buildable_shape(self) -> ScratchConfig:
        family = FAMILIES.get(self.architecture)
        if family is None:
            raise ValueError(f"architecture: '{self.architecture}' is not one of {', '.join(FAMILIES)}")
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be a multiple of heads ({self.heads})")
        if self.kv_heads is not None and self.kv_heads != self.heads:
            if not family.grouped_query:
                raise ValueError(f"kv_heads: {family.family} has no grouped-query attention; remove it")
            if self.heads % self.kv_heads:
                raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        return self


class ModelSection(Section):
    name: str | None = Field(
        "gpt2", description="hub id (gpt2, gpt2-medium, ...) or local path; null with `config`"
    )
    config: ScratchConfig | None = Field(None, description="build a model of this shape from scratch")
    tokenizer: str | None = Field(
        None, description="tokenizer hub id or path; default: the model's, or trained on the data"
    )
    tokenizer_vocab_size: int = Field(
        8000, ge=300, description="vocabulary of a byte-level BPE trained on the recipe's data"
    )
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    quantize: Literal["4bit"] | None = Field(
        None,
        description="4bit: the base's linear layers in NF4 (bitsandbytes), LoRA on top: QLoRA; "
        "needs the qlora extra",
    )
    trust_remote_code: bool = Field(
        False, description="the model's own code; runs only with --trust-remote-code on the command line"
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSection:
        if self.config is not None and self.name and "name" in self.model_fields_set:
            raise ValueError("give either model.name (a checkpoint) or model.config (from scratch)")
        if self.config is not None and self.quantize:
            raise ValueError("model.quantize: a model trained from scratch has no weights to quantize")
        if self.config is not None:
            self.name = None
        elif not self.name:
            raise ValueError("model.name is required unless model.config is given")
        return self


class LoraSection(Section):
    r: int = Field(8, ge=1, le=65536, description="rank of the update matrices; at most the layers' width")
    alpha: float = Field(16, gt=0, description="scaling numerator: the update is scaled by alpha/r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: list[str] | None = Field(
        None,
        min_length=1,
        description="layers: names (c_attn), paths (mlp.c_proj) or attention, attention_output, mlp, "
        "all-linear; null: the family's default (PEFT's)",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="which biases train")
    use_rslora: bool = Field(False, description="rsLoRA: scale the update by alpha/sqrt(r), not alpha/r")
    use_dora: bool = Field(
        False, description="DoRA: a learnt magnitude per output, LoRA for the direction (slower steps)"
    )
    plus_lr_ratio: float | None = Field(
        None, ge=1, le=1e4, description="LoRA+: the B matrices learn this many times train.lr; null: off"
    )
    init: str = Field(
        "kaiming",
        description="kaiming (B zero, PEFT's default), gaussian, pissa (principal singular vectors), "
        "pissa_niter_N (fast randomised SVD), olora (QR; nn.Linear layers only)",
    )

    @field_validator("init")
    @classmethod
    def _known_init(cls, init: str) -> str:
        if not re.fullmatch(r"kaiming|gaussian|pissa|pissa_niter_[1-9][0-9]{0,2}|olora", init):
            raise ValueError("expected kaiming, gaussian, pissa, pissa_niter_N (N from 1 to 999) or olora")
        return init

    @field_validator("target_modules")
    @classmethod
    def _distinct_names(cls, names: list[str] | None) -> list[str] | None:
        if names is None:
            return names
        if any(not name.strip() for name in names) or len(set(names)) != len(names):
            raise ValueError(f"expected distinct, non-empty module names, got {names}")
        return names


class TargetedSection(Section):
    """A method's section whose first setting is the layers it adapts."""

    target_modules: list[str] | None = Field(
        None,
        min_length=1,
        description="layers, as for lora.target_modules; null: the family's default for the method",
    )

    @field_validator("target_modules")
    @classmethod
    def _distinct_names(cls, names: list[str] | None) -> list[str] | None:
        return LoraSection._distinct_names(names)


class VeraSection(TargetedSection):
    """`method: vera`: the shared rank and the layers it adapts (LoRA's defaults)."""

    r: int = Field(256, ge=1, le=65536, description="rank of the shared random matrices (VeRA's default 256)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the VeRA input")
    d_initial: float = Field(0.1, gt=0, description="starting value of the trained d vectors")


class IA3Section(TargetedSection):
    """`method: ia3`: which layers' activations are rescaled (PEFT's defaults)."""


class AdaloraSection(TargetedSection):
    """`method: adalora`: the rank budget and its schedule (PEFT's names and defaults); the
    run's step count is the schedule's `total_step`."""

    init_r: int = Field(12, ge=1, le=65536, description="rank every adapted layer starts with")
    target_r: int = Field(
        8, ge=1, le=65536, description="average rank per layer once pruned; less than init_r"
    )
    alpha: float = Field(8, gt=0, description="scaling numerator: the update is scaled by alpha/rank")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    tinit: int = Field(0, ge=0, description="steps at the full budget before ranks are pruned")
    tfinal: int = Field(0, ge=0, description="last steps at the final budget, ranks fixed")
    deltaT: int = Field(1, ge=1, description="steps between two reallocations of the budget")  # noqa: N815
    beta1: float = Field(0.85, gt=0, lt=1, description="smoothing of the importance scores (EMA)")
    beta2: float = Field(0.85, gt=0, lt=1, description="smoothing of their uncertainty (EMA)")
    orth_reg_weight: float = Field(
        0.5, ge=0, description="weight of the orthogonality penalty on A and B, added to the loss"
    )

    @model_validator(mode="after")
    def _budget_shrinks(self) -> AdaloraSection:
        if self.target_r >= self.init_r:  # PEFT's allocator fails on a budget with nothing to prune
            raise ValueError(f"target_r ({self.target_r}) must be less than init_r ({self.init_r})")
        return self


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
    validation_fraction: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="share of `train` held out to select checkpoints on; `eval` is then the test set, "
        "scored once with the selected checkpoint; null: selection and report share `eval`",
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
    format: Literal["messages", "prompt_completion", "alpaca", "sharegpt"] | None = Field(
        None, description="chat: the rows' format; null: detected from each file's first row"
    )
    chat_template: str | None = Field(
        None,
        description="chat: a Jinja chat template, or its file; null: the tokenizer's (or loraft's default)",
    )
    train_on: Literal["assistant", "all", "last_assistant"] | None = Field(
        None, description="chat: which tokens carry the loss; null: assistant (every assistant turn)"
    )

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
        False, description="set by --allow-local-metric-code: `evaluate:/local/dir` metrics run that code"
    )
    retain: str | None = Field(
        None,
        description="causal tasks: a text file (a text a line) like the base's pretraining data, whose "
        "loss is measured before and after fine-tuning: what the run forgot",
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


class PromptTuningSection(Section):
    """`method: prompt_tuning`: trained embeddings of virtual tokens put before every row."""

    num_virtual_tokens: int = Field(20, ge=1, le=4096, description="virtual tokens put before each row")
    init: Literal["random", "sample_vocab", "text"] = Field(
        "random",
        description="random; sample_vocab: embeddings of random vocabulary tokens; text: init_text's",
    )
    init_text: str | None = Field(None, description="the text whose token embeddings start them (init: text)")

    @model_validator(mode="after")
    def _text_for_text(self) -> PromptTuningSection:
        if (self.init == "text") != bool(self.init_text and self.init_text.strip()):
            raise ValueError("init_text is needed with init: text, and only then")
        return self


class Recipe(Section):
    """A whole run: model, method, task, data, training, evaluation and generation."""

    name: str = Field("run", description="run name; default: the recipe file's stem")
    description: str = Field("", description="one line for humans")
    task: str = Field(description="what is learnt: one of the tasks listed under this table")
    method: Literal[tuple(METHODS)] = Field(
        "lora", description="; ".join(f"{name}: {method.summary}" for name, method in METHODS.items())
    )
    model: ModelSection = Field(default_factory=ModelSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    ia3: IA3Section = Field(default_factory=IA3Section)
    vera: VeraSection = Field(default_factory=VeraSection)
    adalora: AdaloraSection = Field(default_factory=AdaloraSection)
    prompt_tuning: PromptTuningSection = Field(default_factory=PromptTuningSection)
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

    @field_validator("task")
    @classmethod
    def _a_known_task(cls, task: str) -> str:
        from loraft.tasks import TASK_CLASSES  # the tasks read recipes: imported when needed

        if task not in TASK_CLASSES:
            close = difflib.get_close_matches(task, TASK_CLASSES, 1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"'{task}' is not a task: use one of {', '.join(TASK_CLASSES)}{hint}")
        return task

    @model_validator(mode="after")
    def _quantized_bases_train_lora(self) -> Recipe:
        if self.model.quantize and self.method != "lora":
            raise ValueError(
                f"model.quantize: a 4-bit base trains LoRA adapters (QLoRA), not method '{self.method}'; "
                "use method: lora, or remove model.quantize"
            )
        if self.model.quantize and self.lora.init not in ("kaiming", "gaussian"):
            raise ValueError(  # PiSSA's SVD needs fp32 weights; OLoRA's residual is re-quantised
                f"lora.init: {self.lora.init} rewrites the base weights, which a 4-bit base cannot "
                "hold exactly; use kaiming or gaussian with model.quantize"
            )
        return self

    @model_validator(mode="after")
    def _method_fits_the_task(self) -> Recipe:
        problem = METHODS[self.method].recipe_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def task_kind(self) -> str:
        """`causal_lm` or `classification`: which head the model has (the task's own word)."""
        from loraft.tasks import TASK_CLASSES

        return TASK_CLASSES[self.task].kind

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
        from loraft.run_dir import default_run_dir  # the run folder's names live there

        return Path(self.output_dir).expanduser() if self.output_dir else default_run_dir(self.name)

    def to_yaml(self) -> str:
        """The whole recipe, defaults written out, but no other method's section (a recipe of
        method `full` may not have `lora:`)."""
        dump = self.model_dump(mode="json", exclude=set(other_sections(self.method)))
        return yaml.safe_dump(dump, sort_keys=False)

    def first_difference(self, other: Recipe, ignore: tuple[str, ...] = ()) -> str | None:
        """The first dotted key whose value differs from `other`'s, as `key: ours vs theirs`."""
        ours, theirs = flatten(self.model_dump(mode="json")), flatten(other.model_dump(mode="json"))
        for key in dict.fromkeys([*ours, *theirs]):
            if key not in ignore and ours.get(key) != theirs.get(key):
                return f"{key}: {ours.get(key)!r} vs {theirs.get(key)!r}"
        return None


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A recipe dump as dotted keys (`train.lr`); columns and decoders stay whole."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key not in ("columns", "decoders"):
            flat.update(flatten(value, f"{prefix}{key}."))
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


def choices_reference() -> list[str]:
    """The values `task`, `method` and `model.config.architecture` take, each from its registry."""
    from loraft.tasks import TASK_CLASSES

    tasks = ", ".join(f"{name} ({task.kind})" for name, task in TASK_CLASSES.items())
    methods = "; ".join(f"{name}: {method.summary}" for name, method in METHODS.items())
    families = ", ".join(f"{name} ({family.family})" for name, family in FAMILIES.items())
    return [f"tasks: {tasks}", f"methods: {methods}", f"families (model.config.architecture): {families}"]


def _member_types(annotation: Any) -> tuple:
    """The types of a field annotation: (int, NoneType) for `int | None`."""
    return getattr(annotation, "__args__", (annotation,))


def _is_numeric(annotation: Any) -> bool:
    return any(member in (int, float) for member in _member_types(annotation))


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
