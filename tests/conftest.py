import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run on one torch thread: on a 2-core machine a second intra-op
    thread mostly waits (measured 2-70x slower when other processes are busy)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
