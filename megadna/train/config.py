"""What a pre-training run is: `TrainConfig` (data, tokenizer, masking, model, run length, checkpoints,
logging) and the DeepSpeed JSON, which owns batch size, precision, optimizer, LR schedule, clipping and
the ZeRO stage. megadna does not duplicate those knobs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from megadna.errors import InputError
from megadna.jsonfile import read_json
from megadna.masking import POLICIES, MaskingConfig
from megadna.model import PRESETS, is_shape_spec
from megadna.seqlen import parse_schedule


@dataclass
class TrainConfig:
    data: str = field(default="", metadata={"help": "shard set from tools/make_shards.py: a directory, an http(s):// base URL, or 'pipe:CMD {}' (a command printing the file whose path replaces {}, e.g. 'pipe:aws s3 cp s3://bucket/shards/{} -'), or a weighted mixture NAME=WEIGHT:LOCATION,... or a .json spec (docs/DATA.md); empty: build the demo data in save_dir/demo_data"})
    tokenizer: str = field(default="kmer6", metadata={"help": "kmer<k> (overlapping), nkmer<k> (non-overlapping), base, or a saved BPE directory"})
    model: str = field(default="tiny", metadata={"help": f"model shape: a preset ({', '.join(PRESETS)}) or a JSON file of Hugging Face BertConfig fields (e.g. a BERT model's config.json; vocab_size comes from the tokenizer)"})
    init_from: str = field(default="", metadata={"help": "start from these weights instead of random init (a new run only; resume ignores it): a megadna checkpoint, run or export, or a Hugging Face BERT directory (config.json, model.safetensors or pytorch_model.bin, vocab.txt; rows matched by token string, e.g. DNABERT). Optimizer, schedule and data position start fresh"})
    masking: str = field(default="randommask", metadata={"help": "bert | dnabert | randommask"})
    mask_ratio: float = field(default=0.15, metadata={"help": "target share of maskable tokens masked"})
    max_boundary: int = field(default=0, metadata={"help": "RandomMask B_max in tokens (0: the masking module's default, 2k)"})
    seq_len_schedule: str = field(default="", metadata={"help": "sequence-length curriculum TOKENS:FRACTION,...: e.g. 34:0.3,130:0.6 trains on 34-token pieces of each window until 30%% of max_steps, 130 until 60%%, then whole windows (empty: whole windows throughout)"})
    kmer_basis: bool = field(default=False, metadata={"help": "build k-mer token embeddings from per-position base embeddings plus a learned residual (k-mer tokenizers only; folded into a plain table at export)"})
    mask_phases: int = field(default=5, metadata={"help": "RandomMask phases over the run"})
    max_steps: int = field(default=300, metadata={"help": "optimizer steps (global_step) to train to"})
    save_dir: str = field(default="runs/demo", metadata={"help": "checkpoints, TensorBoard logs and the resolved config go here"})
    save_interval: int = field(default=100, metadata={"help": "steps between checkpoints (and one at the end)"})
    keep_last: int = field(default=3, metadata={"help": "complete checkpoints kept; older ones are deleted"})
    resume: str = field(default="auto", metadata={"help": "auto (newest complete checkpoint in save_dir, if any) | none | a checkpoint directory"})
    eval_interval: int = field(default=100, metadata={"help": "steps between evaluations on the held-out shards (0: only at the end)"})
    eval_batches: int = field(default=8, metadata={"help": "held-out windows per evaluation, in global batches of the run's first size (at most one epoch of held-out windows)"})
    log_interval: int = field(default=10, metadata={"help": "steps between log lines / TensorBoard scalars"})
    num_workers: int = field(default=1, metadata={"help": "data loader processes per rank (any number gives the same batches; may change on resume)"})
    reverse_complement: float = field(default=0.5, metadata={"help": "probability a window is read reverse-complemented"})
    seed: int = field(default=0, metadata={"help": "seeds data order, masking, dropout and init"})
    max_tokens: int = field(default=0, metadata={"help": "tokens per sequence incl. [CLS]/[SEP] (0: from the window length and tokenizer)"})
    stop_at_step: int = field(default=0, metadata={"help": "save and exit at this global step (0: run to max_steps); the LR and masking schedules still follow max_steps. For job slots shorter than the run"})
    progress: bool = field(default=True, metadata={"help": "tqdm progress bar on rank 0"})
    record_samples: bool = field(default=False, metadata={"help": "write each step's sample ids (global batch order) into metrics.jsonl, to audit the data order"})

    def __post_init__(self):
        if self.masking not in POLICIES:
            raise InputError(f"--masking must be one of {', '.join(POLICIES)}, got {self.masking!r}")
        if self.max_steps < 1 or self.save_interval < 1 or self.log_interval < 1:
            raise InputError("--max_steps, --save_interval and --log_interval must be >= 1")
        parse_schedule(self.seq_len_schedule)
        if not is_shape_spec(self.model):
            raise InputError(f"--model {self.model!r} is not a preset ({', '.join(PRESETS)}) nor a JSON model config (*.json)")

    def masking_config(self) -> MaskingConfig:
        return MaskingConfig(policy=self.masking, mask_ratio=self.mask_ratio, max_boundary=self.max_boundary or None, phases=self.mask_phases)


# --------------------------------------------------------------------------------------------------
# DeepSpeed config
# --------------------------------------------------------------------------------------------------


def load_ds_config(path: str, max_steps: int, world_size: int | None = None) -> dict:
    """Read the DeepSpeed JSON and resolve the two "auto" schedule lengths from --max_steps.

    Only the scheduler's total_num_steps (-> max_steps) and warmup_num_steps (-> 5% of max_steps) may be
    "auto". Checked here, as one-line errors naming the file (DeepSpeed's own checks are tracebacks):
    the micro batch and accumulation steps are integers >= 1, fp16/bf16 only where the accelerator
    supports it, and, given the world size, the batch sizes: a config that names train_batch_size and
    no gradient_accumulation_steps gets the accumulation that keeps that global batch on this world
    size (what makes a resume on fewer or more nodes keep its batch), and one that names both must agree.
    Everything else is DeepSpeed's to validate.
    """
    p = Path(path)
    cfg = read_json(p, "DeepSpeed config")
    if not isinstance(cfg, dict):
        raise InputError(f"{p}: a DeepSpeed config is a JSON object, not {type(cfg).__name__}")
    if "train_micro_batch_size_per_gpu" not in cfg:
        raise InputError(f"{p}: set train_micro_batch_size_per_gpu (megadna reads it to plan the data per rank)")
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        value = cfg.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{p}: {key} is {json.dumps(value)}; it must be an integer >= 1")
    check_precision(cfg, p)
    params = cfg.get("scheduler", {}).get("params", {})
    if params.get("total_num_steps") == "auto":
        params["total_num_steps"] = max_steps
    if params.get("warmup_num_steps") == "auto":
        params["warmup_num_steps"] = max(1, round(0.05 * max_steps))
    if cfg.get("train_batch_size") == "auto":
        del cfg["train_batch_size"]  # DeepSpeed derives it from micro batch x accumulation x world size
    if world_size is not None:
        _resolve_batch(cfg, p, world_size)
    return cfg


def _resolve_batch(cfg: dict, path: Path, world: int) -> None:
    """train_batch_size = micro batch x accumulation x world size, or a one-line error with the figures."""
    total = cfg.get("train_batch_size")
    if total is None:
        return
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise InputError(f"{path}: train_batch_size is {json.dumps(total)}; it must be an integer >= 1 or \"auto\"")
    micro = cfg["train_micro_batch_size_per_gpu"]
    if "gradient_accumulation_steps" not in cfg:
        accum, rest = divmod(total, micro * world)
        if rest or not accum:
            raise InputError(f"{path}: train_batch_size {total} is not micro batch {micro} x {world} rank(s) x a whole number of "
                             f"accumulation steps; use a world size or micro batch that divides it")
        cfg["gradient_accumulation_steps"] = accum
    elif total != micro * cfg["gradient_accumulation_steps"] * world:
        raise InputError(f"{path}: train_batch_size {total} != micro batch {micro} x gradient_accumulation_steps "
                         f"{cfg['gradient_accumulation_steps']} x {world} rank(s); drop one of them (DeepSpeed derives it)")


def check_precision(cfg: dict, path: Path, accelerator=None) -> None:
    """fp16/bf16 only where the accelerator runs it: the same test DeepSpeed makes in `initialize`, where
    it is a ValueError traceback naming no file. `accelerator` defaults to DeepSpeed's (CUDA, or CPU)."""
    # "bfloat16" is DeepSpeed's older spelling of the "bf16" section.
    wanted = [(key, kind) for key, kind in (("fp16", "fp16"), ("bf16", "bf16"), ("bfloat16", "bf16"))
              if isinstance(cfg.get(key), dict) and cfg[key].get("enabled")]
    if not wanted:
        return
    if accelerator is None:
        from deepspeed.accelerator import get_accelerator

        accelerator = get_accelerator()
    for key, kind in wanted:
        if not getattr(accelerator, f"is_{kind}_supported")():
            raise InputError(f"{path}: {key} is enabled, but this machine's {accelerator.device_name()} accelerator cannot "
                             f"train in {kind}; use an fp32 config such as ds_configs/cpu_tiny.json here, or a device that supports {kind}")


def precision(ds_cfg: dict) -> str:
    if ds_cfg.get("bf16", {}).get("enabled"):
        return "bf16"
    if ds_cfg.get("fp16", {}).get("enabled"):
        return "fp16"
    return "fp32"
