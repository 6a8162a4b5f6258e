"""--init_from (continued pre-training from weights made elsewhere) and --model as a JSON config."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from megadna.errors import InputError
from megadna.model import BertForMLM, model_config
from megadna.model.export import random_sequences, write_hf_dir
from megadna.model.init_from import init_state
from megadna.tokenizers import get_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DNABERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def dnabert_dir(tmp_path: Path, k: int = 3, pretraining_head: bool = False, safetensors: bool = True, seed: int = 0) -> Path:
    """A DNABERT-layout Hugging Face BERT directory built here (nothing may be downloaded): DNABERT's
    vocab.txt (its specials, then the k-mers in A,T,C,G order), tiny shape, random weights."""
    from transformers import BertConfig, BertForMaskedLM, BertForPreTraining

    vocab = DNABERT_SPECIALS + ["".join(p) for p in itertools.product("ATCG", repeat=k)]
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                     max_position_embeddings=512, hidden_act="gelu", layer_norm_eps=1e-12, attention_probs_dropout_prob=0.0)
    model = (BertForPreTraining if pretraining_head else BertForMaskedLM)(cfg).eval()
    with torch.no_grad():  # HF zero-inits the output bias; give it content, so a wrong row order shows
        model.cls.predictions.bias.normal_()
    d = tmp_path / "dnabert"
    model.save_pretrained(str(d), safe_serialization=safetensors)
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return d


def hf_logits_in_our_order(d: Path, tokenizer, seqs: list[str]) -> torch.Tensor:
    """The source model's logits on the same sequences, read through its own vocab.txt, with the
    vocabulary axis put in the run's token order."""
    from transformers import AutoModelForMaskedLM

    hf = AutoModelForMaskedLM.from_pretrained(str(d)).eval()
    theirs = {tok: i for i, tok in enumerate((d / "vocab.txt").read_text().splitlines())}
    ours = tokenizer.encode_batch(seqs, max_tokens=64)
    to_theirs = torch.tensor([theirs[t] for t in tokenizer.vocab])
    ids = to_theirs[torch.from_numpy(ours["input_ids"])]
    with torch.no_grad():
        z = hf(input_ids=ids, attention_mask=torch.from_numpy(ours["attention_mask"])).logits
    return z[..., to_theirs]


def our_logits(state: dict, mcfg, tokenizer, seqs: list[str]) -> torch.Tensor:
    model = BertForMLM(mcfg)
    model.load_state_dict(state, strict=True)
    model.eval()
    ours = tokenizer.encode_batch(seqs, max_tokens=64)
    with torch.no_grad():
        return model(torch.from_numpy(ours["input_ids"]), attention_mask=torch.from_numpy(ours["attention_mask"]))["logits"]


def seqs(n: int = 4) -> list[str]:
    return random_sequences(n, np.random.default_rng(1), min_bp=20, max_bp=60)


@pytest.mark.parametrize("pretraining_head,safetensors", [(False, True), (True, False)])
def test_dnabert_layout_checkpoint_gives_the_same_logits_after_the_remap(tmp_path, pretraining_head, safetensors, one_torch_thread):
    d = dnabert_dir(tmp_path, pretraining_head=pretraining_head, safetensors=safetensors)
    tok = get_tokenizer("kmer3")
    mcfg = model_config("tiny", tok.vocab_size)
    state, source = init_state(d, tok, mcfg)
    assert source["kind"] == "huggingface bert" and source["remapped_by_token"] and len(source["weights_sha256"]) == 64
    mask = torch.from_numpy(tok.encode_batch(seqs(), max_tokens=64)["attention_mask"]).bool()
    ours, theirs = our_logits(state, mcfg, tok, seqs()), hf_logits_in_our_order(d, tok, seqs())
    assert torch.allclose(ours[mask], theirs[mask], atol=1e-4)


def test_kmer_basis_run_starts_from_the_source_function(tmp_path, one_torch_thread):
    d = dnabert_dir(tmp_path)
    tok = get_tokenizer("kmer3")
    mcfg = model_config("tiny", tok.vocab_size, kmer_basis=3)
    state, _ = init_state(d, tok, mcfg)
    assert not state["bert.embeddings.kmer_basis.weight"].any()
    mask = torch.from_numpy(tok.encode_batch(seqs(), max_tokens=64)["attention_mask"]).bool()
    assert torch.allclose(our_logits(state, mcfg, tok, seqs())[mask], hf_logits_in_our_order(d, tok, seqs())[mask], atol=1e-4)


def test_megadna_export_round_trips_exactly(tmp_path, one_torch_thread):
    tok = get_tokenizer("kmer6")
    mcfg = model_config("tiny", tok.vocab_size)
    torch.manual_seed(3)
    src = BertForMLM(mcfg).eval()
    write_hf_dir(src, tok, tmp_path / "export")
    state, source = init_state(tmp_path / "export", tok, mcfg)
    assert source["kind"] == "megadna export" and not source["remapped_by_token"]
    for k, v in src.state_dict().items():
        assert torch.equal(state[k], v), k


