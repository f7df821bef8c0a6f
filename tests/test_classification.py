"""Classification: recipes, label mapping and errors, pooling under padding, methods, end to end.

End-to-end runs train the 2-layer tiny GPT-2 (random init, no pretrained weights here) on real
rows of ../shared/data through the `loraft train` command (in-process, to skip ~8 s of imports
per run). Torch runs on one thread here: on a busy 2-core machine two threads ran a tiny
model's step 50x slower.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import pytest
import torch
from conftest import REPO, SHARED_DATA, shared_file
from safetensors import safe_open

from loraft.checkpoint import load_trained_model, save_checkpoint
from loraft.data import Table, read_table
from loraft.errors import LoraftError
from loraft.methods import METHODS, apply_method
from loraft.methods.head import HEAD_FILE
from loraft.models.loading import build_base_model, count_parameters
from loraft.recipe_files import load_recipe
from loraft.run_dir import RunDirectory
from loraft.tasks.classification import ClassificationTask, logits_of, truncate_pair
from loraft.tokenizer import load_tokenizer
from loraft.training import train_recipe

RECIPES = REPO / "recipes"
CLASSIFICATION_RECIPES = [
    f"{data}-{method}.yaml"
    for data, methods in {
        "sst": ("head", "lora", "full"),
        "cfimdb": ("head", "lora", "full"),
        "quora": ("lora", "full"),
        "mrpc": ("lora", "full"),
    }.items()
    for method in methods
]
WITH_DATA = {**os.environ, "LORAFT_DATA_ROOT": str(SHARED_DATA)}  # conftest pins one thread


def task_for(recipe_name: str, *overrides: str) -> ClassificationTask:
    return ClassificationTask(load_recipe(RECIPES / recipe_name, list(overrides)), [SHARED_DATA])


def write_sst_file(path: Path, rows: list[tuple[str, str]]) -> Path:
    """A file in the CS224n format: `<tab>id<tab>sentence<tab>sentiment`."""
    lines = ["\tid\tsentence\tsentiment"]
    lines += [f"{index}\tid{index}\t {text}\t{label}" for index, (text, label) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- recipes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CLASSIFICATION_RECIPES)
def test_recipe_loads_as_a_classification_task(name: str) -> None:
    recipe = load_recipe(RECIPES / name)
    assert recipe.task == "classification" and recipe.method == name.split("-")[1].removesuffix(".yaml")
    assert recipe.model.name == "gpt2" and recipe.train.seed == 11711 and recipe.train.batch_size == 8
    assert recipe.train.epochs == 10
    assert recipe.train.lr == {"head": 1e-3, "full": 1e-5, "lora": 5e-4}[recipe.method]
    task = ClassificationTask(recipe, [SHARED_DATA])
    assert task.model_options() == {"num_labels": 5 if name.startswith("sst") else 2}
    assert (recipe.data.hub is None) == name.startswith("cfimdb")  # no hub copy of CFIMDB


def test_loraft_validate_accepts_every_classification_recipe(
    loraft, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    """Quora's full files are not in ../shared/data (30-row samples are): offline, with no
    cached hub copy either, its recipes are one line each at once."""
    shared_file("cs224n/ids-cfimdb-train.csv")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    local = [RECIPES / name for name in CLASSIFICATION_RECIPES if not name.startswith("quora")]
    mine = [f"model.name={tiny_model_dir}", "data.max_length=256"]  # gpt2 is not cached here
    code, out, err = loraft("validate", *local, *mine, "--data-root", SHARED_DATA)
    assert code == 0, err
    assert out.count("ok ") == len(local)
    code, out, err = loraft("validate", RECIPES / "quora-lora.yaml", "--data-root", SHARED_DATA)
    assert code == 2 and "the hub copy 'nyu-mll/glue' is not in the local cache" in err
    code, out, err = loraft("validate", RECIPES / "quora-lora.yaml", RECIPES / "quora-full.yaml", "--no-data")
    assert code == 0, err


# --- labels, columns, errors -----------------------------------------------------------------


def test_file_labels_map_to_indices() -> None:
    task = task_for("sst-lora.yaml")
    for value, index in [("3", 3), (3, 3), (3.0, 3), ("3.0", 3), (" 0 ", 0)]:
        assert task.label_id(value, "f: row 1") == index
    named = task_for("cfimdb-lora.yaml", "data.labels=[negative, positive]")
    for value, index in [("positive", 1), ("negative", 0), (1, 1), ("1.0", 1), (0.0, 0)]:
        assert named.label_id(value, "f: row 1") == index
    shifted = task_for("cfimdb-lora.yaml", "data.labels=['1', '2']")
    assert shifted.label_id(1, "f: row 1") == 0  # a label name wins over an index


@pytest.mark.parametrize(
    ("labels", "value", "expected"),
    [
        (None, "7", "f.csv: row 17: label '7' is not one of 0..4 (data.labels)"),
        (None, "2.5", "label '2.5' is not one of 0..4"),
        ("[negative, positive]", "2", "label '2' is not one of negative, positive (or 0..1)"),
        (None, "", "f.csv: row 17: the label is missing"),
    ],
)
def test_bad_labels_name_the_file_and_row(labels: str | None, value: str, expected: str) -> None:
    task = task_for("sst-lora.yaml", *([f"data.labels={labels}"] if labels else []))
    with pytest.raises(LoraftError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        task.label_id(value, "f.csv: row 17")


def test_a_bad_label_or_missing_text_in_a_file_names_file_and_row(tmp_path: Path) -> None:
    rows = [("a fine film", "4")] * 16 + [("a dull film", "7")]
    bad_label = write_sst_file(tmp_path / "bad-label.csv", rows)
    no_text = write_sst_file(tmp_path / "no-text.csv", [("a fine film", "4"), ("", "1")])
    task = task_for("sst-lora.yaml")
    with pytest.raises(LoraftError, match=rf"{bad_label}: line 18: label '7' is not one of 0\.\.4"):
        task.rows_from_table(read_table(bad_label))
    with pytest.raises(LoraftError, match=rf"{no_text}: line 3: the text in column 'sentence' is missing"):
        task.rows_from_table(read_table(no_text))


def test_cli_reports_a_bad_label_in_one_line_with_exit_code_2(
    tmp_path: Path, tiny_model_dir: Path, loraft
) -> None:
    bad = write_sst_file(tmp_path / "train.csv", [("a fine film", "4"), ("a dull film", "9")])
    code, out, err = loraft(
        "train",
        RECIPES / "sst-lora.yaml",
        f"model.name={tiny_model_dir}",
        f"data.train={bad}",
        f"data.eval={bad}",
        "data.predict=null",
        f"output_dir={tmp_path / 'run'}",
    )
    assert code == 2
    assert err.strip() == f"error: {bad}: line 3: label '9' is not one of 0..4 (data.labels)"
    assert not (tmp_path / "run").exists()


def test_missing_predict_file_fails_before_training() -> None:
    task = task_for("cfimdb-lora.yaml", "data.predict=cs224n/no-such-file.csv", "data.train_size=8")
    shared_file("cs224n/ids-cfimdb-train.csv")
    with pytest.raises(LoraftError, match="data.predict: file 'cs224n/no-such-file.csv' not found"):
        task.load_rows()


def test_real_files_read_as_rows() -> None:
    """CS224n SST (index column), Quora (labels 1.0/0.0), MRPC (BOM, pair) and test-student files."""
    sst = task_for("sst-lora.yaml")
    path = shared_file("cs224n/ids-sst-dev.csv")
    rows = sst.rows_from_table(read_table(path))
    assert len(rows) == 1101 and {row["label"] for row in rows} == {0, 1, 2, 3, 4}
    assert rows[0]["text"] == "It 's a lovely film with lovely performances by Buy and Accorsi ."
    path = shared_file("cs224n/ids-sst-test-student.csv")
    unlabelled = sst.rows_from_table(read_table(path), labelled=False)
    assert len(unlabelled) == 2210 and unlabelled[0]["id"] == "b7573736a6ddf7be102b7fee0"
    quora = task_for("quora-lora.yaml")
    path = shared_file("cs224n/quora-train-30.csv")
    rows = quora.rows_from_table(read_table(path))
    assert len(rows) == 30 and {row["label"] for row in rows} == {0, 1} and rows[0]["label"] == 1
    mrpc = task_for("mrpc-lora.yaml")
    path = shared_file("mrpc/msr_paraphrase_train.txt")
    rows = mrpc.rows_from_table(read_table(path))
    assert rows[0]["text"].startswith("Amrozi accused") and rows[0]["text_pair"].startswith("Referring")


def test_hub_tables_use_their_own_column_names() -> None:
    """GLUE mrpc has sentence1/sentence2/label where the recipe maps the local file's names."""
    mrpc = task_for("mrpc-lora.yaml")
    row = {"sentence1": "a b", "sentence2": "b a", "label": 1, "idx": 0}
    rows = mrpc.rows_from_table(Table(list(row), [row], "nyu-mll/glue:train"))
    assert rows[0] == {"text": "a b", "text_pair": "b a", "label": 1}
    with pytest.raises(LoraftError, match="local.csv: column '#1 String' not found"):
        mrpc.rows_from_table(Table(list(row), [row], "local.csv"))  # local files must match data.columns
    sst_row = {"text": "good", "label": 4, "label_text": "very positive"}
    sst = task_for("sst-lora.yaml").rows_from_table(Table(list(sst_row), [sst_row], "SetFit/sst5:train"))
    assert sst[0] == {"text": "good", "label": 4}


