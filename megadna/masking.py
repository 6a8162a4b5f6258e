"""Masking policies for MLM pre-training on DNA tokens: bert, dnabert spans, RandomMask curriculum.

Mental model
------------
Masking runs on the training device inside the step, as a pure function of
(token ids, global_step, seed, rank, micro_step). The same arguments give the same mask on any run,
after a resume, and whatever the data loader prefetched; the curriculum is exactly where the step
says it is. Nothing here reads a tensor back to the host.

A token is *maskable* when its id >= n_special: [PAD], [UNK], [CLS], [SEP], [MASK] are never masked,
and a span stops at them (it never crosses a [SEP] or runs into padding).

Policies (k = the k of the overlapping k-mer tokenizer; 1 for single-base tokens):
- ``bert``: each maskable token is masked with probability mask_ratio.
- ``dnabert``: each maskable token is a *centre* with probability p; a centre c masks the k tokens
  [c - k/2 + 1, c + k/2]. With overlapping k-mers every base is covered by k neighbouring tokens, so
  an isolated span hides exactly one base (a span of m tokens hides m - k + 1 bases).
- ``randommask`` (Liang et al., "Toward Understanding BERT-Like Pre-Training for DNA Foundation
  Models"): centres with probability p; each centre draws its span length m uniformly from the
  integers [k, B(step)] and masks [c - m/2 + 1, c + m/2]. The mask boundary B grows in `phases` equal
  steps from k (phase 0) to B_max (last phase), rounded to whole tokens.

Span placement for any length m (odd m included): ceil(m/2) - 1 tokens left of the centre, the
centre, floor(m/2) tokens right of it, i.e. [c - ceil(m/2) + 1, c + floor(m/2)]. For even m that is
the paper's [c - m/2 + 1, c + m/2]; for odd m it is symmetric, [c - (m-1)/2, c + (m-1)/2].

Centre probability p: the paper's text does not fix it, so by default it is *derived* from
mask_ratio rather than hidden in a coupled constant (DNABERT's 0.025 "means" ~15% only through
its 6-token spans). p solves  1 - prod_d (1 - p * q_d) = mask_ratio,  where q_d is the chance that
a centre at offset -d from a token covers it (over the span-length distribution): the share of
maskable tokens masked away from sequence ends, overlaps of neighbouring spans accounted for. For
k = 6 and 15% that gives p = 0.0267 (DNABERT's 0.025 realises ~14.1%). Near [CLS]/[SEP] spans are
clipped, so the realised share of a 512-token window is a little lower (~0.1 point); the realised
ratio is returned with every batch and logged.

rescale=True (default): p is re-solved for the current boundary, so the masked share stays at
mask_ratio while spans get longer: the curriculum makes each hidden region larger (harder), not the
amount of masking. rescale=False keeps the phase-0 p: the share grows with the boundary (harder and
more masking). An explicit centre_probability is p at phase 0; with rescale it is re-solved to hold
the share that p gives at phase 0.

B_max default 2k (12 tokens for 6-mers): the last phase hides up to k + 1 = 7 bases per span,
against DNABERT's 1, while a span still fits well inside a 512-token window. It is configuration;
the paper's text available to us does not pin it.

Randomness: one torch.Generator on the ids' device, seeded with a splitmix64 chain over
(seed, global_step, rank, micro_step) (see `mask_seed`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import torch

from megadna.errors import InputError
from megadna.tokenizers.base import CLS_ID, IGNORE_INDEX, MASK_ID, N_SPECIAL, SEP_ID

POLICIES = ("bert", "dnabert", "randommask")  # the one list of masking policies; configs and CLIs read it


@dataclass
class MaskingConfig:
    policy: str = "randommask"  # "bert" | "dnabert" | "randommask"
    # Target share of maskable tokens masked. We keep 15%, BERT's and DNABERT's, so that policies
    # compare at equal masking; span policies derive their centre probability from it.
    mask_ratio: float = 0.15
    # p, the chance a token is a span centre (span policies; bert ignores it). None: derived from
    # mask_ratio and the span lengths (module docstring). Set: p at phase 0.
    centre_probability: float | None = None
    # randommask: re-solve p as the boundary grows so the masked share holds at mask_ratio.
    # False: p fixed, the share grows with the boundary (harder and more masking).
    rescale: bool = True
    max_boundary: int | None = None  # B_max in tokens; None -> 2k
    phases: int = 5  # B goes k, ..., B_max in this many equal steps (1: B_max from the start)
    phase_steps: int | None = None  # optimizer steps per phase; None -> ceil(total_steps / phases)
    replace_mask: float = 0.8  # share of masked tokens shown as [MASK]
    replace_random: float = 0.1  # ... as a random non-special token; the rest are kept as they are

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise InputError(f"masking policy {self.policy!r} is not one of {', '.join(POLICIES)}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise InputError(f"masking mask_ratio must be in (0, 1), got {self.mask_ratio!r}")
        if self.centre_probability is not None and not 0.0 < self.centre_probability < 1.0:
            raise InputError(
                f"masking centre_probability must be in (0, 1) or None (derived from mask_ratio), "
                f"got {self.centre_probability!r}"
            )
        if self.max_boundary is not None and (not isinstance(self.max_boundary, int) or self.max_boundary < 1):
            raise InputError(f"masking max_boundary must be a positive number of tokens or None, "
                             f"got {self.max_boundary!r}")
        if not isinstance(self.phases, int) or self.phases < 1:
            raise InputError(f"masking phases must be a positive integer, got {self.phases!r}")
        if self.phase_steps is not None and (not isinstance(self.phase_steps, int) or self.phase_steps < 1):
            raise InputError(f"masking phase_steps must be a positive integer or None, got {self.phase_steps!r}")
        if not (0.0 <= self.replace_mask <= 1.0 and 0.0 <= self.replace_random <= 1.0
                and self.replace_mask + self.replace_random <= 1.0):
            raise InputError(
                f"masking replace_mask {self.replace_mask!r} and replace_random {self.replace_random!r} "
                "must be shares in [0, 1] that sum to at most 1 (the rest are kept unchanged)"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    def check_k(self, k: int) -> None:
        """Reject a tokenizer k this config cannot use (call once at start, where k is known)."""
        if not isinstance(k, int) or k < 1:
            raise InputError(f"masking: k must be a positive integer (the tokenizer's k-mer size), got {k!r}")
        if self.policy == "randommask" and self.max_boundary is not None and self.max_boundary < k:
            raise InputError(
                f"masking max_boundary {self.max_boundary} is below k = {k}: the boundary grows from "
                f"k, so set max_boundary >= {k} (or None for 2k = {2 * k})"
            )


def max_boundary(cfg: MaskingConfig, k: int) -> int:
    """B_max in tokens: cfg.max_boundary, or 2k by default."""
    cfg.check_k(k)
    return cfg.max_boundary if cfg.max_boundary is not None else 2 * k


def mask_phase(cfg: MaskingConfig, global_step: int, total_steps: int | None) -> int:
    """The curriculum phase, 0 .. phases - 1, at this optimizer step."""
    return min(max(global_step, 0) // phase_length(cfg, total_steps), cfg.phases - 1)


def phase_length(cfg: MaskingConfig, total_steps: int | None) -> int:
    """Optimizer steps per phase: cfg.phase_steps, else ceil(total_steps / phases), so that the
    last phase starts before the run ends."""
    if cfg.phase_steps is not None:
        return cfg.phase_steps
    if not total_steps or total_steps < 1:
        raise InputError("masking: total_steps is needed to place the RandomMask phases (or set phase_steps)")
    return math.ceil(total_steps / cfg.phases)


def mask_boundary(cfg: MaskingConfig, global_step: int, k: int, total_steps: int | None) -> int:
    """B(step), the longest span in tokens. k for bert and dnabert; the RandomMask curriculum else."""
    cfg.check_k(k)
    if cfg.policy != "randommask":
        return k
    b_max = max_boundary(cfg, k)
    if cfg.phases == 1:
        return b_max
    phase = mask_phase(cfg, global_step, total_steps)
    return int(math.floor(k + (b_max - k) * phase / (cfg.phases - 1) + 0.5))  # round half up


def _span_lengths(cfg: MaskingConfig, k: int, boundary: int) -> tuple[int, int]:
    """Inclusive range of span lengths drawn at this boundary."""
    return (k, boundary) if cfg.policy == "randommask" else (k, k)


def coverage(p: float, min_length: int, max_length: int) -> float:
    """Expected share of maskable tokens masked, away from sequence ends, when each token is a
    centre with probability p and span lengths are uniform on the integers [min_length, max_length]."""
    lengths = range(min_length, max_length + 1)
    n = len(lengths)
    not_covered = 1.0
    # A token is covered by a centre d tokens to its left when the span reaches d to the right
    # (floor(m/2) >= d), and by one d tokens to its right when ceil(m/2) - 1 >= d.
    for d in range(0, max_length // 2 + 1):
        q = sum(m // 2 >= d for m in lengths) / n
        not_covered *= 1.0 - p * q
    for d in range(1, (max_length - 1) // 2 + 1):
        q = sum((m - 1) // 2 >= d for m in lengths) / n
        not_covered *= 1.0 - p * q
    return 1.0 - not_covered


@functools.lru_cache(maxsize=256)
def _solve_centre_probability(target: float, min_length: int, max_length: int) -> float:
    lo, hi = 0.0, 1.0  # coverage rises monotonically with p; bisect to float precision
    for _ in range(60):
        mid = (lo + hi) / 2
        if coverage(mid, min_length, max_length) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def centre_probability(cfg: MaskingConfig, k: int, boundary: int) -> float:
    """p at this boundary (for bert: the per-token masking probability, mask_ratio)."""
    if cfg.policy == "bert":
        return cfg.mask_ratio
    lo, hi = _span_lengths(cfg, k, boundary)
    if cfg.centre_probability is None:
        if cfg.rescale:
            return _solve_centre_probability(cfg.mask_ratio, lo, hi)
        return _solve_centre_probability(cfg.mask_ratio, k, k)  # phase-0 p, held
    if cfg.rescale and (lo, hi) != (k, k):
        return _solve_centre_probability(coverage(cfg.centre_probability, k, k), lo, hi)
    return cfg.centre_probability


def expected_mask_ratio(cfg: MaskingConfig, k: int, boundary: int) -> float:
    """Expected share of maskable tokens masked, ignoring clipping at sequence ends."""
    if cfg.policy == "bert":
        return cfg.mask_ratio
    return coverage(centre_probability(cfg, k, boundary), *_span_lengths(cfg, k, boundary))


_M64 = (1 << 64) - 1
_DOMAIN = 0x6D61736B696E6721  # "masking!": keeps this stream apart from other (seed, step, rank) users


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def mask_seed(seed: int, global_step: int, rank: int, micro_step: int) -> int:
    """Generator seed for one micro-batch: a splitmix64 chain over the four keys, in order (so
    (step 1, rank 2) and (step 2, rank 1) differ), cut to 63 bits, which every torch device accepts."""
    h = _DOMAIN
    for v in (seed, global_step, rank, micro_step):
        h = _splitmix64(h ^ (v & _M64))
    return h >> 1


def span_mask(
    centres: torch.Tensor, lengths: int | torch.Tensor, maskable: torch.Tensor, max_length: int | None = None
) -> torch.Tensor:
    """Spans around centres, clipped at non-maskable tokens. All [B, L]; returns bool [B, L].

    lengths: one span length for all centres, or a LongTensor [B, L] (read at the centres) with
    max_length its upper bound. A centre c with length m masks [c - ceil(m/2) + 1, c + floor(m/2)],
    cut where a non-maskable token ([SEP], [PAD], ...) would be crossed. Vectorized: one shifted
    comparison per offset, at most max_length of them; no loop over batch or positions.
    """
    if isinstance(lengths, int):
        max_length = lengths
    elif max_length is None:
        raise ValueError("span_mask: give max_length with a tensor of lengths")
    L = centres.shape[1]
    idx = torch.arange(L, device=centres.device)
    # Room inside the run of maskable tokens around each position, to the nearest non-maskable one.
    barrier = ~maskable
    prev_barrier = torch.where(barrier, idx, -1).cummax(dim=1).values
    next_barrier = torch.where(barrier, idx, L).flip(1).cummin(dim=1).values.flip(1)
    left_room, right_room = idx - prev_barrier - 1, next_barrier - idx - 1
    if isinstance(lengths, int):
        left = left_room.clamp(max=(lengths - 1) // 2)
        right = right_room.clamp(max=lengths // 2)
    else:
        left = torch.minimum(left_room, (lengths - 1) // 2)
        right = torch.minimum(right_room, lengths // 2)
    centres = centres & maskable
    left = torch.where(centres, left, -1)  # -1: not a centre, reaches nothing
    right = torch.where(centres, right, -1)
    masked = centres.clone()
    for d in range(1, min(max_length // 2, L - 1) + 1):  # token t is covered by the centre at t - d
        masked[:, d:] |= right[:, : L - d] >= d
    for d in range(1, min((max_length - 1) // 2, L - 1) + 1):  # ... and by the centre at t + d
        masked[:, : L - d] |= left[:, d:] >= d
    return masked


def apply_masking(
    input_ids: torch.Tensor,
    *,
    cfg: MaskingConfig,
    k: int,
    global_step: int,
    seed: int,
    rank: int,
    micro_step: int = 0,
    total_steps: int | None,
    vocab_size: int,
    n_special: int = N_SPECIAL,
    mask_id: int = MASK_ID,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Mask a batch of token ids [B, L] on their own device.

    Returns (masked_ids, labels, stats): masked_ids with 80/10/10 replacement applied, labels
    holding the original id where masked and -100 elsewhere, and stats = {"mask_boundary": int
    (tokens), "centre_probability": float, "mask_ratio": 0-dim tensor, realised share of maskable
    tokens masked (read it when you sync anyway)}.
    """
    if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
        raise InputError(f"apply_masking expects integer token ids [batch, length], got "
                         f"{input_ids.dtype} {tuple(input_ids.shape)}")
    if vocab_size <= n_special:
        raise InputError(f"apply_masking: vocab_size {vocab_size} leaves no non-special token "
                         f"(n_special = {n_special})")
    device, shape = input_ids.device, input_ids.shape
    g = torch.Generator(device=device)
    g.manual_seed(mask_seed(seed, global_step, rank, micro_step))

    maskable = input_ids >= n_special
    boundary = mask_boundary(cfg, global_step, k, total_steps)
    p = centre_probability(cfg, k, boundary)
    draw = torch.rand(shape, generator=g, device=device) < p
    if cfg.policy == "bert":
        masked = draw & maskable
    else:
        lo, hi = _span_lengths(cfg, k, boundary)
        lengths = lo if lo == hi else torch.randint(lo, hi + 1, shape, generator=g, device=device)
        masked = span_mask(draw, lengths, maskable, max_length=hi)

    # 80/10/10: one uniform per token decides what a masked token shows the model.
    u = torch.rand(shape, generator=g, device=device)
    random_ids = torch.randint(n_special, vocab_size, shape, generator=g, device=device, dtype=input_ids.dtype)
    masked_ids = torch.where(masked & (u < cfg.replace_mask), mask_id, input_ids)
    to_random = masked & (u >= cfg.replace_mask) & (u < cfg.replace_mask + cfg.replace_random)
    masked_ids = torch.where(to_random, random_ids, masked_ids)
    labels = torch.where(masked, input_ids, IGNORE_INDEX)

    ratio = masked.sum() / maskable.sum().clamp(min=1)
    return masked_ids, labels, {"mask_boundary": boundary, "centre_probability": p, "mask_ratio": ratio}


