"""`--init_from`: start a pre-training run from weights made elsewhere (continued pre-training).

    state, source = init_state("exports/hg38-kmer6", tokenizer, mcfg)   # a megadna checkpoint, run or export
    state, source = init_state("dnabert6/", tokenizer, mcfg)            # a Hugging Face BERT directory

Only the weights come from the source: the optimizer, LR schedule, masking curriculum and data
position start fresh, as for a new run. `source` records where the weights came from (the run's
config.json keeps it).

A Hugging Face directory (config.json, model.safetensors or pytorch_model.bin, vocab.txt) is read by
token string: each token of the run's vocabulary takes the embedding row and MLM output bias of the
same string in the source's vocab.txt, so DNABERT's layout (its specials, then 6-mers in A,T,C,G
order) lands on megadna's (A,C,G,T order). A token missing from the source, or a model shape that
differs, is one error naming what differs; nothing is guessed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from megadna.errors import InputError
from megadna.model.bert import BertForMLM, ModelConfig

# Fields that decide the function a model computes; they must match between the source and the run.
SHAPE_FIELDS = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings",
                "type_vocab_size", "layer_norm_eps")
# Keys a Hugging Face BERT checkpoint may hold that a BertForMaskedLM does not use (the next-sentence
# head of BertForPreTraining, the pooler, position-id buffers): dropped.
UNUSED_PREFIXES = ("bert.pooler.", "cls.seq_relationship.")
UNUSED_SUFFIXES = ("position_ids",)
ROW_KEYS = ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias")  # one row per token


def init_state(path, tokenizer, mcfg: ModelConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """(a state dict for BertForMLM(mcfg), provenance) from `path`; rows in the run's token order."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"--init_from {path}: not a directory; expected a megadna checkpoint, run or export, "
                         "or a Hugging Face BERT directory (config.json, model.safetensors or pytorch_model.bin, vocab.txt)")
    from megadna.model.pretrained import is_megadna_dir, load_pretrained

    if is_megadna_dir(path):
        model, src_tok, info = load_pretrained(path)  # a k-mer basis is folded in: a plain table
        state, vocab, cfg = model.state_dict(), src_tok.vocab, model.config
        source = {"path": str(Path(info["path"]).resolve()), "kind": f"megadna {info['kind']}", "global_step": info["global_step"]}
    else:
        state, vocab, cfg, source = _read_hf_dir(path)
    _check_shape(cfg, mcfg, path)
    state, remapped = _rows_by_token(state, vocab, tokenizer.vocab, path)
    state = _into_run_model(state, mcfg, path)
    return state, source | {"remapped_by_token": remapped}


def _read_hf_dir(d: Path) -> tuple[dict[str, torch.Tensor], list[str], ModelConfig, dict]:
    from megadna.jsonfile import read_json
    from megadna.model.pretrained import _read_safetensors
    from megadna.model.shapes import config_from_hf

    if not (d / "config.json").is_file():
        raise InputError(f"--init_from {d}: no config.json; not a Hugging Face model directory")
    hf = read_json(d / "config.json", "model config")
    if not isinstance(hf, dict):
        raise InputError(f"{d / 'config.json'}: expected a JSON object")
    if hf.get("model_type") != "bert":
        raise InputError(f"{d / 'config.json'}: model_type {hf.get('model_type')!r}; --init_from reads BERT models "
                         "(model_type bert) only; this architecture needs its own code")
    cfg = config_from_hf(hf, d / "config.json")
    if (d / "model.safetensors").is_file():
        weights = d / "model.safetensors"
        state = _read_safetensors(weights)
    elif (d / "pytorch_model.bin").is_file():
        weights = d / "pytorch_model.bin"
        try:
            state = {k: v.float() for k, v in torch.load(weights, map_location="cpu", weights_only=True).items()}
        except Exception as e:  # noqa: BLE001 - any unreadable or unsafe pickle is the same user error
            raise InputError(f"{weights}: not a readable weights-only PyTorch state dict: {e}") from None
    else:
        raise InputError(f"--init_from {d}: neither model.safetensors nor pytorch_model.bin")
    if not (d / "vocab.txt").is_file():
        raise InputError(f"--init_from {d}: no vocab.txt; the embedding rows cannot be matched to tokens without it")
    vocab = (d / "vocab.txt").read_text(encoding="utf-8").splitlines()
    if len(vocab) != cfg.vocab_size:
        raise InputError(f"{d / 'vocab.txt'}: {len(vocab)} tokens, but config.json says vocab_size {cfg.vocab_size}")
    # TF-era BERT checkpoints name LayerNorm parameters gamma/beta (HF renames them the same way on load).
    state = {k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): v
             for k, v in state.items() if not k.startswith(UNUSED_PREFIXES) and not k.endswith(UNUSED_SUFFIXES)}
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    return state, vocab, cfg, {"path": str(d.resolve()), "kind": "huggingface bert", "global_step": None,
                               "weights": weights.name, "weights_sha256": digest}


