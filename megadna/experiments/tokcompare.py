"""Compare DNA tokenizers on the same genome windows: compression, vocabulary use, N handling,
mutation spread and speed. The command line is tools/compare_tokenizers.py, the plots
megadna.experiments.tokcompare_plots; see docs/TOKENIZERS.md.

    windows = sample_windows(fasta=["C.elegans.fa.gz"], cfg=CompareConfig(window=510, max_bp=2_000_000))
    report = compare({"kmer6": get_tokenizer("kmer6"), "nkmer6": get_tokenizer("nkmer6")}, windows, cfg)
    write_report(report, "out/")   # report.json, report.md, token_length.png, bp_per_token.png, vocab_use.png

The mental model:
- the sample: windows of `window` bp, as pre-training would see them (from FASTA files, tiled with
  stride = window; or the train split of a shard set, whose windows are used as they are), at most
  `max_bp` bases in all, drawn by a seeded reservoir over the whole input (deterministic, one pass,
  memory bounded by max_bp). Every tokenizer is measured on the very same windows.
- every figure is counted on `encode(window)`: the tokens of one window, no [CLS]/[SEP] or padding.
- the mutation probe: the same (window, position, new base) triples for every tokenizer; the spread
  of one substitution is the number of tokens between the common prefix and the common suffix of the
  two encodings (the larger side when BPE re-segments to a different count).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from megadna.errors import InputError
from megadna.experiments.tokcompare_plots import PLOTS
from megadna.jsonfile import write_json, write_text
from megadna.tokenizers import N_SPECIAL, UNK_ID, DNATokenizer, get_tokenizer, train_bpe
from megadna.tokenizers.codes import N_CODE, base_codes

SPEED_BATCH = 64  # windows per encode_batch call, as in the training data loader


@dataclass
class CompareConfig:
    window: int = field(default=510, metadata={"help": "window length in bp (for a shard set: must equal its window; 0: take it from the shards)"})
    max_bp: int = field(default=2_000_000, metadata={"help": "sample at most this many bases (whole windows), seeded reservoir over the input"})
    max_n_fraction: float = field(default=0.5, metadata={"help": "FASTA input: drop windows with a larger share of N (shards are already filtered)"})
    mutations: int = field(default=2000, metadata={"help": "single-base substitutions probed per tokenizer"})
    mutation_margin_bp: int = field(default=16, metadata={"help": "probed positions are at least this far from both window ends (window-edge effects stay out)"})
    speed_seconds: float = field(default=1.0, metadata={"help": "time each tokenizer's encode_batch over the sample for at least this long"})
    seed: int = field(default=0, metadata={"help": "seeds the window sample and the mutation probe"})

    def __post_init__(self):
        if self.window < 0 or self.max_bp < 1 or self.mutations < 0 or self.mutation_margin_bp < 0 or self.speed_seconds < 0:
            raise InputError("window must be >= 0, max_bp >= 1, and mutations, mutation_margin_bp, speed_seconds >= 0")
        if not 0.0 <= self.max_n_fraction <= 1.0:
            raise InputError(f"max_n_fraction must be in [0, 1], got {self.max_n_fraction}")


# --------------------------------------------------------------------------------------------------
# The sample
# --------------------------------------------------------------------------------------------------


def _reservoir(items: Iterable, size: int, seed: int) -> list:
    """A uniform sample of `size` items in input order (Algorithm R, seeded): one pass, bounded memory."""
    rng = np.random.default_rng(seed)
    kept: list[tuple[int, object]] = []
    for i, item in enumerate(items):
        if i < size:
            kept.append((i, item))
        else:
            j = int(rng.integers(0, i + 1))
            if j < size:
                kept[j] = (i, item)
    return [item for _, item in sorted(kept, key=lambda t: t[0])]


def _shard_windows(shard_dir: Path, window: int) -> tuple[Iterable[str], int]:
    from megadna.data.shards import read_manifest
    from megadna.tokenizers.bpe_corpus import shard_sequences

    shard_window = int(read_manifest(shard_dir)["window_config"]["window"])
    if window and window != shard_window:
        raise InputError(f"{shard_dir}: the shards hold {shard_window}-bp windows but --window is {window}; "
                         f"pass --window {shard_window} (or 0), or compare on the FASTA files instead")
    return (seq.decode("ascii") for seq in shard_sequences(shard_dir)), shard_window


def sample_windows(fasta: Sequence = (), shards=None, cfg: CompareConfig | None = None) -> tuple[list[str], dict]:
    """(windows, description) from FASTA files (tiled with stride = window) or a shard set's train split."""
    from megadna.data.genome import WindowConfig, WindowStats, iter_windows

    cfg = cfg or CompareConfig()
    if bool(fasta) == bool(shards):
        raise InputError("give FASTA files or a shard directory (one of the two)")
    if shards:
        items, window = _shard_windows(Path(shards), cfg.window)
        source = {"shards": str(shards)}
    else:
        window = cfg.window or 510
        stats = WindowStats()
        wcfg = WindowConfig(window=window, stride=window, max_n_fraction=cfg.max_n_fraction)
        items = (w.seq for w in iter_windows([str(p) for p in fasta], wcfg, stats))
        source = {"fasta": [str(p) for p in fasta], "max_n_fraction": cfg.max_n_fraction}
    n_windows = max(1, cfg.max_bp // window)
    windows = _reservoir(items, n_windows, cfg.seed)
    if not windows:
        raise InputError(f"no {window}-bp windows in {source}: are the sequences shorter than the window?")
    if not shards:
        source["windows_in_input"] = stats.windows["train"] + stats.windows["val"]
        source["dropped_for_n"] = stats.dropped_for_n
    n_bp = sum(len(w) for w in windows)
    n_n = sum(int((base_codes(w) == N_CODE).sum()) for w in windows)
    digest = hashlib.sha256("\n".join(windows).encode()).hexdigest()[:16]
    return windows, {**source, "window_bp": window, "windows": len(windows), "bp": n_bp, "n_share": n_n / n_bp, "seed": cfg.seed, "sha256_16": digest}


# --------------------------------------------------------------------------------------------------
# The figures
# --------------------------------------------------------------------------------------------------


def token_span_bp(tokenizer: DNATokenizer) -> np.ndarray:
    """Bases each id spells: the piece's length; [UNK] covers k bases for overlapping k-mers, else 1; other specials 0."""
    span = np.array([0] * N_SPECIAL + [len(t) for t in tokenizer.vocab[N_SPECIAL:]], dtype=np.int64)
    span[UNK_ID] = tokenizer.k if tokenizer.overlapping else 1
    return span


def fallback_ids(tokenizer: DNATokenizer) -> tuple[np.ndarray, str]:
    """The ids that count as a fallback, and what that means for this kind of tokenizer."""
    vocab = tokenizer.vocab
    if tokenizer.overlapping:
        return np.array([UNK_ID]), "[UNK] (a k-mer with N)"
    if tokenizer.k is not None and tokenizer.k > 1:
        ids = [i for i in range(N_SPECIAL, len(vocab)) if len(vocab[i]) == 1]
        return np.array([UNK_ID] + ids), "single-base tokens (a chunk with N, or the window's tail)"
    ids = [i for i in range(N_SPECIAL, len(vocab)) if vocab[i] == "N"]
    return np.array([UNK_ID] + ids), "N or [UNK] tokens"


def changed_tokens(a: np.ndarray, b: np.ndarray) -> int:
    """Tokens that differ between two encodings: what is left after the common prefix and suffix
    (the longer side's count, where a re-segmentation changed the number of tokens)."""
    n = min(len(a), len(b))
    neq = a[:n] != b[:n]
    prefix = int(np.argmax(neq)) if neq.any() else n
    room = n - prefix
    tail_neq = a[len(a) - room:][::-1] != b[len(b) - room:][::-1] if room else np.zeros(0, dtype=bool)
    suffix = int(np.argmax(tail_neq)) if tail_neq.any() else room
    return max(len(a), len(b)) - prefix - suffix


def mutation_probe(windows: Sequence[str], n: int, margin_bp: int, seed: int) -> list[tuple[int, int, str]]:
    """n (window index, position, new base) triples: ACGT positions >= margin_bp from both ends, the base
    replaced by one of the three others; seeded, shared by every tokenizer."""
    rng = np.random.default_rng(seed + 1)
    probe = []
    tries = 0
    while len(probe) < n and tries < 20 * n + 100:
        tries += 1
        w = int(rng.integers(len(windows)))
        seq = windows[w]
        lo, hi = margin_bp, len(seq) - margin_bp
        if hi <= lo:
            continue
        pos = int(rng.integers(lo, hi))
        code = "ACGT".find(seq[pos].upper())
        if code < 0:
            continue
        probe.append((w, pos, "ACGT"[(code + 1 + int(rng.integers(3))) % 4]))
    return probe


def _percentiles(values: np.ndarray) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "p5": float(np.percentile(v, 5)), "p50": float(np.percentile(v, 50)),
            "p95": float(np.percentile(v, 95)), "min": float(v.min()), "max": float(v.max())}


