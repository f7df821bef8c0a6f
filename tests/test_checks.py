"""The validation pass: every malformed recipe or data file is one line, before any model loads."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from conftest import RECIPES

from loraft.checks import check_recipe
from loraft.data import read_table
from loraft.errors import LoraftError
from loraft.recipe_files import load_recipe

SST_HEADER = "\tid\tsentence\tsentiment\n"


@pytest.mark.parametrize(
    ("recipe", "overrides", "message"),
    [
        ("sst-lora.yaml", ["data.labels=null"], "data.labels: list two or more label names"),
        ("sst-lora.yaml", ["data.labels=[a, a]"], "data.labels: label names repeat"),
        (
            "joker.yaml",
            ["eval.metric=eval_accuracy"],
            "eval.metric: 'eval_accuracy' is not computed by the persona task",
        ),
        ("sst-lora.yaml", ["eval.metric=eval_loss_x"], "eval.metric: 'eval_loss_x' is not computed"),
        (
            "joker.yaml",
            ["data.template='Say: {text}'"],
            "data.template: expected exactly one {prompt} placeholder",
        ),
        ("joker.yaml", ["data.template='{prompt} and {x}'"], "data.template: expected exactly one {prompt}"),
        ("joker.yaml", ["data.template='{prompt'"], "data.template: expected '}' before end of string"),
        ("news.yaml", ["data.labels=[a, b]"], "data.labels: the news task does not use it"),
        ("news.yaml", ["data.template='{prompt}'"], "data.template: the news task does not use it"),
        ("sst-lora.yaml", ["data.prompts=x.txt"], "data.prompts: the classification task does not use it"),
        ("sonnets.yaml", ["data.prompts=null"], "data.prompts and data.eval: sonnet chrF needs"),
        ("mini-gpt-scratch.yaml", ["data.train=null"], "data.train: the text task needs a training file"),
        ("joker.yaml", ["data.train=null"], "data.train: the persona task needs a training file"),
        (
            "news.yaml",
            ["generation.strategy=beam", "generation.context_window=8"],
            "generation.context_window: beam search is not supported with a shortened context",
        ),
        (
            "decoder-study.yaml",
            ["study.decoders={b: {strategy: beam, context_window: 4}}"],
            "study.decoders.b.context_window: beam search",
        ),
        (
            "mini-gpt-scratch.yaml",
            ["generation.max_new_tokens=256"],
            "generation.max_new_tokens: 256 leaves no room for a prompt in the model's 256-token context",
        ),
        (
            "news.yaml",
            ["data.max_length=2048"],
            "data.max_length: 2048 is longer than the model's context (1024",
        ),
        ("news.yaml", ["eval.metrics=[rouge]"], "eval.metrics: expected 'evaluate:<name or path>'"),
        (
            "news.yaml",
            ["eval.metrics=['evaluate:/no/such/dir']"],
            "'evaluate:/no/such/dir': no such file or folder",
        ),
        (
            "news.yaml",
            ["train.trackers=[tensorboard, tensorboard]"],
            "train.trackers: a tracker is listed twice",
        ),
        ("news.yaml", ["train.precision=fp16"], "train.precision: fp16 needs a CUDA GPU"),
        ("news.yaml", ["generation.strategy=beam", "generation.num_beams=1"], "needs 2 or more beams"),
        (
            "joker.yaml",
            ["model.name=runs/none/checkpoints/best"],
            "model.name: 'runs/none/checkpoints/best' is not a folder here",
        ),
        ("joker.yaml", ["model.name=./gpt2"], "model.name: './gpt2' is not a folder here"),
        ("joker.yaml", ["model.name=recipes"], "model.name: recipes is a folder but not a model"),
        ("joker.yaml", ["lora.target_modules=[q_proj]"], "lora.target_modules: 'q_proj' is not a GPT-2"),
        (
            "news.yaml",
            ["eval.generate=false", "eval.metrics=['evaluate:/tmp']"],  # loraft study still scores them
            "eval.metrics: 'evaluate:/tmp' runs Python code from /tmp",
        ),
        ("joker.yaml", ["data.template='P: {prompt!z}'"], "cannot be filled in: Unknown conversion"),
        ("joker.yaml", ["data.template='P: {prompt:>{x}}'"], "data.template: 'P: {prompt:>{x}}' cannot"),
    ],
)
def test_recipe_mistakes_are_found_without_data_or_model(
    recipe: str, overrides: list[str], message: str
) -> None:
    with pytest.raises(LoraftError, match=re.escape(message)) as error:
        check_recipe(load_recipe(RECIPES / recipe, overrides))
    assert "\n" not in str(error.value)


def test_local_metric_code_needs_an_explicit_opt_in(tmp_path: Path) -> None:
    metric = tmp_path / "my_metric"
    metric.mkdir()
    with pytest.raises(LoraftError, match="runs Python code from .*--allow-local-metric-code"):
        check_recipe(load_recipe(RECIPES / "news.yaml", [f"eval.metrics=['evaluate:{metric}']"]))


def test_an_unloadable_hub_metric_is_named_offline() -> None:
    with pytest.raises(
        LoraftError, match="eval.metrics: cannot load Hugging Face metric 'no_such_metric_xyz'"
    ):
        check_recipe(load_recipe(RECIPES / "news.yaml", ["eval.metrics=['evaluate:no_such_metric_xyz']"]))


def test_a_local_model_config_gives_the_context(tiny_model_dir: Path) -> None:
    recipe = load_recipe(RECIPES / "joker.yaml", [f"model.name={tiny_model_dir}", "data.max_length=300"])
    with pytest.raises(LoraftError, match=r"longer than the model's context \(256 positions\)"):
        check_recipe(recipe)


# --- malformed data files ------------------------------------------------------------------


def persona_file(tmp_path: Path, content: bytes | str, name: str = "p.jsonl") -> list[str]:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return [f"data.train={path}"]


GOOD = '{"prompt": "hi", "response": "hello"}\n'


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"", "p.jsonl", "p.jsonl: the file is empty"),
        ("\n\n", "p.jsonl", "p.jsonl: the file has no data rows"),
        (GOOD + "{not json}\n", "p.jsonl", "p.jsonl: line 2: not valid JSON"),
        (GOOD + "[1, 2]\n", "p.jsonl", "p.jsonl: line 2: expected a JSON object, got list"),
        (
            GOOD + '{"prompt": "a", "answer": "b"}\n',
            "p.jsonl",
            "p.jsonl: line 2: 'response' must be non-empty text",
        ),
        (
            GOOD + '{"prompt": 7, "response": "b"}\n',
            "p.jsonl",
            "p.jsonl: line 2: 'prompt' must be non-empty text",
        ),
        (
            '{"question": "a", "answer": "b"}\n',
            "p.jsonl",
            "column 'prompt' not found; the columns are question, answer",
        ),
        (
            GOOD.encode() + b'{"prompt": "caf\xe9", "response": "x"}\n',
            "p.jsonl",
            "p.jsonl: line 2: not UTF-8 text (byte 0xe9)",
        ),
        (
            '[{"prompt": "a", "response": "b"}, 3]',
            "p.json",
            "p.json: expected JSON Lines, or a JSON array of objects",
        ),
        (
            "prompt,response\nhi,hello\nyo\n",
            "p.csv",
            "p.csv: line 3: 1 fields, expected 2 (prompt, response)",
        ),
        ("prompt,prompt\nhi,hello\n", "p.csv", "p.csv: line 1: a column name repeats"),
        ("prompt,response\nhi,hel\x00lo\n", "p.csv", "p.csv: line 2: contains NUL bytes"),
        ("prompt,response\n", "p.csv", "p.csv: the file has no data rows"),
    ],
)
def test_malformed_persona_files_give_one_line(tmp_path: Path, content, name: str, message: str) -> None:
    recipe = load_recipe(RECIPES / "joker.yaml", persona_file(tmp_path, content, name))
    with pytest.raises(LoraftError, match=re.escape(message)) as error:
        check_recipe(recipe, [tmp_path])
    assert "\n" not in str(error.value)


def test_good_persona_files_pass_in_every_format(tmp_path: Path, tiny_model_dir: Path) -> None:
    for content, name in [
        (GOOD * 3, "a.jsonl"),
        ("[" + GOOD.strip() + "]", "b.json"),
        ("prompt\tresponse\nhi\thello\n", "c.tsv"),
        ('prompt,response\n"a, b","c"\n', "d.csv"),
    ]:
        overrides = [*persona_file(tmp_path, content, name), f"model.name={tiny_model_dir}"]
        check_recipe(load_recipe(RECIPES / "joker.yaml", overrides), [tmp_path])


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("0\ta\tgood film\t4\n1\tb\tbad film\t9\n", "line 3: label '9' is not one of 0..4 (data.labels)"),
        ("0\ta\tgood film\t4\n1\tb\t \t1\n", "line 3: the text in column 'sentence' is missing or empty"),
        ("0\ta\tgood film\t\n", "line 2: the label is missing"),
        ("0\ta\tgood film\n", "line 2: 3 fields, expected 4"),
    ],
)
def test_malformed_classification_files_name_the_row(tmp_path: Path, rows: str, message: str) -> None:
    path = tmp_path / "sst.csv"
    path.write_text(SST_HEADER + rows)
    recipe = load_recipe(
        RECIPES / "sst-lora.yaml", [f"data.train={path}", f"data.eval={path}", "data.predict=null"]
    )
    with pytest.raises(LoraftError, match=re.escape(f"{path}: {message}")):
        check_recipe(recipe, [tmp_path])


def test_the_file_to_predict_is_checked_with_the_others(tmp_path: Path) -> None:
    good = tmp_path / "sst.csv"
    good.write_text(SST_HEADER + "0\ta\tgood film\t4\n")
    unlabelled = tmp_path / "test.csv"
    unlabelled.write_text("\tid\ttext\n0\ta\tgood film\n")  # a column named text, not sentence
    recipe = load_recipe(
        RECIPES / "sst-lora.yaml", [f"data.train={good}", f"data.eval={good}", f"data.predict={unlabelled}"]
    )
    with pytest.raises(LoraftError, match=re.escape(f"{unlabelled}: column 'sentence' not found")):
        check_recipe(recipe, [tmp_path])


def test_pipes_and_devices_are_not_data_files(tmp_path: Path) -> None:
    fifo = tmp_path / "rows.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(LoraftError, match="rows.jsonl: not a regular file"):
        check_recipe(load_recipe(RECIPES / "joker.yaml", [f"data.train={fifo}"]), [tmp_path])


def test_text_and_sonnet_files_are_checked(tmp_path: Path) -> None:
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(LoraftError, match="dir.txt: is a directory, expected a file"):
        check_recipe(load_recipe(RECIPES / "mini-gpt-scratch.yaml", ["data.train=dir.txt"]), [tmp_path])
    (tmp_path / "nul.txt").write_text("some\x00text\n\nmore\n")
    with pytest.raises(LoraftError, match="nul.txt: line 1: contains NUL bytes"):
        check_recipe(load_recipe(RECIPES / "mini-gpt-scratch.yaml", ["data.train=nul.txt"]), [tmp_path])
    (tmp_path / "s.txt").write_text("no numbered blocks here\n")
    with pytest.raises(LoraftError, match="s.txt: no numbered sonnet blocks found"):
        check_recipe(
            load_recipe(RECIPES / "sonnets.yaml", ["data.train=s.txt", "eval.generate=false"]), [tmp_path]
        )


def test_a_bad_byte_past_the_preview_is_still_one_line_when_training_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_bytes(GOOD.encode() * 60_000 + b'{"prompt": "\xff", "response": "x"}\n')
    read_table(path, preview=50)  # the preview reads the first MiB only
    with pytest.raises(LoraftError, match="big.jsonl: line 60001: not UTF-8 text"):
        read_table(path)


def test_loraft_validate_reports_each_bad_recipe_in_one_line_quickly(tmp_path: Path, loraft) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: " + str(RECIPES / "sst-lora.yaml") + "\ndata: {labels: null}\n")
    started = time.perf_counter()
    # --no-data: the shipped joker.yaml names gpt2, which is not cached here
    code, out, err = loraft("validate", RECIPES / "joker.yaml", bad, RECIPES / "quickstart.yaml", "--no-data")
    assert time.perf_counter() - started < 5
    assert code == 2 and out.count("ok ") == 2
    assert (
        err.strip()
        == f"error: {bad}: data.labels: list two or more label names in order, e.g. [negative, positive]"
    )


def test_validate_says_when_the_model_cannot_be_had(loraft, tmp_path: Path, monkeypatch) -> None:
    """Offline with nothing cached, a hub model is one line in validate, not a failure in train."""
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    code, _, err = loraft("validate", RECIPES / "joker.yaml")
    assert code == 2 and "model.name: 'gpt2' is not a local folder nor in the hub cache" in err


def test_a_one_line_text_file_says_why_it_cannot_be_split(loraft, tmp_path: Path) -> None:
    text = tmp_path / "one.txt"
    text.write_text("word " * 100_000)
    code, _, err = loraft("validate", RECIPES / "mini-gpt-scratch.yaml", f"data.train={text}")
    assert code == 2 and "has 1 passage (passages are split at blank lines)" in err
