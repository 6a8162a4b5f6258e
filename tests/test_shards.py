"""Shards: what is written equals the genome, the manifest tells the truth, and the reader splits,
orders and resumes exactly."""

import json
import os
import random
import tarfile

import pytest
import torch

from megadna.data.genome import WindowConfig, iter_windows, read_fasta
from megadna.data.order import Deal, SetOrder, lanes_for
from megadna.data.shard_writer import ShardConfig, write_shards
from megadna.data.shards import MANIFEST, CorruptShard, file_sha256, iter_shard, read_manifest, verify_shards
from megadna.data.stream import StreamConfig, WindowStream, make_loader
from megadna.errors import InputError


@pytest.fixture(scope="module")
def athal_shards(shared_data, tmp_path_factory):
    fasta = shared_data / "genomes" / "A.thaliana.fa.gz"
    out = tmp_path_factory.mktemp("shards") / "athal"
    cfg = WindowConfig(window=200, stride=150, max_n_fraction=0.02, val_fraction=0.1)
    manifest = write_shards([fasta], out, cfg, ShardConfig(samples_per_shard=700, write_shuffle=500, seed=3))
    return fasta, out, cfg, manifest


def _all_samples(shard_dir, split):
    m = read_manifest(shard_dir)
    for sh in m["splits"][split]["shards"]:
        yield from iter_shard(shard_dir / split / sh["name"], with_meta=True)


def test_every_window_equals_the_genome_at_its_coordinates(athal_shards):
    fasta, out, cfg, manifest = athal_shards
    genome = {c.name: c.seq for c in read_fasta(fasta)}
    seen = 0
    for split in ("train", "val"):
        for seq, meta in _all_samples(out, split):
            assert seq == genome[meta["contig"]][meta["start"] : meta["end"]]
            assert meta["end"] - meta["start"] == cfg.window and meta["strand"] == "+"
            assert seq.count(b"N") <= cfg.max_n_fraction * cfg.window
            seen += 1
    assert seen == manifest["totals"]["windows"]
    # The shards hold exactly the windows the windowing produced (order aside: the writer shuffles).
    expected = sorted((w.contig, w.start) for w in iter_windows([fasta], cfg))
    got = sorted((m["contig"], m["start"]) for split in ("train", "val") for _, m in _all_samples(out, split))
    assert got == expected


def test_manifest_records_counts_sizes_hashes_and_config(athal_shards):
    fasta, out, cfg, m = athal_shards
    assert m["window_config"] == cfg.to_dict()
    assert m["sources"][0]["sha256"] == file_sha256(fasta)
    for split, info in m["splits"].items():
        assert sum(s["samples"] for s in info["shards"]) == info["windows"]
        assert info["bp"] == info["windows"] * cfg.window
        for s in info["shards"]:
            assert (out / split / s["name"]).stat().st_size == s["bytes"]
    assert m["splits"]["val"]["windows"] > 0
    assert verify_shards(out) == []


def test_shards_are_compact(athal_shards):
    _, _, _, m = athal_shards
    # Even with 200-bp windows (two tar headers per window) the gzip shards stay near 1 byte/bp.
    assert m["totals"]["bytes"] / m["totals"]["bp"] < 1.3


def test_writing_is_reproducible_and_refuses_to_clobber(shared_data, tmp_path):
    fasta = shared_data / "genomes" / "C.elegans.fa.gz"
    cfg = WindowConfig(window=300, stride=300)
    a = write_shards([fasta], tmp_path / "a", cfg, ShardConfig(samples_per_shard=1000))
    b = write_shards([fasta], tmp_path / "b", cfg, ShardConfig(samples_per_shard=1000))
    assert [s["sha256"] for s in a["splits"]["train"]["shards"]] == [s["sha256"] for s in b["splits"]["train"]["shards"]]
    with pytest.raises(InputError, match="not empty"):
        write_shards([fasta], tmp_path / "a", cfg)
    assert (tmp_path / "a" / MANIFEST).is_file()  # nothing already written was lost


