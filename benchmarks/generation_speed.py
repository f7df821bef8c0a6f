"""Generation speed: greedy decoding with and without the KV cache, and the shortened context.

Builds a random-init GPT-2 small (GPT2Config() defaults, 124M parameters), prompts it with random
token ids (no tokenizer needed) and times `loraft.generation.generate_token_ids` in each mode,
end-of-text disabled so every mode generates exactly --new-tokens tokens per prompt:

    python benchmarks/generation_speed.py [--new-tokens 256] [--window 100-200] [--threads N]
        [--json]

Timings on a shared machine move with its load: the report records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from loraft.generation import generate_token_ids
from loraft.recipe import GenerationSection

PAD = 0  # any id: the prompts share one length, so nothing is padded


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens generated per prompt")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="random prompt length")
    parser.add_argument("--batch-size", type=int, default=1, help="prompts decoded together")
    parser.add_argument("--window", default="100-200", help="context window: W, or lo-hi")
    parser.add_argument("--threads", type=int, help="torch threads; default: torch's choice")
    parser.add_argument("--json", action="store_true", help="print one JSON object, no table")
    return parser.parse_args()


def parse_window(text: str) -> int | tuple[int, int]:
    low, _, high = text.partition("-")
    return (int(low), int(high)) if high else int(low)


def modes(window: int | tuple[int, int]) -> dict[str, tuple[dict, bool]]:
    """Mode name -> (GenerationSection fields, use_cache of standard decoding)."""
    shown = f"{window[0]}-{window[1]}" if isinstance(window, tuple) else str(window)
    return {
        "kv cache": ({}, True),
        "no cache": ({}, False),
        f"window {shown}, cache": ({"context_window": window, "context_mode": "cache"}, True),
        f"window {shown}, reencode": ({"context_window": window, "context_mode": "reencode"}, True),
    }


def time_mode(model, prompts: list[list[int]], fields: dict, use_cache: bool, tokens: int) -> dict:
    """Seconds, generated tokens and tokens/s of one greedy run."""
    settings = GenerationSection(max_new_tokens=tokens, batch_size=len(prompts), **fields)
    start = time.perf_counter()
    outputs = generate_token_ids(
        model, prompts, settings, eos_token_id=None, pad_token_id=PAD, use_cache=use_cache
    )
    seconds = time.perf_counter() - start
    generated = sum(len(ids) for ids in outputs)
    return {"seconds": seconds, "tokens": generated, "tokens_per_s": generated / seconds}


def main() -> None:
    args = parse_args()
    if args.threads:  # on a busy machine one thread can beat two that wait on each other
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    vocab_size = model.config.vocab_size
    prompts = torch.randint(vocab_size, (args.batch_size, args.prompt_tokens)).tolist()
    time_mode(model, prompts, {}, True, 8)  # warm-up: first passes pay for allocations
    rows = []
    for name, (fields, use_cache) in modes(parse_window(args.window)).items():
        rows.append({"mode": name, **time_mode(model, prompts, fields, use_cache, args.new_tokens)})
    speed = {row["mode"]: row["tokens_per_s"] for row in rows}
    parameters = sum(p.numel() for p in model.parameters())
    report = {
        "model": f"random-init GPT-2 small ({parameters / 1e6:.0f}M parameters)",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_1min": os.getloadavg()[0],
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "batch_size": args.batch_size,
        "results": rows,
        "cache_speedup": speed["kv cache"] / speed["no cache"],
    }
    print(json.dumps(report, indent=2) if args.json else format_table(report))


def format_table(report: dict) -> str:
    lines = [
        f"{report['model']}, torch {report['torch']}, {report['torch_threads']} threads",
        f"{report['machine']}, load average {report['load_average_1min']:.1f} at the end",
        f"greedy: {report['batch_size']} x ({report['prompt_tokens']}-token prompt"
        f" + {report['new_tokens']} new tokens)",
        "",
        f"{'mode':<28}{'seconds':>9}{'tokens':>8}{'tokens/s':>10}",
    ]
    for row in report["results"]:
        timing = f"{row['seconds']:>9.2f}{row['tokens']:>8}{row['tokens_per_s']:>10.1f}"
        lines.append(f"{row['mode']:<28}{timing}")
    lines.append(f"\nKV cache / no cache: {report['cache_speedup']:.1f}x faster")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
