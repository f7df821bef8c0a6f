"""The one validation pass: every recipe mistake found before a model loads or a step runs.

`check_recipe` runs in `loraft validate` and at the start of `train`, `eval`, `generate` and
`study`. It checks, in order: the task's own fields (labels, template, prompts, metric),
generation settings against each other and against the model's context, the extra
`evaluate:` metrics, and (given data roots) the first rows of every data file, read by the
same code that training uses. The model's shape is read without loading weights: the four
GPT-2 sizes and `model.config` are known here, a local path's `config.json` is read, and a
hub id is checked only if its config is in the local cache (training checks it once loaded).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from loraft.errors import LoraftError
from loraft.recipe import GenerationSection, Recipe
from loraft.text_metrics import parse_metric_spec

# (n_layer, n_embd, n_head) of the released GPT-2 checkpoints; all have 1024 positions.
GPT2_SHAPES = {
    "gpt2": (12, 768, 12),
    "gpt2-medium": (24, 1024, 16),
    "gpt2-large": (36, 1280, 20),
    "gpt2-xl": (48, 1600, 25),
}
GPT2_CONTEXT = 1024
# GPT-2's layers PEFT's LoRA can wrap: attention in/out, MLP in/out, embeddings, output heads.
GPT2_ADAPTABLE = ("c_attn", "c_proj", "c_fc", "wte", "wpe", "lm_head", "score")


def check_recipe(recipe: Recipe, roots: list[Path] | None = None) -> None:
    """Raise the first mistake in `recipe` as a one-line `LoraftError`; `roots`: check data too."""
    from loraft.tasks import TASK_CLASSES

    task_class = TASK_CLASSES[recipe.task]
    task_class.check_recipe(recipe)
    check_training(recipe)
    facts = model_facts(recipe)
    context = context_of(facts) if facts else None
    check_context(recipe, context)
    check_lora_targets(recipe, facts.get("model_type"))
    if recipe.task != "classification":
        check_generation(recipe.generation, context, "generation")
        for name in recipe.study.decoders:
            check_generation(recipe.decoder_settings(name), context, f"study.decoders.{name}")
        check_extra_metrics(recipe)
    if roots is not None:
        task_class(recipe, roots).check_data()


def check_training(recipe: Recipe) -> None:
    train = recipe.train
    if len(set(train.trackers)) != len(train.trackers):
        raise LoraftError(f"train.trackers: a tracker is listed twice: {train.trackers}")
    if train.precision == "fp16" and not _cuda_available():
        raise LoraftError("train.precision: fp16 needs a CUDA GPU (none found); use bf16 or fp32")


def check_context(recipe: Recipe, context: int | None) -> None:
    """Examples longer than the model's positions would index past its position table."""
    if context is not None and recipe.data.max_length > context:
        raise LoraftError(
            f"data.max_length: {recipe.data.max_length} is longer than the model's context "
            f"({context} positions); use data.max_length={context} or less"
        )


def check_generation(settings: GenerationSection, context: int | None, where: str) -> None:
    """Decoding settings that cannot work together, or with the model's context."""
    if settings.context_window is not None and settings.strategy == "beam":
        raise LoraftError(
            f"{where}.context_window: beam search is not supported with a shortened context; "
            "use strategy greedy or sample"
        )
    if settings.strategy == "beam" and settings.num_beams < 2:
        raise LoraftError(f"{where}.num_beams: beam search needs 2 or more beams (1 is greedy decoding)")
    reencoding = settings.context_window is not None and settings.context_mode == "reencode"
    if context is not None and not reencoding and settings.max_new_tokens >= context:
        raise LoraftError(
            f"{where}.max_new_tokens: {settings.max_new_tokens} leaves no room for a prompt in the "
            f"model's {context}-token context; use {context // 2} or less"
        )


def check_extra_metrics(recipe: Recipe) -> None:
    """`evaluate:` metrics are well formed, local code is allowed (whether or not this run
    generates: `loraft study` scores them too), and, when the run generates, each one loads."""
    for spec in recipe.eval.metrics:
        name, local = parse_metric_spec(spec)
        if local and not recipe.eval.allow_local_metric_code:
            raise LoraftError(
                f"eval.metrics: {spec!r} runs Python code from {name}; "
                "set eval.allow_local_metric_code: true if you trust it"
            )
    if not recipe.eval.generate:
        return
    from loraft.text_metrics import load_metric

    for spec in recipe.eval.metrics:
        load_metric(spec)


def model_facts(recipe: Recipe) -> dict:
    """What the model's config says (`n_positions`, `model_type`), read without weights; empty
    when only the hub could say."""
    if recipe.model.config is not None:
        return {"model_type": "gpt2", "n_positions": recipe.model.config.n_positions}
    name = recipe.model.name.removeprefix("openai-community/")
    if name in GPT2_SHAPES:
        return {"model_type": "gpt2", "n_positions": GPT2_CONTEXT}
    return local_config(recipe.model.name, recipe.model.revision) or {}


def check_lora_targets(recipe: Recipe, model_type: str | None) -> None:
    """On GPT-2, LoRA adapts its linear (Conv1D) and embedding layers, named by their last part."""
    if recipe.method != "lora" or model_type != "gpt2":
        return
    for target in recipe.lora.target_modules:
        if target not in GPT2_ADAPTABLE:
            raise LoraftError(
                f"lora.target_modules: '{target}' is not a GPT-2 layer LoRA can adapt; "
                f"use some of {', '.join(GPT2_ADAPTABLE)}"
            )


def context_of(config) -> int | None:
    """Positions of a model config (a transformers config or its `config.json` as a dict)."""
    values = config if isinstance(config, dict) else config.to_dict()
    return values.get("n_positions") or values.get("max_position_embeddings")


def local_config(name: str, revision: str | None) -> dict | None:
    """The `config.json` of a local model folder (or of a cached hub copy), None if neither."""
    folder = Path(os.path.expanduser(name))
    path = folder / "config.json"
    if folder.is_dir() and not path.is_file():
        raise LoraftError(f"model.name: {folder} is a folder but not a model (no config.json in it)")
    if not folder.exists() and looks_like_a_path(name):
        raise LoraftError(
            f"model.name: '{name}' is not a folder here (from {Path.cwd()}) and cannot be a hub id "
            "(namespace/name)"
        )
    if not path.is_file():
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(name, "config.json", revision=revision)
        except Exception:  # not a valid hub id either: loading the model will say so
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise LoraftError(f"model.name: {path} is not a readable model config") from None


def looks_like_a_path(name: str) -> bool:
    """A name that only a path can be: hub ids are `name` or `namespace/name`."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
