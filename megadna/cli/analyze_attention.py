"""Attention entropy, top-1 weight and mass on overlapping tokens per layer and head, for one or more
models on the same held-out windows; logic in megadna.experiments.attention.

    python tools/analyze_attention.py --models runs/bert,runs/randommask --names bert,randommask \\
        --shards shards/ --windows 64 --out reports/attention

--models takes runs, checkpoints or exports (anything `megadna export` reads). Windows: the held-out
split of --shards (the first --windows, in order), or random N-free windows of --fasta. Writes
attention.json, attention.md and attention.png into --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from megadna.cli.args import named_models, parser
from megadna.cli.common import entry_point
from megadna.errors import InputError
from megadna.experiments.attention import head_statistics, layer_means, plot_models
from megadna.jsonfile import write_json, write_text
from megadna.model.pretrained import load_pretrained


def build_parser() -> argparse.ArgumentParser:
    p = parser("megadna analyze-attention", __doc__)
    p.add_argument("--models", required=True, help="comma-separated runs, checkpoints or exports")
    p.add_argument("--names", default="", help="comma-separated names for the models (default: their directory names)")
    source = p.add_argument_group("windows (one of the two)")
    source.add_argument("--shards", help="a shard set: its held-out (val) split")
    source.add_argument("--fasta", help="a FASTA(.gz): random N-free windows")
    p.add_argument("--window_bp", type=int, default=0, help="bases per window (default: the shards' window, or 510 with --fasta)")
    p.add_argument("--windows", type=int, default=64, help="windows analysed")
    p.add_argument("--seed", type=int, default=0, help="seeds the FASTA window draw")
    p.add_argument("--out", required=True, help="output directory")
    return p


def _windows(args) -> list[bytes]:
    if bool(args.shards) == bool(args.fasta):
        raise InputError("give --shards DIR or --fasta FILE (one of the two)")
    if args.windows < 1:
        raise InputError(f"--windows must be >= 1, got {args.windows}")
    if args.shards:
        from megadna.data.stream import StreamConfig, WindowStream

        stream = WindowStream(args.shards, StreamConfig(split="val", micro_batch=args.windows, num_workers=0, shuffle=False))
        seqs = next(stream.batches())["seqs"]
        return [s[: args.window_bp] for s in seqs] if args.window_bp else seqs
    from megadna.experiments.overlap import OverlapConfig, WindowSampler

    return WindowSampler(OverlapConfig(fasta=args.fasta, window_bp=args.window_bp or 510), args.seed)(args.windows)


def table(results: dict[str, dict]) -> str:
    rows = ["| model | layer | entropy (nats) | top-1 weight | mass on overlapping tokens |", "|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        means = layer_means(r["heads"])
        for i in range(len(means["entropy"])):
            rows.append(f"| {name} | {i + 1} | {means['entropy'][i]:.3f} | {means['top1'][i]:.3f} | {means['overlap_share'][i]:.3f} |")
    return "\n".join(rows)


@entry_point
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    models = named_models(args.models, args.names)
    windows = _windows(args)
    results = {}
    for name, path in models.items():
        model, tokenizer, info = load_pretrained(path)
        k = tokenizer.k if getattr(tokenizer, "overlapping", False) else 1
        max_tokens = min(model.config.max_position_embeddings, tokenizer.num_tokens(max(len(w) for w in windows)) + 2)
        enc = tokenizer.encode_batch(windows, max_tokens)
        ids, mask = torch.from_numpy(enc["input_ids"]).long(), torch.from_numpy(enc["attention_mask"]).long()
        results[name] = {"model": path, "k": k, "tokens": int(ids.shape[1]), "windows": len(windows),
                         "heads": head_statistics(model, ids, None if bool(mask.all()) else mask, k)}
        print(f"{name}: {len(windows)} windows of {ids.shape[1]} tokens, k = {k}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "attention.json", results)
    text = table(results)
    write_text(out / "attention.md", text + "\n")
    plot_models(results, out / "attention.png")
    print(text)
    print(f"wrote {out}/attention.json, attention.md, attention.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
