"""Next-token cross-entropy from the final hidden states, a chunk of target positions at a time.

The plain way, `model(...).logits` and then an fp32 cross-entropy, holds several (positions x
vocabulary) tensors at once: the logits, their fp32 copy, the log-softmax kept for backward and
its gradient, about 0.2 GB each for 1,000 positions of GPT-2's 50,257 tokens. Here only target
positions get logits, ROWS of them at a time, and each chunk's gradient (softmax minus one-hot)
is folded into the gradients of the hidden states and of the output weight as soon as it is
known, so that one chunk of logits is alive at a time. The vocabulary is multiplied COLUMNS
rows of the weight at a time: on a CPU, MKL runs these products 1.3-1.4x faster than one
(positions x 768) x (768 x 50,257) product.

Written here because the libraries that fuse the output layer with its loss (Liger-Kernel's
fused linear cross-entropy, Apple's Cut Cross-Entropy) are Triton kernels for GPUs only, and
torchtune's chunked loss still builds the whole logits first.
"""

from __future__ import annotations

import weakref

import torch
from accelerate.utils import extract_model_from_parallel
from torch.optim.optimizer import register_optimizer_step_post_hook

ROWS = 512  # target positions whose logits exist at once: 512 x 50,257 fp32 is 103 MB
COLUMNS = 4096  # vocabulary rows multiplied at once

# id(weight) -> (the weight, its version and storage, its autocast-dtype copy): `cast_weight`
_CASTS: dict[int, tuple[weakref.ref, tuple, torch.Tensor]] = {}


class OutputLayer(torch.nn.Linear):
    """A model's output layer that skips an empty product. The loss asks the model for no
    logits (`logits_to_keep` empty) and takes the final hidden states; `nn.Linear` would still
    run, and under autocast cast its whole weight for those zero rows: 12% of a bf16 LoRA step
    on GPT-2 small (CPU), where the 77 MB copy is fresh memory every time."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.numel() == 0:
            return inputs.new_empty((*inputs.shape[:-1], self.out_features))
        return super().forward(inputs)


def skip_empty_products(model: torch.nn.Module) -> None:
    """The model's plain linear output layer becomes an `OutputLayer` (the same weights)."""
    head = model.get_output_embeddings()
    if type(head) is torch.nn.Linear:
        head.__class__ = OutputLayer


def sparse_tied_embedding(model: torch.nn.Module) -> None:
    """An input embedding tied to the output layer gets its gradient as the rows its tokens
    touch (`nn.Embedding(sparse=True)`), not as a zero-filled (vocabulary x width) tensor: a
    tied weight's two gradients are summed before they reach it, and the output layer's is
    dense, so the weight's gradient is dense and the same all the same. Filling 50,257 x 768
    zeros took 9% of a bf16 full fine-tuning step of GPT-2 small (CPU, fresh memory each step).
    One process only: DDP's reducer refuses a parameter whose gradient is sparse."""
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    if type(embedding) is torch.nn.Embedding and head is not None and embedding.weight is head.weight:
        embedding.sparse = True


def fused_head_weight(model: torch.nn.Module) -> torch.Tensor | None:
    """The output layer's weight, where the loss can be computed from the hidden states: a plain
    bias-free linear head whose full weight is in this process. None otherwise (a LoRA-wrapped
    head; FSDP or ZeRO-3, whose weights are sharded outside the forward pass)."""
    head = extract_model_from_parallel(model).get_output_embeddings()
    if type(head) not in (torch.nn.Linear, OutputLayer) or head.bias is not None:
        return None
    weight = head.weight
    if type(weight.data) is not torch.Tensor or weight.shape != (head.out_features, head.in_features):
        return None
    return weight


def head_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of the cross-entropies of `hidden @ weight.T` (fp32) against `targets`, differentiable
    in `hidden` and `weight`: equal to `F.cross_entropy(hidden @ weight.T, targets, reduction="sum")`."""
    if not torch.is_grad_enabled():
        return head_token_losses(hidden, weight, targets).sum()
    return _HeadLossSum.apply(hidden, weight, targets)


def head_token_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The cross-entropy of each target position (fp32), without gradients."""
    with torch.no_grad():
        losses, _, _ = _chunked_losses(hidden, weight, targets, False, False)
    return losses


