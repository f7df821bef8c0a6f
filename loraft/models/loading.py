"""Models: load a checkpoint or build one from scratch, with loraft's kernels; count parameters.

The family's `Architecture` (see `loraft.models`) says how a scratch config is built and which
kernels are swapped in; everything here works the same for every family.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from peft import PeftModel
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from loraft.errors import LoraftError
from loraft.hub import go_offline_unless_reachable, is_local, offline_hint
from loraft.models import Architecture, architecture_for, scratch_fields
from loraft.models.quantize import keep_training_kernels, quantization_options
from loraft.models.targets import linear_types
from loraft.packing import use_packed_attention
from loraft.tokenizer import load_tokenizer, train_byte_level_bpe

if TYPE_CHECKING:
    from loraft.recipe import Recipe, ScratchConfig


def auto_class(kind: str) -> type:
    """The transformers auto class of a task kind (`causal_lm` or `classification`)."""
    return AutoModelForSequenceClassification if kind == "classification" else AutoModelForCausalLM


def architecture_of(model: torch.nn.Module) -> Architecture | None:
    """The family of a (possibly PEFT-wrapped) model; None for a family loraft has not tested."""
    return architecture_for(getattr(getattr(model, "config", None), "model_type", None))


def build_tokenizer(recipe: Recipe, texts: Iterable[str]) -> PreTrainedTokenizerBase:
    """The recipe's tokenizer: named, the checkpoint's own, or a BPE trained on `texts`."""
    source = recipe.model.tokenizer or recipe.model.name
    if source:
        return load_tokenizer(source, recipe.model.revision, recipe.model.trust_remote_code)
    return train_byte_level_bpe(texts, recipe.model.tokenizer_vocab_size)


def build_base_model(
    recipe: Recipe, kind: str, tokenizer: PreTrainedTokenizerBase, num_labels: int = 0
) -> PreTrainedModel:
    """The model the method is applied to: the named checkpoint, or a seeded random init."""
    if recipe.model.config is None:
        return load_base_model(recipe, kind, tokenizer, None, num_labels)
    torch.manual_seed(recipe.train.seed)
    config = scratch_config(recipe.model.config, tokenizer)
    if kind == "classification":
        config.num_labels = num_labels
    base = auto_class(kind).from_config(config)
    base.config.pad_token_id = tokenizer.pad_token_id
    return with_fast_kernels(base)


def load_base_model(
    recipe: Recipe,
    kind: str,
    tokenizer: PreTrainedTokenizerBase,
    scratch_base: Path | None,
    num_labels: int | None = None,
) -> PreTrainedModel:
    """The recipe's base weights: the hub id or path in `model.name`, or a saved scratch base."""
    source = str(scratch_base) if recipe.model.config is not None else recipe.model.name
    if recipe.model.config is not None and not (scratch_base and scratch_base.is_dir()):
        raise LoraftError(f"{scratch_base}: the run's from-scratch base model is missing")
    labels = len(recipe.data.labels or []) if num_labels is None else num_labels
    options = {"num_labels": labels} if kind == "classification" else {}
    options.update(quantization_options(recipe))
    if not is_local(source):
        go_offline_unless_reachable()
    try:
        base = auto_class(kind).from_pretrained(
            source,
            revision=recipe.model.revision,
            trust_remote_code=recipe.model.trust_remote_code,
            **options,
        )
    except Exception as error:  # damaged weights or config raise whatever their reader raises
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        hint = "" if is_local(source) else offline_hint()
        raise LoraftError(f"model.name: cannot load '{source}': {reason}{hint}") from None
    check_vocabulary(base, tokenizer, source)
    base.config.pad_token_id = tokenizer.pad_token_id
    keep_training_kernels(base)
    return with_fast_kernels(base)


