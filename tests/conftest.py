"""Shared fixtures: `device` runs a test on CPU and, when a GPU is present, on CUDA."""
import pytest
import torch

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, CUDA])])
def device(request):
    return request.param