class _HeadLossSum(torch.autograd.Function):
    """The gradients are computed in the forward pass, chunk by chunk, and only scaled in the
    backward pass (the output is a scalar): no logits are kept for later."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses, *grads = _chunked_losses(hidden, weight, targets, *ctx.needs_input_grad[:2])
        ctx.grads = list(zip(grads, (hidden.dtype, weight.dtype), strict=True))
        return losses.sum()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        if ctx.grads is None:
            raise RuntimeError("the chunked LM loss was differentiated twice; its gradients are used up")
        # scaled in place: the weight's gradient is as large as the weight (154 MB for GPT-2)
        grads = [None if grad is None else grad.mul_(grad_loss).to(dtype) for grad, dtype in ctx.grads]
        ctx.grads = None
        return *grads, None


def _chunked_losses(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, wants_hidden: bool, wants_weight: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-target losses, and (as asked) the gradients of their sum in `hidden` and `weight`.

    The products run in autocast's dtype when autocast is on (as `nn.Linear` would), the
    softmax and the loss in fp32; gradients are accumulated in fp32.
    """
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    count, vocabulary = targets.shape[0], weight.shape[0]
    with torch.autocast(device, enabled=False):
        inputs, matrix = hidden.to(dtype), cast_weight(weight, dtype)
        fp32 = {"dtype": torch.float32, "device": hidden.device}
        losses = torch.empty(count, **fp32)
        # not zero-filled (0.1 s for GPT-2's output layer on a CPU): the first chunk of rows
        # writes them, later chunks add to them; with no rows, no chunk does
        allocate = torch.empty if count else torch.zeros
        grad_hidden = allocate(hidden.shape, **fp32) if wants_hidden else None
        grad_weight = allocate(weight.shape, **fp32) if wants_weight else None
        for start in range(0, count, ROWS):
            rows = inputs[start : start + ROWS]
            wanted = targets[start : start + ROWS]
            slices = [slice(c, min(c + COLUMNS, vocabulary)) for c in range(0, vocabulary, COLUMNS)]
            logits = [(rows @ matrix[part].T).float() for part in slices]
            normaliser = torch.stack([chunk.logsumexp(-1) for chunk in logits]).logsumexp(0)
            picked = torch.zeros_like(normaliser)
            for part, chunk in zip(slices, logits, strict=True):
                # where each target falls in this chunk; gather/scatter, not indexing by a
                # nonzero(): no wait for the device
                local = (wanted - part.start)[:, None]
                inside = ((local >= 0) & (local < chunk.shape[1])).to(chunk.dtype)
                local = local.clamp(0, chunk.shape[1] - 1)
                picked += chunk.gather(1, local).squeeze(1) * inside.squeeze(1)
                if grad_hidden is None and grad_weight is None:
                    continue
                softmax = chunk.sub_(normaliser[:, None]).exp_()
                softmax.scatter_add_(1, local, -inside)  # minus the one-hot target: d loss / d logits
                softmax = softmax.to(dtype)
                if grad_hidden is not None:  # rows [start, start + ROWS) meet each slice once
                    _accumulate(grad_hidden[start : start + ROWS], softmax, matrix[part], part.start == 0)
                if grad_weight is not None:
                    _accumulate(grad_weight[part], softmax.T, rows, start == 0)
            losses[start : start + ROWS] = normaliser - picked
    return losses, grad_hidden, grad_weight


def cast_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`weight.to(dtype)`, cast once while the weight is unchanged: a frozen output layer is cast
    once a run, a trained one once an optimizer step, not once a micro-batch. On a CPU, casting
    GPT-2's 50,257 x 768 output weight took 12% of a bf16 LoRA step (77 MB of fresh pages each
    time). A trained weight's copy is renewed after every optimizer step anywhere (a global
    step hook): fused AdamW updates weights without bumping their version counter."""
    if weight.dtype == dtype:
        return weight
    steps = _optimizer_steps[0] if weight.requires_grad else None
    state = (weight._version, steps, weight.data_ptr(), weight.device, dtype)
    cached = _CASTS.get(id(weight))
    if cached is not None and cached[0]() is weight and cached[1] == state:
        return cached[2]
    if cached is None:  # forgotten with the weight
        weakref.finalize(weight, _CASTS.pop, id(weight), None)
    cast = weight.detach().to(dtype)
    _CASTS[id(weight)] = (weakref.ref(weight), state, cast)
    return cast


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    _optimizer_steps[0] += 1


_optimizer_steps = [0]  # optimizer steps taken in this process: what a trained weight's copy is valid for
register_optimizer_step_post_hook(_count_optimizer_step)


def _accumulate(total: torch.Tensor, left: torch.Tensor, right: torch.Tensor, first: bool) -> None:
    """total (+)= left @ right, in place: written by the first product, added to by later ones
    (fp32 total; the product in the inputs' dtype)."""
    same = left.dtype == total.dtype
    if first and same:
        torch.mm(left, right, out=total)
    elif first:
        total.copy_(left @ right)
    elif same:
        total.addmm_(left, right)
    else:
        total.add_(left @ right)
