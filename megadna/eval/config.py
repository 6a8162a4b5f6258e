"""What a GUE evaluation runs: DNABERT-2's per-family fine-tuning recipes (`FAMILY_RECIPES`,
`recipe_for`) and `GUEConfig`, every setting of a run (one --flag each in `megadna gue`).

Lists (`--lr 1e-4,3e-4,1e-3`, `--max_train_samples 100,500,0`, `--probe_C ...`) are comma-separated
text fields, read through `lr_list()`, `train_sizes()` and `probe_Cs()`: a sweep is chosen on dev,
and only the chosen value is scored on test."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from megadna.errors import InputError
from megadna.model import PRESETS, is_shape_spec


@dataclass(frozen=True)
class Recipe:
    epochs: int
    warmup_steps: int  # optimizer steps
    eval_steps: int  # optimizer steps between dev evaluations; 0: at the end of every epoch
    max_steps: int = 0  # > 0: train exactly this many steps, whatever `epochs` says (HF Trainer semantics)


# Source: DNABERT-2's finetune/scripts/run_dnabert2.sh (github.com/MAGICS-LAB/DNABERT_2, the version
# with lr=3e-5 that the paper's Table 4 used), with finetune/train.py's defaults (AdamW, weight decay
# 0.01, linear warmup then linear decay, HF Trainer's max_grad_norm 1.0). The paper states a global
# batch of 32. Keys are matched against "task/dataset", first match wins; the last is the fallback.
FAMILY_RECIPES: tuple[tuple[str, Recipe], ...] = (
    (r"EMP/.*", Recipe(epochs=3, warmup_steps=50, eval_steps=200)),
    (r"prom/prom_core_tata", Recipe(epochs=10, warmup_steps=50, eval_steps=200)),
    (r"prom/prom_core_.*", Recipe(epochs=4, warmup_steps=50, eval_steps=400)),
    (r"prom/prom_300_tata", Recipe(epochs=10, warmup_steps=50, eval_steps=200)),
    (r"prom/prom_300_.*", Recipe(epochs=4, warmup_steps=50, eval_steps=400)),
    (r"splice/.*", Recipe(epochs=5, warmup_steps=50, eval_steps=200)),
    (r"virus/.*", Recipe(epochs=8, warmup_steps=50, eval_steps=200)),
    (r"mouse/.*", Recipe(epochs=5, warmup_steps=30, eval_steps=200, max_steps=1000)),
    (r"tf/.*", Recipe(epochs=3, warmup_steps=30, eval_steps=200)),
    (r".*", Recipe(epochs=3, warmup_steps=50, eval_steps=200)),  # datasets outside GUE (e.g. the demo)
)


def recipe_for(name: str) -> Recipe:
    """DNABERT-2's recipe for "task/dataset"."""
    return next(r for pattern, r in FAMILY_RECIPES if re.fullmatch(pattern, name))


