"""Sequence embeddings from a trained model (`megadna embed`): one vector per input sequence.

    megadna embed --model exports/hg38-kmer6 --input seqs.fa.gz --out emb/seqs
      -> emb/seqs.npy  float32 [n, hidden_size], rows in input order
         emb/seqs.csv  row, id, length_bp, n_windows

What a vector is: the hidden states of one layer (`layer`: -1 the last, 0 the embedding output, k
layer k), pooled as the probe pools them (`megadna.model.heads.pool`): `mean` over every position of
the input, [CLS] and [SEP] included, or the [CLS] vector (`cls`).

Long sequences are tiled, never cut. A sequence is tokenized whole. When its tokens fit the model
(T = max_position_embeddings - 2 tokens) it is one input, exactly the plain pass over
`tokenizer.encode_batch([seq], ...)`. Otherwise it is cut into windows of exactly T tokens; windows
start every T - overlap tokens and the last one ends at the sequence's end, so every token is in a
window. In bp: for overlapping k-mers a window is T + k - 1 bp, and windows that share O bp share
O - k + 1 tokens (at least 0: consecutive windows then still share k - 1 bp, so that every k-mer is
seen); for single bases bp and tokens are the same; for non-overlapping k-mers and BPE, O bp is
converted with the sequence's mean bp per token. The sequence's vector is the mean of its windows'
vectors weighted by their positions (tokens + [CLS] + [SEP]), i.e. the mean over every position of
every window, for `mean`; the plain mean of the windows' [CLS] vectors for `cls`.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from megadna.errors import InputError
from megadna.eval.finetune import autocast, resolve_device
from megadna.infer.inputs import Outputs, RunOptions, length_sorted_batches, model_inputs, progress_bar, read_sequences
from megadna.model.bert import Bert
from megadna.model.heads import POOLINGS, check_layer, pool
from megadna.tokenizers import DNATokenizer

log = logging.getLogger(__name__)

DEFAULT_OVERLAP = -1  # --window_overlap_bp: a quarter of the window's tokens


def check_overlap(overlap_bp: int) -> None:
    if overlap_bp < DEFAULT_OVERLAP:
        raise InputError(f"--window_overlap_bp must be >= 0 (or -1 for a quarter of the window), got {overlap_bp}")


@dataclass
class EmbedConfig(RunOptions):
    input: str = field(default="", metadata={"help": "FASTA (plain or gzipped), or a CSV (name ends in .csv) with a 'sequence' column and optionally 'id' or 'name'"})
    model: str = field(default="", metadata={"help": "a checkpoint directory, a run's save_dir, or an export (megadna export)"})
    out: str = field(default="", metadata={"help": "output prefix: writes PREFIX.npy (float32 [n, hidden_size], input order) and PREFIX.csv (row, id, length_bp, n_windows)"})
    pooling: str = field(default="mean", metadata={"help": "mean (over every position, [CLS]/[SEP] included) | cls"})
    layer: int = field(default=-1, metadata={"help": "hidden states pooled: -1 the last layer, 0 the embedding output, k layer k"})
    window_overlap_bp: int = field(default=DEFAULT_OVERLAP, metadata={"help": "bp shared by consecutive windows of a sequence longer than the model; -1: a quarter of the window"})

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise InputError(f"--pooling {self.pooling!r}: choose one of {', '.join(POOLINGS)}")
        self.check_run_options()
        check_overlap(self.window_overlap_bp)

    def paths(self) -> tuple[Path, Path]:
        """(PREFIX.npy, PREFIX.csv)."""
        return Path(self.out + ".npy"), Path(self.out + ".csv")


def hidden_at(bert: Bert, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int) -> torch.Tensor:
    """`bert.hidden_states(input_ids, attention_mask)[layer]`, without running the layers above it."""
    return bert.hidden_states(input_ids, attention_mask, upto=check_layer(bert, layer))[-1]


def window_starts(n_tokens: int, max_tokens: int, overlap_tokens: int) -> np.ndarray:
    """Token offsets of the windows of max_tokens tokens tiling n_tokens tokens: one window when it
    fits; else every max_tokens - overlap_tokens tokens, the last flush with the end."""
    if n_tokens <= max_tokens:
        return np.zeros(1, dtype=np.int64)
    step = max_tokens - overlap_tokens
    return np.append(np.arange(0, n_tokens - max_tokens, step), n_tokens - max_tokens)


def overlap_tokens(tokenizer: DNATokenizer, overlap_bp: int, max_tokens: int, n_bp: int, n_tokens: int) -> int:
    """Tokens shared by consecutive windows for `overlap_bp` (see the module docstring)."""
    if overlap_bp == DEFAULT_OVERLAP:
        return max_tokens // 4
    if tokenizer.overlapping:
        tokens, window = max(0, overlap_bp - tokenizer.k + 1), f"{max_tokens + tokenizer.k - 1} bp"
    elif tokenizer.k == 1:
        tokens, window = overlap_bp, f"{max_tokens} bp"
    else:  # non-overlapping k-mers, BPE: bp per token varies; this sequence's mean
        tokens, window = round(overlap_bp * n_tokens / n_bp), f"~{max_tokens * n_bp // n_tokens} bp here"
    if tokens >= max_tokens:
        raise InputError(f"--window_overlap_bp {overlap_bp}: windows of {max_tokens} tokens ({window}) cannot share "
                         "that much; use less than the window")
    return tokens


def tile(tokenizer: DNATokenizer, seqs: Sequence[str], max_tokens: int, overlap_bp: int,
         places: Sequence[str] | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """(the token rows of every window, sequence by sequence; windows per sequence int64 [n]): each
    sequence tokenized whole, then one row when it fits max_tokens, else windows (`window_starts`).
    A sequence that gives no token is an InputError naming `places[i]`. Shared by `megadna predict`."""
    rows, n_windows = [], np.zeros(len(seqs), dtype=np.int64)
    for i, seq in enumerate(seqs):
        ids = tokenizer.encode(seq)
        if ids.size == 0:
            place = places[i] if places else f"sequence {i}"
            raise InputError(f"{place}: {len(seq)} bp gives no token with {tokenizer.name} (k = {tokenizer.k}); "
                             "the sequence is too short")
        starts = window_starts(ids.size, max_tokens, overlap_tokens(tokenizer, overlap_bp, max_tokens, len(seq), ids.size))
        rows.extend(ids[a : a + max_tokens] for a in starts)
        n_windows[i] = starts.size
    return rows, n_windows


def per_window(rows: list[np.ndarray], width: int, forward, *, batch_size: int, device, desc: str, progress: bool) -> np.ndarray:
    """float32 [len(rows), width]: forward(input_ids, attention_mask) -> [b, width] of every row, run in
    length-sorted batches ([CLS] row [SEP], padded) and put back in row order."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    out = np.empty((len(rows), width), dtype=np.float32)
    with progress_bar(len(rows), desc, "window", progress) as bar:
        for idx in length_sorted_batches(lengths, batch_size):
            ids, mask = model_inputs([rows[j] for j in idx], device)
            out[idx] = forward(ids, mask).float().cpu().numpy()
            bar.update(len(idx))
    return out


