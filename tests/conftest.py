"""Shared fixtures: tiny CLOC configs so each test runs in seconds on two CPU cores."""

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """Benchmark smoke runs and rank simulations change the thread count; every test gets it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_config():
    """A CLOC config smaller than the ``tiny`` preset: 32 px images, 8 px patches, width 32."""
    from tests.builders import tiny_cloc_config

    return tiny_cloc_config()


def random_batch(config, batch_size=4, num_regions=3, text_len=8, seed=0):
    """A model batch with random pixels/tokens, EOS-terminated texts and valid random boxes."""
    from cloc_mllm.training.benchmark import synthetic_batch

    return synthetic_batch(config, batch_size, num_regions, text_len, text_len, seed=seed)
