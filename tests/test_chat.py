"""`task: chat`: every row format gives `apply_chat_template`'s tokens, the loss covers exactly
the assistant turns (with their end-of-turn token), bad rows are one line, and a trained run's
template is the one a plain transformers pipeline and `loraft generate --chat` use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import RECIPES, REPO, save_tiny_family_model
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from loraft.errors import LoraftError
from loraft.evaluation import evaluate_run
from loraft.export import export_run
from loraft.recipe_files import load_recipe
from loraft.tasks.chat import DEFAULT_TEMPLATE, encode_conversation, to_messages
from loraft.training import train_recipe

# Llama-3 / ChatML-like: BOS first, special tokens and newlines around each turn, trimmed
# content, and the template's own refusal of roles out of order.
CHATML = (
    "{{ bos_token }}"
    "{%- set offset = 1 if messages[0]['role'] == 'system' else 0 -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] != 'system' and (m['role'] == 'user') != ((loop.index0 - offset) % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + (m['content'] | trim) + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
CONVERSATION = [
    {"role": "system", "content": "You are the Joker."},
    {"role": "user", "content": "Why so serious?"},
    {"role": "assistant", "content": "Because the punchline is you."},
    {"role": "user", "content": "Tell me another."},
    {"role": "assistant", "content": " Knock knock. "},
]
ROWS = {  # one single-turn conversation in every format
    "messages": {"messages": CONVERSATION[1:3]},
    "prompt_completion": {"prompt": "Why so serious?", "completion": "Because the punchline is you."},
    "prompt_completion lists": {
        "prompt": [CONVERSATION[1]],
        "completion": [CONVERSATION[2]],
    },
    "alpaca": {"instruction": "Why so serious?", "input": "", "output": "Because the punchline is you."},
    "sharegpt": {
        "conversations": [
            {"from": "human", "value": "Why so serious?"},
            {"from": "gpt", "value": "Because the punchline is you."},
        ]
    },
}


@pytest.fixture(scope="module")
def chat_models(family_dirs: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """GPT-2 (no chat template) and a tiny Llama whose tokenizer has a ChatML-like one."""
    llama = save_tiny_family_model(tmp_path_factory.mktemp("chatml"), "llama")
    tokenizer = AutoTokenizer.from_pretrained(llama)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.eos_token, tokenizer.chat_template = "<|im_end|>", CHATML
    model = AutoModelForCausalLM.from_pretrained(llama)
    model.resize_token_embeddings(len(tokenizer))
    model.config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(llama)
    tokenizer.save_pretrained(llama)
    return {"gpt2": family_dirs["gpt2"], "chatml": llama}


def tokenizer_of(chat_models: dict, name: str):
    tokenizer = AutoTokenizer.from_pretrained(chat_models[name])
    tokenizer.chat_template = tokenizer.chat_template or DEFAULT_TEMPLATE
    return tokenizer


def template_tokens(tokenizer, messages: list[dict], **options) -> list[int]:
    """transformers' own tokens of a conversation (what its pipelines feed the model)."""
    encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **options)
    return list(encoded["input_ids"])


@pytest.mark.parametrize("name", ["gpt2", "chatml"])
def test_every_format_gives_the_tokens_of_apply_chat_template(chat_models: dict, name: str) -> None:
    tokenizer = tokenizer_of(chat_models, name)
    expected = template_tokens(tokenizer, CONVERSATION[1:3])
    for fmt, row in ROWS.items():
        messages = to_messages(row, fmt.split()[0], "row")
        ids, _ = encode_conversation(tokenizer, messages, "assistant", "row")
        assert ids == expected, fmt
    whole = template_tokens(tokenizer, CONVERSATION)
    ids, _ = encode_conversation(
        tokenizer, to_messages({"messages": CONVERSATION}, "messages", "row"), "all", ""
    )
    assert ids == whole


@pytest.mark.parametrize(
    ("name", "train_on", "expected"),
    [
        ("chatml", "assistant", ["Because the punchline is you.<|im_end|>", "Knock knock.<|im_end|>"]),
        ("chatml", "last_assistant", ["Knock knock.<|im_end|>"]),
        (
            "gpt2",
            "assistant",
            [" Because the punchline is you.<|endoftext|>", " Knock knock. <|endoftext|>"],
        ),
    ],
)
def test_the_loss_covers_exactly_the_assistant_turns(
    chat_models: dict, name: str, train_on: str, expected: list[str]
) -> None:
    """Token by token: the trained tokens are the assistant turns' (and their end-of-turn),
    nothing of the system or user turns, the role headers or the newlines between turns."""
    tokenizer = tokenizer_of(chat_models, name)
    ids, trained = encode_conversation(
        tokenizer, to_messages({"messages": CONVERSATION}, "messages", "row"), train_on, "row"
    )
    runs, current = [], []
    for token, keep in zip(ids, trained, strict=True):
        if keep:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    assert [tokenizer.decode(run) for run in runs] == expected
    _, everything = encode_conversation(
        tokenizer, to_messages({"messages": CONVERSATION}, "messages", "row"), "all", "row"
    )
    assert all(everything)


