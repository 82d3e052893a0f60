import pytest
import torch

from minillm.data import load_shakespeare


@pytest.fixture(scope="session")
def corpus() -> str:
    return load_shakespeare()


@pytest.fixture(autouse=True)
def _one_thread():
    """Small models run fastest on one thread, and pytest runs one test at a time anyway."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
