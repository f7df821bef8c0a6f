"""The study's README tables, from the comparisons `run.sh` writes: per base and task, each
point's two metrics side by side with their 95% intervals and paired differences from full
fine-tuning (`=`: indistinguishable), and its cost. Printed as markdown.

    python studies/lora-vs-full/tables.py > studies/lora-vs-full/tables.md
"""

from __future__ import annotations

import csv
from pathlib import Path

STUDY = Path(__file__).resolve().parent
# a table: its title, then (comparison folder, metric, column name, scale, digits) twice
TABLES = [
    (
        f"{base} SST-5",
        (f"{base}-sst", "eval_accuracy", "test accuracy", 3),
        (f"{base}-sst-f1", "eval_macro_f1", "macro-F1", 3),
    )
    for base in ("gpt2", "llama")
] + [
    (
        f"{base} sonnets",
        (f"{base}-sonnets-loss", "eval_loss", "test loss", 3),
        (f"{base}-sonnets", "gen_chrf", "chrF", 1),
    )
    for base in ("gpt2", "llama")
]


def read(folder: str) -> dict[str, dict[str, str]]:
    with (STUDY / folder / "comparison.csv").open(encoding="utf-8") as stream:
        return {row["point"]: row for row in csv.DictReader(stream)}


def with_interval(row: dict[str, str], metric: str, digits: int, suffix: str = "") -> str:
    value, low, high = (row.get(f"{metric}{suffix}{end}") for end in ("", "_low", "_high"))
    if not value:
        return ""
    sign = "+" if suffix else ""
    text = f"{float(value):{sign}.{digits}f}"
    if low and high:
        text += f" [{float(low):{sign}.{digits}f}, {float(high):{sign}.{digits}f}]"
    return text


def versus_full(row: dict[str, str], metric: str, digits: int) -> str:
    if row["baseline"] == "True":
        return "baseline"
    text = with_interval(row, metric, digits, "_minus_full")
    return text + (" =" if row["indistinguishable_from_full"] == "True" else "")


def table(title: str, first: tuple, second: tuple) -> list[str]:
    rows, other = read(first[0]), read(second[0])
    retain = any(row.get("retain_loss_change") for row in rows.values())
    names = [first[2], "vs full", second[2], "vs full", *(["retain loss change"] if retain else [])]
    lines = [
        f"**{title}**",
        "",
        "| point | trainable % | " + " | ".join(names) + " | tokens/s | peak MB |",
        "|---|" + "---:|" * (len(names) + 3),
    ]
    for point, row in rows.items():
        paired = other.get(point, {})
        cells = [point, f"{float(row['trainable_pct']):.2f}%"]
        cells += [with_interval(row, first[1], first[3]), versus_full(row, first[1], first[3])]
        if paired:
            cells += [with_interval(paired, second[1], second[3]), versus_full(paired, second[1], second[3])]
        else:
            cells += ["", ""]
        if retain:
            change = row.get("retain_loss_change")
            cells.append(f"{float(change):+.3f}" if change else "")
        cells += [f"{float(row['train_tokens_per_s']):,.0f}", f"{float(row['peak_memory_mb']):,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def main() -> None:
    for title, first, second in TABLES:
        print("\n".join(table(title, first, second)))


if __name__ == "__main__":
    main()
