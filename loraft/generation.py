"""Text generation: Hugging Face `generate` for standard decoding, an own loop for a short context.

Standard decoding (`context_window: null`) is `model.generate` with the KV cache on. With a
`context_window`, every new token is predicted from only the W most recent tokens (prompt and
generated, padding not counted); W is fixed, or drawn uniformly from [lo, hi] at every step by a
generator seeded with `settings.seed`. Two ways to apply the window (`context_mode`):

- `reencode`: each step runs the model on the last W tokens alone, positions restarting at 0 and
  no cache. This is the "randomly shortened auto-regressive length" of Tu, Yen and Pei; the
  tokens inside the window see only each other, so a step costs W tokens of compute.
- `cache`: sliding-window attention. The KV cache keeps the whole sequence at its original
  absolute positions and each query attends to its own last W entries (itself included) through
  the attention mask; the prompt is encoded with the same banded mask. A step costs one token.
  The cache is masked, not cropped: memory still grows with the sequence.

Prompts are decoded `batch_size` at a time with left padding; positions are counted from each
row's first real token, so a prompt decodes the same alone or in a batch (greedy). Random
windows are drawn once per step for the whole batch, so with a range they depend on the batch.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from loraft.checks import check_generation, context_of
from loraft.errors import LoraftError
from loraft.recipe import GenerationSection

PromptEncoder = Callable[[object, str], list[int]]  # (tokenizer, text) -> ids
Stops = int | list[int] | None  # the token id(s) a continuation ends at; None: never early


class GenerationResult(NamedTuple):
    """Continuations plus what it took to produce them (for tokens/s in benchmarks)."""

    texts: list[str]
    new_tokens: int  # generated tokens over all prompts, each end-of-text included
    seconds: float  # decoding time, tokenization and detokenization excluded

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("inf")


def generate(
    model, tokenizer, prompts: list[str], settings: GenerationSection, encode: PromptEncoder | None = None
) -> list[str]:
    """The continuation of `settings.prefix + prompt` for each prompt, in order.

    Only the new text is returned, decoded without special tokens; a sequence stops at the
    tokenizer's end-of-text. `model` is a causal LM or a `peft.PeftModel` wrapping one.
    """
    return generate_with_stats(model, tokenizer, prompts, settings, encode).texts


def generate_with_stats(
    model, tokenizer, prompts: list[str], settings: GenerationSection, encode: PromptEncoder | None = None
) -> GenerationResult:
    """`generate`, also counting the new tokens and timing the decoding; `encode`: how a prompt
    becomes ids (default `loraft.tokenizer.encode_prompt`; a chat prompt's template wrote its
    special tokens)."""
    prompt_ids = encode_prompts(tokenizer, prompts, settings.prefix, encode)
    pad_token_id = tokenizer.pad_token_id
    if pad_token_id is None:
        pad_token_id = tokenizer.eos_token_id
    start = time.perf_counter()
    new_ids = generate_token_ids(
        model,
        prompt_ids,
        settings,
        eos_token_id=stop_token_ids(tokenizer),
        pad_token_id=pad_token_id,
    )
    seconds = time.perf_counter() - start
    texts = tokenizer.batch_decode(new_ids, skip_special_tokens=True)
    return GenerationResult(texts, sum(len(ids) for ids in new_ids), seconds)


def encode_prompts(
    tokenizer, prompts: list[str], prefix: str = "", encode: PromptEncoder | None = None
) -> list[list[int]]:
    """Token ids of `prefix + prompt`, by the rule training uses (`loraft.tokenizer`): BOS
    first where the tokenizer adds one; an empty text starts from BOS (GPT-2: end-of-text)."""
    from loraft.tokenizer import encode_prompt

    return [(encode or encode_prompt)(tokenizer, prefix + prompt) for prompt in prompts]


def generate_token_ids(
    model,
    prompts: Sequence[Sequence[int]],
    settings: GenerationSection,
    *,
    eos_token_id: Stops,
    pad_token_id: int,
    use_cache: bool = True,
) -> list[list[int]]:
    """New token ids for each prompt, in order, cut after the first `eos_token_id`.

    Prompts longer than the model's context minus `max_new_tokens` are cut from the left (the
    most recent text is kept), except with `context_mode: reencode`, whose positions never
    exceed W; there W is capped at the model's context. `eos_token_id=None` never stops early.
    `use_cache=False` recomputes the whole prefix at every step (standard decoding only; for
    benchmarks). Sampling and random windows are seeded by `settings.seed`; the global torch
    RNG is left as it was.
    """
    device = next(model.parameters()).device
    context = context_of(model.config)
    check_generation(settings, context, "generation")
    rows = _fit_to_context(prompts, settings, context)
    decode = _make_decoder(model, settings, eos_token_id, pad_token_id, use_cache, context, device)
    was_training = model.training
    model.eval()
    outputs: list[list[int]] = []
    # PEFT puts prompt tuning's virtual tokens before the left padding and drops position ids:
    # a padded row's positions would shift, so those models decode one prompt at a time
    batch = 1 if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False) else None
    batch = batch or settings.batch_size
    try:
        with torch.inference_mode(), _seeded_global_rng(settings.seed, device):
            for start in range(0, len(rows), batch):
                ids, mask = _left_pad(rows[start : start + batch], pad_token_id)
                new = decode(ids.to(device), mask.to(device))
                outputs.extend(_cut_after(row, eos_token_id) for row in new.tolist())
    finally:
        model.train(was_training)
    return outputs


# --- batching and limits -------------------------------------------------------------------


def _fit_to_context(
    prompts: Sequence[Sequence[int]], settings: GenerationSection, context: int | None
) -> list[list[int]]:
    rows = [list(prompt) for prompt in prompts]
    reencoding = settings.context_window is not None and settings.context_mode == "reencode"
    if context is None or reencoding:
        return rows
    return [row[-(context - settings.max_new_tokens) :] for row in rows]  # room checked before


def _left_pad(rows: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, padded on the left so every row ends at its last token."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[index, width - len(row) :] = 1
    return ids, mask


def stop_token_ids(tokenizer) -> Stops:
    """EOS, and the special token that ends a turn in the tokenizer's chat template where that
    is another one (a ChatML template on a base model: `<|im_end|>`)."""
    from loraft.tasks.chat import end_of_turn_id

    eos, turn = tokenizer.eos_token_id, end_of_turn_id(tokenizer)
    return eos if turn is None or turn == eos else [token for token in (eos, turn) if token is not None]


def _cut_after(tokens: list[int], eos_token_id: Stops) -> list[int]:
    stops = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else eos_token_id
    for index, token in enumerate(tokens):
        if token in stops:
            return tokens[: index + 1]
    return tokens


@contextlib.contextmanager
def _seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG (HF `generate` samples from it) and restore it afterwards."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


Decoder = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _make_decoder(
    model,
    settings: GenerationSection,
    eos_token_id: Stops,
    pad_token_id: int,
    use_cache: bool,
    context: int | None,
    device: torch.device,
) -> Decoder:
    """A function (ids, mask) -> new token ids for one left-padded batch."""
    if settings.context_window is None:
        config = _generation_config(settings, eos_token_id, pad_token_id, use_cache)
        return functools.partial(_standard_decode, model, config, eos_token_id)
    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        raise LoraftError(
            "generation.context_window: the shortened-context decoder cannot carry prompt tuning's "
            "virtual tokens; generate without a context window"
        )
    cap = context if settings.context_mode == "reencode" else None
    windows = WindowSampler(settings.context_window, settings.seed, cap)
    sampler = torch.Generator(device=device).manual_seed(settings.seed)
    decoder = WindowedDecoder(model, settings, windows, sampler, eos_token_id, pad_token_id)
    return decoder.decode


def _standard_decode(
    model, config: GenerationConfig, eos_token_id: Stops, ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    with _model_eos(model, eos_token_id):
        output = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return output[:, ids.shape[1] :]


@contextlib.contextmanager
def _model_eos(model, eos_token_id: Stops) -> Iterator[None]:
    """HF generate fills an unset eos from `model.generation_config`: hide it to never stop."""
    saved = model.generation_config.eos_token_id
    if eos_token_id is None:
        model.generation_config.eos_token_id = None
    try:
        yield
    finally:
        model.generation_config.eos_token_id = saved


def _generation_config(
    settings: GenerationSection, eos_token_id: Stops, pad_token_id: int, use_cache: bool
) -> GenerationConfig:
    # Every sampling field is set explicitly: unset ones fall back to HF defaults (top_k=50).
    shared = {
        "max_new_tokens": settings.max_new_tokens,
        "repetition_penalty": settings.repetition_penalty,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "use_cache": use_cache,
    }
    if settings.strategy == "sample":
        return GenerationConfig(
            do_sample=True,
            num_beams=1,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            **shared,
        )
    num_beams = settings.num_beams if settings.strategy == "beam" else 1
    return GenerationConfig(do_sample=False, num_beams=num_beams, **shared)


# --- the shortened-context decoder --------------------------------------------------------


class WindowSampler:
    """Context window sizes: a fixed W, or W uniform in [lo, hi] from a seeded generator."""

    def __init__(self, window: int | tuple[int, int], seed: int, cap: int | None = None) -> None:
        low, high = (window, window) if isinstance(window, int) else window
        if cap is not None:  # the model cannot see more than its context anyway
            low, high = min(low, cap), min(high, cap)
        self.low, self.high = low, high
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, count: int = 1) -> torch.Tensor:
        """`count` window sizes (a long tensor on the CPU)."""
        if self.low == self.high:
            return torch.full((count,), self.low, dtype=torch.long)
        return torch.randint(self.low, self.high + 1, (count,), generator=self.generator)


class WindowedDecoder:
    """Greedy or sampled decoding where each new token sees only the last W tokens."""

    def __init__(
        self,
        model,
        settings: GenerationSection,
        windows: WindowSampler,
        sampler: torch.Generator,
        eos_token_id: Stops,
        pad_token_id: int,
    ) -> None:
        self.model = model
        self.settings = settings
        self.windows = windows
        self.sampler = sampler
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.processors = logits_processors(settings)

    def decode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """New token ids (batch, steps) for a left-padded batch; finished rows get padding."""
        if self.settings.context_mode == "cache":
            next_logits = _SlidingWindowCache(self.model, self.windows)
        else:
            next_logits = self._reencode
        finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        new_tokens = []
        for _ in range(self.settings.max_new_tokens):
            scores = self.processors(ids, next_logits(ids, mask).float())
            tokens = self._choose(scores)
            # As in HF generate: a finished row keeps receiving padding, still attended to.
            tokens = tokens.masked_fill(finished, self.pad_token_id)
            ids = torch.cat([ids, tokens[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            new_tokens.append(tokens)
            if self.eos_token_id is not None:
                finished |= torch.isin(tokens, torch.tensor(self.eos_token_id, device=tokens.device))
            if finished.all():
                break
        return torch.stack(new_tokens, dim=1)

    def _reencode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits from the last W tokens alone, positions restarting at 0."""
        window = int(self.windows.draw(1))
        ids, mask = ids[:, -window:], mask[:, -window:]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        output = self.model(
            ids, attention_mask=mask, position_ids=positions, use_cache=False, logits_to_keep=1
        )
        return output.logits[:, -1]

    def _choose(self, scores: torch.Tensor) -> torch.Tensor:
        if self.settings.strategy == "greedy":
            return scores.argmax(dim=-1)
        probabilities = scores.softmax(dim=-1)
        return torch.multinomial(probabilities, 1, generator=self.sampler).squeeze(1)


