"""The pretraining text of the study's base model, from ../shared/data, written to data/study/.

Tiny Shakespeare, every AG News article (title and description, escapes undone, as the news
task reads them) and the training sentences and reviews of the CS224n SST and CFIMDB files.
Left out: everything the study evaluates on (the SST dev and test sets; the sonnets, whose
held-out ones score the sonnet task) and the other dev and test files.

    python studies/lora-vs-full/corpus.py [--data-root ../shared/data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from loraft.data import read_table, read_text
from loraft.recipe_files import load_recipe
from loraft.tasks.news import NewsTask

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "data" / "study" / "corpus.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    root = Path(parser.parse_args().data_root)
    passages = read_text(root / "tinyshakespeare" / "input.txt").split("\n\n")
    news = NewsTask(load_recipe(REPO / "recipes" / "news.yaml"), [root])
    passages += [
        row["text"]
        for row in news.rows_from_table(read_table(root / "ag_news" / "news.csv", news.column_names()))
    ]
    for name in ("ids-sst-train.csv", "ids-cfimdb-train.csv"):
        passages += [row["sentence"] for row in read_table(root / "cs224n" / name).rows]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n\n".join(p.strip() for p in passages if p.strip()) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(passages):,} passages, {OUT.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