# --- tokenization, padding, pooling --------------------------------------------------------


def test_pairs_are_joined_by_a_newline_and_truncated_fairly(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_model_dir))
    task = task_for("mrpc-lora.yaml", "data.max_length=16")
    rows = datasets.Dataset.from_list(
        [
            {"text": "short one", "text_pair": "word " * 40, "label": 0},
            {"text": "the cat sat", "text_pair": "on the mat", "label": 1},
        ]
    )
    features = task.tokenize(rows, tokenizer)
    newline = tokenizer("\n")["input_ids"]
    assert [len(ids) for ids in features["input_ids"]][0] == 16
    expected = tokenizer("the cat sat")["input_ids"] + newline + tokenizer("on the mat")["input_ids"]
    assert features[1]["input_ids"] == expected and features[1]["labels"] == 1
    assert truncate_pair(list(range(10)), list(range(3)), 8) == (list(range(5)), list(range(3)))
    assert truncate_pair(list(range(10)), list(range(10)), 8) == (list(range(4)), list(range(4)))


def sharp_classifier(tiny_model_dir: Path, recipe_name: str, method: str = "full"):
    """The tiny model as a classifier with large random weights, so logits depend on the input."""
    recipe = load_recipe(RECIPES / recipe_name, [f"model.name={tiny_model_dir}", f"method={method}"])
    tokenizer = load_tokenizer(str(tiny_model_dir))
    task = ClassificationTask(recipe, [SHARED_DATA])
    model = apply_method(
        build_base_model(recipe, task.kind, tokenizer, **task.model_options()), recipe, task.kind
    )
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return task, model.eval(), tokenizer


