"""Variant effect scores from a masked language model (`megadna score-variants`), SNVs only.

    megadna score-variants --model exports/hg38-kmer6 --input variants.csv --out scored.csv
    megadna score-variants --model exports/hg38-kmer6 --input snvs.csv --fasta hg38.fa.gz --out scored.csv

Input: a CSV with columns sequence,pos,ref,alt (the variant lies in the row's sequence), or
chrom,pos,ref,alt with --fasta GENOME (in the record named chrom). pos is 1-based: pos 1 is the first
base. ref and alt are single bases A, C, G or T, and the base at pos must equal ref (any case). Other
columns are kept; the output adds llr, logp_ref and logp_alt.

Context: the model sees `context_bp` reference bases around the variant (default: as many as its
positions hold), centred on it where the sequence allows and shifted inward at the sequence's ends.

What is computed, for a variant at base p of the context:
- M = the tokens that contain base p. Overlapping k-mers: the tokens i with i <= p <= i + k - 1, k of
  them (fewer within k - 1 bp of the context's ends). Any other tokenizer: the one token of the
  reference's tokenization whose bases include p.
- Every token in M becomes [MASK]; nothing else in the input holds base p, so the input is the same
  for ref and alt: one forward pass, and the model's log-softmax over the vocabulary at each masked
  position i, log p_i.
- logp_ref = sum over i in M of log p_i(the token the reference sequence has at i);
  logp_alt = the same with the token the alternative sequence has at i (for overlapping k-mers the
  k-mer with alt at p; otherwise the token's bases with alt at p, in the reference's segmentation);
  llr = logp_alt - logp_ref. Positive: the model prefers alt. ref == alt gives exactly 0.
Each term is the probability of a whole token; the sum over the k overlapping tokens is the usual
masked-LM score of a base, and treats the k predictions as independent. A k-mer holding an N is
[UNK] for ref and alt alike and adds nothing to llr. For BPE, when the alt bases of the token are no
piece of the vocabulary, logp_alt and llr are NaN (counted in the log).
"""

from __future__ import annotations

import csv
import logging
import re
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from megadna.data.genome import read_fasta
from megadna.errors import InputError, where
from megadna.eval.finetune import autocast, resolve_device
from megadna.infer.inputs import Outputs, RunOptions, Table, check_dna, length_sorted_batches, model_inputs, progress_bar, read_table
from megadna.model import BertForMLM
from megadna.tokenizers import MASK_ID, N_SPECIAL, DNATokenizer

log = logging.getLogger(__name__)

SCORE_COLUMNS = ("llr", "logp_ref", "logp_alt")
LAYOUTS = "columns sequence,pos,ref,alt, or chrom,pos,ref,alt with --fasta (pos 1-based)"
_POS = re.compile(r"[0-9]+")


@dataclass
class VariantConfig(RunOptions):
    input: str = field(default="", metadata={"help": "CSV with columns sequence,pos,ref,alt, or chrom,pos,ref,alt with --fasta; pos is 1-based; SNVs only"})
    model: str = field(default="", metadata={"help": "a checkpoint directory, a run's save_dir, or an export (megadna export)"})
    out: str = field(default="", metadata={"help": "output CSV: the input columns plus llr, logp_ref, logp_alt"})
    fasta: str = field(default="", metadata={"help": "genome FASTA (plain or gzipped) whose record names are the CSV's chrom values"})
    context_bp: int = field(default=0, metadata={"help": "reference bases the model sees around each variant; 0: as many as the model's positions hold"})
    batch_size: int = field(default=32, metadata={"help": "variants per forward pass"})

    def __post_init__(self):
        self.check_run_options()
        if self.context_bp < 0:
            raise InputError(f"--context_bp must be >= 0 (0: as much as the model takes), got {self.context_bp}")


@dataclass(frozen=True)
class Variant:
    row: int  # index of the row in the table
    pos: int  # 1-based
    ref: str  # A, C, G or T
    alt: str


