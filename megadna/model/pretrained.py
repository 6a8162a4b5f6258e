"""Load a trained model from any of the places megadna leaves one, without unpickling code.

    model, tokenizer, info = load_pretrained("runs/hg38-kmer6")                          # a run: newest complete checkpoint
    model, tokenizer, info = load_pretrained("runs/hg38-kmer6/checkpoints/step00010000")  # one checkpoint
    model, tokenizer, info = load_pretrained("exports/hg38-kmer6")                       # tools/export_hf.py output

What is read, and how:
- a checkpoint step directory (has `megadna.json`, written last, so its presence means complete): the
  model shape and tokenizer come from megadna.json and `tokenizer/`; the weights are the fp32 master
  weights rebuilt from DeepSpeed's ZeRO files (the bf16 copy in `mp_rank_00_model_states.pt` would
  lose precision), or `model.safetensors` where a checkpoint directory holds one instead;
- a run's save_dir (has `checkpoints/`): its newest complete checkpoint;
- an exported Hugging Face directory (config.json + model.safetensors + megadna_tokenizer.json).

Weights are read with safetensors or `torch.load(weights_only=True)`. DeepSpeed's own reader
(`zero_to_fp32`) calls `torch.load(weights_only=False)`, which would run any code pickled into the
file; we route its loads through `megadna.integrity.weights_only` (weights_only=True with an allow-list
of the plain DeepSpeed data classes its files hold), so a tampered checkpoint fails to load instead of
executing. Before that, every file recorded in the checkpoint's megadna.json is checked against its
recorded size and sha256 (`megadna.rundir.verify_files`), so a truncated or altered file is named.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch

from megadna import rundir as ckpt
from megadna.errors import InputError
from megadna.integrity import weights_only
from megadna.jsonfile import read_json
from megadna.model import BertForMLM, ModelConfig
from megadna.model.shapes import config_from_fields, config_from_hf
from megadna.rundir import RunDir
from megadna.tokenizers import DNATokenizer, load_tokenizer
from megadna.tokenizers.base import CONFIG_FILE as TOKENIZER_FILE

WEIGHTS_FILE = "model.safetensors"
HF_CONFIG_FILE = "config.json"
# Keys an HF/safetensors file may leave out because they are tied to another tensor in the model.
TIED = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}

ACCEPTED = (
    "a checkpoint directory (save_dir/checkpoints/stepNNNNNNNN with megadna.json), a run's save_dir "
    "(holding checkpoints/), or a directory written by tools/export_hf.py (config.json + model.safetensors "
    f"+ {TOKENIZER_FILE})"
)


def is_megadna_dir(path) -> bool:
    """Whether `path` is a model directory megadna wrote (a checkpoint, a run's save_dir or an export),
    as opposed to someone else's Hugging Face directory (which a run's config.json would resemble)."""
    p = Path(path)
    return (p / ckpt.META).is_file() or RunDir(p).checkpoints.is_dir() or (p / TOKENIZER_FILE).is_file()


def load_pretrained(path, device="cpu") -> tuple[BertForMLM, DNATokenizer, dict]:
    """(model in eval mode, fp32, on device; its tokenizer; info) from a checkpoint, a run or an export.

    info: {"kind": "checkpoint" | "export", "path": the directory the weights came from,
    "global_step": int or None, "model": ModelConfig dict, "tokenizer": tokenizer dict}.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory; expected {ACCEPTED}")
    if not path.is_dir():
        raise InputError(f"{path}: is a file; expected {ACCEPTED}")
    if (path / ckpt.META).is_file():
        return _load_checkpoint(path, device)
    run = RunDir(path)
    if run.checkpoints.is_dir():
        newest = run.newest_checkpoint()
        if newest is None:
            raise InputError(f"{run.checkpoints}: no complete checkpoint (none has {ckpt.META}); "
                             "the run never finished a save")
        return _load_checkpoint(newest, device)
    if (path / HF_CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        return _load_export(path, device)
    if path.parent.name == run.checkpoints.name and any(path.glob("*_model_states.pt")):
        raise InputError(f"{path}: no {ckpt.META}; this checkpoint was never completed (an interrupted save?). "
                         f"Use an older one in {path.parent}, or the run's save_dir to pick the newest complete one")
    raise InputError(f"{path}: not a model directory megadna knows; expected {ACCEPTED}")


# --------------------------------------------------------------------------------------------------
# Checkpoints written by megadna.train
# --------------------------------------------------------------------------------------------------


def _load_checkpoint(d: Path, device) -> tuple[BertForMLM, DNATokenizer, dict]:
    meta = ckpt.read_meta(d)
    if not isinstance(meta.get("model"), dict):
        raise InputError(f"{d / ckpt.META}: has no 'model' config; written by an older megadna?")
    cfg = config_from_fields(meta["model"], d / ckpt.META)
    ckpt.verify_files(d, meta)  # sizes and sha256 recorded at save: nothing is deserialised before this
    tokenizer = load_tokenizer(d / ckpt.TOKENIZER_DIR)
    if tokenizer.vocab_size != cfg.vocab_size:
        raise InputError(f"{d}: tokenizer/ has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                         f"{cfg.vocab_size}; the tokenizer folder does not belong to this checkpoint")
    if (d / WEIGHTS_FILE).is_file():
        state = _read_safetensors(d / WEIGHTS_FILE)
    else:
        state = zero_fp32_state_dict(d)
    model = _build(cfg, state, d)
    info = {"kind": "checkpoint", "path": str(d), "global_step": int(meta.get("global_step", -1)),
            "model": model.config.to_dict(), "tokenizer": tokenizer.to_dict()}
    return model.to(device), tokenizer, info


def zero_fp32_state_dict(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """fp32 weights of a DeepSpeed ZeRO checkpoint directory (any stage, any world size), loaded safely."""
    from deepspeed.utils import zero_to_fp32

    ckpt_dir = Path(ckpt_dir)
    if not any(ckpt_dir.glob("*_model_states.pt")):
        raise InputError(f"{ckpt_dir}: neither {WEIGHTS_FILE} nor DeepSpeed's *_model_states.pt; the weights are missing")
    try:
        # zero_to_fp32 prints its progress on stdout; keep stdout for the command's own output.
        with weights_only(zero_to_fp32), contextlib.redirect_stdout(io.StringIO()):
            state = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir.parent), tag=ckpt_dir.name)
    except InputError:
        raise  # a file refused or unreadable, already named
    except (FileNotFoundError, ValueError) as e:
        raise InputError(f"{ckpt_dir}: DeepSpeed files are incomplete or inconsistent: {e}") from None
    return {k: v.float().contiguous() for k, v in state.items()}


# --------------------------------------------------------------------------------------------------
# Hugging Face exports
# --------------------------------------------------------------------------------------------------


def _load_export(d: Path, device) -> tuple[BertForMLM, DNATokenizer, dict]:
    if not (d / TOKENIZER_FILE).is_file():
        raise InputError(f"{d}: an HF model directory without {TOKENIZER_FILE}; megadna loads only its own "
                         "exports (tools/export_hf.py), whose tokenizer it can rebuild exactly")
    hf = _read_json(d / HF_CONFIG_FILE)
    cfg = config_from_hf(hf, d / HF_CONFIG_FILE)
    tokenizer = load_tokenizer(d)
    if tokenizer.vocab_size != cfg.vocab_size:
        raise InputError(f"{d}: {TOKENIZER_FILE} describes {tokenizer.vocab_size} tokens but config.json says "
                         f"vocab_size {cfg.vocab_size}")
    model = _build(cfg, _read_safetensors(d / WEIGHTS_FILE), d)
    export_meta = d / "megadna_export.json"
    step = _read_json(export_meta).get("global_step") if export_meta.is_file() else None
    info = {"kind": "export", "path": str(d), "global_step": step, "model": cfg.to_dict(), "tokenizer": tokenizer.to_dict()}
    return model.to(device), tokenizer, info


# --------------------------------------------------------------------------------------------------
# Shared
# --------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return {k: v.float() for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError) as e:
        raise InputError(f"{path}: not a readable safetensors file: {e}") from None


def _build(cfg: ModelConfig, state: dict[str, torch.Tensor], where: Path) -> BertForMLM:
    """BertForMLM(cfg) with exactly these weights: every key present (tied ones may be restored), no extras."""
    state = dict(state)
    for key, source in TIED.items():
        if key not in state and source in state:
            state[key] = state[source]  # tied in the model; serializers often store one copy
    model = BertForMLM(cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise InputError(f"{where}: weights do not match the model config: missing {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise InputError(f"{where}: weight {k} has shape {tuple(state[k].shape)}, the model config expects {tuple(v.shape)}")
    model.load_state_dict(state, strict=True)
    return model.materialized().eval()  # a k-mer basis folded in: everything downstream sees plain BERT