def _rank_curve(counts: np.ndarray, points: int = 200) -> dict:
    """Cumulative share of tokens covered by the top-n entries, at up to `points` log-spaced n."""
    ordered = np.sort(counts)[::-1]
    cum = np.cumsum(ordered) / max(1, ordered.sum())
    ranks = np.unique(np.geomspace(1, len(cum), num=min(points, len(cum))).round().astype(int))
    return {"top_n": ranks.tolist(), "share": [round(float(cum[r - 1]), 6) for r in ranks]}


def encode_speed(tokenizer: DNATokenizer, windows: Sequence[str], n_tokens: int, width: int, min_seconds: float) -> dict:
    """tokens/s and bp/s of encode_batch (the data loader's path; rows of `width` tokens, [CLS]/[SEP]
    included) over the sample, repeated for at least min_seconds; one process, one thread."""
    if min_seconds <= 0:
        return {}
    n_bp = sum(len(w) for w in windows)
    passes, elapsed, cpu = 0, 0.0, 0.0
    while elapsed < min_seconds:
        t0, c0 = time.perf_counter(), time.process_time()
        for start in range(0, len(windows), SPEED_BATCH):
            tokenizer.encode_batch(windows[start:start + SPEED_BATCH], max_tokens=width)
        elapsed += time.perf_counter() - t0
        cpu += time.process_time() - c0
        passes += 1
    return {"tokens_per_s": n_tokens * passes / elapsed, "bp_per_s": n_bp * passes / elapsed, "seconds": elapsed,
            "cpu_seconds": cpu, "passes": passes}


