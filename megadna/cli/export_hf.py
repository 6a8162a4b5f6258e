"""Export a megadna checkpoint to a Hugging Face directory: `python tools/export_hf.py SRC OUT`.

SRC is a checkpoint directory (save_dir/checkpoints/stepNNNNNNNN), a run's save_dir (its newest
complete checkpoint) or an earlier export. OUT then loads with plain transformers:
    AutoModelForMaskedLM.from_pretrained(OUT); AutoTokenizer.from_pretrained(OUT)
The export is reloaded and checked against megadna's model before it is moved into place; a failed
export leaves nothing behind. Exit codes: 0 done, 1 verification failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys

from megadna.cli.common import entry_point


@entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="checkpoint directory, run save_dir, or export directory")
    parser.add_argument("out", help="directory to create (must not exist unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (only after the new export verified)")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest |logit difference| accepted between megadna and transformers (fp32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random verification batch")
    args = parser.parse_args(argv)

    from megadna.export import ExportVerificationError, export_hf

    try:
        meta = export_hf(args.src, args.out, overwrite=args.overwrite, atol=args.atol, seed=args.seed)
    except ExportVerificationError as e:
        print(f"error: export verification failed: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"out": args.out, "global_step": meta.get("global_step"),
                      "verified_max_abs_logit_diff": meta["verified_max_abs_logit_diff"]}))


if __name__ == "__main__":
    main()
