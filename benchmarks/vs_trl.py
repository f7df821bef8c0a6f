"""loraft against TRL's SFTTrainer + PEFT (and transformers' Trainer for classification).

The same work through each, alternating, every run in its own process (so peak memory is its
own), on a GPT-2 small shape (124M parameters, random init: speed does not depend on the
values) with one byte-level BPE for both, on real data from ../shared/data:

  (a) AG News causal LM, batch 8, max length 128: LoRA r=8 on c_attn, and full fine-tuning;
      TRL with its defaults, and with packing=True (its padding-free best-fit packing; alone,
      padding_free=True refuses inputs longer than max_length)
  (b) CFIMDB classification (reviews cut at 512 tokens), LoRA r=8: loraft against
      transformers' Trainer (TRL has no classification trainer)
  (c) evaluation (loss) over (a)'s 500 held-out articles
  (a16) workload (a) in bf16 (loraft's `precision: auto` on such a CPU, TRL with bf16=True):
      only on a CPU with native bf16 (avx512_bf16 or AMX)
  (l) workload (a) on a Llama of GPT-2 small's size (12 layers, width 768, 12 heads with 4
      key/value heads, SwiGLU MLP of width 2048, RMSNorm, rotary positions, tied embeddings:
      114M parameters), LoRA r=8 on all linear layers, and full fine-tuning; fp32
  (l16) workload (l) in bf16, where bf16 is native

Throughput is non-padding tokens per second over the steps after `--warmup` (evaluation:
target tokens per second over the whole pass). The ceiling is the matmul peak in the precision
the row runs in (the mean of one measured just before and one just after that run: a shared
machine's speed drifts over a 30-minute benchmark), divided by 6N FLOPs a token for full fine-tuning,
4N for LoRA (no weight gradients for frozen weights) and 2N for evaluation, N the model's
parameters (GPT-2 small 124,439,808, the Llama 114,114,048).
Each row also gives its share of the fp32 ceiling (the issue's yardstick, whatever the precision),
and two bounds, as shares of the ceiling: the products bound, the tokens/s of a step that ran
nothing but the model's matrix products at their real shapes, timed here (the most any
implementation on the same BLAS can reach), and the kernels bound, that step plus the least
other work the family needs (GPT-2: attention with dropout, GELU, layer norms; the Llama: GQA
attention, SiLU gating, RMSNorm, rotary positions; both: the loss's softmax, AdamW), each
through PyTorch's fastest CPU kernel for it (the most any implementation on PyTorch's kernels
can reach). Workloads a, b, c and l run in fp32 on both sides.

    python benchmarks/vs_trl.py [--steps 8] [--warmup 2] [--workloads a,b,c,a16,l,l16] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]
# family -> its shape: GPT-2 small's, and a Llama of the same size
SHAPES = {
    "gpt2": {"layers": 12, "width": 768, "heads": 12, "kv_heads": 12, "mlp": 3072, "attention_dropout": 0.1},
    "llama": {"layers": 12, "width": 768, "heads": 12, "kv_heads": 4, "mlp": 2048, "attention_dropout": 0.0},
}
VOCABULARY = 50_257  # GPT-2's; the benchmark's BPE uses the first 8,000 ids
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05}
LORA_TARGETS = {  # family -> PEFT's arguments for loraft's recipe targets
    "gpt2": {"target_modules": ["c_attn"], "fan_in_fan_out": True},
    "llama": {"target_modules": "all-linear"},
}
RECIPE_TARGETS = {"gpt2": [], "llama": ["lora.target_modules=[all-linear]"]}
WORKLOAD_FAMILY = {"a": "gpt2", "b": "gpt2", "c": "gpt2", "a16": "gpt2", "l": "llama", "l16": "llama"}


def layer_weights(family: str) -> list[tuple[int, int]]:
    """(inputs, outputs) of each matrix product of one layer."""
    shape = SHAPES[family]
    width, mlp = shape["width"], shape["mlp"]
    if family == "gpt2":
        return [(width, 3 * width), (width, width), (width, mlp), (mlp, width)]
    kv = shape["kv_heads"] * width // shape["heads"]
    return [
        (width, width),
        (width, kv),
        (width, kv),
        (width, width),
        (width, mlp),
        (width, mlp),
        (mlp, width),
    ]


def parameter_count(family: str) -> int:
    """N: the embedding (tied to the output layer), the layers' products and norms, the last norm
    (and GPT-2's positions and biases)."""
    shape = SHAPES[family]
    width, layers = shape["width"], shape["layers"]
    products = sum(inputs * outputs for inputs, outputs in layer_weights(family))
    if family == "gpt2":
        biases = sum(outputs for _, outputs in layer_weights(family))
        per_layer = products + biases + 4 * width  # two layer norms, weight and bias
        return VOCABULARY * width + 1024 * width + layers * per_layer + 2 * width
    return VOCABULARY * width + layers * (products + 2 * width) + width


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return
    import torch

    from loraft.system import cpu_has_native_bf16

    workloads = args.workloads.split(",")
    for half in ("a16", "l16"):
        if half in workloads and not cpu_has_native_bf16():
            print(f"skipping {half}: this CPU has no native bf16 (bf16 would be emulated)", file=sys.stderr)
            workloads.remove(half)
    dtypes = {"fp32": torch.float32}
    if {"a16", "l16"} & set(workloads):
        dtypes["bf16"] = torch.bfloat16
    capability = torch.backends.cpu.get_cpu_capability()
    with tempfile.TemporaryDirectory() as scratch:
        models = {family: Path(scratch) / f"{family}-small" for family in SHAPES}
        for family, model in models.items():
            run_worker(args, "build", "--model", str(model), "--family", family)
        results = []
        for workload in workloads:
            precision = "bf16" if workload.endswith("16") else "fp32"
            family = WORKLOAD_FAMILY[workload]
            common = ["--model", str(models[family]), "--scratch", scratch, "--precision", precision]
            common += ["--family", family]
            n = parameter_count(family)
            for group, name, worker, extra, flops in PLAN[workload]:
                # A shared machine's speed drifts: each run's ceilings come from the peaks measured
                # just before and just after it (the parent is idle while the worker runs).
                before = {kind: matmul_peak_gflops(dtype) for kind, dtype in dtypes.items()}
                figures = run_worker(args, worker, *common, *extra)
                after = {kind: matmul_peak_gflops(dtype) for kind, dtype in dtypes.items()}
                peaks = {kind: (before[kind] + after[kind]) / 2 for kind in dtypes}
                tokens = EVAL_TOKENS if flops == 2 else STEP_TOKENS
                bounds = {"products_bound": None, "kernels_bound": None}
                if workload != "b" and name == "loraft":
                    products = products_seconds(family, flops, tokens, dtypes[precision])
                    bounds = {  # one timing of the products for both: the kernels bound adds to it
                        "products_bound": tokens / products,
                        "kernels_bound": kernels_bound(family, flops, tokens, dtypes[precision], products),
                    }
                results.append(
                    {"group": group, "setup": name, **figures, "precision": precision, "family": family}
                    | {"peak_gflops": peaks[precision], "ceiling": ceiling(peaks[precision], flops, n)}
                    | {"fp32_ceiling": ceiling(peaks["fp32"], flops, n), **bounds}
                )
    report = {
        "cpu_capability": capability,
        "threads": torch.get_num_threads(),
        "results": results,
    }
    print(json.dumps(report, indent=2) if args.json else format_report(report))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="measured optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="steps run before measuring")
    parser.add_argument("--workloads", default="a,b,c,a16,l,l16")
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--json", action="store_true", help="print one JSON object, no table")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--family", default="gpt2", help=argparse.SUPPRESS)
    return parser.parse_args()


