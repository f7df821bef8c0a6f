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
    "fsdp-gpt2-xl.yaml": ("FSDP", 4),
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
    if distributed == "FSDP":
        from transformers.models.gpt2 import modeling_gpt2

        assert hasattr(modeling_gpt2, config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"])
        assert config.fsdp_config["fsdp_version"] == 2
    if distributed == "DEEPSPEED":
        assert config.deepspeed_config["gradient_accumulation_steps"] == 1  # loraft accumulates itself
