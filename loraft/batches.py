"""The data order: which examples each process trains on at each optimizer step.

Written here rather than taken from accelerate's samplers because the loop needs two things they
do not give: the position in the data follows from the step number alone (so a resumed run
continues with exactly the examples it would have seen), and every optimizer step covers the
same examples however they are split into micro-batches and processes (so batch 8 x accum 1,
4 x 2 and two processes of 4 train on the same data).

Each epoch is a seeded permutation of the examples, cut into windows of
`batch_size * grad_accum * world_size` examples, one window per optimizer step; the last
window of an epoch may be shorter. A window is dealt out micro-step by micro-step, each
micro-step's slice split evenly over the processes. With `lengths`, each run of
GROUP_STEPS windows is sorted by length first, so batches hold examples of similar length
(less padding); an epoch still sees every example once.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

GROUP_STEPS = 8  # windows sorted together by length: long enough to group, short enough to mix


@dataclass(frozen=True)
class MicroBatch:
    """Example indices of one micro-step on one process.

    `placeholder` marks a process that has no example left in the epoch's short last window:
    it still runs one example with every target ignored, so that all processes run the same
    number of backward passes (DDP synchronises gradients in each).
    """

    indices: tuple[int, ...]
    placeholder: bool = False


@dataclass(frozen=True)
class DataOrder:
    num_examples: int
    batch_size: int  # per process and micro-step
    grad_accum: int
    world_size: int
    seed: int
    lengths: tuple[int, ...] | None = None  # group batches by these example lengths

    @property
    def examples_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.num_examples / self.examples_per_step))

    def total_steps(self, epochs: float, max_steps: int | None) -> int:
        """`max_steps`, or as many steps as `epochs` passes over the data take."""
        return max_steps or max(1, math.ceil(epochs * self.steps_per_epoch))

    def epoch_of(self, step: int) -> int:
        """The epoch (from 0) that optimizer step `step` (from 1) belongs to."""
        return (step - 1) // self.steps_per_epoch

    def micro_batches(self, step: int, rank: int) -> list[MicroBatch]:
        """Process `rank`'s micro-batches for optimizer step `step` (counted from 1)."""
        epoch, index = divmod(step - 1, self.steps_per_epoch)
        order = self.permutation(epoch)
        window = order[index * self.examples_per_step : (index + 1) * self.examples_per_step]
        per_micro_step = self.batch_size * self.world_size
        batches = []
        for start in range(0, len(window), per_micro_step):
            share = np.array_split(window[start : start + per_micro_step], self.world_size)[rank]
            if len(share):
                batches.append(MicroBatch(tuple(int(i) for i in share)))
            else:
                batches.append(MicroBatch((int(window[start]),), placeholder=True))
        return batches

    @functools.lru_cache(maxsize=2)  # noqa: B019 - a handful of small orders per run
    def permutation(self, epoch: int) -> np.ndarray:
        """The order of the examples in `epoch`, the same on every process."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
        if self.lengths is None:
            return order
        group = self.examples_per_step * GROUP_STEPS
        lengths = np.asarray(self.lengths)
        chunks = [order[start : start + group] for start in range(0, len(order), group)]
        return np.concatenate([chunk[np.argsort(-lengths[chunk], kind="stable")] for chunk in chunks])