def test_a_crash_mid_write_leaves_nothing_and_the_rerun_works(shared_data, tmp_path, monkeypatch):
    import megadna.data.shard_writer as shard_writer

    def boom(*a, **k):
        yield from iter_windows(*a, **k)
        raise RuntimeError("crash while windowing")

    fasta, out = shared_data / "genomes" / "C.elegans.fa.gz", tmp_path / "s"
    args = ([fasta], out, WindowConfig(window=300), ShardConfig(samples_per_shard=100, write_shuffle=0))
    monkeypatch.setattr(shard_writer, "iter_windows", boom)
    with pytest.raises(RuntimeError):
        write_shards(*args)
    assert list(tmp_path.iterdir()) == []  # no empty train/ val/, no temporary directory
    monkeypatch.undo()
    write_shards(*args)  # not refused as "not empty"
    assert verify_shards(out) == []


def _small_set(tmp_path, name="set", window=100, **shard_kw):
    from megadna.data.synthetic import write_synthetic_fasta

    fasta = tmp_path / "genome.fa.gz"
    if not fasta.exists():
        write_synthetic_fasta(fasta, n_contigs=2, length=3000, seed=1)
    out = tmp_path / name
    return fasta, out, write_shards([fasta], out, WindowConfig(window=window, stride=window, val_fraction=0.1), ShardConfig(**({"samples_per_shard": 20} | shard_kw)))


