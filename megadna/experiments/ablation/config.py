"""What an ablation is: `AblationConfig` (data, arms, the budget, GUE settings) and its `Arm`s."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from megadna.errors import InputError
from megadna.masking import POLICIES


@dataclass
class AblationConfig:
    data: str = field(default="", metadata={"help": "shard directory (tools/make_shards.py) shared by every arm"})
    out: str = field(default="runs/ablation", metadata={"help": "output directory: ablation.json/.md, loss_curves.png, arms/<arm>/"})
    arms: str = field(default="", metadata={"help": "comma-separated tokenizer:masking pairs, e.g. kmer6:randommask,nkmer6:bert,bpe4096:bert,base:bert"})
    tokenizers: str = field(default="", metadata={"help": "or: comma-separated tokenizers (kmer6, nkmer6, base, bpe<V> or a BPE dir), crossed with --maskings"})
    maskings: str = field(default="bert", metadata={"help": "comma-separated masking policies for --tokenizers (bert, dnabert, randommask)"})
    model: str = field(default="tiny", metadata={"help": "model preset (tiny, small, dnabert-base)"})
    max_steps: int = field(default=1000, metadata={"help": "optimizer steps per arm (the budget: same for every arm)"})
    deepspeed_config: str = field(default="", metadata={"help": "DeepSpeed JSON (empty: ds_configs/z2.json with a GPU, ds_configs/cpu_tiny.json without)"})
    num_gpus: int = field(default=0, metadata={"help": "ranks per arm (deepspeed --num_gpus; 0: every local GPU, or 1 without one)"})
    seed: int = field(default=0, metadata={"help": "pre-training seed (data order, masking, init): the same for every arm"})
    save_interval: int = field(default=0, metadata={"help": "steps between checkpoints (0: a fifth of max_steps)"})
    log_interval: int = field(default=0, metadata={"help": "steps between log lines (0: a twentieth of max_steps)"})
    eval_batches: int = field(default=8, metadata={"help": "held-out windows for the final MLM eval, in global batches (the pretrain flag)"})
    bpe_max_bp: int = field(default=20_000_000, metadata={"help": "bases of the train split used to train a bpe<V> arm's tokenizer"})
    pretrain_args: str = field(default="", metadata={"help": "extra launcher arguments, verbatim, for every arm (e.g. '--mask_ratio 0.2')"})
    gue_dir: str = field(default="", metadata={"help": "GUE folder (<task>/<dataset>/{train,dev,test}.csv); empty: pre-training only"})
    datasets: str = field(default="", metadata={"help": "comma-separated GUE task/dataset names (empty: every dataset found)"})
    gue_seeds: str = field(default="42,43,44", metadata={"help": "fine-tuning seeds"})
    max_train_samples: int = field(default=0, metadata={"help": "GUE: seeded train subset per dataset (0: all)"})
    max_eval_samples: int = field(default=0, metadata={"help": "GUE: seeded dev and test subsets (0: all)"})
    gue_max_steps: int = field(default=-1, metadata={"help": "GUE fine-tuning steps (-1: the dataset family's recipe)"})
    gue_epochs: int = field(default=-1, metadata={"help": "GUE epochs (-1: the recipe's)"})
    gue_lr: float = field(default=3e-5, metadata={"help": "GUE peak learning rate (the recipe's 3e-5 is for BERT-base; a tiny model wants ~1e-3)"})
    gue_batch_size: int = field(default=32, metadata={"help": "GUE sequences per step"})
    gue_warmup_steps: int = field(default=-1, metadata={"help": "GUE warmup steps (-1: the recipe's)"})
    gue_eval_steps: int = field(default=-1, metadata={"help": "GUE steps between dev evaluations (-1: the recipe's)"})
    gue_random_control: bool = field(default=False, metadata={"help": "also fine-tune each tokenizer's model from random init (same preset and GUE settings): "
                                                                     "the control that tells what pre-training added from what the tokenization alone gives"})

    def __post_init__(self):
        if not self.data:
            raise InputError("--data is required: the shard directory every arm pre-trains on")
        if self.max_steps < 1:
            raise InputError(f"--max_steps must be >= 1, got {self.max_steps}")
        if bool(self.arms) == bool(self.tokenizers):
            raise InputError("give --arms tok:masking,... or --tokenizers a,b (crossed with --maskings), one of the two")
        self.arm_list()  # validates

    def arm_list(self) -> list[Arm]:
        return parse_arms(self.arms, self.tokenizers, self.maskings)


@dataclass(frozen=True)
class Arm:
    tokenizer: str  # as given: kmer6, nkmer6, base, bpe4096 or a directory
    masking: str

    @property
    def name(self) -> str:
        tok = Path(self.tokenizer).name if ("/" in self.tokenizer or Path(self.tokenizer).is_dir()) else self.tokenizer
        return f"{tok}-{self.masking}"


def parse_arms(arms: str, tokenizers: str, maskings: str) -> list[Arm]:
    """Arms from 'tok:masking,...', or the cross product of tokenizers x maskings; each name once."""
    if arms:
        out = []
        for item in (a.strip() for a in arms.split(",") if a.strip()):
            tok, sep, masking = item.rpartition(":")
            if not sep or not tok:
                raise InputError(f"--arms: {item!r} is not tokenizer:masking (e.g. kmer6:randommask)")
            out.append(Arm(tok.strip(), masking.strip()))
    else:
        toks = [t.strip() for t in tokenizers.split(",") if t.strip()]
        masks = [m.strip() for m in maskings.split(",") if m.strip()]
        out = [Arm(t, m) for t in toks for m in masks]
    if not out:
        raise InputError("no arms: --arms or --tokenizers named nothing")
    for arm in out:
        if arm.masking not in POLICIES:
            raise InputError(f"arm {arm.tokenizer}:{arm.masking}: masking must be one of {', '.join(POLICIES)}")
    names = [a.name for a in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise InputError(f"arms named twice: {', '.join(sorted(dup))}")
    return out