BAD_ROWS = [
    (
        {"messages": [{"role": "bot", "content": "hi"}]},
        "messages 1: role 'bot' is not one of system, user, assistant",
    ),
    (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},
        "message 2 (assistant) has empty content",
    ),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn to train on"),
    ({"prompt": "hi", "completion": "ho"}, "expected a messages row like the file's first (no 'messages')"),
    (
        {"conversations": [{"from": "robot", "value": "x"}]},
        "conversations 1: from 'robot' is not one of system, human, user, gpt, assistant",
    ),
    ({"question": "x", "answer": "y"}, "not a chat row: expected messages, prompt + completion"),
    (
        {"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]},
        "the chat template refuses this conversation: Conversation roles must alternate",
    ),
]


@pytest.mark.parametrize(("row", "expected"), BAD_ROWS, ids=[e.split(":")[0][:30] for _, e in BAD_ROWS])
def test_a_bad_row_is_one_line_naming_file_and_line(
    row: dict, expected: str, chat_models: dict, tmp_path: Path, loraft
) -> None:
    """The bad row second, after a good one of its format (the file's first row sets it)."""
    data = tmp_path / "chat.jsonl"
    fmt = "sharegpt" if "conversations" in row else "messages"
    first = "" if "question" in row else json.dumps(ROWS[fmt]) + "\n"
    data.write_text(first + json.dumps(row) + "\n")
    code, out, err = loraft(
        "validate",
        "recipes/joker-chat.yaml",
        f"model.name={chat_models['chatml']}",
        f"data.train={data}",
        "data.columns={}",
    )
    lines = err.strip().splitlines()
    assert (
        code == 2
        and len(lines) == 1
        and f"{data}: line {2 if first else 1}: " in lines[0]
        and expected in lines[0]
    ), err


def chat_run(model_dir: Path, run: Path, data: Path, *more: str):
    return load_recipe(
        RECIPES / "joker-chat.yaml",
        [
            f"model.name={model_dir}",
            f"output_dir={run}",
            f"data.train={data}",
            "data.columns={}",
            "train.precision=fp32",
            "train.max_steps=3",
            "train.batch_size=4",
            "train.lr=1e-2",
            "lora.target_modules=[all-linear]",
            "eval.generate=false",
            "data.max_length=96",
            *more,
        ],
    )


@pytest.mark.parametrize("name", ["gpt2", "chatml"])
def test_a_trained_chat_run_formats_prompts_as_a_plain_pipeline_does(
    name: str, chat_models: dict, tmp_path: Path, loraft
) -> None:
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": CONVERSATION}) + "\n" for _ in range(8)))
    train_recipe(chat_run(chat_models[name], tmp_path / "run", data))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    again = evaluate_run(tmp_path / "run", checkpoint="last")["eval_loss"]  # `loraft eval`
    assert again == pytest.approx(summary["final_eval"]["eval_loss"], rel=1e-6)
    source = "the tokenizer's" if name == "chatml" else "loraft's default (the tokenizer has none)"
    assert summary["chat_template_source"] == source
    merged = export_run(tmp_path / "run", tmp_path / "merged", merge=True, checkpoint="last")
    assert f"Chat template: {source}" in (merged / "README.md").read_text()

    generator = pipeline("text-generation", model=str(merged))
    asked = CONVERSATION[:4]
    plain = template_tokens(generator.tokenizer, asked, add_generation_prompt=True)
    trained, _ = encode_conversation(
        tokenizer_of(chat_models, name), to_messages({"messages": CONVERSATION}, "messages", ""), "all", ""
    )
    assert trained[: len(plain)] == plain  # the prompt is the trained conversation's beginning
    answer = generator(asked, max_new_tokens=3, do_sample=False)[0]["generated_text"]
    assert answer[-1]["role"] == "assistant"

    code, out, err = loraft("generate", str(tmp_path / "run"), "--chat", "--prompt", json.dumps(asked),
                            "--max-new-tokens", "3", "--strategy", "greedy", "--checkpoint", "last",
                            "--json")  # fmt: skip
    assert code == 0, err
    with torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(merged)
        ids = torch.tensor([plain])
        greedy = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    expected = generator.tokenizer.decode(greedy[0, len(plain) :], skip_special_tokens=True)
    assert json.loads(out)["continuation"] == expected