def measure(tokenizer: DNATokenizer, windows: Sequence[str], probe: Sequence[tuple[int, int, str]], cfg: CompareConfig) -> dict:
    """Every figure for one tokenizer on the sample (see the module docstring)."""
    encoded = [tokenizer.encode(w) for w in windows]
    per_window = np.array([len(e) for e in encoded])
    all_ids = np.concatenate(encoded).astype(np.int64) if encoded else np.zeros(0, dtype=np.int64)
    n_tokens = int(all_ids.size)
    if n_tokens == 0:
        raise InputError(f"{tokenizer.name}: no tokens on the sample (windows shorter than k?)")
    n_bp = sum(len(w) for w in windows)
    V = tokenizer.vocab_size
    counts = np.bincount(all_ids, minlength=V)
    real = V - N_SPECIAL  # entries a sequence can produce; specials other than [UNK] never come out of encode
    p = counts[counts > 0] / n_tokens
    entropy = float(-(p * np.log2(p)).sum())
    span = token_span_bp(tokenizer)
    lengths = np.bincount(span[all_ids])
    fb_ids, fb_meaning = fallback_ids(tokenizer)
    spreads = np.array([changed_tokens(encoded[w], tokenizer.encode(windows[w][:pos] + new + windows[w][pos + 1:]))
                        for w, pos, new in probe]) if probe else np.zeros(0)
    out = {
        "name": tokenizer.name,
        "kind": "bpe" if tokenizer.k is None else ("overlapping k-mer" if tokenizer.overlapping else ("single base" if tokenizer.name == "base" else "non-overlapping k-mer")),
        "k": tokenizer.k,
        "vocab_size": V,
        "tokens": n_tokens,
        "bp_per_token": n_bp / n_tokens,
        "tokens_per_window": _percentiles(per_window),
        "token_span_bp": {str(L): float(c / n_tokens) for L, c in enumerate(lengths) if c},
        "mean_token_span_bp": float((span[all_ids]).mean()),
        "vocab_seen": int((counts[N_SPECIAL:] > 0).sum()),
        "vocab_utilisation": float((counts[N_SPECIAL:] > 0).sum() / real),
        "entropy_bits": entropy,
        "entropy_normalized": entropy / math.log2(real) if real > 1 else 0.0,
        "effective_vocab": 2.0**entropy,
        "vocab_curve": _rank_curve(counts[counts > 0]),
        "top_entries_for_90pct": int(np.searchsorted(np.cumsum(np.sort(counts)[::-1]) / n_tokens, 0.9) + 1),
        "unk_rate": float(counts[UNK_ID] / n_tokens),
        "fallback_rate": float(counts[fb_ids].sum() / n_tokens),
        "fallback_means": fb_meaning,
        "mutation_spread": _percentiles(spreads) if len(spreads) else {},
        "mutation_spread_hist": {str(s): int(c) for s, c in enumerate(np.bincount(spreads.astype(int))) if c} if len(spreads) else {},
        "speed": encode_speed(tokenizer, windows, n_tokens, int(per_window.max()) + 2, cfg.speed_seconds),
    }
    return out


