import os

import pytest
import torch

# Two cores on CI: keep torch from oversubscribing them when pytest runs several things.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def isolated_soraflow_cache(tmp_path_factory, monkeypatch):
    """Generated tiny text encoders and embeddings go to this session's temp dir, not the user's cache."""
    monkeypatch.setenv("SORAFLOW_CACHE", str(tmp_path_factory.getbasetemp() / "soraflow-cache"))