def check_vocabulary(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, source: str) -> None:
    """A tokenizer with more tokens than the model has embeddings would index past them."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise LoraftError(
            f"model.name: '{source}' has {rows:,} token embeddings but its tokenizer {len(tokenizer):,} "
            "tokens; use the tokenizer the model was trained with (model.tokenizer)"
        )


def with_fast_kernels(model: PreTrainedModel) -> PreTrainedModel:
    """The model with loraft's kernels, the same functions computed faster: the family's own
    (GPT-2's one-kernel GELU) and SDPA attention that also runs padding-free packed rows (see
    `loraft.packing`; the implementation is not saved with the config), and an output layer
    that skips the empty product of the chunked loss (`loraft.lm_loss.OutputLayer`)."""
    from loraft.lm_loss import skip_empty_products

    skip_empty_products(model)
    architecture = architecture_of(model)
    if architecture is not None and architecture.fast_kernels is not None:
        architecture.fast_kernels(model)
    use_packed_attention(model)
    return model


def scratch_config(shape: ScratchConfig, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """A config of the recipe's family and shape, sized to the tokenizer's vocabulary."""
    return config_from_fields(
        scratch_fields(shape, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    )


def config_from_fields(fields: dict) -> PretrainedConfig:
    """A transformers config from `config.json` fields (`model_type` among them)."""
    values = dict(fields)
    return AutoConfig.for_model(values.pop("model_type"), **values)


SPILL_PATTERN = "frozen-fp32-*.bin"  # `frozen_weights_in`'s file, one a process


@contextlib.contextmanager
def frozen_weights_in(
    model: torch.nn.Module, dtype: torch.dtype | None, spill: Path | None = None
) -> Iterator[None]:
    """Within: the frozen weights of the matrix products (linear layers, not the embeddings or
    an output layer tied to them) held in `dtype`, autocast's; their fp32 values are put back on
    the way out. Autocast casts these weights anew in every forward pass (it caches the casts of
    trained weights only); held cast, they are cast once, to the same values, so the numbers do
    not change: 7% more tokens/s for LoRA in bf16 on GPT-2 small (CPU).

    With a `spill` folder the fp32 values wait in a file there (`frozen-fp32-<pid>.bin`, deleted
    on the way out), not in memory: a LoRA run in bf16 holds its frozen matrices once,
    in bf16, 340 MB less on GPT-2 small. A disk that cannot take them keeps them in memory."""
    if dtype is None:
        yield
        return
    output = model.get_output_embeddings()
    frozen = [
        module.weight
        for module in model.modules()
        if isinstance(module, linear_types())
        and module is not output
        and not module.weight.requires_grad
        and module.weight.dtype == torch.float32
    ]
    path = spill_frozen(frozen, spill)
    kept = None if path else [weight.data for weight in frozen]
    for weight in frozen:
        weight.data = weight.data.to(dtype)
    try:
        yield
    finally:
        if path is None:
            for weight, value in zip(frozen, kept, strict=True):
                weight.data = value
        else:
            restore_frozen(frozen, path)


def spill_frozen(frozen: list[torch.Tensor], folder: Path | None) -> Path | None:
    """The frozen weights' fp32 bytes written, one after another, to a file in `folder` (None:
    not written). Raw bytes through plain file I/O, in both directions: `torch.save` and
    safetensors read back through a memory map, whose pages count in the process's resident
    memory (its peak), and safetensors writes the whole file in memory first."""
    if folder is None or not frozen:
        return None
    path = folder / SPILL_PATTERN.replace("*", str(os.getpid()))
    try:
        with path.open("wb") as stream:
            for weight in frozen:
                stream.write(weight.data.detach().cpu().contiguous().numpy().data)
    except OSError as error:
        path.unlink(missing_ok=True)
        print(
            f"note: {folder}: cannot hold the frozen fp32 weights on disk ({error.strerror}); kept in memory"
        )
        return None
    return path


def restore_frozen(frozen: list[torch.Tensor], path: Path) -> None:
    """Each frozen weight back in fp32, read from `spill_frozen`'s file into fresh memory (its
    16-bit copy freed as it goes); the file is deleted."""
    with path.open("rb") as stream:
        for weight in frozen:
            value = torch.empty(weight.shape, dtype=torch.float32)
            stream.readinto(value.numpy().data.cast("B"))
            weight.data = value.to(weight.device)
    path.unlink(missing_ok=True)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) exactly as PEFT counts them (its own method for PEFT models)."""
    if isinstance(model, PeftModel):
        return model.get_nb_trainable_parameters()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def describe_parameters(trainable: int, total: int) -> str:
    """The one-line parameter report printed at the start of every run."""
    return (
        f"trainable params: {trainable:,d} || all params: {total:,d} || "
        f"trainable%: {100 * trainable / total:.4f}"
    )
