"""Train a small MLM in-process and watch it learn (or not) the k-mer overlap; logic in
megadna.experiments.overlap.

    python tools/learn_overlap.py --out reports/overlap                      # kmer3, random DNA: must reach ~100%
    python tools/learn_overlap.py --tokenizers kmer3,nkmer3 --fasta genome.fa.gz --steps 1500 --out reports/collapse

Writes result.json (config and curve of every run), curves.png and a table on stdout.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from megadna.cli.args import add_config_arguments, config_from_args, parser
from megadna.cli.common import entry_point
from megadna.experiments.overlap import OverlapConfig, learn_overlap, plot_curves, steps_to
from megadna.jsonfile import write_json


def build_parser() -> argparse.ArgumentParser:
    p = parser("megadna learn-overlap", __doc__)
    p.add_argument("--tokenizers", default="", help="comma-separated tokenizers to run one after another (overrides --tokenizer)")
    p.add_argument("--out", required=True, help="output directory")
    add_config_arguments(p.add_argument_group("the run"), OverlapConfig)
    return p


def table(results: dict[str, dict]) -> str:
    rows = ["| run | final held-out accuracy | ceiling (overlap) | steps to 50% held-out | steps to 90% held-out | last training loss | seconds |",
            "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        c = r["curve"]
        ceiling = f"{r['heldout_ceiling']:.3f}" if r["heldout_ceiling"] is not None else "-"
        rows.append(f"| {name} | {r['final_heldout_accuracy']:.3f} | {ceiling} | {steps_to(c, 'heldout_accuracy', 0.5) or '-'} | "
                    f"{steps_to(c, 'heldout_accuracy', 0.9) or '-'} | {c[-1]['loss']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(rows)


@entry_point
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    base = config_from_args(OverlapConfig, args)
    names = [t.strip() for t in args.tokenizers.split(",") if t.strip()] or [base.tokenizer]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in names:
        print(f"== {name}", flush=True)
        results[name] = learn_overlap(replace(base, tokenizer=name), log=lambda line: print(line, flush=True))
    write_json(out / "result.json", results)
    plot_curves(results, out / "curves.png")
    print(table(results))
    print(f"wrote {out}/result.json, curves.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
