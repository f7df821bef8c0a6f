"""What LoRA buys against full fine-tuning: training tokens/s and peak memory, side by side.

Builds a GPT-2 small-shaped model (GPT2Config() defaults, 124M parameters, random weights:
speed and memory do not depend on the values) with a byte-level BPE trained on AG News, saves
it like a hub checkpoint, then runs `loraft train recipes/news.yaml` on it once per method, each
in its own process so that peak memory (RSS on CPU, max allocated on CUDA) is the method's own:

    python benchmarks/lora_vs_full.py [--steps 12] [--batch-size 4] [--max-length 128]
        [--data-root ../shared/data] [--precision fp32] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as transformers_logging

from loraft.data import data_roots, require_data_file
from loraft.tokenizer import train_byte_level_bpe

REPO = Path(__file__).resolve().parents[1]
METHODS = {"lora r=8 (c_attn)": ["method=lora"], "full": ["method=full", "train.lr=5e-5"]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per method")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--json", action="store_true", help="print one JSON object, no table")
    return parser.parse_args()


def build_model(directory: Path, news: Path) -> None:
    """A 124M GPT-2 with a small BPE: only ids below the BPE size occur, which is fine here."""
    texts = news.read_text(encoding="utf-8").splitlines()[:3000]
    tokenizer = train_byte_level_bpe(texts, vocab_size=8000)
    config = GPT2Config(bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def train(model_dir: Path, run_dir: Path, method_overrides: list[str], args: argparse.Namespace) -> dict:
    command = [
        sys.executable, "-m", "loraft", "train", str(REPO / "recipes" / "news.yaml"),
        f"model.name={model_dir}", f"output_dir={run_dir}", f"train.max_steps={args.steps}",
        f"train.batch_size={args.batch_size}", f"data.max_length={args.max_length}",
        f"train.precision={args.precision}", "train.eval_every=100000", "eval.at_start=false",
        "eval.generate=false", "data.train_size=400", "data.eval_size=8",
        *method_overrides, "--data-root", args.data_root,
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads((run_dir / "summary.json").read_text())


def measure(methods: dict[str, list[str]], args: argparse.Namespace, also=None) -> dict[str, dict]:
    """Each method's figures from its run's summary, every run in its own process on one GPT-2
    small shape; `also(model_dir, overrides)` adds figures of the caller's own."""
    transformers_logging.disable_progress_bar()
    news = require_data_file("--data-root", "ag_news/news.csv", data_roots(args.data_root))
    keys = ("trainable_params", "trainable_pct", "train_tokens_per_s", "peak_memory_mb", "device")
    results = {}
    with tempfile.TemporaryDirectory() as temporary:
        model_dir = Path(temporary) / "gpt2-small-random"
        build_model(model_dir, news)
        for index, (name, overrides) in enumerate(methods.items()):
            summary = train(model_dir, Path(temporary) / f"run-{index}", overrides, args)
            extra = also(model_dir, overrides) if also else {}
            results[name] = {**{key: summary[key] for key in keys}, **extra}
    return results


def main() -> None:
    args = parse_args()
    results = measure(METHODS, args)
    lora, full = results["lora r=8 (c_attn)"], results["full"]
    ratios = {
        "tokens_per_s_lora_over_full": lora["train_tokens_per_s"] / full["train_tokens_per_s"],
        "peak_memory_lora_over_full": lora["peak_memory_mb"] / full["peak_memory_mb"],
    }
    if args.json:
        print(json.dumps({"settings": vars(args), "methods": results, **ratios}, indent=2))
        return
    print(f"GPT-2 small shape, batch {args.batch_size} x {args.max_length}, {args.steps} steps, "
          f"{args.precision}, {lora['device']}")  # fmt: skip
    print(f"{'method':<20}{'trainable':>14}{'trainable %':>13}{'tokens/s':>11}{'peak MB':>10}")
    for name, row in results.items():
        print(
            f"{name:<20}{row['trainable_params']:>14,d}{row['trainable_pct']:>13.4f}"
            f"{row['train_tokens_per_s']:>11,.1f}{row['peak_memory_mb']:>10,.0f}"
        )
    print(
        f"LoRA / full: tokens/s x{ratios['tokens_per_s_lora_over_full']:.2f}, "
        f"peak memory x{ratios['peak_memory_lora_over_full']:.2f}"
    )


if __name__ == "__main__":
    main()
