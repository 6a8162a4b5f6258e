"""The tokenizer ablation: arms, the convergence figure, the table; and a tiny real run on CPU (two arms
through the real launcher, GUE on one real dataset) whose second invocation skips the finished arms."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
import torch

from megadna.cli.ablate_tokenizers import main as ablate_main
from megadna.cli.args import config_from_args
from megadna.cli.pretrain import build_parser as pretrain_parser
from megadna.errors import InputError
from megadna.experiments.ablation import AblationConfig, Arm, convergence, format_markdown, parse_arms, smooth
from megadna.experiments.ablation.run import pretrain_argv, train_config
from megadna.train.config import TrainConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_arms_from_pairs_or_cross_product():
    assert parse_arms("kmer6:randommask, nkmer6:bert", "", "") == [Arm("kmer6", "randommask"), Arm("nkmer6", "bert")]
    arms = parse_arms("", "kmer6,base", "bert,dnabert")
    assert [a.name for a in arms] == ["kmer6-bert", "kmer6-dnabert", "base-bert", "base-dnabert"]
    assert Arm("runs/tok/bpe4096", "bert").name == "bpe4096-bert"
    with pytest.raises(InputError, match="masking must be"):
        parse_arms("kmer6:span", "", "")
    with pytest.raises(InputError, match="not tokenizer:masking"):
        parse_arms("kmer6", "", "")
    with pytest.raises(InputError, match="named twice"):
        parse_arms("kmer6:bert,kmer6:bert", "", "")
    with pytest.raises(InputError, match="one of the two"):
        AblationConfig(data="x", arms="kmer6:bert", tokenizers="base")


def test_pretrain_argv_parses_back_to_the_arms_train_config(tmp_path):
    """Each arm's launcher flags, read by the trainer's own parser, give back the TrainConfig the ablation built."""
    bpe_dir = tmp_path / "tokenizers" / "bpe64"
    ds_path = tmp_path / "ds.json"
    cfg = AblationConfig(data=str(tmp_path / "shards"), out=str(tmp_path / "abl"), tokenizers=f"kmer6,nkmer6,base,{bpe_dir}",
                         maskings="bert,dnabert,randommask", max_steps=50, seed=3, eval_batches=2)
    arms = cfg.arm_list()
    assert len(arms) == 12
    for arm in arms:
        max_tokens = 136 if arm.tokenizer == str(bpe_dir) else None  # a BPE arm's sequence length is sized on the shards
        save_dir = tmp_path / "abl" / "arms" / arm.name / "pretrain"
        built = train_config(arm, arm.tokenizer, cfg, save_dir, max_tokens)
        assert (built.tokenizer, built.masking, built.max_steps, built.seed) == (arm.tokenizer, arm.masking, 50, 3)
        assert built.save_dir == str(save_dir.resolve()) and built.max_tokens == (max_tokens or 0) and built.progress is False
        args = pretrain_parser().parse_args(pretrain_argv(built, ds_path))
        assert args.deepspeed_config == str(ds_path)
        assert config_from_args(TrainConfig, args) == built
    # the free-form escape hatch comes last, so it overrides the arm's own flags
    built = train_config(arms[0], "kmer6", cfg, tmp_path / "run", None)
    args = pretrain_parser().parse_args(pretrain_argv(built, ds_path, "--mask_ratio 0.2 --keep_last 5"))
    assert config_from_args(TrainConfig, args) == dataclasses.replace(built, mask_ratio=0.2, keep_last=5)


def test_convergence_and_smoothing():
    steps = np.arange(1, 101)
    loss = np.where(steps <= 20, 8.0 - 0.2 * steps, 4.0)  # falls from 8 to 4 by step 20, then flat
    c = convergence({"step": steps, "loss": loss, "mlm_accuracy": np.zeros(100)})
    assert c["final_loss"] == 4.0 and c["first_loss"] == pytest.approx(6.9)  # means of the first and last 10 steps
    assert 10 <= c["half_drop_step"] <= 16
    assert np.allclose(smooth(np.ones(7), 3), 1.0) and smooth(np.array([1.0, 3.0]), 2).tolist() == [1.0, 2.0]


def test_markdown_states_the_budget_and_notes_span_masking():
    result = {
        "config": {"model": "tiny", "ds_config": "ds_configs/cpu_tiny.json", "gue_seeds": "42"},
        "budget": {"max_steps": 10, "micro_batch": 8, "gradient_accumulation": 1, "ranks": 1, "windows_per_step": 8,
                   "window_bp": 510, "bp_per_step": 4080, "bp_total": 40800, "seed": 0},
        "gue_datasets": [],
        "arms": [{"name": "nkmer6-randommask", "tokenizer_name": "nkmer6", "masking": "randommask", "vocab_size": 4106,
                  "overlapping": False, "tokens": {"tokens_per_window": 85.0, "positions": 87}}],
    }
    md = format_markdown(result)
    assert "4,080 bp per step" in md and "bp budget is equal" in md
    assert "span unit 1" in md and "| nkmer6-randommask | nkmer6 | randommask | 4,106 | 85.0 (87) |" in md


@pytest.mark.slow
def test_tiny_ablation_on_cpu_and_skip_on_rerun(real_shards, shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path / "abl"

    def cli_args(max_steps=8):
        return ["--data", str(real_shards), "--out", str(out), "--tokenizers", "kmer6,base", "--maskings", "bert",
                "--max_steps", str(max_steps), "--eval_batches", "2", "--gue_dir", str(shared_data / "gue"), "--datasets", "tf/0",
                "--gue_seeds", "42", "--max_train_samples", "32", "--max_eval_samples", "32", "--gue_max_steps", "4",
                "--gue_lr", "1e-3", "--gue_eval_steps", "0"]

    args = cli_args()
    try:
        assert ablate_main(args) == 0
        result = json.loads((out / "ablation.json").read_text())
        assert [a["name"] for a in result["arms"]] == ["kmer6-bert", "base-bert"]
        assert result["budget"]["bp_total"] == 8 * 8 * 510
        for arm in result["arms"]:
            p = arm["pretrain"]
            assert p["summary"]["final_step"] == 8 and "eval_loss" in p["summary"]["eval"]
            assert np.isfinite(p["convergence"]["final_loss"])
            assert "tf/0" in arm["gue"]["datasets"] and arm["pretrain_wall_s"] > 0 and arm["gue_wall_s"] > 0
            assert len((out / "arms" / arm["name"] / "pretrain" / "metrics.jsonl").read_text().splitlines()) == 8
        kmer, base = result["arms"]
        assert kmer["tokens"]["tokens_per_window"] == 505 and base["tokens"]["tokens_per_window"] == 510
        md = (out / "ablation.md").read_text()
        assert "| kmer6-bert | kmer6 | bert | 4,101 |" in md and "## GUE" in md and "| base-bert |" in md
        assert (out / "loss_curves.png").read_bytes()[:8] == PNG_MAGIC

        logs = {a: (out / "arms" / a / "pretrain.log").read_text() for a in ("kmer6-bert", "base-bert")}
        t0 = time.perf_counter()
        assert ablate_main(args) == 0  # everything finished: nothing is re-run
        assert time.perf_counter() - t0 < 20
        for a, text in logs.items():
            assert (out / "arms" / a / "pretrain.log").read_text() == text
        again = json.loads((out / "ablation.json").read_text())
        assert [a["gue"] for a in again["arms"]] == [a["gue"] for a in result["arms"]]

        with pytest.raises(SystemExit) as e:  # another plan in the same folder is refused, not mixed in
            ablate_main(cli_args(max_steps=9))
        assert e.value.code == 2
    finally:
        torch.set_num_threads(n)


def test_bpe_window_scan_refuses_a_shard_the_manifest_does_not_describe(altered_shards, tmp_path):
    from megadna.experiments.ablation.plan import window_tokens
    from megadna.tokenizers import train_bpe

    shards, altered = altered_shards
    rng = np.random.default_rng(0)
    bpe = train_bpe(["".join(rng.choice(list("ACGT"), 20_000))], 64, tmp_path / "bpe64")
    with pytest.raises(InputError, match=altered):
        window_tokens(bpe, shards, max_positions=512)