def merge_windows(values: np.ndarray, n_windows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One row per sequence: its window's row when it has one (bit for bit), else the mean of its
    windows' rows weighted by `weights` (one per window), summed in float64."""
    first = np.cumsum(n_windows) - n_windows  # each sequence's first window
    out = values[first]
    for i in np.flatnonzero(n_windows > 1):
        r = slice(first[i], first[i] + n_windows[i])
        w = np.asarray(weights[r], dtype=np.float64)
        out[i] = (values[r].astype(np.float64) * w[:, None]).sum(0) / w.sum()
    return out


@torch.no_grad()
def embed_sequences(bert: Bert, tokenizer: DNATokenizer, seqs: Sequence[str], *, max_tokens: int, pooling: str = "mean",
                    layer: int = -1, batch_size: int = 32, overlap_bp: int = DEFAULT_OVERLAP, device=None,
                    precision: str = "fp32", places: Sequence[str] | None = None, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(vectors float32 [n, hidden_size], windows per sequence int64 [n]) of `seqs` (ACGTN text), in order.

    max_tokens: tokens per model input without [CLS]/[SEP] (max_position_embeddings - 2). `places`
    names each sequence in errors (file and record or line)."""
    device = device or next(bert.parameters()).device
    check_layer(bert, layer)
    rows, n_windows = tile(tokenizer, seqs, max_tokens, overlap_bp, places)

    def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            h = hidden_at(bert, ids, mask, layer)
        return pool(h, mask, pooling)

    pooled = per_window(rows, bert.embeddings.word_embeddings.embedding_dim, forward, batch_size=batch_size, device=device,
                        desc="embed", progress=progress)
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    # mean: weighted by each window's positions (tokens + [CLS], [SEP]: what pool() averaged); cls: equally.
    weights = lengths + 2 if pooling == "mean" else np.ones(len(rows))
    return merge_windows(pooled, n_windows, weights), n_windows


def run_embed(cfg: EmbedConfig) -> dict:
    """Embed cfg.input with cfg.model; write PREFIX.npy and PREFIX.csv (renamed into place at the end).
    Returns a summary: counts, and the throughput of the embedding itself (reading and loading excluded)."""
    for name in ("input", "model", "out"):
        if not getattr(cfg, name):
            raise InputError(f"--{name} is required")
    npy, index = cfg.paths()
    outputs = Outputs([npy, index], cfg.overwrite, inputs=[cfg.input])  # refuse before any work
    records = read_sequences(cfg.input)
    device = resolve_device(cfg.device)
    from megadna.model.pretrained import load_pretrained

    model, tokenizer, _ = load_pretrained(cfg.model, device)
    check_layer(model.bert, cfg.layer)
    max_tokens = model.config.max_position_embeddings - 2
    n_bp = sum(len(r.seq) for r in records)
    log.info("embedding %d sequences (%d bp) from %s with %s on %s", len(records), n_bp, cfg.input, cfg.model, device)
    start = time.perf_counter()
    vectors, n_windows = embed_sequences(
        model.bert, tokenizer, [r.seq for r in records], max_tokens=max_tokens, pooling=cfg.pooling, layer=cfg.layer,
        batch_size=cfg.batch_size, overlap_bp=cfg.window_overlap_bp, device=device, precision=cfg.precision,
        places=[r.place for r in records], progress=cfg.progress)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    with outputs:
        with open(outputs.tmp(npy), "wb") as f:
            np.save(f, vectors)
        with open(outputs.tmp(index), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["row", "id", "length_bp", "n_windows"])
            w.writerows((i, r.id, len(r.seq), int(n)) for i, (r, n) in enumerate(zip(records, n_windows)))
        outputs.commit()
    return {"npy": str(npy), "index": str(index), "sequences": len(records), "windows": int(n_windows.sum()),
            "bp": n_bp, "hidden_size": int(vectors.shape[1]), "layer": cfg.layer, "pooling": cfg.pooling,
            "device": str(device), "seconds": round(seconds, 3), "sequences_per_s": round(len(records) / seconds, 1),
            "bp_per_s": round(n_bp / seconds)}
