import os

import pytest

from megadna.paths import shared_data_dir

# Tests run on CPU with 2 cores: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one")
    config.addinivalue_line("markers", "slow: multi-process DeepSpeed runs (still part of make test)")


@pytest.fixture(scope="session", autouse=True)
def no_leftover_shm_buffers():
    """Ranks the tests kill on purpose never unlink DeepSpeed's 66 MB /dev/shm allreduce buffers (a
    clean run does, see megadna.train.distributed.release_shm_names): remove those this session made,
    or a day of test runs fills the machine's memory. Only this user's, and only those that appeared during
    the session (a run of the same user started by hand meanwhile would lose its names too)."""
    from megadna.train.distributed import SHM_DIR

    pattern = f"deepspeed_allreduce_buffer_{os.getuid()}_*"  # this user's only
    before = set(SHM_DIR.glob(pattern))
    yield
    for path in set(SHM_DIR.glob(pattern)) - before:
        path.unlink(missing_ok=True)


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine two threads spin."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def single_rank(monkeypatch):
    """One rank in this process: what the launcher would set, for tests that need no second rank."""
    import torch
    from launch import free_port

    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(k, os.environ.get(k, v) if torch.distributed.is_initialized() else v)
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def shared_data():
    """Path to ../shared/data. In CI (.ci/run sets MEGADNA_SHARED_DATA) its absence is a failure."""
    d = shared_data_dir()
    if d is None or not d.is_dir():
        if os.environ.get("CI"):
            pytest.fail("MEGADNA_SHARED_DATA is not set or missing in CI")
        pytest.skip("real shared data not available (set MEGADNA_SHARED_DATA)")
    return d


@pytest.fixture(scope="session")
def real_shards(shared_data, tmp_path_factory):
    """Shards of the real C. elegans + D. melanogaster excerpts (510-bp windows), shared by the
    training, multi-node and ablation tests."""
    from megadna.data.genome import WindowConfig
    from megadna.data.shard_writer import ShardConfig, write_shards

    out = tmp_path_factory.mktemp("real_shards") / "shards"
    fastas = [shared_data / "genomes" / "C.elegans.fa.gz", shared_data / "genomes" / "D.melanogaster.fa.gz"]
    write_shards(fastas, out, WindowConfig(window=510, stride=255, val_fraction=0.05), ShardConfig(samples_per_shard=500))
    return out


@pytest.fixture
def altered_shards(tmp_path):
    """An uncompressed shard set whose first train shard has one base of one window changed: still a
    well-formed tar with the right sample count, so only the manifest's size and sha256 can tell.
    Returns (shard_dir, the altered shard's file name)."""
    import tarfile

    from megadna.data.genome import WindowConfig
    from megadna.data.shard_writer import ShardConfig, write_shards
    from megadna.data.synthetic import write_synthetic_fasta

    fasta = write_synthetic_fasta(tmp_path / "g.fa", n_contigs=2, length=20_000, seed=1)
    out = tmp_path / "shards"
    write_shards([fasta], out, WindowConfig(window=200, stride=200, val_fraction=0.2), ShardConfig(samples_per_shard=40, compress=False))
    victim = sorted((out / "train").glob("*.tar"))[0]
    with tarfile.open(victim) as tar:
        at = next(m for m in tar.getmembers() if m.name.endswith(".seq.txt")).offset_data + 10
    data = bytearray(victim.read_bytes())
    data[at] = ord("C") if data[at] != ord("C") else ord("G")
    victim.write_bytes(bytes(data))
    return out, victim.name
