import os

import pytest

from megadna.paths import shared_data_dir

# Tests run on CPU with 2 cores: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one")
    config.addinivalue_line("markers", "slow: multi-process DeepSpeed runs (still part of make test)")


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


@pytest.fixture(scope="session")
def shared_data():
    """Path to ../shared/data. In CI (.ci/run sets MEGADNA_SHARED_DATA) its absence is a failure."""
    d = shared_data_dir()
    if d is None or not d.is_dir():
        if os.environ.get("CI"):
            pytest.fail("MEGADNA_SHARED_DATA is not set or missing in CI")
        pytest.skip("real shared data not available (set MEGADNA_SHARED_DATA)")
    return d
