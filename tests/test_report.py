"""`loraft compare`: the side-by-side table and plot of finished runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from loraft.cli import app
from loraft.report import compare_runs, format_comparison


def test_compare_puts_lora_and_full_side_by_side(runs: dict[str, Path], tmp_path: Path) -> None:
    rows = compare_runs([runs["lora"], runs["full"]])
    assert [row["method"] for row in rows] == ["lora", "full"]
    assert rows[0]["trainable_pct"] < 10 < rows[1]["trainable_pct"] == 100
    for row, run in zip(rows, (runs["lora"], runs["full"]), strict=True):
        summary = json.loads((run / "summary.json").read_text())
        assert row["eval_loss"] == summary["best_eval"]["eval_loss"]
        assert row["peak_memory_mb"] == summary["peak_memory_mb"]
    table = format_comparison(rows).splitlines()
    assert table[0].split()[:3] == ["run", "method", "trainable"] and len(table) == 3
    assert re.split(r"\s{2,}", table[0].strip())[7] == "loss"  # the best metric, after the fixed ones
    assert max(len(line) for line in table) <= 100


def test_compare_command_writes_a_plot(runs: dict[str, Path], tmp_path: Path) -> None:
    plot = tmp_path / "compare.png"
    result = CliRunner().invoke(app, ["compare", str(runs["lora"]), str(runs["full"]), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
