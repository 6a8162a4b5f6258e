"""Model shapes: the presets, JSON model configs (`--model shape.json`), and the Hugging Face
`BertConfig` names of `ModelConfig`'s fields (the inverse of `ModelConfig.to_hf_config`)."""

from __future__ import annotations

from pathlib import Path

from megadna.errors import InputError
from megadna.model.bert import ModelConfig

# Shapes only; vocab_size comes from the tokenizer. "dnabert-base" is DNABERT's (BERT-base) shape.
PRESETS: dict[str, dict] = {
    "dnabert-base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072,
                         max_position_embeddings=512),
    # The CPU presets drop attention dropout: on a CPU, SDPA's fused kernel has no dropout, so any
    # attention dropout sends every layer down the unfused math path (about 2x slower here).
    "small": dict(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024, attention_dropout=0.0),
    "tiny": dict(num_layers=2, hidden_size=64, num_heads=2, intermediate_size=256, attention_dropout=0.0),
}


def is_shape_spec(spec: str) -> bool:
    """Whether `spec` names a model shape (a preset or a JSON config file) rather than trained weights."""
    return spec in PRESETS or str(spec).endswith(".json")


def model_config(spec: str, vocab_size: int, **overrides) -> ModelConfig:
    """A `ModelConfig` from a named preset or a JSON file of Hugging Face `BertConfig` fields (the
    config.json of a BERT model works as is), with any field overridden by keyword. vocab_size comes
    from the tokenizer; a JSON file that states another one is refused."""
    if spec in PRESETS:
        fields = {**PRESETS[spec], **overrides, "vocab_size": vocab_size}
        unknown = set(fields) - set(ModelConfig.__dataclass_fields__)
        if unknown:
            raise InputError(f"unknown model config field(s) {sorted(unknown)} for preset {spec!r}")
        return ModelConfig(**fields)
    if not str(spec).endswith(".json"):
        raise InputError(f"--model {spec!r}: not a preset ({', '.join(PRESETS)}) nor a JSON model config (*.json)")
    from megadna.jsonfile import read_json

    path = Path(spec)
    if not path.is_file():
        raise InputError(f"--model {path}: no such file (a JSON model config of Hugging Face BertConfig fields)")
    hf = read_json(path, "model config")
    if not isinstance(hf, dict):
        raise InputError(f"{path}: a model config is a JSON object")
    if hf.get("vocab_size", vocab_size) != vocab_size:
        raise InputError(f"{path}: vocab_size {hf['vocab_size']} differs from the tokenizer's {vocab_size}; "
                         "leave it out (the tokenizer decides it) or use the matching tokenizer")
    return config_from_hf({**hf, "vocab_size": vocab_size, "model_type": hf.get("model_type", "bert")}, path, **overrides)


# Hugging Face BertConfig names of ModelConfig's fields (the inverse of ModelConfig.to_hf_config).
HF_NAMES = {"vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_layers": "num_hidden_layers",
            "num_heads": "num_attention_heads", "intermediate_size": "intermediate_size",
            "max_position_embeddings": "max_position_embeddings", "type_vocab_size": "type_vocab_size",
            "layer_norm_eps": "layer_norm_eps", "hidden_dropout": "hidden_dropout_prob",
            "attention_dropout": "attention_probs_dropout_prob", "initializer_range": "initializer_range",
            "pad_token_id": "pad_token_id"}
HF_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def config_from_hf(hf: dict, where, **overrides) -> ModelConfig:
    """ModelConfig from a BERT config.json's fields; anything megadna's BERT does not compute is refused."""
    if hf.get("model_type") != "bert":
        raise InputError(f"{where}: model_type {hf.get('model_type')!r}; megadna loads BERT models only")
    if hf.get("hidden_act", "gelu") != "gelu" or hf.get("position_embedding_type", "absolute") != "absolute":
        raise InputError(f"{where}: hidden_act {hf.get('hidden_act')!r} / position_embedding_type "
                         f"{hf.get('position_embedding_type')!r}: megadna's BERT has exact GELU and absolute positions")
    missing = [name for name in HF_REQUIRED if name not in hf]
    if missing:
        raise InputError(f"{where}: missing {', '.join(missing)}")
    fields = {ours: hf[h] for ours, h in HF_NAMES.items() if h in hf and hf[h] is not None}
    return config_from_fields(fields | overrides, where)


def config_from_fields(fields: dict, where) -> ModelConfig:
    """ModelConfig(**fields), with unknown or missing fields named as errors about `where`."""
    unknown = sorted(set(fields) - set(ModelConfig.__dataclass_fields__))
    if unknown:
        raise InputError(f"{where}: unknown model config field(s) {unknown}")
    try:
        return ModelConfig(**fields)
    except TypeError as e:
        raise InputError(f"{where}: incomplete model config: {e}") from None
    except InputError as e:
        raise InputError(f"{where}: {e}") from None