def schedule(
    cfg: MaskingConfig,
    k: int,
    total_steps: int,
    n_points: int = 50,
    *,
    batch_size: int = 64,
    seq_len: int = 512,
    vocab_size: int | None = None,
    seed: int = 0,
    n_special: int = N_SPECIAL,
) -> dict[str, list]:
    """The masking curriculum over a run, for logs and plots.

    At n_points steps spread over [0, total_steps) (plus the first step of every phase) gives the
    boundary (tokens), p, the expected masked share (away from sequence ends) and the share realised
    by applying the policy to a random batch of [CLS] + (seq_len - 2) tokens + [SEP]. Masking only
    looks at which ids are special, so random ids give the same shares as real k-mers.
    """
    if total_steps < 1 or n_points < 1:
        raise InputError(f"schedule: total_steps ({total_steps}) and n_points ({n_points}) must be positive")
    cfg.check_k(k)
    vocab_size = vocab_size if vocab_size is not None else n_special + 4**k  # overlapping k-mers
    steps = {round(i * (total_steps - 1) / max(n_points - 1, 1)) for i in range(n_points)}
    if cfg.policy == "randommask":  # the first step of each phase, so the staircase is drawn sharp
        starts = (j * phase_length(cfg, total_steps) for j in range(cfg.phases))
        steps |= {s for s in starts if s < total_steps}
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(n_special, vocab_size, (batch_size, seq_len), generator=g)
    ids[:, 0], ids[:, -1] = CLS_ID, SEP_ID
    out: dict[str, list] = {"step": [], "mask_boundary": [], "centre_probability": [],
                            "expected_mask_ratio": [], "realised_mask_ratio": []}
    for step in sorted(steps):
        _, _, stats = apply_masking(ids, cfg=cfg, k=k, global_step=step, seed=seed, rank=0,
                                    total_steps=total_steps, vocab_size=vocab_size, n_special=n_special)
        out["step"].append(step)
        out["mask_boundary"].append(stats["mask_boundary"])
        out["centre_probability"].append(stats["centre_probability"])
        out["expected_mask_ratio"].append(expected_mask_ratio(cfg, k, stats["mask_boundary"]))
        out["realised_mask_ratio"].append(float(stats["mask_ratio"]))
    return out