def _set_state(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("bad", ["misspelled", "inside_out", "crash"])
def test_overwrite_that_fails_keeps_the_old_set(tmp_path, monkeypatch, bad):
    import megadna.data.shard_writer as shard_writer

    fasta, out, _ = _small_set(tmp_path)
    before = _set_state(out)
    if bad == "misspelled":
        inputs, error = [tmp_path / "genome.fa.gzz"], "no such FASTA file"
    elif bad == "inside_out":
        inputs, error = [out / "train" / "genome.fa.gz"], "inside the output directory"
        (out / "train" / "genome.fa.gz").write_bytes(fasta.read_bytes())
        before = _set_state(out)
    else:
        def boom(*a, **k):
            yield from iter_windows(*a, **k)
            raise RuntimeError("crash while windowing")

        monkeypatch.setattr(shard_writer, "iter_windows", boom)
        inputs, error = [fasta], "crash while windowing"
    with pytest.raises((InputError, RuntimeError), match=error):
        write_shards(inputs, out, WindowConfig(window=50, stride=50), overwrite=True)
    assert _set_state(out) == before  # every byte of the old set (and the input inside it) is still there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["genome.fa.gz", "set"]  # no temporary directories left


def test_overwrite_swaps_in_the_new_set_whole(tmp_path):
    fasta, out, old = _small_set(tmp_path)
    new = write_shards([fasta], out, WindowConfig(window=50, stride=50), ShardConfig(samples_per_shard=30), overwrite=True)
    assert read_manifest(out) == new != old and verify_shards(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["genome.fa.gz", "set"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # the usual permissions, not the temporary directory's 0700
    # --overwrite replaces a shard set, nothing else.
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"more than a shard set \(notes\.txt\)"):
        write_shards([fasta], out, WindowConfig(window=50, stride=50), overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and read_manifest(out) == new


def test_make_shards_out_that_is_a_file_is_one_line(tmp_path, capsys):
    from megadna.cli.make_shards import main

    fasta, _, _ = _small_set(tmp_path)
    out = tmp_path / "out.txt"
    out.write_text("not a directory")
    for argv in (["--fasta", str(fasta), "--out", str(out)], ["--fasta", str(fasta), "--out", str(out), "--overwrite"], ["--out", str(out), "--verify"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and err.startswith(f"error: {out}") and "not a" in err, err
    assert out.read_text() == "not a directory"


def _stream(out, **kw):
    rank = kw.pop("rank", 0)
    world = kw.pop("world_size", 1)
    start = kw.pop("start_sample", 0)
    return WindowStream(out, StreamConfig(**kw), rank=rank, world_size=world, start_sample=start)


def _read_epoch(s, epoch=0, *, with_meta=False):
    """Every sample of one epoch of a one-set stream, lane by lane."""
    return [x for lane in range(s.sets[0].order.lanes) for x in s.lane_samples(0, epoch, lane, with_meta=with_meta)]


def _global_batches(out, n, *, world, accum, micro, workers, start=0, **kw):
    """The sample ids of global batches 0..n-1 (from `start`), each in part order, read through the
    real DataLoader of every rank."""
    per_rank = []
    for rank in range(world):
        it = iter(make_loader(_stream(out, rank=rank, world_size=world, micro_batch=micro, accum=accum, num_workers=workers, start_sample=start, **kw)))
        per_rank.append([next(it) for _ in range(n * accum)])
        it.close()
    out = []
    for g in range(n):
        parts = [b for r in range(world) for b in per_rank[r][g * accum:(g + 1) * accum]]
        assert [b["part"] for b in parts] == list(range(world * accum))
        out.append([(int(i), bytes(x)) for b in parts for i, x in zip(b["sample_ids"], b["seqs"])])
    return out


def test_global_batches_are_the_same_for_any_world_size_workers_accumulation_and_micro_batch(athal_shards):
    _, out, _, _ = athal_shards
    kw = dict(seed=5, shuffle_block=64, reverse_complement=0.5, order_batch=16)
    ref = _global_batches(out, 6, world=1, accum=1, micro=16, workers=0, **kw)
    assert len({i for g in ref for i, _ in g}) == 6 * 16
    for world, accum, micro, workers in [(2, 1, 8, 2), (4, 2, 2, 1), (1, 4, 4, 3), (2, 2, 4, 0)]:
        assert _global_batches(out, 6, world=world, accum=accum, micro=micro, workers=workers, **kw) == ref, (world, accum, micro, workers)
    # A resume at global batch 4 on another shape continues the same sequence.
    assert _global_batches(out, 2, world=2, accum=1, micro=8, workers=2, start=4 * 16, **kw) == ref[4:]


def test_an_epoch_reads_every_window_once_except_fewer_than_a_round(athal_shards):
    _, out, _, m = athal_shards
    s = _stream(out, micro_batch=8, world_size=3, seed=5)  # order_batch 24
    o = s.sets[0].order
    shards = len(m["splits"]["train"]["shards"])
    assert 1 < o.lanes == lanes_for(24, shards) <= shards and o.chunk == 24 // o.lanes  # at most one lane per shard
    total = m["splits"]["train"]["windows"]
    assert {o.locate(p)[0] for p in range(o.epoch_len)} == {0} and o.locate(o.epoch_len)[0] == 1
    keys = [(meta["contig"], meta["start"]) for _, meta, _ in _read_epoch(s, with_meta=True)]
    assert len(keys) == len(set(keys)) == o.epoch_len and total - 24 < o.epoch_len <= total
    # The stream's own path (positions -> lanes), across the epoch boundary: each window once per epoch.
    ids = [sid for _, _, _, sid, _ in s.samples(0, o.epoch_len + 100)]
    assert len(set(ids[:o.epoch_len])) == o.epoch_len and set(ids[:o.epoch_len]) == {sid for _, _, sid in _read_epoch(s)}
    assert len(set(ids[o.epoch_len:])) == 100
    # A different epoch leaves out different windows (the shard order is re-drawn).
    other = {(meta["contig"], meta["start"]) for _, meta, _ in _read_epoch(s, 1, with_meta=True)}
    assert other != set(keys)


def test_lanes_divide_the_shards_exactly_and_name_each_sample_by_its_manifest_index():
    o = SetOrder(tuple((f"s{i}", 10) for i in range(8)), quota=4, seed=0)
    assert (o.lanes, o.chunk, o.lane_len, o.epoch_len) == (4, 1, 20, 80)
    segs = [seg for lane in range(o.lanes) for seg in o.lane_segments(0, lane)]
    covered = sorted((seg.shard, i) for seg in segs for i in range(seg.start, seg.stop))
    assert covered == sorted((f"s{i}", j) for i in range(8) for j in range(10))
    assert sorted(seg.first_id + k for seg in segs for k in range(seg.stop - seg.start)) == list(range(80))
    assert all(seg.first_id == int(seg.shard[1:]) * 10 + seg.start for seg in segs)
    assert lanes_for(2048) == 64 and lanes_for(24) == 24 and lanes_for(96) == 48 and lanes_for(67) == 1 and lanes_for(24, 7) == 6
    assert SetOrder((("s", 100_000),), quota=256, seed=0).lanes == 1  # one shard: one lane (no shard opened twice)


def test_a_rank_reads_only_its_own_lanes():
    # Global batch 256 on 8 ranks: 64 lanes of 4 samples a round; rank r's micro batches always fall
    # in lanes 8r..8r+7, so reading stays local however many ranks there are.
    o = SetOrder(tuple((f"s{i}", 1000) for i in range(100)), quota=256, seed=0)
    for world, accum in [(8, 1), (4, 2), (2, 4)]:
        for rank in range(world):
            d = Deal(start=0, micro_batch=256 // world // accum, accum=accum, rank=rank, world_size=world)
            lanes = {o.locate(p)[1] for k in range(40) for p in range(d.first(k), d.first(k) + d.micro_batch)}
            per = 64 // world
            assert lanes == set(range(rank * per, (rank + 1) * per)), (world, rank)


@pytest.mark.parametrize("workers", [0, 2])
def test_saved_position_resumes_to_exactly_the_next_batch(athal_shards, workers):
    _, out, _, _ = athal_shards
    kw = dict(micro_batch=8, num_workers=workers, seed=11, shuffle_block=64, reverse_complement=0.5)
    per_epoch = _stream(out, **kw).batches_per_epoch
    n = per_epoch + 7  # runs over an epoch boundary
    it = iter(make_loader(_stream(out, **kw)))
    straight = [next(it) for _ in range(n)]
    assert [b["batch_index"] for b in straight] == list(range(n))
    for k in (3, per_epoch - 1, per_epoch + 2):
        it = iter(make_loader(_stream(out, start_sample=k * 8, **kw)))
        resumed = [next(it) for _ in range(n - k)]
        assert [tuple(b["seqs"]) for b in resumed] == [tuple(b["seqs"]) for b in straight[k:]]
        assert [b["batch_index"] for b in resumed] == list(range(n - k))


def test_order_depends_on_seed_and_epoch(athal_shards):
    _, out, _, _ = athal_shards
    a = [x for x, _, _ in _stream(out, seed=1).lane_samples(0, 0, 0)]
    b = [x for x, _, _ in _stream(out, seed=2).lane_samples(0, 0, 0)]
    c = [x for x, _, _ in _stream(out, seed=1).lane_samples(0, 1, 0)]
    assert a != b and a != c
    assert a == [x for x, _, _ in _stream(out, seed=1).lane_samples(0, 0, 0)]


def test_corrupt_shard_is_an_error_naming_it_not_padding(athal_shards, tmp_path):
    import shutil

    _, out, _, _ = athal_shards
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    m = read_manifest(bad)
    victim = bad / "train" / m["splits"]["train"]["shards"][1]["name"]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # truncated mid-gzip
    s = _stream(bad, micro_batch=4, shuffle=False)
    with pytest.raises(CorruptShard, match=rf"{victim.name}: corrupt or truncated.*manifest") as e:
        _read_epoch(s)
    assert isinstance(e.value, InputError) and "\n" not in str(e.value)
    assert any(victim.name in p for p in verify_shards(bad))


def test_tokenized_batches(athal_shards):
    from megadna.tokenizers import get_tokenizer

    _, out, cfg, _ = athal_shards
    tok = get_tokenizer("kmer6")
    s = WindowStream(out, StreamConfig(micro_batch=4), tokenizer=tok, max_tokens=cfg.window - 6 + 1 + 2)
    b = next(iter(make_loader(s)))
    assert b["input_ids"].shape == (4, cfg.window - 3) and b["input_ids"].dtype == torch.int64
    assert (b["input_ids"][:, 0] == 2).all() and (b["input_ids"][:, -1] == 3).all()


def test_reader_errors_name_the_directory(tmp_path):
    with pytest.raises(InputError, match="no manifest.json"):
        WindowStream(tmp_path, StreamConfig())
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_too_few_windows_for_the_global_batch_is_a_clear_error(athal_shards):
    _, out, _, _ = athal_shards
    with pytest.raises(InputError, match=r"athal/val: \d+ windows are fewer than the 4096 this set gives each global batch"):
        _stream(out, split="val", micro_batch=512, world_size=8, num_workers=4)


def test_webdataset_reads_our_shards_as_written(athal_shards):
    """The shards are standard ustar archives: webdataset's own pipeline decodes them unchanged."""
    import webdataset as wds

    _, out, _, m = athal_shards
    name = m["splits"]["train"]["shards"][0]["name"]
    ours = list(iter_shard(out / "train" / name, with_meta=True))
    theirs = list(wds.WebDataset(str(out / "train" / name), shardshuffle=False).decode())
    assert len(theirs) == len(ours) == m["splits"]["train"]["shards"][0]["samples"]
    for (seq, meta), sample in zip(ours, theirs):
        assert sample["seq.txt"] == seq.decode() and sample["meta.json"] == meta


def test_tar_member_matches_tarfile(tmp_path):
    import io
    import tarfile

    from megadna.data.shards import tar_member

    data = tar_member(b"w0000000001.seq.txt", b"ACGT" * 100) + tar_member(b"w0000000001.meta.json", b"{}") + bytes(1024)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = tf.getmembers()
        assert [mm.name for mm in members] == ["w0000000001.seq.txt", "w0000000001.meta.json"]
        assert tf.extractfile(members[0]).read() == b"ACGT" * 100 and members[1].size == 2


# ---------------------------------------------------------------- damage is named, never read silently


def _read_all(path, expect=None, start=0, stop=None):
    return list(iter_shard(path, start, stop, with_meta=True, expect=expect))


def _flip_offsets(size: int, seed: int = 0) -> list[int]:
    """Byte offsets to flip: the first and last 24 bytes (gzip header and trailer, tar end blocks) and a spread between."""
    rng = random.Random(seed)
    return sorted(set(range(min(24, size))) | set(range(max(0, size - 24), size)) | {rng.randrange(size) for _ in range(120)})


@pytest.mark.parametrize("compress", [True, False])
def test_every_single_bit_flip_is_named_or_harmless(tmp_path, compress):
    """A flipped bit anywhere in a shard: read with its manifest entry (as the trainer reads) it is always
    an error naming the shard; read without one, it is an error or, where the bit carries nothing (gzip
    mtime, a flag nothing reads), byte-identical data; never a short or wrong read. Uncompressed member
    data carries no checksum but the sha256: those flips are only checked with the manifest entry."""
    _, out, m = _small_set(tmp_path, compress=compress, samples_per_shard=40)
    entry = m["splits"]["train"]["shards"][0]
    path = out / "train" / entry["name"]
    good = path.read_bytes()
    want, want_part = _read_all(path), _read_all(path, start=3, stop=9)
    assert len(want) == entry["samples"] == 40
    data_extents = []
    if not compress:
        with tarfile.open(path) as tf:
            data_extents = [(mm.offset_data, mm.offset_data + mm.size) for mm in tf.getmembers()]
    caught = 0
    for offset in _flip_offsets(len(good)):
        bit = 1 << (offset % 8)
        path.write_bytes(good[:offset] + bytes([good[offset] ^ bit]) + good[offset + 1 :])
        with pytest.raises(CorruptShard, match=rf"{entry['name']}: corrupt or truncated"):
            _read_all(path, expect=entry, start=3, stop=9)
        in_tar_data = any(a <= offset < b for a, b in data_extents)
        for start, stop, ref in ((0, None, want), (3, 9, want_part)):
            try:
                got = _read_all(path, start=start, stop=stop)
            except CorruptShard as e:
                assert entry["name"] in str(e) and "\n" not in str(e)
                caught += 1
                continue
            if not in_tar_data:
                assert got == ref, f"flip at byte {offset} (bit {bit}) of {len(good)} read silently as different data"
    assert caught > 0
    path.write_bytes(good)
    assert _read_all(path, expect=entry) == want


def test_a_damaged_tar_header_is_not_the_end_of_the_archive(tmp_path):
    _, out, m = _small_set(tmp_path, compress=False, samples_per_shard=40)
    entry = m["splits"]["train"]["shards"][0]
    path = out / "train" / entry["name"]
    data = bytearray(path.read_bytes())
    data[20 * 1024 * 2 + 148] ^= 0x01  # the checksum of sample 20's first header
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptShard, match=r"at sample 20: tar header at byte 40960 .* fails its checksum"):
        _read_all(path)
    data[20 * 1024 * 2 + 148] ^= 0x01
    data[20 * 1024 * 2 : 20 * 1024 * 2 + 512] = bytes(512)  # a zeroed header mid-archive
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptShard, match=r"at sample 20: a zero block .* followed by data"):
        _read_all(path)
    path.write_bytes(bytes(data[: 20 * 1024 * 2]))  # cut cleanly after sample 19: no end-of-archive blocks
    with pytest.raises(CorruptShard, match=r"at sample 20: the tar stream ends early, at byte 40960 \(truncated\)"):
        _read_all(path)


def test_the_manifest_sample_count_is_checked(tmp_path):
    _, out, m = _small_set(tmp_path, samples_per_shard=40)
    entry = m["splits"]["train"]["shards"][0]
    path = out / "train" / entry["name"]
    for n in (entry["samples"] - 1, entry["samples"] + 1):
        with pytest.raises(CorruptShard, match=rf"holds {entry['samples']} samples, the manifest says {n}"):
            _read_all(path, expect=entry | {"samples": n})
    with pytest.raises(CorruptShard, match=r"holds 40 samples, samples up to 45 were asked for"):
        _read_all(path, start=30, stop=45)
    # The stream reads with the manifest's entries: a set whose manifest promises more than a shard holds.
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["splits"]["train"]["shards"][0]["samples"] += 8
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CorruptShard, match=rf"{entry['name']}.*holds 40 samples, the manifest says 48"):
        _read_epoch(_stream(out, micro_batch=4, shuffle=False))


@pytest.mark.parametrize("name", ["../../outside.tar", "/etc/passwd", "sub/shard.tar", "..", "", 7])
def test_manifest_shard_names_stay_inside_the_shard_directory(tmp_path, name):
    _, out, _ = _small_set(tmp_path)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["splits"]["train"]["shards"][0]["name"] = name
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"manifest\.json: splits\.train\.shards\[0\].*inside"):
        read_manifest(out)


def test_manifest_symlinked_shard_leading_out_is_refused(tmp_path):
    _, out, m = _small_set(tmp_path)
    name = m["splits"]["train"]["shards"][0]["name"]
    outside = tmp_path / "elsewhere.tar.gz"
    (out / "train" / name).rename(outside)
    (out / "train" / name).symlink_to(outside)
    with pytest.raises(InputError, match=rf"manifest\.json: splits\.train\.shards\[0\]: train/{name} resolves to .*elsewhere.*outside"):
        read_manifest(out)
    (out / "train" / name).unlink()
    outside.rename(out / "train" / name)
    assert read_manifest(out) == m
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["splits"]["../x"] = manifest["splits"]["val"]
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"manifest\.json: unknown split '\.\./x'"):
        read_manifest(out)
