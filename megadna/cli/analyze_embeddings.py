"""How much of each model's k-mer embedding table is linear in the k-mers' bases (composition) and
how much tells k-mers apart; logic in megadna.experiments.embeddings.

    python tools/analyze_embeddings.py --models runs/demo,hf_export,random_export --out reports/emb

--models takes runs, checkpoints or exports (anything `megadna export` reads) of k-mer models; a k-mer
basis is folded in first, so a run and its export read the same. Prints a table and writes
embeddings.json and embeddings.md into --out when given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from megadna.cli.args import named_models, parser
from megadna.cli.common import entry_point
from megadna.errors import InputError
from megadna.experiments.embeddings import base_linear_share, kmer_rows, random_table_share
from megadna.jsonfile import write_json, write_text
from megadna.model.pretrained import load_pretrained
from megadna.tokenizers.kmer import kmer_vocabulary_k


def build_parser() -> argparse.ArgumentParser:
    p = parser("megadna analyze-embeddings", __doc__)
    p.add_argument("--models", required=True, help="comma-separated runs, checkpoints or exports of k-mer models")
    p.add_argument("--names", default="", help="comma-separated names for the models (default: their directory names)")
    p.add_argument("--out", default="", help="output directory for embeddings.json and embeddings.md (default: print only)")
    return p


def measure(path: str) -> dict:
    model, tokenizer, _ = load_pretrained(path)
    k = kmer_vocabulary_k(tokenizer)
    if not k:
        raise InputError(f"{path}: tokenizer {tokenizer.name!r} is not a k-mer vocabulary; the basis share is defined for k-mer models")
    table = model.materialized().bert.embeddings.word_embeddings.weight.detach().numpy()
    rows = kmer_rows(table, k)
    return {"model": str(path), "k": k, "base_linear_share": base_linear_share(table, k),
            "random_table_share": random_table_share(k), "rms_row_norm": float((rows**2).sum(axis=1).mean() ** 0.5)}


def table(results: dict[str, dict]) -> str:
    rows = ["| model | k | variance linear in the bases | a random table's | rms row norm |", "|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['k']} | {100 * r['base_linear_share']:.1f}% | {100 * r['random_table_share']:.2f}% | {r['rms_row_norm']:.3f} |")
    return "\n".join(rows)


@entry_point
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    models = named_models(args.models, args.names)
    results = {name: measure(path) for name, path in models.items()}
    text = table(results)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "embeddings.json", results)
        write_text(out / "embeddings.md", text + "\n")
        print(f"wrote {out}/embeddings.json, embeddings.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