@pytest.mark.parametrize(
    ("recipe_name", "rows"),
    [
        (
            "sst-lora.yaml",
            [
                {"text": "A gorgeous, witty, seductive movie that never lets up.", "label": 4},
                {"text": "Dull.", "label": 0},
                {"text": "The film <|endoftext|> ends", "label": 2},  # the pad id's text, as text
                {"text": "It 's a lovely film with lovely performances by Buy and Accorsi .", "label": 3},
            ],
        ),
        (
            "quora-lora.yaml",
            [
                {"text": "How do I learn Python?", "text_pair": "How can I learn Python fast?", "label": 1},
                {"text": "Why?", "text_pair": "What is the capital of France and why?", "label": 0},
                {"text": "Is it raining in London, or not?", "text_pair": "Rain?", "label": 0},
            ],
        ),
    ],
)
def test_predictions_do_not_depend_on_batch_size(tiny_model_dir: Path, recipe_name: str, rows: list) -> None:
    """A right-padded batch of mixed lengths pools the same last real token as one by one."""
    task, model, tokenizer = sharp_classifier(tiny_model_dir, recipe_name)
    features = list(task.tokenize(datasets.Dataset.from_list(rows), tokenizer))
    assert all(tokenizer.pad_token_id not in feature["input_ids"] for feature in features)
    assert len({len(feature["input_ids"]) for feature in features}) == len(features)
    with torch.inference_mode():
        together = logits_of(model, task.collate(features, tokenizer))
        alone = torch.cat([logits_of(model, task.collate([feature], tokenizer)) for feature in features])
    assert together.argmax(-1).tolist() == alone.argmax(-1).tolist()
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert alone.std(0).min() > 1e-3  # the inputs really give different logits


