"""Weighted mixing of shard sets (megadna.data.mixing): shares follow the weights, each batch is its
source's own next batch, loader workers serve the batches in order, and a resume is exact (and refused
when the mix changed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from megadna.data.mixing import MixedStream, is_mix, parse_mix, schedule
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


def test_schedule_prefixes_hold_each_share_within_one():
    seq = schedule([0.7, 0.2, 0.1])
    assert len(schedule([0.613, 0.387])) == 1000
    counts = np.cumsum(np.eye(3)[seq], axis=0)
    n = np.arange(1, len(seq) + 1)[:, None]
    assert len(seq) == 10 and np.all(np.abs(counts - n * np.array([0.7, 0.2, 0.1])) <= 1.0)
    stream = MixedStream.__new__(MixedStream)  # source_position's cycle arithmetic against a plain count
    stream.period, stream.rank, stream.world_size, stream.sources = seq, 1, 3, [None] * 3
    for b in (0, 1, 9, 10, 11, 1234):
        assert stream.source_position(b).tolist() == np.bincount(stream.source_of(np.arange(b)), minlength=3).tolist()


def _stream(sources, workers=1, start=0, rank=0, world=1):
    return MixedStream(sources, StreamConfig(micro_batch=4, num_workers=workers, seed=5), rank=rank, world_size=world, start_batch=start)


def test_shares_follow_the_weights_and_each_batch_is_its_sources_next(real_shards, plant_shards):
    sources = parse_mix(f"worm=0.7:{real_shards},plant=0.3:{plant_shards}")
    mixed = _stream(sources)
    it = mixed.batches(0, 0)
    got = [next(it) for _ in range(500)]  # 2,000 windows
    share = np.mean([b["source"] == 0 for b in got])
    assert abs(share - 0.7) <= 0.03
    for s, src in enumerate(sources):  # batch k of a source in the mix is that source's own batch k
        own = WindowStream(src.location, StreamConfig(micro_batch=4, num_workers=1, seed=5)).batches(0, 0)
        mine = [b["seqs"] for b in got if b["source"] == s]
        assert mine == [next(own)["seqs"] for _ in mine]
    # two ranks: each follows the weights, from its own place in the cycle, so a global batch mixes sources
    r0, r1 = (_stream(sources, rank=r, world=2) for r in (0, 1))
    b = np.arange(250)
    assert all(abs(np.mean(r.source_of(b) == 0) - 0.7) <= 0.01 for r in (r0, r1))
    assert 0.3 < np.mean(r0.source_of(b) != r1.source_of(b)) < 0.7


@pytest.mark.parametrize("workers", [1, 2])
def test_loader_workers_serve_the_batches_in_order_and_a_resume_continues_them(real_shards, plant_shards, workers):
    """The worker count is part of the data position (each source's slots depend on it, as for one
    shard set): for a given count, the loader's batches are the stream's, and a resume continues them."""
    sources = parse_mix(f"worm=0.7:{real_shards},plant=0.3:{plant_shards}")

    def loaded(start, n):
        batches = iter(make_loader(_stream(sources, workers=workers, start=start)))
        try:
            return [(b["source"], b["seqs"]) for b in (next(batches) for _ in range(n))]
        finally:
            batches.close()

    stream = _stream(sources, workers=workers)
    per_worker = [stream.batches(w, 0) for w in range(workers)]
    expected = [next(per_worker[b % workers]) for b in range(60)]
    straight = loaded(0, 60)
    assert straight == [(b["source"], b["seqs"]) for b in expected]
    assert loaded(37, 23) == straight[37:]  # resumed mid-way: bitwise the same continuation


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
    assert straight["source_windows"] == resumed["source_windows"] and sum(straight["source_windows"].values()) == 8 * 8
    assert abs(straight["source_shares"]["worm"] - 0.7) <= 0.13  # 8 batches: within one batch of 0.7
    assert RunDir(tmp_path / "straight").read_config()["data_mix"][1]["name"] == "plant"
    with pytest.raises(InputError, match=r"cannot resume exactly \(data mix \(name, weight\): checkpoint \[\('worm', 0.7\), \('plant', 0.3\)\], now \[\('worm', 0.5\)"):
        train(TrainConfig(data=f"worm=0.5:{real_shards},plant=0.5:{plant_shards}", save_dir=str(tmp_path / "split"), max_steps=10, progress=False,
                          eval_interval=0, num_workers=1), str(ROOT / "ds_configs" / "cpu_tiny.json"))
