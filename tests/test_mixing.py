"""Weighted mixing of shard sets (megadna.data.mixing): every global batch holds each source's quota,
each source's samples are that source's own order, loader workers and world sizes give the same
batches, and a resume is exact (and refused when the mix changed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from megadna.data.mixing import is_mix, parse_mix
from megadna.data.order import quotas
from megadna.data.stream import StreamConfig, WindowStream, make_loader
from megadna.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plant_shards(shared_data, tmp_path_factory):
    """A second shard set (A. thaliana), same 510-bp windows as real_shards."""
    from megadna.data.genome import WindowConfig
    from megadna.data.shard_writer import ShardConfig, write_shards

    out = tmp_path_factory.mktemp("plant") / "shards"
    write_shards([shared_data / "genomes" / "A.thaliana.fa.gz"], out, WindowConfig(window=510, stride=255, val_fraction=0.05), ShardConfig(samples_per_shard=500))
    return out


def test_spec_forms_and_errors(tmp_path):
    assert is_mix("worm=0.7:shards/a,plant=0.3:https://h/x") and not is_mix("shards/a") and not is_mix("https://h/x")
    srcs = parse_mix("worm=0.7:shards/a,plant=0.3:https://h:8000/x")
    assert [(s.name, s.weight, s.location) for s in srcs] == [("worm", 0.7, "shards/a"), ("plant", 0.3, "https://h:8000/x")]
    (tmp_path / "mix.json").write_text(json.dumps({"sources": [{"name": "a", "weight": 2, "data": "x"}, {"name": "b", "weight": 1, "data": "y"}]}))
    assert [s.weight for s in parse_mix(str(tmp_path / "mix.json"))] == [2.0, 1.0]
    for bad, msg in (("a=0.5:x", "at least two sources"), ("a=0:x,b=1:y", "finite and > 0"), ("a=inf:x,b=1:y", "finite and > 0"), ("a=x:x,b=1:y", "not a number"),
                     ("a=1:x,a=1:y", "each name once")):
        with pytest.raises(InputError, match=msg):
            parse_mix(bad)


def test_quotas_follow_the_weights_by_largest_remainder():
    assert quotas([0.7, 0.3], 16) == [11, 5] and quotas([0.7, 0.3], 256) == [179, 77] and quotas([0.6, 0.2, 0.2], 10) == [6, 2, 2]
    assert quotas([1, 1, 1], 16) == [6, 5, 5] and sum(quotas([0.5, 0.25, 0.125, 0.125], 7)) == 7
    with pytest.raises(InputError, match=r"no sample in a global batch of 8"):
        quotas([0.99, 0.01], 8)


def _stream(sources, workers=1, start=0, rank=0, world=1, micro=4, accum=1, order_batch=20):
    return WindowStream(sources, StreamConfig(micro_batch=micro, accum=accum, num_workers=workers, seed=5, order_batch=order_batch), rank=rank,
                        world_size=world, start_sample=start)


def test_shares_follow_the_weights_and_each_sources_samples_are_its_own_order(real_shards, plant_shards):
    sources = parse_mix(f"worm=0.7:{real_shards},plant=0.3:{plant_shards}")
    mixed = _stream(sources)  # rounds of 20: 14 worm, 6 plant
    it = mixed.batches()
    got = [next(it) for _ in range(500)]  # 2,000 windows
    src = np.concatenate([b["sources"] for b in got])
    assert abs(np.mean(src == 0) - 0.7) <= 0.03 and mixed.source_counts(2000).tolist() == [1400, 600]
    assert all(np.sum(src[i:i + 20] == 0) == 14 for i in range(0, 2000, 20))  # every global batch of 20 holds the quota
    seqs = [x for b in got for x in b["seqs"]]
    for s, (source, quota) in enumerate(zip(sources, mixed.quotas)):  # a source's samples in the mix are its own order at its quota
        own = WindowStream(source.location, StreamConfig(micro_batch=quota, num_workers=1, seed=5)).batches()
        mine = [x for x, k in zip(seqs, src) if k == s]
        assert mine == [x for _ in range(len(mine) // quota) for x in next(own)["seqs"]]


def test_each_source_reads_each_window_once_per_epoch_of_its_own(real_shards, plant_shards):
    mixed = _stream(parse_mix(f"worm=0.7:{real_shards},plant=0.3:{plant_shards}"))
    lens = [st.order.epoch_len for st in mixed.sets]
    assert lens[0] != lens[1]  # the sources' epochs end at different places of the run
    n = max((e // q + 2) * 20 for e, q in zip(lens, mixed.quotas))
    per = {0: [], 1: []}
    for _, _, s, sid, _ in mixed.samples(0, n):
        per[s].append(sid)
    for s, e in enumerate(lens):
        assert len(per[s]) > e and len(set(per[s][:e])) == e, s  # crossed its own epoch boundary, each window once before it


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_workers_and_world_sizes_give_the_same_batches_and_a_resume_continues_them(real_shards, plant_shards, workers):
    sources = parse_mix(f"worm=0.7:{real_shards},plant=0.3:{plant_shards}")

    def loaded(start, n, **kw):
        batches = iter(make_loader(_stream(sources, workers=workers, start=start, **kw)))
        try:
            return [(s, x) for b in (next(batches) for _ in range(n)) for s, x in zip(b["sources"].tolist(), b["seqs"])]
        finally:
            batches.close()

    straight = loaded(0, 60)
    assert [(int(s), x) for b in (next(it) for it in [_stream(sources).batches()] for _ in range(60)) for s, x in zip(b["sources"], b["seqs"])] == straight
    assert loaded(37 * 4, 23) == straight[37 * 4:]  # resumed mid-way: bitwise the same continuation
    # Two ranks with 2-window micro batches: the same global batches of 20 (rank 0 holds the first 10 of each).
    r0, r1 = (loaded(0, 30, rank=r, world=2, micro=2, accum=5) for r in (0, 1))
    assert [x for g in range(6) for x in r0[10 * g:10 * g + 10] + r1[10 * g:10 * g + 10]] == straight[:120]


def test_sources_with_other_window_lengths_are_refused(real_shards, shared_data, tmp_path):
    from megadna.data.genome import WindowConfig
    from megadna.data.shard_writer import ShardConfig, write_shards

    write_shards([shared_data / "genomes" / "C.elegans.fa.gz"], tmp_path / "w200", WindowConfig(window=200, stride=200, val_fraction=0.05),
                 ShardConfig(samples_per_shard=500))
    with pytest.raises(InputError, match=r"the sources' windows differ \(a 510 bp, b 200 bp\)"):
        _stream(parse_mix(f"a=1:{real_shards},b=1:{tmp_path / 'w200'}"))


def test_training_on_a_mixture_resumes_exactly_and_reports_the_shares(real_shards, plant_shards, tmp_path, single_rank):
    from megadna.rundir import RunDir
    from megadna.train import TrainConfig, train

    data = f"worm=0.7:{real_shards},plant=0.3:{plant_shards}"

    def run(name, **kw):
        return train(TrainConfig(data=data, save_dir=str(tmp_path / name), max_steps=8, save_interval=4, num_workers=1, progress=False,
                                 eval_interval=0, log_interval=2, **kw), str(ROOT / "ds_configs" / "cpu_tiny.json"))

    straight = run("straight")
    run("split", stop_at_step=4)
    resumed = run("split")
    assert resumed["start_step"] == 4
    assert [r["loss"] for r in RunDir(tmp_path / "split").read_metrics()] == [r["loss"] for r in RunDir(tmp_path / "straight").read_metrics()]
    assert straight["source_windows"] == resumed["source_windows"] == {"worm": 6 * 8, "plant": 2 * 8}  # 8 windows a step: quotas 6/2
    assert RunDir(tmp_path / "straight").read_config()["data_mix"][1]["name"] == "plant"
    with pytest.raises(InputError, match=r"cannot resume exactly \(data mix \(name, weight\): checkpoint \[\('worm', 0.7\), \('plant', 0.3\)\], now \[\('worm', 0.5\)"):
        train(TrainConfig(data=f"worm=0.5:{real_shards},plant=0.5:{plant_shards}", save_dir=str(tmp_path / "split"), max_steps=10, progress=False,
                          eval_interval=0, num_workers=1), str(ROOT / "ds_configs" / "cpu_tiny.json"))
