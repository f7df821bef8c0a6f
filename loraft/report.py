"""`loraft compare`: runs side by side (LoRA against full, say) as a table and a plot."""

from __future__ import annotations

from pathlib import Path

from loraft.run_dir import RunDirectory

# (summary key, column title, format) of the comparison table.
COLUMNS = [
    ("method", "method", "{}"),
    ("trainable_params", "trainable", "{:,d}"),
    ("trainable_pct", "trainable %", "{:.4f}"),
    ("wall_s", "wall s", "{:.1f}"),
    ("train_tokens_per_s", "tokens/s", "{:,.0f}"),
    ("peak_memory_mb", "peak MB", "{:,.0f}"),
]


def compare_runs(run_dirs: list[str | Path]) -> list[dict]:
    """One row per finished run: its summary figures and its best metrics."""
    rows = []
    for run_dir in run_dirs:
        run = RunDirectory.open(run_dir)
        summary = run.read_summary()
        best = {
            key: value
            for key, value in summary.get("best_eval", {}).items()
            if isinstance(value, (int, float)) and key != "step"
        }
        fixed = {key: summary[key] for key, _, _ in COLUMNS}
        rows.append({"run": str(run_dir), **fixed, "best_metric": summary.get("best_metric"), **best})
    return rows


def format_comparison(rows: list[dict], width: int = 100) -> str:
    """A plain-text table no wider than `width`: the fixed columns, then the metrics all runs
    share, the runs' own best metric first, as many as fit (`--json` has them all)."""
    shared = [key for key in rows[0] if key.startswith(("eval_", "gen_")) and all(key in r for r in rows)]
    shared.sort(key=lambda key: key != rows[0].get("best_metric"))
    names = [Path(row["run"]).name[:24] for row in rows]
    header = ["run", *(title for _, title, _ in COLUMNS)]
    body = [
        [name, *(fmt.format(row[key]) for key, _, fmt in COLUMNS)]
        for name, row in zip(names, rows, strict=True)
    ]
    for key in shared:
        column = [key.removeprefix("eval_"), *(_metric(row[key]) for row in rows)]
        if _table_width([*zip(header, *body, strict=True), column]) > width:
            break
        header.append(column[0])
        for line, value in zip(body, column[1:], strict=True):
            line.append(value)
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(c).rjust(w) for c, w in zip(line, widths, strict=True)) for line in [header, *body]
    )


def _metric(value: float | int) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _table_width(columns: list) -> int:
    return sum(max(len(str(cell)) for cell in column) + 2 for column in columns) - 2


def plot_comparison(run_dirs: list[str | Path], rows: list[dict], output: Path) -> Path:
    """Eval loss over steps, and bars of trainable %, tokens/s and peak memory, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 4, figsize=(18, 4))
    names = [Path(row["run"]).name for row in rows]
    for run_dir, name in zip(run_dirs, names, strict=True):
        evals = [r for r in RunDirectory.open(run_dir).read_metrics() if "eval_loss" in r]
        axes[0].plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], marker="o", label=name)
    axes[0].set(title="eval loss", xlabel="optimizer step")
    axes[0].legend()
    for axis, (key, title) in zip(
        axes[1:],
        [
            ("trainable_pct", "trainable parameters (%)"),
            ("train_tokens_per_s", "training tokens/s"),
            ("peak_memory_mb", "peak memory (MB)"),
        ],
        strict=True,
    ):
        axis.bar(names, [row[key] for row in rows], color=[f"C{i}" for i in range(len(rows))])
        axis.set_title(title)
        axis.tick_params(axis="x", rotation=20)
    if all(row["trainable_pct"] > 0 for row in rows):
        axes[1].set_yscale("log")  # 0.1% next to 100% is unreadable on a linear axis
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output