def compare(tokenizers: dict[str, DNATokenizer], windows: Sequence[str], cfg: CompareConfig, sample: dict | None = None,
            specs: dict[str, str] | None = None) -> dict:
    """{"config", "sample", "tokenizers": {label: measure(...)}} for every tokenizer on the same windows."""
    probe = mutation_probe(windows, cfg.mutations, cfg.mutation_margin_bp, cfg.seed)
    results = {}
    for label, tok in tokenizers.items():
        results[label] = {"spec": (specs or {}).get(label, label), **measure(tok, windows, probe, cfg)}
    return {"config": dataclasses.asdict(cfg), "sample": sample or {"windows": len(windows), "bp": sum(map(len, windows))},
            "mutation_probes": len(probe), "tokenizers": results}


def resolve_tokenizers(specs: Sequence[str]) -> tuple[dict[str, DNATokenizer], dict[str, str]]:
    """({label: tokenizer}, {label: spec}); the label is the tokenizer's name, with the directory added
    where two collide."""
    out: dict[str, DNATokenizer] = {}
    given: dict[str, str] = {}
    for spec in specs:
        tok = get_tokenizer(spec)
        label = tok.name if tok.name not in out else f"{tok.name} ({Path(str(spec)).name})"
        if label in out:
            raise InputError(f"tokenizer {spec!r} is listed twice")
        out[label], given[label] = tok, str(spec)
    return out, given


def train_bpe_models(vocab_sizes: Sequence[int], windows: Sequence[str], out_dir) -> list[str]:
    """Train one BPE per vocab size on the sample windows with megadna's trainer, into out_dir/bpe<V>/.
    Retrained every time (a second or so each), so a model never describes another sample."""
    dirs = []
    for v in vocab_sizes:
        d = Path(out_dir) / f"bpe{v}"
        train_bpe(windows, int(v), d, overwrite=True)
        dirs.append(str(d))
    return dirs


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------


def _fmt_rate(x: float) -> str:
    return f"{100 * x:.3f}%" if x else "0"