def test_head_method_trains_only_the_score_layer_and_reloads(tmp_path: Path, tiny_model_dir: Path) -> None:
    task, model, tokenizer = sharp_classifier(tiny_model_dir, "sst-head.yaml", method="head")
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert trainable == ["score.weight"]
    assert count_parameters(model)[0] == model.score.weight.numel() == 64 * 5
    base = build_base_model(task.recipe, task.kind, tokenizer, **task.model_options())  # pretrained body
    model = apply_method(base, task.recipe, task.kind)
    with torch.no_grad():
        model.score.weight.normal_(0, 1)
    run = RunDirectory.create(tmp_path / "run")
    run.write_recipe(task.recipe)
    save_checkpoint(
        run.checkpoint("best"), model, model.state_dict(), tokenizer, METHODS["head"], {"step": 1}
    )
    with safe_open(run.checkpoint("best") / HEAD_FILE, "pt") as weights:
        assert list(weights.keys()) == ["score.weight"]  # the head alone is saved
    reloaded, _ = load_trained_model(run, "best")
    batch = task.collate([{"input_ids": tokenizer("a fine , moving film")["input_ids"]}], tokenizer)
    with torch.inference_mode():
        torch.testing.assert_close(logits_of(reloaded.eval(), batch), logits_of(model.eval(), batch))


# --- LoRA: the head rides with the adapter; reloads in a fresh process -----------------------

RELOAD_SCRIPT = """
import json, sys
import torch
from loraft.checkpoint import load_trained_model
from loraft.run_dir import RunDirectory
from loraft.tasks.classification import ClassificationTask, logits_of
run = RunDirectory.open(sys.argv[1])
task = ClassificationTask(run.read_recipe(), [])
model, tokenizer = load_trained_model(run, "last")
features = [{"input_ids": ids} for ids in json.loads(sys.argv[2])]
with torch.inference_mode():
    print(json.dumps(logits_of(model.eval(), task.collate(features, tokenizer)).tolist()))
"""