def _check_shape(src: ModelConfig, run: ModelConfig, where: Path) -> None:
    diff = [f"{f} {getattr(src, f)} (source) vs {getattr(run, f)} (run)" for f in SHAPE_FIELDS if getattr(src, f) != getattr(run, f)]
    if diff:
        raise InputError(f"--init_from {where}: the model shape differs: {'; '.join(diff)}; "
                         "give --model the source's shape (a preset or a JSON config)")


def _rows_by_token(state: dict[str, torch.Tensor], src_vocab: list[str], run_vocab: list[str], where: Path) -> tuple[dict, bool]:
    """The token-row tensors reordered so row i is the run's token i (looked up by string in the source)."""
    index = {tok: i for i, tok in enumerate(src_vocab)}
    missing = [tok for tok in run_vocab if tok not in index]
    if missing:
        raise InputError(f"--init_from {where}: the vocabulary differs: {len(missing)} of the run's {len(run_vocab)} tokens "
                         f"are not in the source's ({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); "
                         "use the tokenizer the source was trained with")
    order = torch.tensor([index[tok] for tok in run_vocab])
    remapped = order.tolist() != list(range(len(src_vocab)))
    out = dict(state)
    for key in ROW_KEYS:
        if key in out:
            out[key] = out[key][order]
    decoder = out.pop("cls.predictions.decoder.weight", None)  # tied to the embeddings; BertForMLM restores it
    if decoder is not None and "bert.embeddings.word_embeddings.weight" in state and not torch.equal(decoder, state["bert.embeddings.word_embeddings.weight"]):
        raise InputError(f"--init_from {where}: the MLM decoder is not tied to the word embeddings (megadna's BERT ties them); "
                         "loading it would change the model's function")
    out.pop("cls.predictions.decoder.bias", None)
    return out, remapped


def _into_run_model(state: dict[str, torch.Tensor], mcfg: ModelConfig, where: Path) -> dict[str, torch.Tensor]:
    """Exactly BertForMLM(mcfg)'s keys. With --kmer_basis the source's table becomes the residual and the
    basis starts at zero, so the run starts from the source's function exactly."""
    expected = BertForMLM(mcfg).state_dict()
    state = dict(state)
    if mcfg.kmer_basis:
        state["bert.embeddings.kmer_basis.weight"] = torch.zeros_like(expected["bert.embeddings.kmer_basis.weight"])
    for key, source in (("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
                        ("cls.predictions.decoder.bias", "cls.predictions.bias")):
        if key in expected and source in state:
            state[key] = state[source]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise InputError(f"--init_from {where}: the weights do not fit a BERT masked-LM: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise InputError(f"--init_from {where}: weight {k} has shape {tuple(state[k].shape)}, the run's model needs {tuple(v.shape)}")
    return {k: state[k].to(v.dtype) for k, v in expected.items()}