def format_markdown(report: dict) -> str:
    s = report["sample"]
    rows = report["tokenizers"]
    head = ["tokenizer", "vocab", "bp/token", "tokens/window mean (p5–p95)", "vocab seen", "entropy bits (norm.)",
            "[UNK] rate", "fallback rate", "mutation spread mean (p95, max)", "encode Mtok/s", "encode Mbp/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(head) - 1)) + "|"]
    for label, r in rows.items():
        t, m, sp = r["tokens_per_window"], r["mutation_spread"], r["speed"]
        lines.append("| " + " | ".join([
            label, f"{r['vocab_size']:,}", f"{r['bp_per_token']:.3f}", f"{t['mean']:.1f} ({t['p5']:.0f}–{t['p95']:.0f})",
            f"{100 * r['vocab_utilisation']:.1f}%", f"{r['entropy_bits']:.2f} ({r['entropy_normalized']:.3f})",
            _fmt_rate(r["unk_rate"]), _fmt_rate(r["fallback_rate"]),
            f"{m['mean']:.2f} ({m['p95']:.0f}, {m['max']:.0f})" if m else "–",
            f"{sp['tokens_per_s'] / 1e6:.2f}" if sp else "–", f"{sp['bp_per_s'] / 1e6:.2f}" if sp else "–",
        ]) + " |")
    src = ", ".join(Path(p).name for p in s["fasta"]) if "fasta" in s else s.get("shards", "given windows")
    text = [
        "# Tokenizer comparison",
        "",
        f"Sample: {s['windows']:,} windows of {s.get('window_bp', '?')} bp ({s['bp'] / 1e6:.2f} Mbp, {100 * s.get('n_share', 0):.3f}% N) "
        f"from {src}; seed {report['config']['seed']}; {report['mutation_probes']:,} single-base substitutions probed.",
        "",
        *lines,
        "",
        "Columns: bp/token = bases / tokens over the sample (an overlapping k-mer advances 1 bp per token); "
        "vocab seen = share of the non-special vocabulary that occurs; entropy of the token distribution in bits, "
        "normalized by log2 of the non-special vocabulary size (1 = every entry equally used); fallback = "
        "overlapping: [UNK]; non-overlapping k>1: single-base tokens; single base / BPE: N or [UNK]; "
        "mutation spread = token ids that differ after one base is substituted; encode speed = encode_batch "
        "on one process (wall clock, a shared machine makes it noisy).",
        "",
        "## Reading",
        "",
        *reading(report),
        "",
        "Plots: `token_length.png` (share of tokens by the bases each spells), `bp_per_token.png`, "
        "`vocab_use.png` (cumulative share of tokens covered by the top-n entries).",
    ]
    return "\n".join(text) + "\n"


def reading(report: dict) -> list[str]:
    """A few plain sentences drawn from the measured numbers (no claim that the numbers do not carry)."""
    rows = report["tokenizers"]
    out = []
    best = max(rows, key=lambda k: rows[k]["bp_per_token"])
    worst = min(rows, key=lambda k: rows[k]["bp_per_token"])
    out.append(f"- Compression: {best} packs the most sequence per token ({rows[best]['bp_per_token']:.2f} bp/token, "
               f"{rows[best]['tokens_per_window']['mean']:.0f} tokens per window); {worst} the least "
               f"({rows[worst]['bp_per_token']:.2f} bp/token, {rows[worst]['tokens_per_window']['mean']:.0f} tokens per window). "
               "Attention cost grows with the square of the tokens per window.")
    kinds: dict[str, list[str]] = {}
    for label, r in rows.items():
        if r["mutation_spread"]:
            kinds.setdefault(r["kind"], []).append(label)

    def spread(labels):
        return ", ".join(f"{k} {rows[k]['mutation_spread']['mean']:.2f}" for k in labels)

    if "overlapping k-mer" in kinds:
        out.append(f"- Mutation spread, overlapping k-mers ({spread(kinds['overlapping k-mer'])} tokens per substituted base): "
                   "every base sits in k tokens, so one base change rewrites k tokens, and a masked token is largely "
                   "readable from its unmasked neighbours.")
    flat = kinds.get("non-overlapping k-mer", []) + kinds.get("single base", [])
    if flat:
        out.append(f"- Mutation spread, non-overlapping k-mers and single bases ({spread(flat)}): a base lives in one token.")
    if "bpe" in kinds:
        worst = max(kinds["bpe"], key=lambda k: rows[k]["mutation_spread"]["max"])
        out.append(f"- Mutation spread, BPE ({spread(kinds['bpe'])}; up to {rows[worst]['mutation_spread']['max']:.0f} for {worst}): "
                   "BPE re-segments around a substitution, so two alleles can differ by more than the one token that holds the base.")
    rich = max(rows, key=lambda k: rows[k]["entropy_bits"])
    out.append(f"- Vocabulary: {rich} carries the most information per token ({rows[rich]['entropy_bits']:.2f} bits, "
               f"an effective vocabulary of {rows[rich]['effective_vocab']:.0f} entries). Entries never seen on this sample: "
               + ", ".join(f"{k} {100 * (1 - r['vocab_utilisation']):.1f}%" for k, r in rows.items()) + ".")
    if report["sample"].get("n_share", 0) > 0:
        out.append("- N handling: the sample holds N; fallback rates above count the tokens it costs each tokenizer "
                   "(an N poisons k overlapping k-mers, or splits a non-overlapping chunk into k single bases).")
    return out


def write_report(report: dict, out_dir) -> list[Path]:
    """report.json, report.md and the three PNG plots into out_dir; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    write_text(out / "report.md", format_markdown(report))
    written = [out / "report.json", out / "report.md"]
    for name, plot in PLOTS.items():
        plot(report, out / name)
        written.append(out / name)
    return written


def run_comparison(specs: Sequence[str], out_dir, *, fasta: Sequence = (), shards=None, train_bpe_sizes: Sequence[int] = (),
                   cfg: CompareConfig | None = None) -> dict:
    """Sample, train the requested BPE models on the sample, measure every tokenizer, write the report."""
    cfg = cfg or CompareConfig()
    windows, sample = sample_windows(fasta=fasta, shards=shards, cfg=cfg)
    specs = list(specs) + train_bpe_models(train_bpe_sizes, windows, out_dir)
    if not specs:
        raise InputError("no tokenizers to compare: give --tokenizers and/or --train_bpe")
    tokenizers, given = resolve_tokenizers(specs)
    report = compare(tokenizers, windows, cfg, sample, given)
    write_report(report, out_dir)
    return report
