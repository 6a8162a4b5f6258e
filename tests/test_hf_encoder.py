"""Other people's models through the GUE harness (megadna.eval.hf_encoder): a DNABERT-layout BERT and
an ESM (Nucleotide-Transformer-like) model built here, judged like megadna's own; remote code refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_init_from import dnabert_dir

from megadna.errors import InputError
from megadna.eval.gue import run_gue
from megadna.eval.hf_encoder import load_hf_encoder


def _cfg(shared_data, model, out, **kw) -> dict:
    return dict(gue_dir=str(shared_data / "gue"), model=str(model), output_dir=str(out), datasets="tf/0", seeds="1",
                max_train_samples=64, max_eval_samples=32, max_steps=2, batch_size=16, eval_steps=1, progress=False) | kw


def esm_dir(tmp_path):
    """A tiny EsmForMaskedLM with a single-base vocabulary (the Nucleotide Transformer's architecture)."""
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    d = tmp_path / "esm"
    d.mkdir()
    (d / "vocab.txt").write_text("\n".join(["<cls>", "<pad>", "<eos>", "<unk>", "A", "C", "G", "T", "N", "<mask>"]) + "\n")
    tok = EsmTokenizer(str(d / "vocab.txt"))
    torch.manual_seed(0)
    cfg = EsmConfig(vocab_size=10, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=130,
                    pad_token_id=1, mask_token_id=9, position_embedding_type="absolute")
    EsmForMaskedLM(cfg).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


def test_dnabert_layout_model_is_fed_overlapping_kmers_with_its_own_ids(tmp_path, one_torch_thread):
    from transformers import AutoModel, AutoTokenizer

    d = dnabert_dir(tmp_path)
    encoder, tok, shape, info = load_hf_encoder(d)
    assert tok.k == 3 and tok.overlapping and shape.hidden_size == 64 and info["kind"] == "huggingface"
    hf_tok = AutoTokenizer.from_pretrained(str(d))
    assert tok.encode("acgtaN").tolist() == hf_tok("ACG CGT GTA TAN", add_special_tokens=False)["input_ids"]
    batch = tok.encode_batch(["ACGTAC", "ACGTACGT"], max_tokens=10)
    assert batch["input_ids"][0].tolist()[:6] == hf_tok("ACG CGT GTA TAC")["input_ids"] and batch["attention_mask"][0].sum() == 6
    ids, mask = torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])
    with torch.no_grad():
        expected = AutoModel.from_pretrained(str(d)).eval()(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.allclose(encoder(ids, mask), expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["dnabert", "esm"])
def test_foreign_encoders_run_both_modes_with_a_random_control(kind, shared_data, tmp_path, one_torch_thread):
    d = dnabert_dir(tmp_path) if kind == "dnabert" else esm_dir(tmp_path)
    probe = run_gue(**_cfg(shared_data, d, tmp_path / "probe", mode="probe"))
    assert probe["datasets"][0]["n_seeds"] == 1
    tuned = run_gue(**_cfg(shared_data, d, tmp_path / "ft", head_pooling="mean"))
    assert np.isfinite(tuned["datasets"][0]["mcc_mean"])
    assert not (tmp_path / "ft" / "models").exists()  # foreign heads are not saved, and the run says why
    run_gue(**_cfg(shared_data, d, tmp_path / "rand", init="random", mode="probe"))
    assert json.loads((tmp_path / "rand" / "config.json").read_text())["model"]["kind"] == "random"
    # the control: the same architecture, weights drawn from the seed, none of the source's
    from megadna.eval.config import GUEConfig
    from megadna.eval.finetune import load_backbone

    source = load_backbone(GUEConfig(**_cfg(shared_data, d, tmp_path)))
    control = load_backbone(GUEConfig(**_cfg(shared_data, d, tmp_path, init="random")))
    a, b, c = (bb.classifier(2, seed).bert.state_dict() for bb, seed in ((source, 1), (control, 1), (control, 1)))
    assert a.keys() == b.keys() and all(torch.equal(b[k], c[k]) for k in b)
    assert all(not torch.equal(a[k], b[k]) for k in a if a[k].ndim == 2)  # every matrix redrawn (the source's LayerNorms are at init too)


def test_remote_code_is_refused_in_one_line(tmp_path):
    d = dnabert_dir(tmp_path)
    cfg = json.loads((d / "config.json").read_text()) | {"auto_map": {"AutoModel": "bert_layers.BertModel"}}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match=r"names custom code \(AutoModel: bert_layers.BertModel\); megadna never runs code") as e:
        load_hf_encoder(d)
    assert "\n" not in str(e.value)
    cfg = {k: v for k, v in cfg.items() if k != "auto_map"} | {"model_type": "caduceus"}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match=r"transformers cannot load this directory \(with its own classes, no remote code\)"):
        load_hf_encoder(d)
