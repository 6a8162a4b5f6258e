"""load_pretrained and the Hugging Face export, on a real DeepSpeed ZeRO-2 (bf16) checkpoint.

The checkpoint is written by DeepSpeed itself in a subprocess (deepspeed.initialize + save_checkpoint,
in megadna's layout), so the loader is tested against DeepSpeed's actual files, not a stand-in.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from megadna import rundir as ckpt
from megadna.errors import InputError
from megadna.model.export import ExportVerificationError, export_hf, random_sequences, verify_hf_dir
from megadna.model.pretrained import load_pretrained
from megadna.rundir import META, RunDir

transformers = pytest.importorskip("transformers")
pytest.importorskip("deepspeed")

REPO = Path(__file__).resolve().parents[1]

_MAKE_CHECKPOINT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import torch, deepspeed
    from deepspeed.utils import safe_get_full_fp32_param
    from safetensors.torch import save_file
    from megadna import rundir as ckpt
    from megadna.rundir import RunDir
    from megadna.model import BertForMLM, model_config
    from megadna.tokenizers import get_tokenizer

    out = Path(sys.argv[1])
    tok = get_tokenizer("kmer6")
    cfg = model_config("tiny", tok.vocab_size, max_position_embeddings=128)
    torch.manual_seed(0)
    model = BertForMLM(cfg)
    ds = {"train_micro_batch_size_per_gpu": 2, "bf16": {"enabled": True}, "zero_optimization": {"stage": 2},
          "steps_per_print": 10**9}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2), config=ds)
    ids = torch.randint(5, tok.vocab_size, (2, 32))
    labels = torch.where(torch.rand(2, 32) < 0.3, ids, torch.full_like(ids, -100))
    labels[:, 0] = ids[:, 0]
    for _ in range(2):  # a few updates, so the fp32 master weights differ from their bf16 copies
        engine.backward(engine(ids, labels=labels)["loss"])
        engine.step()
    d = RunDir(out).checkpoint(2)
    engine.save_checkpoint(str(d.parent), tag=d.name)
    tok.save(d / "tokenizer")
    (d / ckpt.CONFIG).write_text("{}")
    ckpt.write_meta(d, {"global_step": 2, "model": cfg.to_dict(), "tokenizer": tok.to_dict()})
    master = {n: safe_get_full_fp32_param(p).detach().clone().contiguous() for n, p in engine.module.named_parameters()}
    save_file(master, str(out / "reference_fp32.safetensors"))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def zero_run(tmp_path_factory):
    """A run save_dir with one complete ZeRO-2 bf16 checkpoint, plus the fp32 master weights it holds."""
    out = tmp_path_factory.mktemp("zero_run")
    env = dict(os.environ, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", _MAKE_CHECKPOINT, str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors.torch import load_file

    return out, load_file(str(out / "reference_fp32.safetensors"))


@pytest.fixture(scope="module")
def exported(zero_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model"
    meta = export_hf(zero_run[0], out)
    return out, meta


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    pass


def test_load_pretrained_rebuilds_fp32_master_weights_from_zero(zero_run):
    save_dir, master = zero_run
    step_dir = RunDir(save_dir).checkpoint(2)
    for path in (save_dir, step_dir):  # a run's save_dir resolves to its newest complete checkpoint
        model, tok, info = load_pretrained(path)
        assert info["kind"] == "checkpoint" and info["global_step"] == 2 and info["path"] == str(step_dir)
        assert tok.name == "kmer6" and model.config.max_position_embeddings == 128
        state = model.state_dict()
        for name, value in master.items():
            assert state[name].dtype == torch.float32
            assert torch.equal(state[name], value), name  # exact: the fp32 masters, not the bf16 copy
        # the decoder is tied to the embeddings again (one tensor), as in a freshly built model
        assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    bf16 = torch.load(step_dir / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    emb = "bert.embeddings.word_embeddings.weight"
    assert not torch.equal(master[emb], bf16[emb].float())  # so the test above could tell them apart


def test_export_loads_in_plain_transformers_with_equal_ids_and_logits(zero_run, exported):
    out, meta = exported
    model, tok, _ = load_pretrained(zero_run[0])
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertForMaskedLM"]
    assert {"model.safetensors", "vocab.txt", "megadna_tokenizer.json", "README.md"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}

    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    hf = transformers.AutoModelForMaskedLM.from_pretrained(str(out)).eval()
    assert type(hf).__name__ == "BertForMaskedLM"
    seqs = random_sequences(6, np.random.default_rng(123), 20, 120)
    ours = tok.encode_batch(seqs, max_tokens=128)
    for i, seq in enumerate(seqs):
        n = int(ours["attention_mask"][i].sum())
        assert hf_tok(tok.to_hf_text(seq))["input_ids"] == ours["input_ids"][i, :n].tolist()
    ids, mask = torch.from_numpy(ours["input_ids"]), torch.from_numpy(ours["attention_mask"])
    with torch.no_grad():
        diff = (model(ids, attention_mask=mask)["logits"] - hf(input_ids=ids, attention_mask=mask).logits)[mask.bool()]
    assert diff.abs().max() < 1e-4
    assert meta["verified_max_abs_logit_diff"] < 1e-4 and meta["global_step"] == 2
    readme = (out / "README.md").read_text()
    assert "kmer6" in readme and "overlapping 6-mers" in readme

    # and back: megadna loads its own export with the same weights and tokenizer
    again, tok2, info = load_pretrained(out)
    assert info["kind"] == "export" and info["global_step"] == 2 and tok2.to_dict() == tok.to_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name


def test_export_refuses_to_overwrite_and_a_failed_export_leaves_nothing(zero_run, exported, tmp_path, monkeypatch):
    out, _ = exported
    before = (out / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(InputError, match="already exists.*--overwrite"):
        export_hf(zero_run[0], out)
    assert (out / "model.safetensors").stat().st_mtime_ns == before

    import megadna.model.export as export

    def broken(*args, **kwargs):
        raise ExportVerificationError("simulated mismatch")

    monkeypatch.setattr(export, "verify_hf_dir", broken)
    target = tmp_path / "new"
    with pytest.raises(ExportVerificationError):
        export_hf(zero_run[0], target)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temp dir
    with pytest.raises(ExportVerificationError):  # --overwrite of a good export: the old one survives a failure
        export_hf(zero_run[0], out, overwrite=True)
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


def test_verification_catches_a_model_that_differs(exported):
    out, _ = exported
    model, tok, _ = load_pretrained(out)
    with torch.no_grad():
        w = model.bert.encoder.layer[0].output.dense.weight  # noise: a uniform shift would vanish in LayerNorm
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
    with pytest.raises(ExportVerificationError, match="logits differ"):
        verify_hf_dir(out, model, tok)


class _Payload:
    """Pickles into a call of os.system: what a tampered checkpoint would carry."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_with_pickled_code_is_refused_not_run(zero_run, tmp_path):
    bad = tmp_path / "run"
    shutil.copytree(zero_run[0], bad)
    step = RunDir(bad).checkpoint(2)
    optim = next(step.glob("*optim_states.pt"))
    state = torch.load(optim, weights_only=False)  # our own test file: trusted
    state["optimizer_state_dict"]["payload"] = _Payload()
    torch.save(state, optim)
    # The sizes and sha256 recorded in megadna.json at save name the altered file before it is read ...
    with pytest.raises(InputError, match=rf"{optim.name}: \d+ bytes, but \d+ were recorded"):
        load_pretrained(bad)
    # ... and with the record rewritten to match, the weights-only loader still refuses it.
    meta = json.loads((step / META).read_text())
    ckpt.write_meta(step, {k: v for k, v in meta.items() if k not in ("format", ckpt.FILES)})
    with pytest.raises(InputError, match=rf"{optim.name}: refused to load"):
        load_pretrained(bad)


def test_load_pretrained_errors_name_the_problem(zero_run, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a model directory"):
        load_pretrained(tmp_path / "empty")
    # an interrupted save: DeepSpeed's files without megadna.json
    run = tmp_path / "run"
    shutil.copytree(zero_run[0], run)
    (RunDir(run).checkpoint(2) / META).unlink()
    with pytest.raises(InputError, match="no complete checkpoint"):
        load_pretrained(run)
    with pytest.raises(InputError, match="never completed"):
        load_pretrained(RunDir(run).checkpoint(2))


def test_cli_exit_codes(zero_run, exported, capsys):
    from megadna.cli.export_hf import main

    with pytest.raises(SystemExit) as e:
        main([str(zero_run[0]), str(exported[0])])
    assert e.value.code == 2
    assert "already exists" in capsys.readouterr().err