@dataclass(frozen=True)
class Context:
    seq: str  # reference bases, ACGTN
    offset: int  # 0-based index of the variant's base in seq


def read_variants(path, genome: bool) -> tuple[Table, list[Variant]]:
    """The table and its SNVs, each row checked (pos a positive integer, ref and alt one of ACGT)."""
    table = read_table(path, ["pos", "ref", "alt"], LAYOUTS)
    needed = "chrom" if genome else "sequence"
    if needed not in table.columns:
        if genome:
            raise InputError(f"{where(table.path, line=1)}: with --fasta the CSV needs a 'chrom' column (record names of the FASTA)")
        hint = "; its chrom column needs --fasta GENOME" if "chrom" in table.columns else ""
        raise InputError(f"{where(table.path, line=1)}: no 'sequence' column{hint}; expected {LAYOUTS}")
    clash = [c for c in SCORE_COLUMNS if c in table.columns]
    if clash:
        raise InputError(f"{where(table.path, line=1)}: the input already has column(s) {', '.join(clash)}, which the output adds; rename them")
    variants = []
    for i in range(len(table.rows)):
        place = table.place(i)
        pos = table.value(i, "pos")
        if not _POS.fullmatch(pos) or int(pos) < 1:
            raise InputError(f"{place}: pos {pos!r} is not a 1-based position (a positive integer)")
        alleles = [table.value(i, c).upper() for c in ("ref", "alt")]
        for name, allele in zip(("ref", "alt"), alleles):
            if allele not in ("A", "C", "G", "T"):
                raise InputError(f"{place}: {name} {table.value(i, name)!r}: only single-base substitutions (SNVs) are scored; "
                                 "ref and alt must each be one of A, C, G, T")
        variants.append(Variant(i, int(pos), *alleles))
    return table, variants