def run_worker(args: argparse.Namespace, worker: str, *extra: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        worker,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--data-root",
        args.data_root,
        *extra,
    ]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode:
        raise SystemExit(f"{worker} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ceiling(peak_gflops: float, flops_per_token: int, n_params: int) -> float:
    """Tokens per second if every FLOP ran at the matmul peak: peak / (FLOPs a token x N)."""
    return peak_gflops * 1e9 / (flops_per_token * n_params)


def kernels_bound(family: str, flops_per_token: int, tokens: int, dtype, products: float) -> float:
    """Tokens/s of a step that ran the products and, besides them, only the other work every
    step of the family needs, each through PyTorch's fastest CPU kernel for it, timed here at
    its real shapes: causal attention on each example of 60 tokens (SDPA; GPT-2's with its
    attention dropout in training, which only SDPA's math path runs; the Llama's grouped-query),
    the MLP's activation (GPT-2's tanh GELU; the Llama's SiLU times the up projection), the
    norms (layer norms, RMSNorm; fp32, as autocast and transformers run them), the Llama's
    rotary positions on queries and keys (two products and a sum a value, in place of a
    rotation kernel PyTorch lacks), the loss's log-softmax over the vocabulary (fp32) and, for
    full fine-tuning, fused AdamW over every weight; forward only for evaluation (2N).
    Residual dropout, additions, copies and LoRA's own products are left out, so no step on
    these kernels can go faster."""
    import torch

    training = flops_per_token > 2
    shape = SHAPES[family]
    width, layers, heads, kv_heads = shape["width"], shape["layers"], shape["heads"], shape["kv_heads"]
    seconds = products  # `products_seconds`: every product's forward and gradients, timed here
    dropout = shape["attention_dropout"] * training
    seconds += layers * (tokens // 60) * attention_seconds(60, heads, kv_heads, dropout, training, dtype)
    activation = "gelu" if family == "gpt2" else "silu_gate"
    seconds += layers * elementwise_seconds(activation, (tokens, shape["mlp"]), training, dtype)
    norm = "layer_norm" if family == "gpt2" else "rms_norm"
    seconds += (2 * layers + 1) * elementwise_seconds(norm, (tokens, width), training, dtype)
    if family == "llama":
        rotated = (tokens, (heads + kv_heads) * width // heads)
        seconds += layers * elementwise_seconds("rotary", rotated, training, dtype)
    seconds += elementwise_seconds("log_softmax", (tokens, VOCABULARY), False, torch.float32)
    if flops_per_token == 6:
        seconds += adamw_seconds(family)
    return tokens / seconds


def products_seconds(family: str, flops_per_token: int, tokens: int, dtype) -> float:
    """The products bound's step: the family's matrix products at their real shapes for `tokens`
    tokens (every weight's forward product, its input gradient for LoRA and full, its weight
    gradient for full), each the best of 5 timings. No implementation that runs these products
    through the same BLAS goes faster, however little else it does."""
    import torch

    width, layers = SHAPES[family]["width"], SHAPES[family]["layers"]
    products = []
    for inner, outer in layer_weights(family) * layers + [(width, VOCABULARY)]:
        products.append((tokens, inner, outer))
        if flops_per_token >= 4:
            products.append((tokens, outer, inner))
        if flops_per_token == 6:
            products.append((inner, tokens, outer))
    seconds: dict[tuple[int, int, int], float] = {}
    for m, k, n in set(products):
        seconds[m, k, n] = product_seconds(torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype))
    return sum(seconds[shape] for shape in products)


def attention_seconds(length: int, heads: int, kv_heads: int, dropout: float, training: bool, dtype) -> float:
    """Causal SDPA over one example (grouped-query where kv_heads < heads), and its backward in
    training."""
    import torch
    import torch.nn.functional as F

    def tensor(count: int) -> torch.Tensor:
        return torch.randn(1, count, length, 64, dtype=dtype, requires_grad=training)

    query, key, value = tensor(heads), tensor(kv_heads), tensor(kv_heads)
    grouped = kv_heads < heads

    def run() -> None:
        output = F.scaled_dot_product_attention(
            query, key, value, is_causal=True, dropout_p=dropout, enable_gqa=grouped
        )
        if training:
            output.backward(torch.ones_like(output))

    with torch.set_grad_enabled(training):
        return best_seconds(run)


def elementwise_seconds(kernel: str, shape: tuple[int, int], training: bool, dtype) -> float:
    """One `kernel` (gelu: tanh GELU; silu_gate: SiLU of one tensor times another; layer_norm,
    rms_norm over the last axis, fp32; rotary: x * cos + rotated * sin; log_softmax over the
    last axis) on tensors of `shape`, and its backward in training."""
    import torch
    import torch.nn.functional as F

    if kernel in ("layer_norm", "rms_norm"):
        dtype = torch.float32
    inputs, other = (torch.randn(shape, dtype=dtype, requires_grad=training) for _ in range(2))
    cos, sin = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
    function = {
        "gelu": lambda: F.gelu(inputs, approximate="tanh"),
        "silu_gate": lambda: F.silu(inputs) * other,
        "layer_norm": lambda: F.layer_norm(inputs, shape[-1:]),
        "rms_norm": lambda: F.rms_norm(inputs, shape[-1:]),
        "rotary": lambda: torch.addcmul(inputs * cos, other, sin),
        "log_softmax": lambda: inputs.log_softmax(-1),
    }[kernel]

    def run() -> None:
        output = function()
        if training:
            output.backward(torch.ones_like(output))

    with torch.set_grad_enabled(training):
        return best_seconds(run)


def adamw_seconds(family: str) -> float:
    """One fused AdamW step over the family's weights (fp32, as loraft's optimizer runs)."""
    import torch

    embedding = VOCABULARY * SHAPES[family]["width"]
    weights = [
        torch.nn.Parameter(torch.randn(count)) for count in (embedding, parameter_count(family) - embedding)
    ]
    for weight in weights:
        weight.grad = torch.randn_like(weight)
    return best_seconds(torch.optim.AdamW(weights, fused=True).step)


def best_seconds(run) -> float:
    """The best of 5 timings of `run()`, after one untimed."""
    run()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def product_seconds(a, b) -> float:
    """The best of 5 timings of `a @ b`, after one untimed."""
    return best_seconds(lambda: a @ b)


def matmul_peak_gflops(dtype) -> float:
    """The best of a few 2048 x 2048 matmuls in `dtype`: what this machine multiplies at most."""
    import torch

    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    best = 0.0
    for _ in range(8):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * 2048**3 / (time.perf_counter() - start) / 1e9)
    return best


# --- the workers, each in its own process ---------------------------------------------------


def build(args: argparse.Namespace) -> dict:
    """The family's model (random init) and the shared BPE, saved; its parameters counted."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    from loraft.tokenizer import train_byte_level_bpe

    texts = (Path(args.data_root) / "ag_news" / "news.csv").read_text(encoding="utf-8").splitlines()[:3000]
    tokenizer = train_byte_level_bpe(texts, vocab_size=8000)
    ids = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id}
    if args.family == "gpt2":
        config = GPT2Config(**ids)
    else:
        shape = SHAPES["llama"]
        config = LlamaConfig(
            vocab_size=VOCABULARY, hidden_size=shape["width"], intermediate_size=shape["mlp"],
            num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
            num_key_value_heads=shape["kv_heads"], max_position_embeddings=1024,
            tie_word_embeddings=True, **ids,
        )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    count = sum(parameter.numel() for parameter in model.parameters())
    if count != parameter_count(args.family):
        raise SystemExit(
            f"{args.family}: {count:,} parameters, the benchmark counts {parameter_count(args.family):,}"
        )
    model.save_pretrained(args.model)
    tokenizer.save_pretrained(args.model)
    return {}


def loraft_train(args: argparse.Namespace) -> dict:
    """`loraft train`, then the steady rate from its own metrics.jsonl (cumulative tokens/s)."""
    recipe, overrides = ("news.yaml", NEWS) if args.variant == "news" else ("cfimdb-lora.yaml", CFIMDB)
    run = Path(args.scratch) / f"loraft-{args.family}-{args.variant}-{args.method}"
    steps = args.warmup + args.steps
    command = [
        sys.executable,
        "-m",
        "loraft",
        "train",
        str(REPO / "recipes" / recipe),
        f"model.name={args.model}",
        f"output_dir={run}",
        f"method={args.method}",
        f"train.max_steps={steps}",
        "train.log_every=1",
        f"train.precision={args.precision}",
        "eval.at_start=false",
        "eval.generate=false",
        "train.save_every=100000",
        "train.eval_every=100000",
        *overrides,
        *(RECIPE_TARGETS[args.family] if args.method == "lora" else []),
        "--data-root",
        args.data_root,
        "--overwrite",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"loraft train failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = {record["step"]: record for record in records if record["kind"] == "train"}
    start, end = train[args.warmup], train[steps]
    seconds = end["tokens"] / end["tokens_per_s"] - start["tokens"] / start["tokens_per_s"]
    summary = json.loads((run / "summary.json").read_text())
    return {"tokens_per_s": (end["tokens"] - start["tokens"]) / seconds, "peak_mb": summary["peak_memory_mb"]}


def loraft_eval(args: argparse.Namespace) -> dict:
    """The step-0 evaluation of the news run over all 500 held-out articles."""
    run = Path(args.scratch) / "loraft-eval"
    command = [
        sys.executable,
        "-m",
        "loraft",
        "train",
        str(REPO / "recipes" / "news.yaml"),
        f"model.name={args.model}",
        f"output_dir={run}",
        "method=full",
        "train.max_steps=1",
        "train.precision=fp32",
        "eval.generate=false",
        "eval.periodic_size=null",  # the recipe's step-0 evaluation samples 100 articles
        "data.max_length=128",
        "train.batch_size=8",
        "--data-root",
        args.data_root,
        "--overwrite",
    ]
    subprocess.run(command, check=True, capture_output=True, cwd=REPO)
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    return {"tokens_per_s": first["eval_tokens"] / first["seconds"], "peak_mb": None}


def trl_train(args: argparse.Namespace) -> dict:
    """TRL's SFTTrainer (+ PEFT for LoRA) on the same articles, its defaults in `--precision`."""
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    train, _ = news_texts(args)
    options = {"packing": args.variant == "packing"}  # TRL packs best-fit-decreasing, padding-free
    config = SFTConfig(
        output_dir=str(Path(args.scratch) / f"trl-{args.family}-{args.method}-{args.variant}"),
        per_device_train_batch_size=8,
        max_length=128,
        max_steps=args.warmup + args.steps,
        learning_rate=2e-4 if args.method == "lora" else 5e-5,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=args.precision == "bf16",
        dataloader_num_workers=0,
        **options,
    )
    targets = LORA_TARGETS[args.family]
    peft = LoraConfig(task_type="CAUSAL_LM", **LORA, **targets) if args.method == "lora" else None
    clock = StepClock(args.warmup)
    trainer = SFTTrainer(
        model=args.model, args=config, train_dataset=train, peft_config=peft, callbacks=[clock]
    )
    clock.watch(trainer)
    trainer.train()
    return {"tokens_per_s": clock.rate(), "peak_mb": peak_rss_mb()}


def trl_eval(args: argparse.Namespace) -> dict:
    """SFTTrainer.evaluate over the same 500 articles: target tokens per second."""
    from trl import SFTConfig, SFTTrainer

    train, evaluation = news_texts(args)
    config = SFTConfig(
        output_dir=str(Path(args.scratch) / "trl-eval"),
        per_device_eval_batch_size=8,
        max_length=128,
        report_to=[],
        use_cpu=True,
        bf16=False,
    )
    trainer = SFTTrainer(model=args.model, args=config, train_dataset=train, eval_dataset=evaluation)
    tokens = sum(max(len(ids) - 1, 0) for ids in trainer.eval_dataset["input_ids"])
    start = time.perf_counter()
    trainer.evaluate()
    return {"tokens_per_s": tokens / (time.perf_counter() - start), "peak_mb": None}


def hf_classify(args: argparse.Namespace) -> dict:
    """transformers' Trainer + PEFT on CFIMDB, batch 8, reviews cut at 512 tokens."""
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from loraft.data import read_table

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.pad_token = tokenizer.eos_token
    rows = read_table(Path(args.data_root) / "cs224n" / "ids-cfimdb-train.csv").rows
    table = datasets.Dataset.from_list([{"text": r["sentence"], "label": int(r["sentiment"])} for r in rows])
    table = table.map(
        lambda row: tokenizer(row["text"], truncation=True, max_length=512), remove_columns=["text"]
    )
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
    model.config.pad_token_id = tokenizer.pad_token_id
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", **LORA, **LORA_TARGETS["gpt2"]))
    config = TrainingArguments(
        output_dir=str(Path(args.scratch) / "hf-cls"),
        per_device_train_batch_size=8,
        max_steps=args.warmup + args.steps,
        learning_rate=5e-4,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
    )
    clock = StepClock(args.warmup)
    trainer = Trainer(
        model=model,
        args=config,
        train_dataset=table,
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[clock],
    )
    clock.watch(trainer)
    trainer.train()
    return {"tokens_per_s": clock.rate(), "peak_mb": peak_rss_mb()}


# --- helpers --------------------------------------------------------------------------------


# Tokens of one batch in the products bound of the AG News workloads (not b, a classifier): 8
# (training) and 16 (evaluation) articles of 60 tokens on average with the benchmark's BPE
# (measured), packed in one row as loraft packs them.
STEP_TOKENS, EVAL_TOKENS = 480, 960
NEWS = ["train.batch_size=8", "data.max_length=128", "data.train_size=2000", "data.eval_size=16"]
CFIMDB = ["train.batch_size=8", "data.max_length=512", "data.predict=null", "data.eval_size=8"]


def news_texts(args: argparse.Namespace):
    """The news recipe's own training and evaluation articles (title, newline, description)."""
    from loraft.recipe_files import load_recipe
    from loraft.tasks import build_task

    recipe = load_recipe(REPO / "recipes" / "news.yaml", ["data.train_size=2000"])
    return build_task(recipe, [Path(args.data_root)]).rows()


class StepClock(TrainerCallback):
    """Times a Trainer's steps after the warm-up and counts the non-padding tokens they train on."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.tokens, self.started, self.ended = warmup, 0, None, None

    def watch(self, trainer) -> None:
        step = trainer.training_step

        def counted(model, inputs, *rest, **options):
            if trainer.state.global_step >= self.warmup:
                mask = inputs.get("attention_mask")
                self.tokens += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
            return step(model, inputs, *rest, **options)

        trainer.training_step = counted

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if state.global_step == self.warmup:
            self.started = time.perf_counter()
        self.ended = time.perf_counter()

    def rate(self) -> float:
        return self.tokens / (self.ended - self.started)


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def format_report(report: dict) -> str:
    """One line a run; `x ref`: loraft's tokens/s over the first other tool's run of its group;
    `share`: of the ceiling in the row's precision; `fp32`: of the fp32 ceiling; `bound`: the
    products bound's share of the ceiling (what a step doing nothing but its products reaches);
    `kernels`: the kernels bound's (the products plus the least other work a step needs);
    `of k.`: loraft's tokens/s over the kernels bound's, the issue's yardstick."""
    lines = [
        f"CPU {report['cpu_capability']}, {report['threads']} threads; peak: the row's fp32 or bf16 "
        "matmul GFLOP/s, measured around its run; ceiling: peak / FLOPs a token",
        "",
        f"{'setup':<36}{'tokens/s':>9}{'x ref':>7}{'peak MB':>9}{'peak':>6}{'ceiling':>9}{'share':>7}"
        f"{'fp32':>6}{'bound':>7}{'kernels':>9}{'of k.':>7}",
    ]
    reference: dict[str, float] = {}
    for row in report["results"]:
        if not row["setup"].startswith("loraft"):
            reference.setdefault(row["group"], row["tokens_per_s"])
    for row in report["results"]:
        ours = row["setup"].startswith("loraft") and row["group"] in reference
        ratio = f"{row['tokens_per_s'] / reference[row['group']]:.2f}" if ours else ""
        memory = f"{row['peak_mb']:,.0f}" if row["peak_mb"] else "-"
        bound, kernels = (
            f"{row[name] / row['ceiling']:.0%}" if row.get(name) else "-"
            for name in ("products_bound", "kernels_bound")
        )
        of_kernels = f"{row['tokens_per_s'] / row['kernels_bound']:.0%}" if row.get("kernels_bound") else "-"
        lines.append(
            f"{row['group'] + ': ' + row['setup']:<36}{row['tokens_per_s']:>9.1f}{ratio:>7}{memory:>9}"
            f"{row['peak_gflops']:>6.0f}{row['ceiling']:>9.0f}{row['tokens_per_s'] / row['ceiling']:>7.0%}"
            f"{row['tokens_per_s'] / row['fp32_ceiling']:>6.0%}{bound:>7}{kernels:>9}{of_kernels:>7}"
        )
    return "\n".join(lines)


WORKERS = {
    "build": build,
    "loraft-train": loraft_train,
    "loraft-eval": loraft_eval,
    "trl-train": trl_train,
    "trl-eval": trl_eval,
    "hf-classify": hf_classify,
}
# workload -> (group, setup, worker, arguments, FLOPs a token in units of N), run in this order
PLAN = {
    "a": [
        ("a lora", "loraft", "loraft-train", ["--method", "lora", "--variant", "news"], 4),
        ("a lora", "TRL defaults", "trl-train", ["--method", "lora", "--variant", "default"], 4),
        ("a lora", "TRL packing", "trl-train", ["--method", "lora", "--variant", "packing"], 4),
        ("a full", "loraft", "loraft-train", ["--method", "full", "--variant", "news"], 6),
        ("a full", "TRL defaults", "trl-train", ["--method", "full", "--variant", "default"], 6),
        ("a full", "TRL packing", "trl-train", ["--method", "full", "--variant", "packing"], 6),
    ],
    "b": [
        ("b lora", "loraft", "loraft-train", ["--method", "lora", "--variant", "cfimdb"], 4),
        ("b lora", "transformers Trainer", "hf-classify", ["--method", "lora"], 4),
    ],
    "c": [
        ("c eval", "loraft", "loraft-eval", [], 2),
        ("c eval", "TRL evaluate", "trl-eval", [], 2),
    ],
    "a16": [
        ("a16 lora", "loraft", "loraft-train", ["--method", "lora", "--variant", "news"], 4),
        ("a16 lora", "TRL defaults", "trl-train", ["--method", "lora", "--variant", "default"], 4),
        ("a16 full", "loraft", "loraft-train", ["--method", "full", "--variant", "news"], 6),
        ("a16 full", "TRL defaults", "trl-train", ["--method", "full", "--variant", "default"], 6),
    ],
    "l": [
        ("l lora", "loraft", "loraft-train", ["--method", "lora", "--variant", "news"], 4),
        ("l lora", "TRL defaults", "trl-train", ["--method", "lora", "--variant", "default"], 4),
        ("l lora", "TRL packing", "trl-train", ["--method", "lora", "--variant", "packing"], 4),
        ("l full", "loraft", "loraft-train", ["--method", "full", "--variant", "news"], 6),
        ("l full", "TRL defaults", "trl-train", ["--method", "full", "--variant", "default"], 6),
        ("l full", "TRL packing", "trl-train", ["--method", "full", "--variant", "packing"], 6),
    ],
    "l16": [
        ("l16 lora", "loraft", "loraft-train", ["--method", "lora", "--variant", "news"], 4),
        ("l16 lora", "TRL defaults", "trl-train", ["--method", "lora", "--variant", "default"], 4),
        ("l16 full", "loraft", "loraft-train", ["--method", "full", "--variant", "news"], 6),
        ("l16 full", "TRL defaults", "trl-train", ["--method", "full", "--variant", "default"], 6),
    ],
}

if __name__ == "__main__":
    main()
