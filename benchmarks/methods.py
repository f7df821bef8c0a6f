"""Every fine-tuning method side by side: trainable parameters, training tokens/s and peak
memory, beside plain LoRA and full fine-tuning, measured in one run.

`loraft train recipes/news.yaml` (AG News) on a GPT-2 small shape (124M, random weights: speed
and memory do not depend on the values; see `lora_vs_full.py`), batch 8 x 128 tokens, each
method in its own process so that its peak memory (RSS on a CPU) is its own. QLoRA runs where
bitsandbytes is installed (the qlora extra):

    python benchmarks/methods.py [--steps 8] [--batch-size 8] [--max-length 128]
        [--data-root ../shared/data] [--precision fp32] [--only lora,ia3] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from lora_vs_full import REPO, measure

from loraft.system import machine_facts

METHODS = {  # name -> overrides of recipes/news.yaml (LoRA r=8 on c_attn)
    "lora r=8": ["method=lora"],
    "full": ["method=full", "train.lr=5e-5"],
    "rslora r=8": ["method=lora", "lora.use_rslora=true"],
    "dora r=8": ["method=lora", "lora.use_dora=true"],
    "lora+ r=8": ["method=lora", "lora.plus_lr_ratio=16"],
    "pissa r=8": ["method=lora", "lora.init=pissa_niter_4"],
    "ia3": ["method=ia3"],
    "vera r=256": ["method=vera"],
    "adalora r=12->8": ["method=adalora", "adalora.tinit=2", "adalora.tfinal=2"],
    "prompt tuning 20": ["method=prompt_tuning", "train.lr=3e-2"],
    "qlora r=8": ["method=lora", "model.quantize=4bit"],
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per method")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--only", default=None, help="comma-separated method names (default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object, no table")
    return parser.parse_args()


def chosen_methods(only: str | None) -> dict[str, list[str]]:
    """The methods to run; LoRA and full always (the others are measured against them)."""
    methods = dict(METHODS)
    if importlib.util.find_spec("bitsandbytes") is None:
        print("qlora: skipped (bitsandbytes is not installed: pip install 'loraft[qlora]')")
        methods.pop("qlora r=8")
    if only:
        wanted = {name.strip() for name in only.split(",")} | {"lora", "full"}
        methods = {name: o for name, o in methods.items() if name.split()[0] in wanted}
    return methods


def planned_mb(model_dir: Path, overrides: list[str], args: argparse.Namespace) -> float:
    """`loraft plan`'s total for the same run, in its own process (its runtime is measured)."""
    command = [
        sys.executable, "-m", "loraft", "plan", str(REPO / "recipes" / "news.yaml"),
        f"model.name={model_dir}",
        f"train.batch_size={args.batch_size}", f"data.max_length={args.max_length}",
        f"train.precision={args.precision}", *overrides, "--json",
    ]  # fmt: skip
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)["memory_mb"]["total"]  # MiB, as loraft's peaks are


def main() -> None:
    args = parse_args()
    results = measure(
        chosen_methods(args.only),
        args,
        lambda model_dir, overrides: {"plan_mb": planned_mb(model_dir, overrides, args)},
    )
    lora, full = results["lora r=8"], results["full"]
    for row in results.values():
        row["peak_vs_plan"] = row["peak_memory_mb"] / row["plan_mb"]
        row["tokens_per_s_vs_lora"] = row["train_tokens_per_s"] / lora["train_tokens_per_s"]
        row["peak_memory_vs_lora"] = row["peak_memory_mb"] / lora["peak_memory_mb"]
        row["tokens_per_s_vs_full"] = row["train_tokens_per_s"] / full["train_tokens_per_s"]
        row["peak_memory_vs_full"] = row["peak_memory_mb"] / full["peak_memory_mb"]
    machine = machine_facts()
    if args.json:
        print(json.dumps({"settings": vars(args), "machine": machine, "methods": results}, indent=2))
        return
    print(
        f"GPT-2 small shape, AG News, batch {args.batch_size} x {args.max_length}, {args.steps} steps, "
        f"{args.precision}, {lora['device']}; {machine['cpu']} ({machine['cpu_capability']}), "
        f"{machine['cores']} cores, load {machine['load_1min']:.2f} at the end"
    )
    print(
        "| method | trainable | trainable % | tokens/s | vs LoRA | vs full | peak MB | vs LoRA | vs full "
        "| `plan` MB | peak / plan |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in results.items():
        print(
            f"| {name} | {row['trainable_params']:,d} | {row['trainable_pct']:.4f} | "
            f"{row['train_tokens_per_s']:,.1f} | {row['tokens_per_s_vs_lora']:.2f}x | "
            f"{row['tokens_per_s_vs_full']:.2f}x | {row['peak_memory_mb']:,.0f} | "
            f"{row['peak_memory_vs_lora']:.2f}x | {row['peak_memory_vs_full']:.2f}x | "
            f"{row['plan_mb']:,.0f} | {row['peak_vs_plan']:.2f} |"
        )


if __name__ == "__main__":
    main()