class _SlidingWindowCache:
    """Next-token logits from a KV cache of the whole sequence, each query seeing its last W keys.

    The first call encodes the prompt (every prompt token with its own window); later calls feed
    only the newest token. Positions are absolute, counted from each row's first real token.
    """

    def __init__(self, model, windows: WindowSampler) -> None:
        self.model = model
        self.windows = windows
        self.dtype = next(model.parameters()).dtype
        self.cache = None
        self.last_positions: torch.Tensor | None = None

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.last_positions is None:
            query_ids, positions = ids, (mask.cumsum(-1) - 1).clamp(min=0)
        else:
            query_ids, positions = ids[:, -1:], self.last_positions + 1
        length, queries = ids.shape[1], query_ids.shape[1]
        query_columns = torch.arange(length - queries, length, device=ids.device)
        windows = self.windows.draw(queries).to(ids.device)
        attention = sliding_window_mask(mask, query_columns, windows, self.dtype)
        output = self.model(
            input_ids=query_ids,
            attention_mask=attention,
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,  # the vocabulary projection is costly: only the last row is used
        )
        self.cache = output.cache
        self.last_positions = positions[:, -1:]
        return output.logits[:, -1]


def sliding_window_mask(
    padding_mask: torch.Tensor,
    query_columns: torch.Tensor,
    windows: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Additive 4-D mask (batch, 1, queries, keys): query i sees keys i-W_i+1 .. i, no padding.

    `padding_mask` (batch, keys) is 1 for real tokens; `query_columns` are the key columns of the
    queries and `windows` their W. A float mask, not a boolean one, so eager attention (which
    adds the mask) and SDPA both accept it.
    """
    keys = torch.arange(padding_mask.shape[1], device=padding_mask.device)
    distance = query_columns[:, None] - keys[None, :]  # how many tokens back each key lies
    visible = (distance >= 0) & (distance < windows[:, None])
    visible = visible[None] & padding_mask[:, None, :].bool()
    # A padding query sees itself, so no row is fully masked (softmax over nothing is NaN).
    visible |= distance[None] == 0
    blocked = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return blocked.masked_fill(~visible, torch.finfo(dtype).min)[:, None]


def logits_processors(settings: GenerationSection) -> LogitsProcessorList:
    """HF's processors for the settings, in HF generate's order (penalty, then warpers)."""
    processors = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
    if settings.strategy != "sample":
        return processors
    if settings.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(settings.temperature))
    if settings.top_k > 0:
        processors.append(TopKLogitsWarper(settings.top_k))
    if settings.top_p < 1.0:
        processors.append(TopPLogitsWarper(settings.top_p))
    return processors
