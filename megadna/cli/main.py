"""`megadna`: one command, one subcommand per job. Each subcommand is a module in megadna.cli with a
`main(argv) -> int`; `megadna SUB --help` shows its flags (generated from its config dataclass).

    megadna make-shards --fasta genome.fa.gz --out shards/
    deepspeed launchers/pretrain.py --deepspeed_config ds_configs/z2.json --data shards/   # or: megadna pretrain ...
    megadna export RUN_DIR hf_model/
    megadna gue --gue_dir GUE --model hf_model/ --output_dir results/
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module in megadna.cli, one-line summary). The tools/ and launchers/ scripts are shims
# over the same modules, so `python tools/make_shards.py` and `megadna make-shards` are one program.
SUBCOMMANDS = {
    "make-shards": ("make_shards", "FASTA(.gz) -> WebDataset shards of genome windows (+ --verify)"),
    "pretrain": ("pretrain", "pre-train with DeepSpeed (one process here; use `deepspeed launchers/pretrain.py` for many)"),
    "export": ("export_hf", "a run or checkpoint -> a plain Hugging Face BertForMaskedLM directory"),
    "gue": ("finetune_gue", "fine-tune and evaluate on GUE-style datasets beside published baselines"),
    "train-bpe": ("train_bpe", "train a BPE tokenizer on FASTA or shards"),
    "compare-tokenizers": ("compare_tokenizers", "compare tokenizers on the same windows (length, vocab use, speed)"),
    "ablate-tokenizers": ("ablate_tokenizers", "tokenizer x masking ablation: equal pre-training budgets, then GUE"),
    "analyze-attention": ("analyze_attention", "per-layer, per-head attention entropy and focus of models on held-out windows"),
    "analyze-embeddings": ("analyze_embeddings", "share of k-mer models' embedding tables linear in the bases (composition) vs k-mer identity"),
    "learn-overlap": ("learn_overlap", "a small in-process MLM run: does a model learn the k-mer overlap (seconds on a CPU)?"),
    "plot-masking": ("plot_masking", "plot the masking curriculum (boundary, mask ratio) over a run"),
    "check-hostfile": ("check_hostfile", "check a DeepSpeed hostfile and the nodes it names"),
    "embed": ("embed", "sequences (FASTA or CSV) -> one embedding vector each (.npy + index .csv); long ones tiled"),
    "predict": ("predict", "a fine-tuned model saved by `megadna gue` -> predictions for sequences (FASTA or CSV)"),
    "score-variants": ("score_variants", "SNVs (CSV, + --fasta) -> masked-LM log-likelihood ratio log P(alt) - log P(ref)"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
    return "usage: megadna SUBCOMMAND [flags]   (megadna SUBCOMMAND --help for its flags)\n\nsubcommands:\n" + "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"megadna.cli.{SUBCOMMANDS[name][0]}")
    return module.main(rest) or 0


if __name__ == "__main__":
    raise SystemExit(main())
