"""Shared fixtures: a tiny GPT-2 and a byte-level BPE built here, saved, and loaded by path.

The tiny model is the same whether or not ../shared/data is beside the repository: its
tokenizer is trained on the Joker lines that ship in data/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from loraft.cli import run as run_cli
from loraft.recipe_files import load_recipe
from loraft.tokenizer import train_byte_level_bpe
from loraft.training import train_recipe

# Tiny models gain nothing from threads, and on a shared 2-core machine oversubscribed
# threads make a 20 ms step take a second. Subprocesses inherit the variable.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"  # no test reaches for the hub
torch.set_num_threads(1)

# ../shared/data beside the repository (CI has it, a user's clone does not); .ci/run also points
# LORAFT_TEST_SHARED_DATA at nothing to run the suite as a user's clone would.
SHARED_DATA = Path(
    os.environ.get("LORAFT_TEST_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
JOKER = REPO / "data" / "joker" / "joker.jsonl"


def shared_file(relative: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason (a user's clone lacks it)."""
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"needs ../shared/data/{relative} (real data, not shipped with loraft)")
    return path


def save_tiny_gpt2(directory: Path, dropout: float = 0.0) -> Path:
    """A 2-layer GPT-2 (width 64) with a 1,000-token BPE trained on the shipped Joker lines."""
    texts = [" ".join(json.loads(line).values()) for line in JOKER.read_text().splitlines()]
    tokenizer = train_byte_level_bpe(texts * 3, vocab_size=1000)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=64,
        n_layer=2,
        n_head=2,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GPT-2 without dropout, saved like a hub checkpoint."""
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture
def loraft(capsys: pytest.CaptureFixture) -> Callable[..., tuple[int, str, str]]:
    """`loraft ARGS...` in this process: (exit code, stdout, stderr)."""

    def invoke(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = run_cli([str(arg) for arg in args])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def loraft_process(*args: str, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m loraft ARGS...` in a fresh process (for signals, launchers and main())."""
    command = [sys.executable, "-m", "loraft", *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def read_records(run: Path, kind: str) -> list[dict]:
    """metrics.jsonl records of one kind (`train` or `eval`)."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["kind"] == kind]


def joker_recipe(model_dir: Path, run: Path, *overrides: str):
    """The Joker persona recipe on a local model, quick settings, no generation."""
    quick = [
        f"model.name={model_dir}",
        f"output_dir={run}",
        "data.max_length=48",
        "eval.generate=false",
        "train.epochs=1",
        "train.precision=fp32",  # numbers are compared across runs and machines
    ]
    return load_recipe(RECIPES / "joker.yaml", [*quick, *overrides])


@pytest.fixture(scope="session")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A LoRA and a full Joker run of the tiny model (12 steps each, no generative eval)."""
    made = {}
    for method, lr in (("lora", "1e-2"), ("full", "2e-3")):
        run = tmp_path_factory.mktemp(method) / "run"
        overrides = [f"method={method}", "train.max_steps=12", f"train.lr={lr}", "train.eval_every=6"]
        train_recipe(joker_recipe(tiny_model_dir, run, *overrides))
        made[method] = run
    return made


# Tiny models of every family loraft knows, each as a hub checkpoint would be: its config class,
# random weights, a byte-level BPE; Llama and Gemma's tokenizers start every text with BOS.
FAMILY_SHAPES = {
    "gpt2": {
        "n_embd": 64,
        "n_layer": 2,
        "n_head": 2,
        "n_positions": 256,
        "resid_pdrop": 0,
        "embd_pdrop": 0,
        "attn_pdrop": 0,
    },
    "gpt_neox": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
    },
    "llama": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},
    "qwen2": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},
    "gemma": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},
}
ADDS_BOS = ("llama", "gemma")


def save_tiny_family_model(directory: Path, family: str) -> Path:
    """A 2-layer model of `family` (width 64; grouped-query attention where the family has it)
    with a 1,000-token BPE trained on the shipped Joker lines."""
    from tokenizers import processors
    from transformers import AutoConfig, AutoModelForCausalLM

    texts = [" ".join(json.loads(line).values()) for line in JOKER.read_text().splitlines()]
    tokenizer = train_byte_level_bpe(texts * 3, vocab_size=1000)
    if family in ADDS_BOS:
        tokenizer.add_special_tokens({"bos_token": "<s>"})
        tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.bos_token_id)]
        )
    shape = dict(FAMILY_SHAPES[family])
    if family != "gpt2":
        shape.update(intermediate_size=128, max_position_embeddings=256)
    if family == "gemma":
        shape["head_dim"] = 16  # Gemma's own default is 256
    bos = tokenizer.bos_token_id
    config = AutoConfig.for_model(
        family, vocab_size=len(tokenizer), bos_token_id=bos, eos_token_id=tokenizer.eos_token_id, **shape
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny saved model per family, by `model_type`."""
    return {
        family: save_tiny_family_model(tmp_path_factory.mktemp(family), family) for family in FAMILY_SHAPES
    }
