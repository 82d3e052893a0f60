import pytest

from minillm.data import load_shakespeare


@pytest.fixture(scope="session")
def corpus() -> str:
    return load_shakespeare()