def test_a_conversation_too_long_to_train_on_is_dropped_with_a_count(
    chat_models: dict, tmp_path: Path, capsys
) -> None:
    data = tmp_path / "chat.jsonl"
    long = {"messages": [{"role": "user", "content": "ha " * 200}, {"role": "assistant", "content": "no"}]}
    data.write_text(
        json.dumps(long) + "\n" + "".join(json.dumps({"messages": CONVERSATION}) + "\n" for _ in range(7))
    )
    train_recipe(chat_run(chat_models["chatml"], tmp_path / "run", data, "data.eval_fraction=0.25"))
    assert "data: dropped 1 of " in capsys.readouterr().out


def test_without_a_template_file_the_recipe_is_one_line(loraft) -> None:
    code, out, err = loraft(
        "validate", "--no-data", "recipes/joker-chat.yaml", "data.chat_template=missing.jinja"
    )
    assert (
        code == 2
        and "data.chat_template: 'missing.jinja' is neither a Jinja template nor a readable file" in err
    )
    with pytest.raises(LoraftError, match="data.format: the persona task does not use it"):
        from loraft.checks import check_recipe

        check_recipe(load_recipe(RECIPES / "joker.yaml", ["data.format=messages"]))


def test_validate_says_each_files_format(chat_models: dict, tmp_path: Path, loraft) -> None:
    for fmt, row in ROWS.items():
        data = tmp_path / f"{fmt.split()[0]}.jsonl"
        data.write_text(json.dumps(row) + "\n")
        args = [
            "validate",
            "recipes/joker-chat.yaml",
            f"model.name={chat_models['gpt2']}",
            f"data.train={data}",
        ]
        code, out, err = loraft(*args, "data.columns={}", "data.eval=" + str(data))
        assert code == 0, err
        assert f"{data}: {fmt.split()[0]} format (detected)" in out
    code, out, err = loraft(*args, "data.columns={}", f"data.eval={data}", "data.format=sharegpt")
    assert code == 0 and f"{data}: sharegpt format (data.format)" in out


def test_the_readmes_examples_of_each_format_read() -> None:
    from loraft.tasks.chat import detect_format

    section = (REPO / "README.md").read_text().split("## Chat and instruction data")[1].split("\n## ")[0]
    blocks = [block.split("```")[0] for block in section.split("```jsonl\n")[1:]]
    found = []
    for block in blocks:
        rows = [json.loads(line) for line in block.strip().splitlines()]
        formats = {detect_format(row, "README") for row in rows}
        assert len(rows) == 2 and len(formats) == 1
        for row in rows:
            assert to_messages(row, *formats, "README")[-1]["role"] == "assistant"
        found += formats
    assert found == ["messages", "prompt_completion", "alpaca", "sharegpt"]


def test_a_one_letter_answer_trains_only_itself(chat_models: dict) -> None:
    """The content is found where the template puts it, not searched for: "A" is also in
    "Assistant"; and a prompt in brackets that is not JSON stays a user's text."""
    from loraft.tasks.chat import messages_of_prompt

    tokenizer = tokenizer_of(chat_models, "gpt2")
    messages = to_messages({"prompt": "Pick A or B.", "completion": "A"}, "prompt_completion", "row")
    ids, trained = encode_conversation(tokenizer, messages, "assistant", "row")
    assert (
        tokenizer.decode([token for token, keep in zip(ids, trained, strict=True) if keep])
        == " A<|endoftext|>"
    )
    assert messages_of_prompt("[joke] tell me one") == [
        {"role": "user", "content": "[joke] tell me one", "completion": True}
    ]


def test_generation_stops_at_the_templates_end_of_turn(chat_models: dict) -> None:
    """A ChatML template on a tokenizer whose EOS is another token: both end a continuation."""
    from loraft.generation import _cut_after, stop_token_ids

    tokenizer = tokenizer_of(chat_models, "chatml")
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert stop_token_ids(tokenizer) == end  # its EOS is the end of turn already
    tokenizer.eos_token = "<|endoftext|>"
    stops = stop_token_ids(tokenizer)
    assert stops == [tokenizer.eos_token_id, end]
    assert _cut_after([5, 6, end, 7, 8], stops) == [5, 6, end]
    gpt2 = tokenizer_of(chat_models, "gpt2")  # the default template ends a turn with EOS
    assert stop_token_ids(gpt2) == gpt2.eos_token_id
