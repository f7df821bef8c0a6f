"""Data roots, file readers and the causal-LM tasks' rows, with their error lines."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, shared_file

from loraft.data import Table, data_roots, read_table, require_data_file
from loraft.errors import LoraftError
from loraft.recipe_files import load_recipe
from loraft.tasks import build_task
from loraft.tasks.news import clean_ag_news
from loraft.tasks.sonnets import read_sonnets
from loraft.tokenizer import load_tokenizer

RECIPES = REPO / "recipes"


def test_data_roots_order_explicit_then_env_then_repo(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "env").mkdir()
    (tmp_path / "cli").mkdir()
    monkeypatch.setenv("LORAFT_DATA_ROOT", str(tmp_path / "env"))
    assert data_roots(tmp_path / "cli")[0] == (tmp_path / "cli").resolve()
    assert data_roots()[0] == (tmp_path / "env").resolve()
    assert (REPO / "data").resolve() in data_roots()
    with pytest.raises(LoraftError, match="--data-root: .*nowhere is not a folder"):
        data_roots(tmp_path / "nowhere")


def test_missing_file_names_the_field_and_the_roots(tmp_path: Path) -> None:
    with pytest.raises(LoraftError, match=r"data.train: file 'x/y.csv' not found under the data roots \("):
        require_data_file("data.train", "x/y.csv", [tmp_path])


def test_tsv_with_bom_and_bare_quotes_is_read_as_is() -> None:
    table = read_table(shared_file("mrpc/msr_paraphrase_train.txt"))
    assert table.columns[:2] == ["Quality", "#1 ID"]  # the BOM is not part of the name
    assert table.rows[0]["#1 String"].startswith("Amrozi accused his brother")
    assert len(table.rows) == 4080  # as pandas reads it too


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(LoraftError, match="empty.jsonl"):
        read_table(empty)


def test_ag_news_escapes_are_undone() -> None:
    assert clean_ag_news("night #39;s rest\\band of ultra-cynics &amp; co") == (
        "night's rest band of ultra-cynics & co"
    )


def test_news_rows_are_sized_and_seeded() -> None:
    shared_file("ag_news/news.csv")
    recipe = load_recipe(RECIPES / "news.yaml", ["data.train_size=40", "data.eval_size=10"])
    task = build_task(recipe, data_roots(shared_file("ag_news/news.csv").parents[1]))
    train, evaluation = task.load_rows()
    again, _ = task.load_rows()
    assert (len(train), len(evaluation)) == (40, 10)
    assert train["text"] == again["text"]
    assert not set(train["text"]) & set(evaluation["text"])


def test_persona_loss_covers_only_the_response(tiny_model_dir: Path) -> None:
    recipe = load_recipe(RECIPES / "joker.yaml", ["data.max_length=128"])
    task = build_task(recipe, data_roots())
    train, _ = task.load_rows()
    tokenizer = load_tokenizer(str(tiny_model_dir))
    features = task.tokenize(train.select(range(3)), tokenizer)
    for row, feature in zip(train.select(range(3)), features, strict=True):
        prompt = tokenizer(f"Person: {row['prompt'].strip()}\nJoker:")["input_ids"]
        assert feature["labels"][: len(prompt)] == [-100] * len(prompt)
        target = [t for t in feature["labels"] if t != -100]
        assert tokenizer.decode(target[:-1]).strip() == row["response"].strip()
        assert target[-1] == tokenizer.eos_token_id


def test_persona_rows_with_a_missing_field_name_the_row(tmp_path: Path) -> None:
    data = tmp_path / "p.jsonl"
    data.write_text('{"prompt": "hi", "response": "hello there"}\n{"prompt": "yo", "response": ""}\n')
    recipe = load_recipe(RECIPES / "joker.yaml", [f"data.train={data}"])
    with pytest.raises(LoraftError, match=r"p.jsonl: line 2: 'response' must be non-empty text"):
        build_task(recipe, data_roots()).load_rows()


def test_a_column_that_is_not_there_is_named(tmp_path: Path) -> None:
    data = tmp_path / "p.jsonl"
    data.write_text('{"question": "hi", "answer": "hello"}\n')
    recipe = load_recipe(RECIPES / "joker.yaml", [f"data.train={data}"])
    with pytest.raises(LoraftError, match=r"column 'prompt' not found; the columns are question, answer"):
        build_task(recipe, data_roots()).load_rows()


def test_sonnet_blocks_are_split_like_the_course() -> None:
    sonnets = read_sonnets(shared_file("cs224n/sonnets.txt"))
    held_out = read_sonnets(shared_file("cs224n/TRUE_sonnets_held_out_dev.txt"))
    prompts = read_sonnets(shared_file("cs224n/sonnets_held_out_dev.txt"))
    assert len(held_out) == len(prompts) == 12
    assert sonnets[0].startswith("From fairest creatures we desire increase")
    assert all(len(sonnet.splitlines()) >= 12 for sonnet in sonnets)
    assert all(len(prompt.splitlines()) == 3 for prompt in prompts)


def test_text_task_packs_passages_into_full_blocks(tiny_model_dir: Path) -> None:
    path = shared_file("tinyshakespeare/input.txt")
    recipe = load_recipe(RECIPES / "mini-gpt-scratch.yaml", [f"data.train={path}", "data.max_length=64"])
    train, evaluation = build_task(recipe, data_roots()).load_rows()
    assert len(evaluation) < len(train) / 5
    blocks = build_task(recipe, data_roots()).tokenize(
        train.select(range(200)), load_tokenizer(str(tiny_model_dir))
    )
    lengths = [len(ids) for ids in blocks["input_ids"]]
    assert set(lengths[:-1]) == {64}


def test_a_missing_local_file_falls_back_to_the_recipe_hub_dataset(tmp_path: Path, monkeypatch) -> None:
    """Users online run `loraft train recipes/news.yaml` without the CSV: the hub copy is used."""
    import loraft.tasks.base as base

    asked = []

    def fake_hub(hub, split, why=""):
        asked.append((hub.id, split))
        rows = [{"text": f"Story {i} of {split}.", "label": 0} for i in range(30)]
        return Table(["text", "label"], rows, f"{hub.id}:{split}")

    monkeypatch.setattr(base, "load_hub_split", fake_hub)
    recipe = load_recipe(RECIPES / "news.yaml", ["data.train_size=20", "data.eval_size=5"])
    train, evaluation = build_task(recipe, [tmp_path]).load_rows()
    assert asked == [("fancyzhx/ag_news", "train"), ("fancyzhx/ag_news", "test")]
    assert len(train) == 20 and evaluation[0]["text"].endswith("of test.")


def test_a_field_over_128_kib_is_read(tmp_path: Path) -> None:
    from loraft.data import read_table

    path = tmp_path / "long.csv"
    path.write_text("prompt,response\nhi," + "x" * 300_000 + "\n")
    table = read_table(path, None, None)
    assert len(table.rows[0]["response"]) == 300_000
