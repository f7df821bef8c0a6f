"""The shipped accelerate configs parse with accelerate's own loader and say what the README says."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

CONFIGS = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))
EXPECTED = {
    "single-gpu.yaml": ("NO", 1),
    "multi-gpu-ddp.yaml": ("MULTI_GPU", 4),
    "multi-node-ddp.yaml": ("MULTI_GPU", 16),
    "fsdp.yaml": ("FSDP", 4),
    "deepspeed-zero2.yaml": ("DEEPSPEED", 4),
}


def test_every_config_is_shipped_and_named_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    assert sorted(path.name for path in CONFIGS) == sorted(EXPECTED)
    for name in EXPECTED:
        assert f"accelerate launch --config_file configs/accelerate/{name}" in readme


@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_accelerate_loads_the_config(path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    distributed, processes = EXPECTED[path.name]
    assert (str(config.distributed_type).split(".")[-1], config.num_processes) == (distributed, processes)
    assert config.mixed_precision == "bf16" and config.use_cpu is False
    if distributed == "FSDP":  # blocks from the model's own _no_split_modules, for every family
        assert "fsdp_transformer_layer_cls_to_wrap" not in config.fsdp_config
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert config.fsdp_config["fsdp_version"] == 2
    if distributed == "DEEPSPEED":
        assert config.deepspeed_config["gradient_accumulation_steps"] == 1  # loraft accumulates itself


def test_every_family_names_the_blocks_fsdp_wraps(family_dirs: dict) -> None:
    """The FSDP config wraps what `_no_split_modules` names: a class each model instantiates."""
    from accelerate.utils.dataclasses import get_module_class_from_name
    from transformers import AutoModelForCausalLM

    for directory in family_dirs.values():
        model = AutoModelForCausalLM.from_pretrained(directory)
        blocks = [name for name in model._no_split_modules if get_module_class_from_name(model, name)]
        assert blocks, type(model).__name__
