"""Generation: every decoding mode, checked against plain reference loops on a tiny GPT-2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraft.checks import beam_with_window
from loraft.errors import LoraftError
from loraft.generation import (
    encode_prompts,
    generate,
    generate_token_ids,
    generate_with_stats,
)
from loraft.recipe import GenerationSection

PROMPTS = [
    "Shall I compare thee to a summer's day?",
    "Thou art",
    "Rough winds do shake the darling buds of May, and summer's lease hath all too short a date",
]
NEW_TOKENS = 12

MODES = {
    "greedy": {},
    "sample": {"strategy": "sample", "temperature": 0.8, "top_k": 50, "top_p": 0.9},
    "beam": {"strategy": "beam", "num_beams": 3},
    "penalty": {"repetition_penalty": 1.3},
    "reencode": {"context_window": 5, "context_mode": "reencode"},
    "reencode-range": {"context_window": (2, 8), "context_mode": "reencode"},
    "reencode-sample": {"context_window": (2, 8), "context_mode": "reencode", "strategy": "sample"},
    "cache": {"context_window": 5, "context_mode": "cache"},
    "cache-range": {"context_window": (2, 8), "context_mode": "cache"},
    "cache-sample": {"context_window": (2, 8), "context_mode": "cache", "strategy": "sample"},
}


def settings(**fields) -> GenerationSection:
    return GenerationSection(**{"max_new_tokens": NEW_TOKENS, "batch_size": 4, **fields})


def load_sharp_model(directory: Path):
    """The tiny model with larger random weights, so continuations depend on the context.

    At GPT-2's init scale (std 0.02) a random model repeats one token whatever it is shown,
    which would let a wrong window pass every comparison below.
    """
    model = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="sdpa")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path):
    return load_sharp_model(tiny_model_dir)


def token_ids(model, tokenizer, prompts: list, **fields) -> list[list[int]]:
    """New token ids for prompts given as texts or as token ids."""
    ids = [encode_prompts(tokenizer, [p])[0] if isinstance(p, str) else p for p in prompts]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    return generate_token_ids(model, ids, settings(**fields), eos_token_id=eos, pad_token_id=pad)


@torch.inference_mode()
def greedy_reference(model, prompt: list[int], next_logits, eos: int) -> list[int]:
    """Plain greedy loop, one sequence, no cache: `next_logits(ids)` sees the whole sequence."""
    ids = list(prompt)
    for _ in range(NEW_TOKENS):
        token = int(next_logits(ids).argmax())
        ids.append(token)
        if token == eos:
            break
    return ids[len(prompt) :]


# --- every mode ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_is_reproducible_under_a_seed(model, tokenizer, mode: str) -> None:
    rng_state = torch.get_rng_state()
    first = generate(model, tokenizer, PROMPTS, settings(**MODES[mode], seed=3))
    second = generate(model, tokenizer, PROMPTS, settings(**MODES[mode], seed=3))
    assert first == second
    assert len(first) == len(PROMPTS) and all(isinstance(text, str) for text in first)
    assert any(first)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the caller's RNG is left alone


@pytest.mark.parametrize("mode", ["sample", "reencode-sample", "cache-sample", "cache-range"])
def test_the_seed_changes_random_modes(model, tokenizer, mode: str) -> None:
    texts = [generate(model, tokenizer, PROMPTS, settings(**MODES[mode], seed=s)) for s in range(3)]
    outputs = {tuple(seeded) for seeded in texts}
    assert len(outputs) > 1


def test_beam_search_with_a_window_is_refused(model, tokenizer) -> None:
    with pytest.raises(LoraftError) as error:
        generate(model, tokenizer, PROMPTS, settings(strategy="beam", context_window=5))
    assert str(error.value) == beam_with_window()


# --- the shortened context against references ----------------------------------------------


@pytest.mark.parametrize("context_mode", ["reencode", "cache"])
def test_a_window_covering_the_context_equals_standard_greedy(model, tokenizer, context_mode):
    whole = max(len(ids) for ids in encode_prompts(tokenizer, PROMPTS)) + NEW_TOKENS
    standard = token_ids(model, tokenizer, PROMPTS)
    windowed = token_ids(model, tokenizer, PROMPTS, context_window=whole, context_mode=context_mode)
    assert windowed == standard


@pytest.mark.parametrize("window", [3, 7])
def test_reencode_equals_running_the_model_on_the_last_w_tokens(model, tokenizer, window: int):
    prompt = encode_prompts(tokenizer, PROMPTS[2:])[0]
    assert len(prompt) > window

    def last_w_tokens(ids: list[int]) -> torch.Tensor:
        return model(torch.tensor([ids[-window:]])).logits[0, -1]

    expected = greedy_reference(model, prompt, last_w_tokens, tokenizer.eos_token_id)
    fields = {"context_window": window, "context_mode": "reencode"}
    actual = token_ids(model, tokenizer, PROMPTS[2:], **fields)
    assert actual == [expected]
    assert actual != token_ids(model, tokenizer, PROMPTS[2:])  # the window changed the text


@pytest.mark.parametrize("window", [3, 7])
def test_cache_equals_full_attention_hiding_tokens_older_than_w(model, tokenizer, window: int):
    prompt = encode_prompts(tokenizer, PROMPTS[2:])[0]

    def banded_attention(ids: list[int]) -> torch.Tensor:
        query = torch.arange(len(ids))[:, None]
        key = torch.arange(len(ids))[None, :]
        sees = (key <= query) & (key > query - window)  # True: attend; positions stay 0..T-1
        return model(torch.tensor([ids]), attention_mask=sees[None, None]).logits[0, -1]

    expected = greedy_reference(model, prompt, banded_attention, tokenizer.eos_token_id)
    actual = token_ids(model, tokenizer, PROMPTS[2:], context_window=window, context_mode="cache")
    assert actual == [expected]
    assert actual != token_ids(model, tokenizer, PROMPTS[2:])


@pytest.mark.parametrize("mode", ["greedy", "beam", "penalty", "reencode", "cache", "cache-range"])
def test_a_batch_with_left_padding_equals_one_prompt_at_a_time(model, tokenizer, mode: str):
    fields = MODES[mode]
    if mode == "cache-range":  # random windows are drawn per batch step: make them one draw
        fields = {**fields, "context_window": (6, 6)}
    together = generate(model, tokenizer, PROMPTS, settings(**fields, batch_size=len(PROMPTS)))
    alone = [generate(model, tokenizer, [prompt], settings(**fields))[0] for prompt in PROMPTS]
    assert together == alone


# --- stopping, prefix, long prompts, stats -------------------------------------------------


@pytest.mark.parametrize("mode", ["greedy", "reencode", "cache"])
def test_a_sequence_stops_after_the_end_token(model, tokenizer, mode: str, monkeypatch) -> None:
    prompt = encode_prompts(tokenizer, PROMPTS[:1])
    fields = settings(**MODES[mode])
    pad = tokenizer.pad_token_id
    unstopped = generate_token_ids(model, prompt, fields, eos_token_id=None, pad_token_id=pad)[0]
    assert len(unstopped) == NEW_TOKENS
    stop = unstopped[4]  # pretend the fifth new token is the end of text
    stopped = generate_token_ids(model, prompt, fields, eos_token_id=stop, pad_token_id=pad)[0]
    assert stopped == unstopped[: unstopped.index(stop) + 1]
    # None means never stop, even where the model's own generation config names an end token
    monkeypatch.setattr(model.generation_config, "eos_token_id", stop)
    again = generate_token_ids(model, prompt, fields, eos_token_id=None, pad_token_id=pad)[0]
    assert again == unstopped
    assert model.generation_config.eos_token_id == stop


def test_the_prefix_is_prepended_to_every_prompt(model, tokenizer) -> None:
    prefix = "A sonnet. "
    primed = generate(model, tokenizer, PROMPTS, settings(prefix=prefix))
    assert primed == generate(model, tokenizer, [prefix + p for p in PROMPTS], settings())
    assert primed != generate(model, tokenizer, PROMPTS, settings())


def test_a_prompt_longer_than_the_context_keeps_its_end(model, tokenizer) -> None:
    long_prompt = " ".join(PROMPTS * 40)
    ids = encode_prompts(tokenizer, [long_prompt])[0]
    room = model.config.n_positions - NEW_TOKENS
    assert len(ids) > model.config.n_positions
    for fields in ({}, {"context_window": 8, "context_mode": "cache"}):
        whole = token_ids(model, tokenizer, [ids], **fields)
        assert whole == token_ids(model, tokenizer, [ids[-room:]], **fields)
    # reencode keeps the whole prompt: positions never pass W, and W is capped at the context
    capped = token_ids(model, tokenizer, [ids], context_window=10_000, context_mode="reencode")
    at_context = {"context_window": model.config.n_positions, "context_mode": "reencode"}
    assert capped == token_ids(model, tokenizer, [ids], **at_context)


def test_stats_count_the_new_tokens(model, tokenizer) -> None:
    result = generate_with_stats(model, tokenizer, PROMPTS, settings())
    texts, new_tokens, seconds = result
    assert texts == generate(model, tokenizer, PROMPTS, settings())
    assert new_tokens == sum(len(ids) for ids in token_ids(model, tokenizer, PROMPTS))
    assert seconds > 0 and result.tokens_per_second > 0


# --- LoRA ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["greedy", "cache"])
def test_a_saved_lora_adapter_generates_like_the_merged_model(
    tiny_model_dir: Path, tokenizer, tmp_path: Path, mode: str
) -> None:
    config = LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True, task_type="CAUSAL_LM")
    adapted = get_peft_model(load_sharp_model(tiny_model_dir), config)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:  # zero at init: make the adapter change the model
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    adapted.save_pretrained(tmp_path / "adapter")

    reloaded = PeftModel.from_pretrained(load_sharp_model(tiny_model_dir), tmp_path / "adapter")
    from_adapter = generate(reloaded, tokenizer, PROMPTS, settings(**MODES[mode]))
    merged = reloaded.merge_and_unload()
    assert from_adapter == generate(merged, tokenizer, PROMPTS, settings(**MODES[mode]))
    base = load_sharp_model(tiny_model_dir)
    assert from_adapter != generate(base, tokenizer, PROMPTS, settings(**MODES[mode]))
