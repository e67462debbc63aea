"""Shared fixtures: `device` runs a test on CPU and, when a GPU is present, on CUDA; `one_thread` (a module's
`pytestmark = pytest.mark.usefixtures("one_thread")`) runs its tests with one intra-op thread."""
import pytest
import torch

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, CUDA])])
def device(request):
    return request.param


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: torch's fused CPU kernels parallelise every tensor, which only costs time on 2 busy cores.
    Results do not depend on the thread count (each element's arithmetic is fixed)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