def test_shape_and_vocabulary_mismatches_are_one_line(tmp_path):
    d = dnabert_dir(tmp_path)
    tok = get_tokenizer("kmer3")
    with pytest.raises(InputError, match=r"model shape differs: hidden_size 64 \(source\) vs 256 \(run\); num_layers 2 \(source\) vs 4") as e:
        init_state(d, tok, model_config("small", tok.vocab_size))
    assert "\n" not in str(e.value)
    tok6 = get_tokenizer("kmer6")
    with pytest.raises(InputError, match=r"vocabulary differs: 4096 of the run's 4101 tokens are not in the source's \(AAAAAA"):
        init_state(d, tok6, model_config("tiny", tok6.vocab_size))
    (d / "vocab.txt").unlink()
    with pytest.raises(InputError, match="no vocab.txt"):
        init_state(d, tok, model_config("tiny", tok.vocab_size))
    with pytest.raises(InputError, match="not a directory"):
        init_state(tmp_path / "nowhere", tok, model_config("tiny", tok.vocab_size))
    cfg = json.loads((d / "config.json").read_text()) | {"model_type": "roberta"}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="model_type 'roberta'; --init_from reads BERT models"):
        init_state(d, tok, model_config("tiny", tok.vocab_size))


def test_model_json_config(tmp_path):
    path = tmp_path / "shape.json"
    path.write_text(json.dumps({"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                                "max_position_embeddings": 1030}))
    cfg = model_config(str(path), 69)
    assert (cfg.hidden_size, cfg.num_layers, cfg.max_position_embeddings, cfg.vocab_size) == (32, 1, 1030, 69)
    path.write_text(json.dumps({"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 10}))
    with pytest.raises(InputError, match="vocab_size 10 differs from the tokenizer's 69"):
        model_config(str(path), 69)
    path.write_text(json.dumps({"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}))
    with pytest.raises(InputError, match="missing num_hidden_layers"):
        model_config(str(path), 69)
    with pytest.raises(InputError, match="no such file"):
        model_config(str(tmp_path / "none.json"), 69)
    with pytest.raises(InputError, match="not a preset"):
        model_config("huge", 69)


def test_pretraining_starts_from_the_source_and_records_it(real_shards, tmp_path, single_rank):
    """The engine's weights before step 1 are the source's (remapped); the run trains and its config
    records where the weights came from; a resume keeps that record."""
    from megadna.rundir import RunDir
    from megadna.train import TrainConfig, Trainer

    d = dnabert_dir(tmp_path)
    tok = get_tokenizer("kmer3")
    expected, _ = init_state(d, tok, model_config("tiny", tok.vocab_size))
    common = dict(data=str(real_shards), tokenizer="kmer3", save_dir=str(tmp_path / "run"), save_interval=2, num_workers=0,
                  progress=False, eval_interval=0, log_interval=1, init_from=str(d))
    trainer = Trainer(TrainConfig(max_steps=2, **common), str(ROOT / "ds_configs" / "cpu_tiny.json"))
    for k, v in trainer.engine.module.state_dict().items():
        assert torch.equal(v.cpu(), expected[k]), k
    summary = trainer.fit()
    assert summary["final_step"] == 2 and all(np.isfinite(summary["losses"]))
    recorded = RunDir(tmp_path / "run").read_config()["init_from"]
    assert recorded["path"] == str(d.resolve()) and recorded["remapped_by_token"]
    summary = Trainer(TrainConfig(max_steps=3, **common), str(ROOT / "ds_configs" / "cpu_tiny.json")).fit()  # resumes at step 2
    assert summary["start_step"] == 2
    assert RunDir(tmp_path / "run").read_config()["init_from"] == recorded


def test_more_than_512_positions_end_to_end(shared_data, tmp_path, single_rank):
    """--model JSON with 1,030 positions: pre-training on 1,000-bp windows (998 3-mers + 2 specials),
    export (verified by transformers), and GUE evaluation without truncation."""
    from megadna.data.genome import WindowConfig
    from megadna.data.shard_writer import ShardConfig, write_shards
    from megadna.data.synthetic import write_demo_gue
    from megadna.eval.gue import run_gue
    from megadna.model.export import export_hf
    from megadna.model.pretrained import load_pretrained
    from megadna.rundir import RunDir
    from megadna.train import TrainConfig, train

    shape = tmp_path / "long.json"
    shape.write_text(json.dumps({"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                                 "max_position_embeddings": 1030, "attention_probs_dropout_prob": 0.0}))
    write_shards([shared_data / "genomes" / "C.elegans.fa.gz"], tmp_path / "shards", WindowConfig(window=1000, stride=1000, val_fraction=0.05),
                 ShardConfig(samples_per_shard=200))
    summary = train(TrainConfig(data=str(tmp_path / "shards"), tokenizer="kmer3", model=str(shape), save_dir=str(tmp_path / "run"), max_steps=2,
                                save_interval=2, num_workers=0, progress=False, eval_interval=0, log_interval=1),
                    str(ROOT / "ds_configs" / "cpu_tiny.json"))
    assert summary["final_step"] == 2
    assert RunDir(tmp_path / "run").read_config()["max_tokens"] == 1000
    # a run and its checkpoint hold a config.json too: still megadna's, never taken for a foreign model
    from megadna.eval.config import GUEConfig
    from megadna.eval.finetune import load_backbone

    for d in (tmp_path / "run", RunDir(tmp_path / "run").newest_checkpoint()):
        assert load_backbone(GUEConfig(model=str(d))).info["kind"] == "checkpoint"
    export_hf(tmp_path / "run", tmp_path / "export")
    model, _, _ = load_pretrained(tmp_path / "export")
    assert model.config.max_position_embeddings == 1030
    write_demo_gue(tmp_path / "gue", seed=0, n_train=16, n_dev=8, n_test=8, length=900)
    results = run_gue(gue_dir=str(tmp_path / "gue"), model=str(tmp_path / "export"), output_dir=str(tmp_path / "out"), seeds="1",
                      max_steps=1, batch_size=8, eval_steps=1, progress=False, save_models="none")
    row = results["datasets"][0]
    assert row["max_tokens"] == 900 and row["truncated"] == {"train": 0, "dev": 0, "test": 0}
