"""Architectures: everything loraft knows about a model family, one module per family.

A family module (`gpt2.py`, `llama.py`, ...) declares one `Architecture`: its layer names, the
layers each target alias means, PEFT's default LoRA targets, the config keys of its shape, how
a model of it is built from scratch, and its fast kernels. Nothing outside this package names a
family's layers or config keys; the rest of loraft asks `architecture_for(model_type)`.

Adding a family is one module here and one line in `FAMILIES` (plus a row in the test matrix).
A model of a family not listed still trains (full, or LoRA on its named layers or
`all-linear`), unpacked and with the plain logits loss: what loraft has not tested, it does not
assume.

No torch or transformers at import time: `loraft validate` reads these tables in a second.
"""

from __future__ import annotations

from loraft.models import gemma, gpt2, gpt_neox, llama, qwen2
from loraft.models.architecture import Architecture, ModelShape, shape_from_config

FAMILIES: dict[str, Architecture] = {
    family.ARCHITECTURE.model_type: family.ARCHITECTURE for family in (gpt2, gpt_neox, llama, qwen2, gemma)
}
DEFAULT_ARCHITECTURE = "gpt2"


def architecture_for(model_type: str | None) -> Architecture | None:
    """The family of a config's `model_type`; None for a family loraft has not tested."""
    return FAMILIES.get(model_type or "")


def known_config(name: str) -> tuple[Architecture, dict] | None:
    """(family, config fields) of a hub id whose shape is known offline (the GPT-2 sizes)."""
    for architecture in FAMILIES.values():
        fields = architecture.known_sizes.get(name.removeprefix(architecture.hub_namespace))
        if fields is not None:
            return architecture, {"model_type": architecture.model_type, **fields}
    return None


def shape_of(config: dict) -> ModelShape:
    """The neutral shape of a `config.json` (as a dict), read in its family's keys."""
    family = architecture_for(config.get("model_type"))
    if family is None:
        return shape_from_config(config)
    return shape_from_config(config, family.config_keys, family.default_mlp_ratio)


def scratch_fields(shape, vocab_size: int, bos: int | None, eos: int | None) -> dict:
    """The `config.json` fields of a from-scratch model of `shape` (a recipe's `model.config`);
    BOS is EOS where the tokenizer has none."""
    family = FAMILIES[shape.architecture]
    return family.scratch_config(shape, vocab_size, bos if bos is not None else eos, eos)


__all__ = [
    "DEFAULT_ARCHITECTURE",
    "FAMILIES",
    "Architecture",
    "ModelShape",
    "architecture_for",
    "known_config",
    "scratch_fields",
    "shape_of",
    "shape_from_config",
]
