"""Sequence-length curriculum: short pieces of each window early in the run, the full window later.

Mental model
------------
Early in training a token's attention is spread evenly over its sequence, so what it learns from its
neighbours is diluted by the sequence length. Measured on random DNA (`tiny`, kmer3, bert masking):
at 126 tokens the masked-token accuracy stayed at chance for 4,000 steps, at 32 tokens it took off
after ~1,500 (docs/PAPER.md). BERT itself pre-trained 90% of its steps at 128 tokens, then 512.

The schedule is a staircase of stages, `"32:0.3,128:0.6"`: 32 tokens per sequence until 30% of
max_steps, 128 until 60%, then the full window. A last stage ending at 1 (`"32:0.3,128:1"`) never
reaches whole windows: a model for short inputs (every GUE sequence here is <= 101 bp), trained
without the cost of the longest positions. Like masking, it is a pure function of
(global_step, max_steps) applied on the device inside the step, so a resumed run is exactly where
the step says, whatever the loader prefetched, and the data stream does not change at all.

How a window becomes pieces (`split_windows`): the window's tokens between its [CLS] and [SEP] are
cut into consecutive pieces of `length - 2` tokens, each wrapped in its own [CLS] ... [SEP]; a tail
shorter than a piece is dropped. A micro batch of B windows of L tokens becomes B * n sequences of
`length` tokens, n = (L - 2) // (length - 2): every step still sees (almost) every token of its
windows, so the masked-token count per step, and the data consumed, do not change; only attention
gets cheaper. Padded batches (BPE) are cut the same way: the window's own [SEP] closes the piece it
falls in, tokens past it stay [PAD] with attention mask 0, and a piece with no maskable token is
dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from megadna.errors import InputError
from megadna.tokenizers.base import CLS_ID, N_SPECIAL, PAD_ID, SEP_ID


@dataclass(frozen=True)
class Stage:
    tokens: int  # sequence length in tokens, [CLS] and [SEP] included
    until: float  # fraction of max_steps at which this stage ends


def parse_schedule(text: str) -> tuple[Stage, ...]:
    """`"32:0.3,128:0.6"` -> stages; `""` -> no schedule (the full window throughout)."""
    text = (text or "").strip()
    if not text:
        return ()
    stages = []
    for part in text.split(","):
        tokens, sep, until = part.strip().partition(":")
        try:
            stage = Stage(int(tokens), float(until))
        except ValueError:
            raise InputError(f"--seq_len_schedule {text!r}: {part.strip()!r} is not TOKENS:FRACTION (e.g. 32:0.3)") from None
        if not sep or stage.tokens < 3:
            raise InputError(f"--seq_len_schedule {text!r}: each stage is TOKENS:FRACTION with TOKENS >= 3, got {part.strip()!r}")
        stages.append(stage)
    for a, b in zip(stages, stages[1:]):
        if not (a.tokens < b.tokens and a.until < b.until):
            raise InputError(f"--seq_len_schedule {text!r}: stages must grow in both length and end fraction")
    if not (0 < stages[0].until and stages[-1].until <= 1):
        raise InputError(f"--seq_len_schedule {text!r}: end fractions must lie in (0, 1]; whole windows take the rest (none with 1)")
    return tuple(stages)


def seq_len_at(stages: tuple[Stage, ...], global_step: int, total_steps: int, full: int) -> int:
    """Tokens per sequence at `global_step` of `total_steps`: a stage's length, or `full` after the last
    stage (and never more than `full`)."""
    for stage in stages:
        if global_step < stage_end(stage, total_steps):
            return min(stage.tokens, full)
    return full


def stage_end(stage: Stage, total_steps: int) -> int:
    """The first step after `stage`: ceil(until * total_steps), exact (0.3 * 20 is 6, not 6.000000000000001)."""
    return math.ceil(round(stage.until * total_steps, 9))


def split_windows(ids: torch.Tensor, attention_mask: torch.Tensor | None, length: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[B, L] windows ([CLS] body [SEP] [PAD]...) -> [B * n, length] pieces (see the module docstring).
    Returns the batch unchanged when `length >= L`. Runs on the ids' device, without a host sync unless
    the batch is padded."""
    B, L = ids.shape
    if length >= L:
        return ids, attention_mask
    body_len = length - 2
    n = (L - 2) // body_len
    body = ids[:, 1 : 1 + n * body_len].reshape(B * n, body_len)
    cls = torch.full((B * n, 1), CLS_ID, dtype=ids.dtype, device=ids.device)
    if attention_mask is None:
        sep = torch.full((B * n, 1), SEP_ID, dtype=ids.dtype, device=ids.device)
        return torch.cat([cls, body, sep], dim=1), None
    # A padded row: its own [SEP] closes the piece it falls in, and the padding after it stays [PAD]
    # (mask 0); a piece that ends in real tokens gets a [SEP]; a piece with no token to mask is dropped.
    real = attention_mask[:, 1 : 1 + n * body_len].reshape(B * n, body_len).bool()
    last_real = real[:, -1:]
    tail = torch.where(last_real, SEP_ID, PAD_ID).to(ids.dtype)
    pieces = torch.cat([cls, torch.where(real, body, PAD_ID), tail], dim=1)
    mask = torch.cat([torch.ones_like(last_real), real, last_real], dim=1).to(attention_mask.dtype)
    keep = (real & (body >= N_SPECIAL)).any(dim=1)
    return pieces[keep], mask[keep]
