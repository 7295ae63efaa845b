"""Shared test settings."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread(request):
    """Unit tests use tiny tensors, which gain nothing from threads; on a busy 2-core
    machine OpenMP threads wait on each other and a tiny conv step can take 100x longer.

    A test marked ``all_threads`` trains for real (a stored result's check run) and keeps
    torch's own thread count: on two cores that halves its time.
    """
    if request.node.get_closest_marker("all_threads"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
