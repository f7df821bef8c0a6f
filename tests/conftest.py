"""Shared fixtures: a tiny GPT-2 and a byte-level BPE built here, saved, and loaded by path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from loraft.recipe import load_recipe
from loraft.tokenizer import train_byte_level_bpe
from loraft.trainer import train_recipe

# Tiny models gain nothing from threads, and on a shared 2-core machine oversubscribed
# threads make a 20 ms step take a second. Subprocesses inherit the variable.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]


def shared_file(relative: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason (a user's clone lacks it)."""
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"needs ../shared/data/{relative} (real data, not shipped with loraft)")
    return path


def _tokenizer_texts() -> list[str]:
    texts = [line for line in (REPO / "data" / "joker" / "joker.jsonl").read_text().splitlines()]
    for relative in ("ag_news/news.csv", "cs224n/ids-sst-train.csv", "cs224n/sonnets.txt"):
        path = SHARED_DATA / relative
        if path.is_file():
            texts.extend(path.read_text(encoding="utf-8-sig").splitlines()[:3000])
    return texts


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer GPT-2 (width 64) with a 1,000-token BPE, saved like a hub checkpoint."""
    directory = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = train_byte_level_bpe(_tokenizer_texts(), vocab_size=1000)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A LoRA and a full news run of the tiny model (10 steps each, no generative eval)."""
    shared_file("ag_news/news.csv")
    made = {}
    for method in ("lora", "full"):
        run = tmp_path_factory.mktemp(method)
        overrides = [
            f"model.name={tiny_model_dir}",
            f"method={method}",
            f"output_dir={run}",
            "train.max_steps=10",
            "data.train_size=80",
            "data.eval_size=16",
            "data.max_length=32",
            "eval.generate=false",
            "train.lr=1e-2",
        ]
        train_recipe(load_recipe(REPO / "recipes" / "news.yaml", overrides), SHARED_DATA, overwrite=True)
        made[method] = run
    return made
