"""Shared test settings."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Unit tests use tiny tensors, which gain nothing from threads; on a busy 2-core
    machine OpenMP threads wait on each other and a tiny conv step can take 100x longer."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
