"""Where a training step's time goes: `torch.profiler` over loraft's own steps, by operator
and grouped into kinds (matrix products, attention, casts, normalisation, activation, dropout,
loss, optimizer, elementwise), forward and backward together.

`loraft train recipes/news.yaml` on the GPT-2 small shape (random init, as lora_vs_full.py),
batch 8 x 128, in-process; steps after `--warmup` are profiled:

    python benchmarks/profile_step.py [--method lora] [--precision bf16] [--steps 3] [--warmup 2]
        [--data-root ../shared/data] [--top 25] [--by-shape]

`--by-shape` lists the top operators by their input shapes too (which casts, which products).
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from lora_vs_full import REPO, build_model

from loraft.data import data_roots, require_data_file
from loraft.recipe_files import load_recipe
from loraft.system import machine_facts
from loraft.trainer import Trainer
from loraft.training import train_recipe

KINDS = {  # operator name fragments -> kind, the first match wins
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "onednn"),
    "attention": ("scaled_dot_product", "attention"),
    "casts": ("aten::to", "aten::_to_copy", "aten::copy_", "aten::clone", "aten::contiguous"),
    "normalisation": ("layer_norm", "rms_norm"),
    "activation": ("gelu", "silu", "tanh"),
    "dropout": ("dropout", "bernoulli", "random_"),  # random_: loraft's cheap masks (loraft.dropout)
    "loss": ("log_softmax", "nll_loss", "cross_entropy", "logsumexp", "exp_", "HeadLossSum"),
    "optimizer": ("adam", "_foreach", "fused"),
    "framework (profiler step, views, allocation)": ("ProfilerStep", "aten::view", "empty", "as_strided"),
    "elementwise": ("aten::add", "aten::mul", "aten::div", "aten::sub", "aten::pow", "aten::where"),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="lora", choices=["lora", "full"])
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--by-shape", action="store_true", help="group operators by input shapes too")
    return parser.parse_args()


def kind_of(name: str) -> str:
    return next((kind for kind, parts in KINDS.items() if any(part in name for part in parts)), "other")


def main() -> None:
    args = parse_args()
    news = require_data_file("--data-root", "ag_news/news.csv", data_roots(args.data_root))
    profiler = torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU],
        schedule=torch.profiler.schedule(wait=args.warmup, warmup=0, active=args.steps, repeat=1),
        record_shapes=args.by_shape,
    )
    real_step = Trainer.train_step

    def profiled_step(self, step):
        outcome = real_step(self, step)
        profiler.step()
        return outcome

    Trainer.train_step = profiled_step
    with tempfile.TemporaryDirectory() as scratch:
        model = Path(scratch) / "gpt2"
        build_model(model, news)
        recipe = load_recipe(
            REPO / "recipes" / "news.yaml",
            [
                f"model.name={model}", f"output_dir={Path(scratch) / 'run'}", f"method={args.method}",
                f"train.max_steps={args.warmup + args.steps}", "train.batch_size=8", "data.max_length=128",
                f"train.precision={args.precision}", "train.eval_every=100000", "eval.at_start=false",
                "eval.generate=false", "data.train_size=400", "data.eval_size=8",
            ],
        )  # fmt: skip
        with profiler:
            train_recipe(recipe, args.data_root)
    events = profiler.key_averages(group_by_input_shape=args.by_shape)
    total = sum(event.self_cpu_time_total for event in events)
    by_kind: dict[str, float] = defaultdict(float)
    for event in events:
        by_kind[kind_of(event.key)] += event.self_cpu_time_total
    facts = machine_facts()
    print(
        f"{args.method}, {args.precision}, GPT-2 small shape, batch 8 x 128, {args.steps} steps profiled; "
        f"{facts['cpu']} ({facts['cpu_capability']}), {facts['cores']} cores"
    )
    print(f"{'kind':<46}{'share':>8}{'ms a step':>11}")
    for kind, micros in sorted(by_kind.items(), key=lambda item: -item[1]):
        print(f"{kind:<46}{micros / total:>8.1%}{micros / 1000 / args.steps:>11.1f}")
    print(f"\n{'operator':<48}{'kind':<18}{'share':>8}{'calls a step':>14}")
    for event in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]:
        share = event.self_cpu_time_total / total
        print(f"{event.key[:47]:<48}{kind_of(event.key):<18}{share:>8.1%}{event.count / args.steps:>14.0f}")
        if args.by_shape:
            print(f"    inputs {event.input_shapes}")


if __name__ == "__main__":
    main()