@dataclass
class GUEConfig:
    gue_dir: str = field(default="", metadata={"help": "folder holding <task>/<dataset>/{train,dev,test}.csv (the GUE folder)"})
    model: str = field(default="", metadata={"help": "--init pretrained: a checkpoint dir, a run's save_dir, an export, or any local Hugging Face encoder directory (AutoModel + AutoTokenizer, no remote code); --init random: a preset (" + ", ".join(PRESETS) + ") or a JSON model config with --tokenizer, or a model path (its shape and tokenizer, new random weights)"})
    init: str = field(default="pretrained", metadata={"help": "pretrained | random (the control: same architecture, no pre-training)"})
    tokenizer: str = field(default="", metadata={"help": "--init random with a preset only: kmer6, nkmer6, base or a BPE directory (a model path brings its own)"})
    finetune_tokenizer: str = field(default="", metadata={"help": "tokenize the GUE sequences with this tokenizer instead of the model's own (e.g. kmer6 for an nkmer6 model); the vocabularies must be identical"})
    mode: str = field(default="finetune", metadata={"help": "finetune (the whole model, lr chosen on dev) | probe (frozen encoder, pooled features, logistic regression)"})
    probe_layer: int = field(default=-1, metadata={"help": "probe: the encoder output used (-1: last layer, 0: embeddings, k: layer k)"})
    pooling: str = field(default="mean", metadata={"help": "probe: mean (over the sequence's tokens) | cls"})
    head_pooling: str = field(default="cls", metadata={"help": "finetune: what the classifier reads, cls (HF's BertForSequenceClassification, the published recipe) | mean (over the sequence's tokens)"})
    problem: str = field(default="auto", metadata={"help": "auto | classification | regression | multilabel (megadna.eval.problems): auto reads it from the CSVs: several label columns = multilabel, integer labels = classification, any other number = regression"})
    head_init: str = field(default="random", metadata={"help": "finetune: the classifier head's start, random (HF's init on the raw pooled vector, the published recipe) | standardize (HF's init on the pooled vector standardised with the train rows' statistics) | probe (standardize, and the head starts as the linear probe's solution on the frozen encoder's pooled train features, C chosen on dev: linear probing then fine-tuning, Kumar et al. 2022)"})
    freeze_encoder_steps: int = field(default=0, metadata={"help": "finetune: train only the head (pooler + classifier) for this many first steps, then the whole model (linear probing then fine-tuning, Kumar et al. 2022); 0: the whole model from step 1"})
    save_models: str = field(default="all", metadata={"help": "finetune: keep the selected fine-tuned classifier as a Hugging Face directory in output_dir/models/: all (one per dataset, train size and seed) | best (the seed with the best dev score per dataset and train size: MCC, Pearson r for regression) | none"})
    probe_C: str = field(default="0.01,0.1,1,10", metadata={"help": "probe: logistic regression inverse regularisation strengths to try; the best on dev is scored on test"})
    rc_average: bool = field(default=False, metadata={"help": "average the predictions of each sequence and its reverse complement (logits when fine-tuning, probabilities when probing)"})
    output_dir: str = field(default="runs/gue", metadata={"help": "results, predictions and per-run markers go here"})
    datasets: str = field(default="", metadata={"help": "comma-separated task/dataset names (e.g. prom/prom_core_notata,tf/0); empty: every dataset found"})
    seeds: str = field(default="42,43,44", metadata={"help": "comma-separated fine-tuning seeds"})
    lr: str = field(default="3e-5", metadata={"help": "AdamW peak learning rate, or a comma-separated sweep (each fine-tuned; the best on dev is scored on test)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases and LayerNorm)"})
    batch_size: int = field(default=32, metadata={"help": "sequences per optimizer step"})
    micro_batch_size: int = field(default=0, metadata={"help": "sequences per forward pass (0: batch_size); batch_size must be a multiple"})
    eval_batch_size: int = field(default=64, metadata={"help": "sequences per forward pass in evaluation"})
    epochs: int = field(default=-1, metadata={"help": "training epochs (-1: the dataset family's recipe)"})
    max_steps: int = field(default=-1, metadata={"help": "> 0: train exactly this many steps, overriding epochs; 0: no cap; -1: the recipe's"})
    warmup_steps: int = field(default=-1, metadata={"help": "linear warmup steps (-1: the recipe's), then linear decay to 0"})
    eval_steps: int = field(default=-1, metadata={"help": "steps between dev evaluations (0: every epoch end; -1: the recipe's); always at the last step"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (HF Trainer's default)"})
    max_tokens: int = field(default=0, metadata={"help": "tokens per sequence incl. [CLS]/[SEP] (0: the longest sequence's, capped at the model's positions)"})
    max_train_samples: str = field(default="0", metadata={"help": "seeded random subset(s) of train: a size or a comma-separated low-data curve (0: all); subsets are nested"})
    max_eval_samples: int = field(default=0, metadata={"help": "use seeded random subsets of dev and test of this size (0: all)"})
    subsample_seed: int = field(default=0, metadata={"help": "seed of those subsets (the same for every fine-tuning seed)"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when available) | cpu | cuda | cuda:N"})
    precision: str = field(default="auto", metadata={"help": "auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16"})
    progress: bool = field(default=True, metadata={"help": "tqdm progress bar"})

    def __post_init__(self):
        # Numbers given from Python (GUEConfig(lr=1e-4)) are the one-value case of a list field.
        for name in ("lr", "max_train_samples", "probe_C"):
            if isinstance(getattr(self, name), (int, float)):
                setattr(self, name, repr(getattr(self, name)) if isinstance(getattr(self, name), float) else str(getattr(self, name)))
        self._check_model()
        if self.mode not in ("finetune", "probe"):
            raise InputError(f"--mode must be finetune or probe, got {self.mode!r}")
        for name in ("pooling", "head_pooling"):
            if getattr(self, name) not in ("mean", "cls"):
                raise InputError(f"--{name} must be mean or cls, got {getattr(self, name)!r}")
        if self.problem not in ("auto", "classification", "regression", "multilabel"):
            raise InputError(f"--problem must be auto, classification, regression or multilabel, got {self.problem!r}")
        if self.head_init not in ("random", "standardize", "probe"):
            raise InputError(f"--head_init must be random, standardize or probe, got {self.head_init!r}")
        if self.save_models not in ("all", "best", "none"):
            raise InputError(f"--save_models must be all, best or none, got {self.save_models!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise InputError(f"--precision must be auto, fp32 or bf16, got {self.precision!r}")
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name} must be >= 1")
        micro = self.micro_batch_size or self.batch_size
        if micro < 1 or self.batch_size % micro:
            raise InputError(f"--batch_size {self.batch_size} must be a multiple of --micro_batch_size {micro}")
        if any(v <= 0 for v in self.lr_list()) or any(c <= 0 for c in self.probe_Cs()) or self.weight_decay < 0 or self.max_grad_norm <= 0:
            raise InputError("--lr, --probe_C and --max_grad_norm must be > 0, --weight_decay >= 0")
        if any(n < 0 for n in self.train_sizes()):
            raise InputError(f"--max_train_samples sizes must be >= 0, got {self.max_train_samples!r}")
        for name in ("max_tokens", "max_eval_samples", "freeze_encoder_steps"):
            if getattr(self, name) < 0:
                raise InputError(f"--{name} must be >= 0")
        if self.max_tokens == 1:
            raise InputError("--max_tokens must leave room for [CLS] and [SEP] (>= 2)")
        self.seed_list()  # validates

    def _check_model(self) -> None:
        if self.init not in ("pretrained", "random"):
            raise InputError(f"--init must be pretrained or random, got {self.init!r}")
        if not self.model:
            raise InputError("--model is required: a checkpoint/run/export path (--init pretrained) or a preset (--init random)")
        if self.init == "random" and is_shape_spec(self.model):
            if not self.tokenizer:
                raise InputError("--init random with a preset needs --tokenizer (e.g. kmer6), as no checkpoint brings one")
        elif self.tokenizer:
            raise InputError("--tokenizer is for --init random with a preset only: a model path brings its tokenizer (--finetune_tokenizer swaps it)")

    def lr_list(self) -> list[float]:
        return _numbers(self.lr, float, "--lr")

    def probe_Cs(self) -> list[float]:
        return _numbers(self.probe_C, float, "--probe_C")

    def train_sizes(self) -> list[int]:
        return _numbers(self.max_train_samples, int, "--max_train_samples")

    def seed_list(self) -> list[int]:
        try:
            seeds = [int(s) for s in str(self.seeds).split(",") if s.strip()]
        except ValueError:
            raise InputError(f"--seeds must be comma-separated integers, got {self.seeds!r}") from None
        if not seeds or len(set(seeds)) != len(seeds):
            raise InputError(f"--seeds must name at least one seed, each once, got {self.seeds!r}")
        return seeds

    def resolved_recipe(self, name: str) -> Recipe:
        """The family's recipe for "task/dataset", with this config's overrides (fields >= 0) applied."""
        r = recipe_for(name)
        return Recipe(
            epochs=self.epochs if self.epochs >= 0 else r.epochs,
            warmup_steps=self.warmup_steps if self.warmup_steps >= 0 else r.warmup_steps,
            eval_steps=self.eval_steps if self.eval_steps >= 0 else r.eval_steps,
            max_steps=self.max_steps if self.max_steps >= 0 else r.max_steps,
        )

    def run_key(self) -> dict:
        """What decides one (dataset, seed) result: a finished run is reused only if this is unchanged."""
        # `model` is left out: the model's identity (resolved path, step, shape, tokenizer) is added by run_gue.
        # `max_train_samples` too: each record carries its own train_size, so adding a size to the curve reuses the rest.
        skip = {"gue_dir", "output_dir", "datasets", "seeds", "device", "progress", "model", "max_train_samples", "save_models"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


# GUEConfig fields added after output folders were first written, with the value every run before
# them used: a finished run's key that lacks one is read as having that value (gue.read_finished),
# so old folders are reused, not refused. A new field that changes results gets a line here.
ADDED_FIELDS = {"head_pooling": "cls", "problem": "auto", "head_init": "random", "freeze_encoder_steps": 0}


def key_defaults() -> dict:
    """The values of ADDED_FIELDS (see there)."""
    return dict(ADDED_FIELDS)


def _numbers(text: str, kind, flag: str) -> list:
    """A comma-separated list of numbers, each once, at least one."""
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{flag} must be comma-separated {kind.__name__}s, got {text!r}") from None
    if not values or len(set(values)) != len(values):
        raise InputError(f"{flag} must name at least one value, each once, got {text!r}")
    return values
