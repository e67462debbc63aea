"""Helpers shared by the tests of the converters of other libraries' schedules (Keras, optax)."""
from __future__ import annotations

import torch

from warmup_fused.schedules import Recorded


def assert_bits_equal(got: torch.Tensor, expect: torch.Tensor, what: str, steps=None, ref: str = "reference") -> None:
    """float64 LRs [1, n] equal bit for bit; else the count and the first differing step."""
    assert got.shape == expect.shape, (what, got.shape, expect.shape)
    diff = (got.view(torch.int64) != expect.view(torch.int64)).nonzero()
    if len(diff):
        t = int(diff[0][1])
        step = t if steps is None else steps[t]
        raise AssertionError(f"{what}: {len(diff)} LRs differ; first at step {step}: got {float(got[0, t])!r}, "
                             f"{ref} {float(expect[0, t])!r}")


def recorded_steps(s) -> int:
    return sum(len(body.values[0]) for group in s._phases for _, body in group if isinstance(body, Recorded))
