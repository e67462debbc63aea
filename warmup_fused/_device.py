"""Every tensor a step hands to the kernels on one device, allocated once and then only written in place.

A captured CUDA graph replays kernels with the addresses they had at capture, so nothing here is ever replaced
after a capture: hyperparameter edits, ``last_lr()``, ``state_dict()``, ``set_schedule`` with a program that
fits, ``add_param_group`` within capacity and ``load_state_dict`` all write into these tensors. What truly needs a
larger buffer after a capture raises, saying to re-capture. The invariant lives here and in tests/test_graph_safety.py.
"""
from __future__ import annotations

import math
import struct

import torch

from ._ops import LAYOUT, scratch_words


def _capacity(n: int) -> int:
    return max(8, 1 << max(0, n - 1).bit_length())


class DeviceBuffers:
    """Program, hyperparameter table, schedule counter, scratch (last_lr) and per-param step slots of one device."""

    def __init__(self, device: torch.device, cols: int, groups: int, ints: torch.Tensor, vals: torch.Tensor,
                 step: int):
        self.device = device
        self.cols = cols
        self.captured = False  # set once a step ran inside a CUDA graph capture
        self.counter = torch.full((), step, dtype=torch.int64, device=device)
        self.groups = 0
        self.rows: list = []  # host mirror of the hparams rows (None: not written yet)
        self.hparams = torch.zeros((_capacity(groups), cols), dtype=torch.float64, device=device)
        self.scratch = torch.full((scratch_words(self.hparams.shape[0]),), math.nan, dtype=torch.float64,
                                  device=device)
        self.ints = torch.zeros(0, dtype=torch.int64, device=device)
        self.vals = torch.zeros(0, dtype=torch.float64, device=device)
        self._pools: list[torch.Tensor] = []
        self._free = 0  # next free slot in the last pool
        self.set_groups(groups)
        self.set_program(ints, vals)

    # ------------------------------------------------------------------------------------------- capture state
    def capturing(self) -> bool:
        if self.device.type != "cuda":
            return False
        with torch.cuda.device(self.device):
            return torch.cuda.is_current_stream_capturing()

    def _replace(self, what: str) -> None:
        """Called before a buffer would be reallocated."""
        if self.captured or self.capturing():
            raise RuntimeError(
                f"{what} needs a larger device buffer, but this optimizer's step was captured in a CUDA graph that "
                "reads the current one: make the change, then capture the graph again")

    def check_not_capturing(self, what: str) -> None:
        if self.capturing():
            raise RuntimeError(f"{what} while a CUDA graph is being captured: the value would be frozen into the "
                               "graph. Make the change outside the captured region.")

    def check_room(self, groups: int, what: str) -> None:
        """Raises (changing nothing) if `groups` param groups would need new buffers after a capture."""
        if groups > self.hparams.shape[0]:
            self._replace(what)
        self.check_not_capturing(what)

    def check_program_room(self, ints: torch.Tensor, vals: torch.Tensor) -> None:
        if ints.numel() > self.ints.numel() or vals.numel() > self.vals.numel():
            self._replace("set_schedule")
        self.check_not_capturing("set_schedule")

    # ---------------------------------------------------------------------------------------------- groups
    def set_groups(self, groups: int) -> None:
        """Makes room for `groups` param groups (rows keep their values)."""
        if groups > self.hparams.shape[0]:
            self._replace("add_param_group")
            cap = _capacity(groups)
            hparams = torch.zeros((cap, self.cols), dtype=torch.float64, device=self.device)
            hparams[: self.groups].copy_(self.hparams[: self.groups])
            self.hparams = hparams
            self.scratch = torch.full((scratch_words(cap),), math.nan, dtype=torch.float64, device=self.device)
        self.rows += [None] * (groups - len(self.rows))
        self.groups = groups

    def hparams_view(self) -> torch.Tensor:
        return self.hparams[: self.groups]

    def last_lr(self) -> torch.Tensor:
        start = LAYOUT["scratch_lr"]
        return self.scratch[start: start + self.groups]

    def write_row(self, g: int, row: list) -> None:
        """Writes the cells of row g that differ from what the device holds (a host mirror says which), in place
        and without a host-device sync (one fill per cell on CUDA)."""
        old = self.rows[g]
        for col, value in enumerate(row):
            if old is None or struct.pack("<d", old[col]) != struct.pack("<d", value):
                self.hparams[g, col].fill_(value)
        self.rows[g] = list(row)

    # --------------------------------------------------------------------------------------------- program
    def set_program(self, ints: torch.Tensor, vals: torch.Tensor) -> None:
        """Copies a (validated, CPU) program into the device buffers, in place when it fits."""
        if ints.numel() > self.ints.numel() or vals.numel() > self.vals.numel():
            if self.ints.numel():
                self._replace("set_schedule")
            # Headroom (at least 4096 words each, or twice the program) lets later schedules and added groups
            # fit after a capture.
            self.ints = torch.zeros(max(4096, 2 * _capacity(ints.numel())), dtype=torch.int64, device=self.device)
            self.vals = torch.zeros(max(4096, 2 * _capacity(vals.numel())), dtype=torch.float64, device=self.device)
        self.check_not_capturing("set_schedule")
        self.ints[: ints.numel()].copy_(ints)
        self.vals[: vals.numel()].copy_(vals)

    # ---------------------------------------------------------------------------------------------- counter
    def set_counter(self, step: int) -> None:
        self.check_not_capturing("setting the schedule step")
        self.counter.fill_(step)

    # ------------------------------------------------------------------------------------------- step slots
    def reserve(self, n: int) -> None:
        """Makes sure `n` more step slots exist (allocated and zeroed now, outside any capture)."""
        have = (self._pools[-1].numel() - self._free) if self._pools else 0
        if n > have:
            if self.capturing():
                raise RuntimeError("a new param's step counter cannot be allocated while a CUDA graph is being "
                                   "captured: construct the optimizer (or add_param_group) with every param first")
            self._pools.append(torch.zeros(max(n, 64), dtype=torch.float32, device=self.device))
            self._free = 0

    def slot(self) -> torch.Tensor:
        """A 0-d float32 counter at 0, a view of a pool allocated earlier (no allocation or kernel here)."""
        self.reserve(1)
        out = self._pools[-1][self._free]
        self._free += 1
        return out
