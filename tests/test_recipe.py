"""Recipes: every shipped one validates; extends, overrides and each error path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from loraft.errors import LoraftError
from loraft.recipe import field_reference
from loraft.recipe_files import load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_validates(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name == path.stem


def test_the_seed_settings_of_news_and_joker() -> None:
    news = load_recipe(RECIPES[0].parent / "news.yaml")
    assert (news.lora.r, news.lora.alpha, news.lora.dropout) == (8, 16, 0.05)
    assert (news.train.lr, news.train.batch_size, news.train.epochs) == (2e-4, 4, 5)
    assert (news.data.max_length, news.data.train_size, news.data.eval_size) == (128, 2000, 500)
    joker = load_recipe(RECIPES[0].parent / "joker.yaml")
    assert (joker.lora.r, joker.train.lr, joker.train.epochs, joker.data.max_length) == (4, 2e-5, 2, 64)


def test_extends_deep_merges_and_names_the_variant_after_its_file() -> None:
    full = load_recipe(RECIPES[0].parent / "news-full.yaml")
    assert full.name == "news-full" and full.method == "full"
    assert full.train.lr == 5e-5
    assert full.train.batch_size == 4 and full.data.train_size == 2000  # inherited


def test_overrides_are_parsed_as_yaml() -> None:
    recipe = load_recipe(
        RECIPES[0].parent / "news.yaml",
        ["lora.r=16", "train.lr=3e-4", "lora.target_modules=[c_attn,c_proj]", "output_dir=/tmp/x"],
    )
    assert recipe.lora.r == 16 and recipe.train.lr == 3e-4
    assert recipe.lora.target_modules == ["c_attn", "c_proj"]
    assert str(recipe.run_dir) == "/tmp/x"


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ("task: news\ntrain: {lrr: 0.1}\n", [], "unknown key 'train.lrr'; did you mean 'train.lr'?"),
        ("task: news\nlora: {rank: 4}\n", [], "unknown key 'lora.rank'"),
        ("task: news\nmethd: lora\n", [], "did you mean 'method'?"),
        ("task: news\n", ["train.batch_size=abc"], "train.batch_size"),
        ("task: news\n", ["method=qlora"], "method: Input should be 'full', 'lora', 'head', 'ia3', 'vera'"),
        ("task: poetry\n", [], "task: 'poetry' is not a task: use one of chat, classification, news"),
        ("method: lora\n", [], "missing required key 'task'"),
        ("task: news\nmethod: head\n", [], "method 'head' trains only a classification head"),
        ("task: news\n", ["train.lr"], "expected key.sub=value"),
        ("task: news\n", ["generation.context_window=[300, 200]"], "needs 1 <= lo <= hi"),
        ("task: news\ntrain: [1, 2\n", [], "line"),
        ("- a list\n", [], "a recipe must be a mapping"),
        ("task: news\ntrain: {lr: abc}\ntrain: {epochs: 2}\n", [], "line 3: key 'train' is given twice"),
        ("task: news\nx: &a [1]\ny: *a\n", [], "line 3: YAML aliases (*name) are not supported"),
        ("task: news\ntrain: {batch_size: true}\n", [], "train.batch_size: expected a number, not true"),
        ("task: news\ntrain: {epochs: .inf}\n", [], "train.epochs: Input should be a finite number"),
        ("task: news\n", ["train.lr=.nan"], "train.lr: Input should be a finite number"),
        ("task: news\n", ["train.seed=-1"], "train.seed: Input should be greater than or equal to 0"),
        ("task: news\n", ["lora.target_modules=[c_attn, c_attn]"], "expected distinct, non-empty"),
        ("task: news\n", ["lora.target_modules=['']"], "expected distinct, non-empty"),
        ("task: news\n", ["data.labels=[' 1', '2']"], "must not start or end with spaces"),
        ("task: news\nstudy: {decoders: {}}\n", [], "study.decoders: Dictionary should have at least 1"),
        ("task: news\ndescription: " + "x" * 500 + "\nname: [1]\n", [], "(got [1])"),
        (
            "task: news\nstudy: {decoders: {a: {tempature: 1}}}\n",
            [],
            ":2: study.decoders.a.tempature: unknown generation setting; did you mean 'temperature'?",
        ),
        (
            "task: news\n",
            ["study.decoders={a: {top_k: -1}}", "train.lr=1e-3"],
            "override 'study.decoders={a: {top_k: -1}}': study.decoders.a.top_k",
        ),
    ],
)
def test_bad_recipes_give_one_line_naming_file_and_field(
    tmp_path: Path, text: str, overrides: list[str], expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(LoraftError) as error:
        load_recipe(path, overrides)
    message = str(error.value)
    assert expected in message
    assert "\n" not in message
    if not message.startswith("override"):
        assert str(path) in message


def test_extends_cycle_and_missing_base_are_errors(tmp_path: Path) -> None:
    write(tmp_path, "extends: b.yaml\ntask: news\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\n", "b.yaml")
    with pytest.raises(LoraftError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")
    write(tmp_path, "extends: nowhere.yaml\ntask: news\n", "c.yaml")
    with pytest.raises(LoraftError, match=r"c.yaml: extends 'nowhere.yaml': .*nowhere.yaml is not a recipe"):
        load_recipe(tmp_path / "c.yaml")


def test_labels_written_as_numbers_are_label_names(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, "task: classification\ndata: {labels: [0, 1, 2]}\n"))
    assert recipe.data.labels == ["0", "1", "2"]


def test_scratch_model_excludes_a_checkpoint_name(tmp_path: Path) -> None:
    path = write(tmp_path, "task: text\nmodel: {name: gpt2, config: {n_layer: 2}}\n")
    with pytest.raises(LoraftError, match="either model.name"):
        load_recipe(path)
    scratch = load_recipe(write(tmp_path, "task: text\nmodel: {config: {n_layer: 2}}\n"))
    assert scratch.model.name is None and scratch.model.config.layers == 2


def test_readme_recipe_reference_matches_the_schema() -> None:
    readme = (RECIPES[0].parents[1] / "README.md").read_text()
    block = readme.split("<!-- recipe-reference:start -->")[1].split("<!-- recipe-reference:end -->")[0]
    assert [line for line in block.strip().splitlines()[2:]] == field_reference()


def test_errors_point_at_the_line_even_in_a_base_recipe(tmp_path: Path) -> None:
    write(tmp_path, "task: news\ntrain:\n  epochs: 2\n  lrr: 0.1\n", "base.yaml")
    write(tmp_path, "extends: base.yaml\nmethod: full\n", "variant.yaml")
    with pytest.raises(LoraftError) as error:
        load_recipe(tmp_path / "variant.yaml")
    assert str(error.value).startswith(f"{tmp_path / 'base.yaml'}:4: unknown key 'train.lrr'")


def test_recipes_nested_or_chained_past_a_sane_depth_are_one_line(tmp_path: Path) -> None:
    deep = write(tmp_path, "task: text\nx: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(LoraftError, match="nested deeper than YAML can be read"):
        load_recipe(deep)
    nested = tmp_path / "nested.yaml"
    nested.write_text(
        "task: text\n" + "".join("  " * i + f"a{i}:\n" for i in range(40)) + "  " * 40 + "b: 1\n"
    )
    with pytest.raises(LoraftError, match="nested 32\\+ levels deep"):
        load_recipe(nested)
    for index in range(100):
        (tmp_path / f"c{index}.yaml").write_text(
            f"extends: c{index + 1}.yaml\n" if index < 99 else "task: text\n"
        )
    with pytest.raises(LoraftError, match="`extends` chains more than 32 files"):
        load_recipe(tmp_path / "c0.yaml")


def test_a_mapping_override_merges_into_its_section_and_replaces_a_value() -> None:
    recipe = load_recipe(RECIPES[0].parent / "joker.yaml", ["lora={r: 2}"])
    assert (recipe.lora.r, recipe.lora.alpha) == (2, 16)  # alpha kept, not reset to its default
    sst = load_recipe(RECIPES[0].parent / "sst-lora.yaml", ["data.columns={text: body}"])
    assert sst.data.columns == {"text": "body"}  # a mapping that is a value: replaced whole
    with pytest.raises(LoraftError, match="lora.r: Input should be less than or equal to 65536"):
        load_recipe(RECIPES[0].parent / "joker.yaml", ["lora.r=100000000000000000000"])


def test_a_run_name_comes_from_any_file_name(tmp_path: Path) -> None:
    for file_name, name in [
        ("my recipe v2.yaml", "my-recipe-v2"),
        ("recette-été.yaml", "recette-t"),
        ("_x.yaml", "x"),
    ]:
        assert load_recipe(write(tmp_path, "task: text\n", file_name)).name == name


def test_a_section_of_another_method_is_an_error_where_it_is_written(tmp_path: Path) -> None:
    write(tmp_path, "task: news\nlora:\n  r: 4\n", "base.yaml")
    write(tmp_path, "extends: base.yaml\nmethod: full\n", "full.yaml")
    assert load_recipe(tmp_path / "full.yaml").to_yaml().count("lora") == 0  # inherited: dropped
    write(tmp_path, "extends: base.yaml\nmethod: ia3\ntrain:\n  lr: 0.1\nlora:\n  r: 2\n", "both.yaml")
    with pytest.raises(LoraftError) as error:
        load_recipe(tmp_path / "both.yaml")
    assert str(error.value) == (
        f"{tmp_path / 'both.yaml'}:5: lora: belongs to method lora; this recipe's method is ia3: "
        "remove the section, or set method: lora"
    )
    with pytest.raises(LoraftError, match=r"base2.yaml:2: ia3: .* method is lora \(the default\)"):
        load_recipe(write(tmp_path, "task: news\nia3:\n  target_modules: [c_attn]\n", "base2.yaml"))
    assert load_recipe(tmp_path / "base.yaml", ["method=full"]).method == "full"  # an override: dropped
    with pytest.raises(LoraftError, match=r"^override 'lora.r=8': lora.\* belongs to method lora; "):
        load_recipe(tmp_path / "full.yaml", ["lora.r=8"])
    assert load_recipe(tmp_path / "full.yaml", ["lora.r=8", "method=lora"]).lora.r == 8


def test_a_run_folders_recipe_with_every_section_still_reads(tmp_path: Path) -> None:
    """Older run folders wrote every method's section into recipe.yaml."""
    recipe = load_recipe(RECIPES[0].parent / "sst-full.yaml")
    legacy = yaml.safe_dump(recipe.model_dump(mode="json"))
    assert "lora:" in legacy and "lora:" not in recipe.to_yaml()
    path = write(tmp_path, legacy, "recipe.yaml")
    assert load_recipe(path, other_methods="drop") == recipe
    with pytest.raises(LoraftError, match=r"recipe.yaml:\d+: [a-z_0-9]+: belongs to method"):
        load_recipe(path)