@pytest.mark.matrix  # 10 s, a second process: in .ci/run, not the README command
def test_lora_classifier_reloads_in_a_fresh_process(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Train 20 LoRA steps on SST rows, then reload the saved adapter + head elsewhere."""
    shared_file("cs224n/ids-sst-train.csv")
    run_dir = tmp_path / "run"
    overrides = [f"model.name={tiny_model_dir}", f"output_dir={run_dir}", "data.predict=null"]
    overrides += ["data.train_size=160", "data.eval_size=32", "data.max_length=32", "train.max_steps=20"]
    overrides += ["train.lr=1e-2", "lora.dropout=0"]
    result = train_recipe(load_recipe(RECIPES / "sst-lora.yaml", overrides), SHARED_DATA)
    adapter = run_dir / "checkpoints" / "last" / "adapter_model.safetensors"
    with safe_open(adapter, "pt") as weights:
        keys = list(weights.keys())
    assert any(".score." in key for key in keys) and any("lora_A" in key for key in keys)
    texts = ["a gorgeous film", "dull , dull , dull .", "It 's not bad at all , really ."]
    ids = [result.tokenizer(text)["input_ids"] for text in texts]
    task = ClassificationTask(load_recipe(run_dir / "recipe.yaml"), [])
    with torch.inference_mode():
        before = logits_of(
            result.model.eval(), task.collate([{"input_ids": i} for i in ids], result.tokenizer)
        )
    script = [sys.executable, "-c", RELOAD_SCRIPT, str(run_dir), json.dumps(ids)]
    reloaded = subprocess.run(script, cwd=REPO, env=WITH_DATA, capture_output=True, text=True, timeout=120)
    assert reloaded.returncode == 0, reloaded.stderr
    after = torch.tensor(json.loads(reloaded.stdout.strip().splitlines()[-1]))
    assert after.argmax(-1).tolist() == before.argmax(-1).tolist()
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-6)
    head = result.model.get_base_model().score  # peft's wrapper: the initial head and the trained copy
    assert not torch.allclose(head.original_module.weight, head.modules_to_save["default"].weight)


# --- end to end on real data ---------------------------------------------------------------


def majority_share(relative: str, column: str) -> float:
    labels = [row[column] for row in read_table(shared_file(relative)).rows]
    return Counter(labels).most_common(1)[0][1] / len(labels)


# A GPT-2 of 2 layers trained from scratch, with a BPE trained on the task's own rows: the
# way to learn something real from random weights in seconds.
SCRATCH = [
    "train.precision=fp32",
    "model.name=null",
    "model.config={n_layer: 2, n_head: 2, n_embd: 64, n_positions: 128}",
    "model.tokenizer_vocab_size=2000",
    "method=full",
    "train.batch_size=16",
    "train.warmup_ratio=0.1",
]


def train_tiny(tmp_path: Path, recipe_name: str, *overrides: str) -> dict:
    """Train RECIPE on ../shared/data with the scratch model above, full fine-tuning."""
    run_dir = tmp_path / recipe_name.removesuffix(".yaml")
    recipe = load_recipe(RECIPES / recipe_name, [*SCRATCH, f"output_dir={run_dir}", *overrides])
    summary = train_recipe(recipe, SHARED_DATA).summary
    assert summary == json.loads((run_dir / "summary.json").read_text())
    return summary


@pytest.mark.matrix  # 10 s of real-data training: in .ci/run, not the README command
def test_sst_full_beats_the_majority_class(tmp_path: Path) -> None:
    """Budget: 400 steps of 16 SST sentences (32 tokens), lr 2e-3: about 16 s.

    Dev accuracy (all 1,101 rows) reached 0.31 and 0.35 (seeds 1 and 2 tried) against 0.26
    for the majority class.
    """
    majority = majority_share("cs224n/ids-sst-dev.csv", "sentiment")
    overrides = ["train.max_steps=400", "train.eval_every=400", "train.lr=2e-3", "data.max_length=32"]
    summary = train_tiny(tmp_path, "sst-lora.yaml", *overrides, "data.predict=null", "train.seed=2")
    final = summary["test_eval"]  # the dev set is the recipe's test set: 10% of train selects
    assert final["eval_accuracy"] > majority + 0.03, (final["eval_accuracy"], majority)
    matrix = final["eval_confusion_matrix"]
    assert len(matrix) == 5 and sum(map(sum, matrix)) == 1101 == final["eval_examples"]
    assert sum(matrix[i][i] for i in range(5)) / 1101 == pytest.approx(final["eval_accuracy"])
    assert 0 < final["eval_macro_f1"] <= 1 and summary["best_metric"] == "eval_accuracy"


@pytest.mark.matrix  # 10 s of real-data training: in .ci/run, not the README command
def test_cfimdb_full_beats_the_majority_class_and_predicts_the_test_file(tmp_path: Path) -> None:
    """Budget: 200 steps of 16 reviews (first 48 tokens), lr 2e-3: about 11 s.

    Dev accuracy reached 0.58 and 0.62 (seeds 1 and 2) against 0.50; predictions.csv covers the
    488 test reviews.
    """
    majority = majority_share("cs224n/ids-cfimdb-dev.csv", "sentiment")
    test_file = shared_file("cs224n/ids-cfimdb-test-student.csv")
    overrides = ["train.max_steps=200", "train.eval_every=200", "train.lr=2e-3", "data.max_length=48"]
    summary = train_tiny(tmp_path, "cfimdb-lora.yaml", *overrides, "train.seed=2")
    best = summary["test_eval"]  # the best checkpoint on the dev set (the recipe's test set); predictions too
    assert best["eval_accuracy"] > majority + 0.05, (best["eval_accuracy"], majority)
    assert len(best["eval_confusion_matrix"]) == 2 and best["labels"] == ["0", "1"]
    with open(best["predictions_file"], encoding="utf-8", newline="") as stream:
        predictions = list(csv.reader(stream))
    expected_ids = [row["id"] for row in read_table(test_file).rows]
    assert predictions[0] == ["id", "label"]
    assert [row[0] for row in predictions[1:]] == expected_ids
    assert {row[1] for row in predictions[1:]} <= {"0", "1"}


def test_mrpc_pairs_train_end_to_end_with_lora(tmp_path: Path) -> None:
    """The LoRA mechanics on pairs (30 steps); accuracy is checked on the single-text tasks."""
    shared_file("mrpc/msr_paraphrase_train.txt")
    overrides = ["method=lora", "train.max_steps=30", "train.lr=5e-3", "data.max_length=64"]
    overrides += ["data.train_size=400", "data.eval_size=200"]
    summary = train_tiny(tmp_path, "mrpc-lora.yaml", *overrides)
    final = summary["final_eval"]
    assert summary["method"] == "lora" and summary["eval_examples"] == 200
    assert sum(map(sum, final["eval_confusion_matrix"])) == 200
    assert set(final) >= {"eval_accuracy", "eval_macro_f1", "eval_loss"}
