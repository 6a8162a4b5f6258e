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

from megadna.cli.args import parser
from megadna.cli.common import entry_point

EXIT_VERIFICATION_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    p = parser("megadna export", __doc__)
    p.add_argument("src", help="checkpoint directory, run save_dir, or export directory")
    p.add_argument("out", help="directory to create (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (only after the new export verified)")
    p.add_argument("--atol", type=float, default=1e-4, help="largest |logit difference| accepted between megadna and transformers (fp32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random verification batch")
    return p


@entry_point
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    from megadna.model.export import ExportVerificationError, export_hf

    try:
        meta = export_hf(args.src, args.out, overwrite=args.overwrite, atol=args.atol, seed=args.seed)
    except ExportVerificationError as e:
        print(f"error: export verification failed: {e}", file=sys.stderr)
        return EXIT_VERIFICATION_FAILED
    print(json.dumps({"out": args.out, "global_step": meta.get("global_step"),
                      "verified_max_abs_logit_diff": meta["verified_max_abs_logit_diff"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
