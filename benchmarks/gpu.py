"""One command for a lent GPU: the GPU tests, the quickstart, and GPT-2 small (random init, AG
News, batch 16 x 512, bf16) LoRA and full fine-tuning for 30 steps each through loraft and
through TRL's SFTTrainer + PEFT, with tokens/s, MFU (against the GPU's dense bf16 peak, named)
and peak GPU memory. About 8 minutes on one GPU.

Without a GPU (or with --smoke) it runs the same code on the CPU with a tiny GPT-2, 2 steps after 1,
fp32: a smoke test the normal suite runs, so the script cannot rot; its figures mean nothing.

    python benchmarks/gpu.py [--smoke] [--steps 30] [--batch-size 16] [--max-length 512]
        [--data-root ../shared/data] [--json]

Every run is in this process; each one's peak is its own (the CUDA peak is reset before it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
# Dense bf16 peaks (TFLOP/s, no sparsity) from the vendors' data sheets, by device name.
BF16_PEAK_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "L4": 121, "A10G": 125, "4090": 165}
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["c_attn"], "fan_in_fan_out": True}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the CPU smoke run, even with a GPU")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the rates")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--json", action="store_true", help="print one JSON object, no table")
    args = parser.parse_args(argv)
    import torch

    args.smoke = args.smoke or not torch.cuda.is_available()
    if args.smoke:
        args.steps, args.warmup, args.batch_size, args.max_length = 2, 1, 2, 32
    args.precision = "fp32" if args.smoke else "bf16"
    return args


def main(argv: list[str] | None = None) -> dict:
    import torch

    args = parse_args(argv)
    device = torch.cuda.get_device_name(0) if not args.smoke else "cpu (smoke run)"
    peak = next((tflops for name, tflops in BF16_PEAK_TFLOPS.items() if name in device), None)
    report = {"device": device, "bf16_peak_tflops": peak, "settings": vars(args)}
    report["gpu_tests"] = gpu_tests()
    with tempfile.TemporaryDirectory() as scratch:
        report["quickstart"] = quickstart(Path(scratch), args)
        model = Path(scratch) / "gpt2"
        params = build_model(model, args)
        runs = []
        for method in ("lora", "full"):
            for tool in (loraft_run, trl_run):
                figures = measured(lambda tool=tool, method=method: tool(model, Path(scratch), method, args))
                flops = (4 if method == "lora" else 6) * params  # a token's training FLOPs
                mfu = figures["tokens_per_s"] * flops / (peak * 1e12) if peak else None
                runs.append({"tool": tool.__name__.split("_")[0], "method": method, **figures, "mfu": mfu})
        report["runs"] = runs
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return report


def gpu_tests() -> dict:
    """`pytest -m gpu` (they skip without CUDA): its exit code and its last line."""
    command = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-m", "gpu", "tests/test_gpu.py"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    return {"exit_code": done.returncode, "summary": lines[-1] if lines else done.stderr[-300:]}


def quickstart(scratch: Path, args: argparse.Namespace) -> dict:
    from loraft.cli import run as run_cli

    overrides = ["train.max_steps=2"] if args.smoke else []
    tick = time.perf_counter()
    code = quiet(
        lambda: run_cli(
            ["train", str(REPO / "recipes" / "quickstart.yaml"), f"output_dir={scratch / 'qs'}", *overrides]
        )
    )
    summary = json.loads((scratch / "qs" / "summary.json").read_text()) if code == 0 else {}
    return {"exit_code": code, "seconds": time.perf_counter() - tick, "final_eval": summary.get("final_eval")}


def build_model(directory: Path, args: argparse.Namespace) -> int:
    """GPT-2 small (tiny for the smoke run), random init, with a BPE trained on AG News."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from loraft.data import data_roots, require_data_file
    from loraft.tokenizer import train_byte_level_bpe

    news = require_data_file("--data-root", "ag_news/news.csv", data_roots(args.data_root))
    tokenizer = train_byte_level_bpe(news.read_text(encoding="utf-8").splitlines()[:3000], vocab_size=8000)
    shape = {"n_layer": 2, "n_embd": 64, "n_head": 2} if args.smoke else {}
    config = GPT2Config(bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, **shape)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def measured(run) -> dict:
    """A run's figures with this run's own peak GPU memory (the process's RSS on the CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    figures = run()
    if torch.cuda.is_available():
        figures["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return figures


def loraft_run(model: Path, scratch: Path, method: str, args: argparse.Namespace) -> dict:
    """`loraft train recipes/news.yaml`; the rate of the steps after the warm-up, from its log."""
    from loraft.cli import run as run_cli

    run, steps = scratch / f"loraft-{method}", args.warmup + args.steps
    arguments = [
        "train", str(REPO / "recipes" / "news.yaml"), f"model.name={model}", f"output_dir={run}",
        f"method={method}", f"train.max_steps={steps}", f"train.batch_size={args.batch_size}",
        f"data.max_length={args.max_length}", f"train.precision={args.precision}", "train.log_every=1",
        "train.eval_every=100000", "train.save_every=100000", "eval.at_start=false", "eval.generate=false",
        "data.eval_size=16", "--data-root", args.data_root,
    ]  # fmt: skip
    if quiet(lambda: run_cli(arguments)) != 0:
        raise SystemExit(f"loraft {method} failed: see {run}")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = {record["step"]: record for record in records if record["kind"] == "train"}
    end = train[steps]
    start = train.get(args.warmup, {"tokens": 0, "tokens_per_s": 1.0})
    seconds = end["tokens"] / end["tokens_per_s"] - start["tokens"] / start["tokens_per_s"]
    summary = json.loads((run / "summary.json").read_text())
    return {"tokens_per_s": (end["tokens"] - start["tokens"]) / seconds, "peak_mb": summary["peak_memory_mb"]}


def trl_run(model: Path, scratch: Path, method: str, args: argparse.Namespace) -> dict:
    """TRL's SFTTrainer (+ PEFT) on the same articles, packed (its best throughput)."""
    import torch
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer
    from vs_trl import StepClock, peak_rss_mb

    from loraft.recipe_files import load_recipe
    from loraft.tasks import build_task

    recipe = load_recipe(REPO / "recipes" / "news.yaml", ["data.train_size=2000"])
    train, _ = build_task(recipe, [Path(args.data_root)]).rows()
    config = SFTConfig(
        output_dir=str(scratch / f"trl-{method}"),
        per_device_train_batch_size=args.batch_size,
        max_length=args.max_length,
        max_steps=args.warmup + args.steps,
        learning_rate=2e-4 if method == "lora" else 5e-5,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        bf16=args.precision == "bf16",
        packing=True,
        dataloader_num_workers=0,
    )
    peft = LoraConfig(task_type="CAUSAL_LM", **LORA) if method == "lora" else None
    clock = StepClock(args.warmup)
    trainer = SFTTrainer(
        model=str(model), args=config, train_dataset=train, peft_config=peft, callbacks=[clock]
    )
    clock.watch(trainer)
    quiet(trainer.train)
    return {"tokens_per_s": clock.rate(), "peak_mb": peak_rss_mb()}


def quiet(call):
    """Run `call` with its progress bars and logs out of the report."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return call()


def format_report(report: dict) -> str:
    args = report["settings"]
    peak = (
        f"{report['bf16_peak_tflops']} TFLOP/s dense bf16" if report["bf16_peak_tflops"] else "peak unknown"
    )
    lines = [
        f"{report['device']} ({peak}); batch {args['batch_size']} x {args['max_length']}, "
        f"{args['steps']} steps after {args['warmup']}, {args['precision']}",
        f"GPU tests: {report['gpu_tests']['summary']} (exit {report['gpu_tests']['exit_code']})",
        f"quickstart: exit {report['quickstart']['exit_code']} in {report['quickstart']['seconds']:.0f} s",
        f"{'tool':<8}{'method':<8}{'tokens/s':>12}{'MFU':>8}{'peak MB':>10}",
    ]
    for run in report["runs"]:
        mfu = f"{run['mfu']:.1%}" if run["mfu"] is not None else "-"
        lines.append(
            f"{run['tool']:<8}{run['method']:<8}{run['tokens_per_s']:>12,.0f}{mfu:>8}{run['peak_mb']:>10,.0f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
