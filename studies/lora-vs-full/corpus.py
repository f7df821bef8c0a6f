"""The study bases' pretraining text, from ../shared/data, written to data/study/.

Every English text in the data folder except the downstream validation and test sets: each
task's training rows as its recipe splits them (tiny Shakespeare without mini-gpt-scratch's
eval part; AG News and MRPC without their eval splits; SST and CFIMDB training sentences
without their validation rows), read through the tasks themselves so that the split is the one
training uses. Left out entirely: the sonnets (the sonnet task trains on them, and its
validation sonnets come from them), the 30-row Quora samples and every dev and test file.

Writes `corpus.txt` (pretraining, passages separated by blank lines), `heldout.txt` (2% of the
passages, seeded: the bases' held-out perplexity) and `retain.txt` (300 of those, a passage a
line: what `eval.retain` measures forgetting on).

    python studies/lora-vs-full/corpus.py [--data-root ../shared/data]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from loraft.recipe_files import load_recipe
from loraft.tasks import build_task
from loraft.tasks.text import TextTask

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "data" / "study"
# The recipes whose training rows are pretraining text (the study's own SST recipe: its
# validation rows, carved from the training file, stay out).
SOURCES = ["mini-gpt-scratch", "news", "study-sst", "cfimdb-lora", "mrpc-lora"]
HELD_OUT_SHARE = 0.02
RETAIN_PASSAGES = 300


def training_texts(name: str, root: Path) -> list[str]:
    """The texts `name`'s training split holds (every row: `data.train_size` unset)."""
    recipe = load_recipe(REPO / "recipes" / f"{name}.yaml", ["data.train_size=null"])
    task = build_task(recipe, [root])
    if isinstance(task, TextTask):
        return task.texts()[0]
    train, _ = task.rows()
    fields = [field for field in ("text", "text_pair") if field in train.column_names]
    return [row[field] for row in train for field in fields]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    root = Path(parser.parse_args().data_root)
    texts = (text.strip() for name in SOURCES for text in training_texts(name, root))
    passages = list(dict.fromkeys(text for text in texts if text))  # each text once
    random.Random(0).shuffle(passages)
    held = max(1, round(len(passages) * HELD_OUT_SHARE))
    held_out, train = passages[:held], passages[held:]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "corpus.txt").write_text("\n\n".join(train) + "\n", encoding="utf-8")
    (OUT / "heldout.txt").write_text("\n\n".join(held_out) + "\n", encoding="utf-8")
    retain = [" ".join(p.split()) for p in held_out[:RETAIN_PASSAGES]]
    (OUT / "retain.txt").write_text("\n".join(retain) + "\n", encoding="utf-8")
    words = sum(len(p.split()) for p in passages)
    print(f"{OUT}: {len(train):,} training and {held:,} held-out passages, {words:,} words")


if __name__ == "__main__":
    main()