def window(n_bp: int, p: int, size: int) -> slice:
    """The `size` bp of a sequence of n_bp around index p: centred on p, shifted inward at the ends."""
    start = min(max(0, p - (size - 1) // 2), max(0, n_bp - size))
    return slice(start, min(n_bp, start + size))


def _context(seq: str | bytes, found: str, v: Variant, size: int, place: str, what: str) -> Context:
    """Checks pos and ref against `seq` (ACGTN; `found`: the letter at pos as the input has it), then
    cuts the context."""
    p = v.pos - 1
    if p >= len(seq):
        raise InputError(f"{place}: pos {v.pos} is beyond the end of {what} ({len(seq)} bp; pos is 1-based)")
    if found.upper() != v.ref:
        raise InputError(f"{place}: ref is {v.ref} but {what} has {found!r} at pos {v.pos} (1-based); "
                         "is pos 0-based, or the wrong genome build?")
    w = window(len(seq), p, size)
    ctx = seq[w]
    return Context(ctx.decode("ascii") if isinstance(ctx, bytes) else ctx, p - w.start)


def contexts_from_table(table: Table, variants: list[Variant], size: int) -> list[Context]:
    out = []
    for v in variants:
        place = table.place(v.row)
        raw = table.value(v.row, "sequence")
        seq = check_dna(raw, place)
        out.append(_context(seq, raw[v.pos - 1] if v.pos <= len(raw) else "", v, size, place, "the row's sequence"))
    return out


def contexts_from_fasta(table: Table, variants: list[Variant], fasta, size: int) -> list[Context]:
    """Contexts cut from the FASTA's records, read one at a time (memory: one record)."""
    by_chrom: dict[str, list[int]] = {}
    for j, v in enumerate(variants):
        by_chrom.setdefault(table.value(v.row, "chrom"), []).append(j)
    out: list[Context | None] = [None] * len(variants)
    names = []
    for contig in read_fasta(fasta):
        names.append(contig.name)
        for j in by_chrom.get(contig.name, ()):
            v = variants[j]
            found = chr(contig.seq[v.pos - 1]) if v.pos <= len(contig.seq) else ""  # upper case, IUPAC codes read as N
            out[j] = _context(contig.seq, found, v, size, table.place(v.row), f"record {contig.name!r} of {fasta}")
    missing = next((j for j, c in enumerate(out) if c is None), None)
    if missing is not None:
        v = variants[missing]
        shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
        raise InputError(f"{table.place(v.row)}: chrom {table.value(v.row, 'chrom')!r} is not a record of {fasta} "
                         f"(its records: {shown})")
    return out


def max_context_bp(tokenizer: DNATokenizer, max_tokens: int) -> int:
    """The longest context whose tokens fit max_tokens (for an N-free context)."""
    if tokenizer.overlapping:
        return max_tokens + tokenizer.k - 1
    if tokenizer.k:
        return max_tokens * tokenizer.k  # non-overlapping k-mers; an N adds tokens: checked per context
    return max_tokens  # BPE: every piece holds at least one base


def masked_tokens(tokenizer: DNATokenizer, ctx: Context, alt: str, ids: np.ndarray, piece_ids: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions in `ids` to mask, the reference's tokens there, the alternative's tokens there; -1
    where the alternative's bases are no token). `ids`: the tokens of ctx.seq; see the module docstring."""
    p = ctx.offset
    alt_seq = ctx.seq[:p] + alt + ctx.seq[p + 1 :]
    if tokenizer.overlapping:
        k = tokenizer.k
        positions = np.arange(max(0, p - k + 1), min(p, ids.size - 1) + 1)
        alt_ids = tokenizer.encode(alt_seq[positions[0] : positions[-1] + k]) if positions.size else positions
        return positions, ids[positions], np.asarray(alt_ids, dtype=np.int64)
    lengths = np.array([len(tokenizer.vocab[t]) if t >= N_SPECIAL else 0 for t in ids], dtype=np.int64)
    ends = np.cumsum(lengths)
    if ends.size == 0 or ends[-1] != len(ctx.seq):
        raise ValueError(f"{tokenizer.name}: the tokens' bases do not add up to the context")  # [UNK]: never from our tokenizers
    j = int(np.searchsorted(ends, p, side="right"))
    piece = alt_seq[ends[j] - lengths[j] : ends[j]]
    return np.array([j]), ids[[j]].astype(np.int64), np.array([piece_ids.get(piece, -1)])


@torch.no_grad()
def score_snvs(model: BertForMLM, tokenizer: DNATokenizer, contexts: list[Context], alts: list[str], *, batch_size: int = 32,
               device=None, precision: str = "fp32", places: list[str] | None = None, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(logp_ref, logp_alt), float64 [n], of SNV i: base contexts[i].offset of contexts[i].seq -> alts[i]."""
    device = device or next(model.parameters()).device
    max_tokens = model.config.max_position_embeddings - 2
    piece_ids = {t: i for i, t in enumerate(tokenizer.vocab) if i >= N_SPECIAL}
    inputs, masked, ref_tokens, alt_tokens = [], [], [], []
    for i, (ctx, alt) in enumerate(zip(contexts, alts)):
        place = places[i] if places else f"variant {i}"
        ids = tokenizer.encode(ctx.seq).astype(np.int64)
        if ids.size > max_tokens:
            raise InputError(f"{place}: the context of {len(ctx.seq)} bp is {ids.size} tokens, more than the model's "
                             f"{max_tokens}; use a smaller --context_bp")
        positions, ref_ids, alt_ids = masked_tokens(tokenizer, ctx, alt, ids, piece_ids)
        if positions.size == 0:
            raise InputError(f"{place}: no token covers the variant ({len(ctx.seq)} bp of context; {tokenizer.name} needs at least {tokenizer.k})")
        ids = ids.copy()
        ids[positions] = MASK_ID
        inputs.append(ids)
        masked.append(positions)
        ref_tokens.append(ref_ids)
        alt_tokens.append(alt_ids)
    logp_ref = np.zeros(len(contexts))
    logp_alt = np.zeros(len(contexts))
    with progress_bar(len(contexts), "score-variants", "variant", progress) as bar:
        for idx in length_sorted_batches([len(x) for x in inputs], batch_size):
            ids, mask = model_inputs([inputs[j] for j in idx], device)
            rows = torch.from_numpy(np.concatenate([np.full(len(masked[j]), b) for b, j in enumerate(idx)])).to(device)
            cols = torch.from_numpy(np.concatenate([masked[j] + 1 for j in idx])).to(device)  # + 1: [CLS]
            ref = torch.from_numpy(np.concatenate([ref_tokens[j] for j in idx])).to(device)
            alt = torch.from_numpy(np.concatenate([alt_tokens[j] for j in idx])).to(device)
            with autocast(device, precision):
                logits = model.cls(model.bert(ids, mask)[rows, cols])  # the head on the masked positions only
            logp = F.log_softmax(logits.float(), dim=-1)
            lp_ref = logp.gather(1, ref[:, None])[:, 0].double().cpu().numpy()
            lp_alt = logp.gather(1, alt.clamp(min=0)[:, None])[:, 0].double().cpu().numpy()
            lp_alt[alt.cpu().numpy() < 0] = np.nan
            # Sums per variant on the host, in one fixed order: ref == alt sums identical terms, so llr is exactly 0.
            starts = np.concatenate([[0], np.cumsum([len(masked[j]) for j in idx])[:-1]])
            logp_ref[idx] = np.add.reduceat(lp_ref, starts)
            logp_alt[idx] = np.add.reduceat(lp_alt, starts)
            bar.update(len(idx))
    return logp_ref, logp_alt


def run_score_variants(cfg: VariantConfig) -> dict:
    """Score cfg.input's SNVs with cfg.model; write cfg.out (renamed into place at the end). Returns a summary."""
    for name in ("input", "model", "out"):
        if not getattr(cfg, name):
            raise InputError(f"--{name} is required")
    outputs = Outputs([cfg.out], cfg.overwrite, inputs=[cfg.input, cfg.fasta])  # refuse before any work
    table, variants = read_variants(cfg.input, genome=bool(cfg.fasta))
    device = resolve_device(cfg.device)
    from megadna.model.pretrained import load_pretrained

    model, tokenizer, _ = load_pretrained(cfg.model, device)
    max_tokens = model.config.max_position_embeddings - 2
    largest = max_context_bp(tokenizer, max_tokens)
    if cfg.context_bp > largest:
        raise InputError(f"--context_bp {cfg.context_bp}: the model takes {max_tokens} tokens, at most {largest} bp with {tokenizer.name}")
    size = cfg.context_bp or largest
    if cfg.fasta:
        contexts = contexts_from_fasta(table, variants, cfg.fasta, size)
    else:
        contexts = contexts_from_table(table, variants, size)
    log.info("scoring %d SNVs from %s with %s on %s (context %d bp)", len(variants), cfg.input, cfg.model, device, size)
    start = time.perf_counter()
    logp_ref, logp_alt = score_snvs(model, tokenizer, contexts, [v.alt for v in variants], batch_size=cfg.batch_size,
                                    device=device, precision=cfg.precision, places=[table.place(v.row) for v in variants],
                                    progress=cfg.progress)
    seconds = time.perf_counter() - start
    llr = logp_alt - logp_ref
    n_nan = int(np.isnan(llr).sum())
    if n_nan:
        log.warning("%d of %d variants have no score (NaN): their alt bases form no token of %s", n_nan, len(llr), tokenizer.name)
    with outputs:
        with open(outputs.tmp(cfg.out), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(table.header + list(SCORE_COLUMNS))
            w.writerows(row + [repr(float(x)) for x in scores] for row, scores in zip(table.rows, zip(llr, logp_ref, logp_alt)))
        outputs.commit()
    return {"out": cfg.out, "variants": len(variants), "context_bp": size, "unscored": n_nan, "device": str(device),
            "seconds": round(seconds, 3), "variants_per_s": round(len(variants) / seconds, 1)}
