"""Distributed training: DDP, FSDP2 (``fully_shard``: DTensor params), tensor-parallel DTensors, and distributed
checkpoints (``torch.distributed.checkpoint``), in 2-process groups: gloo on CPU, NCCL when two GPUs are present.

Every comparison is ``torch.equal`` at every step. FSDP2 runs are compared with DDP runs of torch's fused
optimizers plus the torch scheduler: with 2 ranks both average grads identically (a / 2 + b / 2 == (a + b) / 2
exactly), so sharding must change no bit. Tensor-parallel runs are compared with torch's fused optimizers on the
full tensors (the update is elementwise). Checkpoint round trips resume bit-identically to an uninterrupted run.

One caveat on CPU: torch's fused CPU kernels (and ours, which mirror them) run a tensor's last numel % 8 float32
(% 16 bfloat16) elements through a scalar tail that rounds differently from the vector loop, so an element's bits
depend on where it falls in the tensor the kernel is given (torch's fused AdamW under FSDP2 differs from itself
under DDP on ragged shapes). Comparisons of shards with full tensors therefore use ALIGNED shapes: rank 0's shard
is a multiple of 16 elements, so every element takes the same loop as in the full tensor (the full tensors still
have ragged tails). Comparisons shard against shard (ours vs torch's fused AdamW, both under FSDP2) use RAGGED
shapes, with uneven and empty shards. On CUDA every element takes the same path.

The workers are started once per backend (a module fixture) and run the jobs the tests send them; a worker's
exception comes back with its traceback and fails the test, and every wait has a timeout.
"""
from __future__ import annotations

import copy
import datetime
import io
import os
import queue
import socket
import time
import traceback
import warnings

import pytest
import torch
import torch.distributed as dist
from torch.optim import lr_scheduler as lrs

import warmup_fused
from warmup_fused import from_torch

JOB_TIMEOUT = 120  # seconds a job may take on every rank
STEPS = 12
CASES = {  # weight decay everywhere, so a dropped hyperparameter shows
    "AdamW": ("AdamW", dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)),
    "Adam-amsgrad": ("Adam", dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.01, amsgrad=True)),
    "SGD-nesterov": ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    "SGD-plain": ("SGD", dict(lr=0.1, weight_decay=1e-3)),  # no per-param state at all
}


# ------------------------------------------------------------------------------------------------- workers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(rank: int, world: int, port: int, backend: str, jobs, results) -> None:
    """A worker: joins the process group, then runs jobs (a function of this module by name) until told to stop."""
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    try:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=JOB_TIMEOUT))
    except Exception:
        results.put((rank, traceback.format_exc(), None))
        return
    results.put((rank, None, "ready"))
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    while True:
        item = jobs.get()
        if item is None:
            break
        name, args = item
        try:
            results.put((rank, None, globals()[name](rank, world, device, *args)))
        except Exception:
            results.put((rank, traceback.format_exc(), None))
    dist.destroy_process_group()


class _Workers:
    """`world` spawned processes in one process group, running the jobs they are sent."""

    def __init__(self, backend: str, world: int):
        ctx = torch.multiprocessing.get_context("spawn")
        for attempt in range(3):  # the free port may be taken before rank 0 binds it (other tests, gloo's sockets)
            port = _free_port()
            self.world = world
            self.jobs = [ctx.Queue() for _ in range(world)]
            self.results = ctx.Queue()
            self.procs = [ctx.Process(target=_serve, args=(r, world, port, backend, self.jobs[r], self.results),
                                      daemon=True) for r in range(world)]
            for p in self.procs:
                p.start()
            try:
                self._answers("starting the process group")
                return
            except _PortTaken:
                self.close()
        pytest.fail("could not start the process group: every free port found was taken")

    def run(self, job, *args):
        """Runs job(rank, world, device, *args) on every rank; returns the ranks' results or fails the test."""
        for q in self.jobs:
            q.put((job.__name__, args))
        return self._answers(f"{job.__name__}{args}")

    def _answers(self, what: str) -> list:
        """Every rank's answer, or the test fails (at once when a rank raises or dies, else after JOB_TIMEOUT)."""
        out, deadline = {}, time.monotonic() + JOB_TIMEOUT
        while len(out) < self.world:
            try:
                rank, error, value = self.results.get(timeout=1)
            except queue.Empty:
                dead = [p.exitcode for p in self.procs if not p.is_alive()]
                if dead or time.monotonic() > deadline:
                    self.close()
                    pytest.fail(f"{what}: ranks {sorted(out)} answered; "
                                + (f"a worker died (exit codes {dead})" if dead else f"no answer in {JOB_TIMEOUT} s"))
                continue
            if error is not None:
                if not out and "address already in use" in error.lower():
                    raise _PortTaken
                self.close()  # the other ranks may wait in a collective forever: the group is not reused
                pytest.fail(f"{what} failed on rank {rank}:\n{error}")
            out[rank] = value
        return [out[r] for r in range(self.world)]

    @property
    def alive(self) -> bool:
        return all(p.is_alive() for p in self.procs)

    def close(self) -> None:
        for q in self.jobs:
            q.put(None)
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(timeout=10)


class _PortTaken(Exception):
    pass


def _gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


_pools: dict = {}


@pytest.fixture(scope="module", params=["gloo", pytest.param("nccl", marks=[
    pytest.mark.cuda, pytest.mark.skipif(_gpus() < 2, reason="NCCL runs need two GPUs (one rank per GPU)")])])
def workers(request):
    """Two ranks: gloo on CPU, or NCCL on two GPUs. A group that failed a job is replaced for the next test."""
    backend = request.param

    def get() -> _Workers:
        pool = _pools.get(backend)
        if pool is None or not pool.alive:
            pool = _pools[backend] = _Workers(backend, 2)
        return pool

    yield get
    pool = _pools.pop(backend, None)
    if pool is not None:
        pool.close()


# ---------------------------------------------------------------------------------------- models and runs
ALIGNED = (31, 31)  # rank 0's Shard(0) of every param is a multiple of 16 elements; no full tensor is
RAGGED = (37, 5)  # uneven shards of any length


class MLP(torch.nn.Module):
    """No param a multiple of the vector width; l3 has one row, so FSDP2 leaves rank 1 empty shards of it."""

    def __init__(self, widths=ALIGNED):
        super().__init__()
        self.l1 = torch.nn.Linear(13, widths[0])
        self.norm = torch.nn.LayerNorm(widths[0])
        self.l2 = torch.nn.Linear(widths[0], widths[1])
        self.l3 = torch.nn.Linear(widths[1], 1)

    def forward(self, x):
        return self.l3(torch.tanh(self.l2(torch.tanh(self.norm(self.l1(x))))))


def _groups(model: MLP, lr: float) -> list:
    """Two param groups with different LRs."""
    return [{"params": [*model.l1.parameters(), *model.norm.parameters()]},
            {"params": [*model.l2.parameters(), *model.l3.parameters()], "lr": lr * 0.3}]


def _warmup_cosine(opt):
    return lrs.SequentialLR(opt, [lrs.LinearLR(opt, 0.01, 1.0, 4), lrs.CosineAnnealingLR(opt, STEPS - 4, 1e-5)],
                            milestones=[4])


def _torch_opt(case: str, model: MLP):
    name, kw = CASES[case]
    return getattr(torch.optim, name)(_groups(model, kw["lr"]), fused=True, **kw)


def _ours(case: str, model: MLP, **extra):
    """Our optimizer on the device schedule converted from the torch scheduler the reference runs use."""
    name, kw = CASES[case]
    schedule = from_torch(_warmup_cosine(_torch_opt(case, MLP())), horizon=STEPS + 1)
    return getattr(warmup_fused, name)(_groups(model, kw["lr"]), schedule=schedule, **kw, **extra)


def _model(device, seed: int = 0, widths=ALIGNED) -> MLP:
    torch.manual_seed(seed)
    return MLP(widths).to(device)


_meshes: dict = {}


def _mesh(device):
    """The 1-D mesh of every rank on this device type (given explicitly: FSDP2's default is CUDA whenever there is
    a GPU, also under gloo)."""
    from torch.distributed.device_mesh import init_device_mesh

    if device.type not in _meshes:
        _meshes[device.type] = init_device_mesh(device.type, (dist.get_world_size(),))
    return _meshes[device.type]


def _fsdp(model: MLP) -> MLP:
    from torch.distributed.fsdp import fully_shard

    mesh = _mesh(next(model.parameters()).device)
    for m in (model.l1, model.norm, model.l2, model.l3):
        fully_shard(m, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _ddp(model: MLP, device):
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _batch(rank: int, t: int, device, dtype=torch.float32):
    """Each rank its own fresh batch at every step."""
    g = torch.Generator().manual_seed(1000 * t + rank)
    return torch.randn(8, 13, generator=g).to(device, dtype), torch.randn(8, 1, generator=g).to(device, dtype)


def _train_step(model, opt, rank: int, t: int, device) -> None:
    x, y = _batch(rank, t, device, next(model.parameters()).dtype)
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _assert_same(model, opt, ref_model, ref_opt, where: str) -> None:
    """Params and every state of ours (gathered from the shards) equal to the reference's."""
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        assert torch.equal(_full(p.detach()), q.detach()), f"{where}: param {name}"
        mine, ref = opt.state[p], ref_opt.state[q]
        assert set(mine) == set(ref), f"{where}: {name} state keys {sorted(mine)} vs {sorted(ref)}"
        for k, v in ref.items():
            # states laid out as their param (DTensors with its placements); 'step' a plain scalar, as torch's
            placements = getattr(p, "placements", None) if k != "step" else None
            assert getattr(mine[k], "placements", None) == placements, f"{where}: {name} state {k} placements"
            assert mine[k].dtype == v.dtype and torch.equal(_full(mine[k]), _full(v)), f"{where}: {name} state {k}"


def _shown_lrs(opt) -> list:
    return [float(g["lr"]) for g in opt.param_groups]


# ----------------------------------------------------------------------------------------------- jobs
def job_fsdp2_vs_ddp_torch_fused(rank, world, device, case, state_dict_first=False):
    """FSDP2 + ours + from_torch(scheduler) against DDP + torch fused + the scheduler, at every step.
    state_dict_first: get_optimizer_state_dict of both fresh optimizers first, which DCP steps once at lr 0 to
    create their states: ours as torch's, and the counter and the groups' schedule stay where they were."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    base = _model(device)
    ref_model = _ddp(copy.deepcopy(base), device)
    model = _fsdp(copy.deepcopy(base))
    ref = _torch_opt(case, ref_model.module)
    sched = _warmup_cosine(ref)
    ours = _ours(case, model)
    if state_dict_first:
        shown = _shown_lrs(ours)
        get_optimizer_state_dict(ref_model, ref)
        sd = get_optimizer_state_dict(model, ours)
        assert int(ours.sched_step()) == 0 and _shown_lrs(ours) == shown
        assert [g["warmup_fused"]["sched_step"] for g in sd["param_groups"]] == [0, 0]
    for t in range(STEPS):
        used = _shown_lrs(ref)
        assert _shown_lrs(ours) == used, f"step {t}: param_groups show {_shown_lrs(ours)}, torch's {used}"
        _train_step(ref_model, ref, rank, t, device)
        _train_step(model, ours, rank, t, device)
        sched.step()
        assert ours.last_lr().tolist() == used, f"step {t}: LRs used"
        _assert_same(model, ours, ref_model.module, ref, f"rank {rank} step {t}")



def job_fsdp2_vs_torch_fused_adamw_fsdp2(rank, world, device, variant):
    """Ours and torch's fused AdamW on twin FSDP2 models with ragged (uneven, empty) shards: every local shard and
    state equal at every step; variants: clip_grad_norm_ (ours: max_grad_norm), a GradScaler."""
    base = _model(device, widths=RAGGED)
    ref_model, model = _fsdp(copy.deepcopy(base)), _fsdp(copy.deepcopy(base))
    name, kw = CASES["AdamW"]
    ref = torch.optim.AdamW(_groups(ref_model, kw["lr"]), fused=True, **kw)
    ours = warmup_fused.AdamW(_groups(model, kw["lr"]), max_grad_norm=0.05 if variant == "clip" else None, **kw)
    scalers = [torch.amp.GradScaler(device.type, init_scale=2.0**10) for _ in range(2)] if variant == "scaler" else None
    for t in range(STEPS):
        x, y = _batch(rank, t, device)
        for i, (m, o) in enumerate(((ref_model, ref), (model, ours))):
            o.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(m(x), y)
            if scalers:
                scalers[i].scale(loss).backward()
                scalers[i].step(o)
                scalers[i].update()
                continue
            loss.backward()
            if variant == "clip" and o is ref:
                norm = torch.nn.utils.clip_grad_norm_(m.parameters(), 0.05, foreach=True)
            o.step()
        if variant == "clip":
            assert torch.equal(ours.last_grad_norm(), norm.full_tensor()), f"step {t}: grad norm"
        for (pname, p), q in zip(model.named_parameters(), ref_model.parameters()):
            assert p.placements == q.placements and torch.equal(p.to_local(), q.to_local()), f"step {t}: {pname}"
            for k, v in ref.state[q].items():
                mine = ours.state[p][k]
                assert torch.equal(_local(mine), _local(v)), f"rank {rank} step {t}: {pname} state {k}"
    assert int(ours.sched_step()) == STEPS


def job_master_weights_fsdp2_vs_ddp(rank, world, device, case):
    """bfloat16 params with float32 master weights: the masters are DTensors placed as their params, and FSDP2
    trains bit-identically to DDP (ours in both)."""
    base = _model(device).to(torch.bfloat16)
    ref_model, model = _ddp(copy.deepcopy(base), device), _fsdp(copy.deepcopy(base))
    ref, ours = _ours(case, ref_model.module, master_weights=True), _ours(case, model, master_weights=True)
    for t in range(STEPS):
        _train_step(ref_model, ref, rank, t, device)
        _train_step(model, ours, rank, t, device)
        _assert_same(model, ours, ref_model.module, ref, f"rank {rank} step {t}")
    master = ours.state[model.l1.weight]["master_weight"]
    assert master.dtype == torch.float32 and master.placements == model.l1.weight.placements


def job_tensor_parallel(rank, world, device, case):
    """DTensor params placed by hand on a 1-D mesh: Shard(0) and Replicate ones (whose grads come out Partial or
    Shard(1): the step redistributes them first, as torch's DTensor dispatch does) and a plain tensor in the same
    group. Checked against torch's fused optimizer on the full tensors, fed the reduced grads."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = _mesh(device)
    torch.manual_seed(1)
    full = [torch.randn(13, 13), torch.randn(15, 13), torch.randn(15), torch.randn(3, 15), torch.randn(3)]
    placements = [[Replicate()], [Shard(0)], [Shard(0)], [Replicate()], None]  # Shard(0)s: ALIGNED rows
    # clones: no storage shared between params and refs (a Replicate DTensor may hold the tensor it was given)
    params = [(distribute_tensor(f.clone().to(device), mesh, pl) if pl else f.clone().to(device)).requires_grad_()
              for f, pl in zip(full, placements)]
    refs = [f.clone().to(device).requires_grad_() for f in full]
    assert not any(r.untyped_storage().data_ptr() == _local(p).untyped_storage().data_ptr()
                   for p, r in zip(params, refs))
    name, kw = CASES[case]

    def groups(ps):
        return [{"params": [ps[0], ps[1], ps[4]]}, {"params": [ps[2], ps[3]], "lr": kw["lr"] * 0.3}]

    ref = getattr(torch.optim, name)(groups(refs), fused=True, **kw)
    sched = _warmup_cosine(ref)
    ours = getattr(warmup_fused, name)(groups(params), schedule=from_torch(_warmup_cosine(getattr(torch.optim, name)(
        groups([torch.zeros(1, requires_grad=True) for _ in range(5)]), **kw)), horizon=STEPS + 1), **kw)
    for t in range(STEPS):
        g = torch.Generator().manual_seed(t)  # the same batch on every rank, sharded by rows
        x = distribute_tensor(torch.randn(8, 13, generator=g).to(device), mesh, [Shard(0)])
        y = torch.randn(8, 3, generator=g).to(device)
        w0, w1, b1, w2, b2 = params
        out = (torch.tanh(x @ w0 @ w1.T + b1) @ w2.T).full_tensor() + b2
        ours.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(out, y).backward()
        if t == 0:
            assert w0.grad.placements[0].is_partial() and w2.grad.placements[0].is_shard(1), "nothing redistributed"
        for p, r in zip(params, refs):
            r.grad = _full(p.grad).clone()
        ours.step()
        ref.step()
        sched.step()
        for i, (p, r) in enumerate(zip(params, refs)):
            assert torch.equal(_full(p.detach()), r.detach()), f"rank {rank} step {t}: param {i}"
            for k, v in ref.state[r].items():
                assert torch.equal(_full(ours.state[p][k]), v), f"rank {rank} step {t}: param {i} state {k}"


ROUTES = ["memory", "memory-flatten", "memory-full", "dcp", "dcp-flatten"]
SAVE_AT = 5


def _options(route: str, load: bool):
    """get/set_*_state_dict options of a route: sharded (DCP's default), flattened, or full on rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    if route.endswith("full"):
        return StateDictOptions(full_state_dict=True, cpu_offload=not load, broadcast_from_rank0=load)
    return StateDictOptions(flatten_optimizer_state_dict=route.endswith("flatten"))


def job_checkpoint_round_trips(rank, world, device, case, directory):
    """An FSDP2 run checkpointed mid-run by get_model/optimizer_state_dict (in memory, or through
    torch.distributed.checkpoint.save / load), resumed by a fresh model (other weights) and optimizer (its
    template for dcp.load is its own get_*_state_dict): every later step bit-identical to the uninterrupted run."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    def fresh(seed):
        model = _fsdp(_model(device, seed))
        return model, _ours(case, model)

    def snapshot(model, opt):
        return ([_local(p.detach()).clone() for p in model.parameters()], opt.last_lr().tolist(),
                [{k: _local(v).clone() for k, v in opt.state[p].items()} for p in model.parameters()])

    model, opt = fresh(0)
    expected = []
    for t in range(STEPS):
        _train_step(model, opt, rank, t, device)
        expected.append(snapshot(model, opt))
    # DCP loads no full state_dict into an optimizer without state tensors (torch's SGD without momentum fails alike:
    # "Expected device to be set")
    for route in [r for r in ROUTES if not (case == "SGD-plain" and r.endswith("full"))]:
        model, opt = fresh(0)
        for t in range(SAVE_AT):
            _train_step(model, opt, rank, t, device)
        options = _options(route, load=False)
        saved = {"model": get_model_state_dict(model, options=options),
                 "optim": get_optimizer_state_dict(model, opt, options=options)}
        path = os.path.join(directory, f"{case}-{route}")
        if route.startswith("dcp"):
            dcp.save(saved, checkpoint_id=path)
        model, opt = fresh(1)
        if route.startswith("dcp"):
            saved = {"model": get_model_state_dict(model, options=options),
                     "optim": get_optimizer_state_dict(model, opt, options=options)}
            dcp.load(saved, checkpoint_id=path)
        options = _options(route, load=True)
        set_model_state_dict(model, saved["model"], options=options)
        set_optimizer_state_dict(model, opt, saved["optim"], options=options)
        assert int(opt.sched_step()) == SAVE_AT, f"{route}: counter {int(opt.sched_step())}"
        for t in range(SAVE_AT, STEPS):
            _train_step(model, opt, rank, t, device)
            params, lrs, states = snapshot(model, opt)
            assert lrs == expected[t][1], f"{route} step {t}: LRs {lrs} vs {expected[t][1]}"
            for i, (p, e) in enumerate(zip(params, expected[t][0])):
                assert torch.equal(p, e), f"rank {rank} {route} step {t}: param {i}"
        for i, (st, e) in enumerate(zip(states, expected[-1][2])):
            assert set(st) == set(e) and all(torch.equal(st[k], e[k]) for k in e), f"{route}: state {i}"


def job_counters_stay_in_step(rank, world, device):
    """DDP + ours + a GradScaler: every rank's counter advances by one at every step(), including steps the scaler
    skips (inf grads on every rank: step 3; on rank 0 only: step 6) and a step where rank 1 has no grads at all (8);
    the LRs stay equal across ranks, and per-param steps count only the updates each rank made."""
    model = _ddp(_model(device), device)
    opt = _ours("Adam-amsgrad", model.module)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**8)
    updates = 0
    for t in range(STEPS):
        x, y = _batch(rank, t, device)
        if t == 3 and rank == 0:
            x[0, 0] = float("inf")  # DDP averages it into every rank's grads
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        if t == 8:  # no scaler at this step: GradScaler.update() refuses a rank without grads
            loss.backward()
            if rank == 1:
                opt.zero_grad(set_to_none=True)
            opt.step()
        else:
            scaler.scale(loss).backward()
            if t == 6 and rank == 0:
                next(model.parameters()).grad[0, 0] = float("inf")  # after DDP's reduction: this rank only
            scaler.step(opt)
            scaler.update()
        updates += not (t == 3 or (t == 6 and rank == 0) or (t == 8 and rank == 1))
        counters = [torch.zeros((), dtype=torch.int64, device=device) for _ in range(world)]
        dist.all_gather(counters, opt.sched_step())
        assert [int(c) for c in counters] == [t + 1] * world, f"step {t}: counters {counters}"
        lrs = [torch.zeros_like(opt.last_lr()) for _ in range(world)]
        dist.all_gather(lrs, opt.last_lr())
        assert all(torch.equal(v, lrs[0]) for v in lrs), f"step {t}: LRs {lrs}"
        steps = {float(opt.state[p]["step"]) for p in model.parameters()}
        assert steps == {float(updates)}, f"rank {rank} step {t}: per-param steps {steps}, {updates} updates"


def job_load_checks_sharded_states_first(rank, world, device):
    """load_state_dict refuses, before changing anything, a plain (full) state for a DTensor param, and a state
    at step 0 that is not zero, even where only another rank's shard is not (every rank refuses alike)."""
    model = _fsdp(_model(device, widths=RAGGED))
    opt = _ours("AdamW", model)
    _train_step(model, opt, rank, 0, device)
    params = list(model.parameters())  # l3.weight (index 6): one row, all on rank 0
    before = [{k: _local(v).clone() for k, v in opt.state[p].items()} for p in params]
    nonzero = torch.zeros_like(opt.state[params[6]]["exp_avg"])
    if rank == 0:
        nonzero.to_local().fill_(1.0)
    for i, changes, match in ((0, dict(exp_avg=opt.state[params[0]]["exp_avg"].full_tensor()), "laid out as"),
                              (6, dict(step=torch.tensor(0.0), exp_avg=nonzero), "step is 0 but exp_avg")):
        sd = opt.state_dict()
        sd["state"] = {j: {**st, **changes} if j == i else st for j, st in sd["state"].items()}
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(sd)
        assert int(opt.sched_step()) == 1
        for p, st in zip(params, before):
            assert all(torch.equal(_local(opt.state[p][k]), v) for k, v in st.items())

# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("case", CASES)
def test_fsdp2_matches_ddp_with_torch_fused(workers, case):
    workers().run(job_fsdp2_vs_ddp_torch_fused, case)


@pytest.mark.parametrize("variant", ["plain", "clip", "scaler"])
def test_fsdp2_matches_torch_fused_adamw_under_fsdp2(workers, variant):
    workers().run(job_fsdp2_vs_torch_fused_adamw_fsdp2, variant)


@pytest.mark.parametrize("case", ["AdamW", "SGD-nesterov"])
def test_fsdp2_master_weights_match_ddp(workers, case):
    workers().run(job_master_weights_fsdp2_vs_ddp, case)


@pytest.mark.parametrize("case", ["AdamW", "Adam-amsgrad", "SGD-nesterov"])
def test_tensor_parallel_dtensors_and_a_plain_param(workers, case):
    workers().run(job_tensor_parallel, case)


@pytest.mark.parametrize("case", ["AdamW", "SGD-plain"])
def test_state_dict_of_a_fresh_optimizer_changes_no_step(workers, case):
    workers().run(job_fsdp2_vs_ddp_torch_fused, case, True)


@pytest.mark.parametrize("case", CASES)
def test_distributed_checkpoint_round_trips(workers, case, tmp_path):
    workers().run(job_checkpoint_round_trips, case, str(tmp_path))


def test_counters_stay_in_step_across_ranks(workers):
    workers().run(job_counters_stay_in_step)


def test_load_checks_sharded_states_before_anything_changes(workers):
    workers().run(job_load_checks_sharded_states_first)


# ------------------------------------------------- the param groups' entries, in one process (plain tensors)
def _reloaded(sd: dict) -> dict:
    """What get_optimizer_state_dict keeps of a state_dict ('state' and 'param_groups'), as it comes back from disk."""
    buf = io.BytesIO()
    torch.save({"state": sd["state"], "param_groups": sd["param_groups"]}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _plain_run(case: str, steps: int, seed: int = 0, **extra):
    model = _model("cpu", seed)
    opt = _ours(case, model, **extra)
    for t in range(steps):
        _train_step(model, opt, 0, t, "cpu")
    return model, opt


def _unchanged(model, opt):
    """A fingerprint of everything a load may change."""
    return ([p.detach().clone() for p in model.parameters()], int(opt.sched_step()), _shown_lrs(opt),
            {i: {k: v.clone() for k, v in opt.state[p].items()} for i, p in enumerate(model.parameters())})


def _assert_unchanged(before, after):
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0])) and before[1:3] == after[1:3]
    assert before[3].keys() == after[3].keys() and all(
        all(torch.equal(v, after[3][i][k]) for k, v in st.items()) for i, st in before[3].items())


@pytest.mark.parametrize("case", ["AdamW", "SGD-plain"])
def test_param_groups_carry_what_a_resume_needs(case):
    """Without the top-level entry (what a distributed checkpoint keeps), a fresh optimizer with the same schedule
    resumes bit-identically: the counter, a group pinned to a written lr, max_grad_norm come from the groups."""
    model, opt = _plain_run(case, 3, max_grad_norm=0.5)
    opt.param_groups[1]["lr"] = 0.004  # this group trains at the written value from now on
    _train_step(model, opt, 0, 3, "cpu")
    sd = opt.state_dict()
    entries = [g["warmup_fused"] for g in sd["param_groups"]]
    assert [e["sched_step"] for e in entries] == [4, 4] and [e["lr_source"] for e in entries] == ["schedule", "host"]
    assert entries[0]["schedule"].startswith("sha256:") and entries[0]["max_grad_norm"] == 0.5
    assert [g["warmup_fused"] for g in opt.param_groups] == [None, None], "live groups hold the key only"
    resumed = _model("cpu", 1)
    resumed.load_state_dict(model.state_dict())
    ropt = _ours(case, resumed)
    ropt.load_state_dict(_reloaded(sd))
    assert int(ropt.sched_step()) == 4 and ropt.max_grad_norm == 0.5
    for t in range(4, STEPS):
        _train_step(model, opt, 0, t, "cpu")
        _train_step(resumed, ropt, 0, t, "cpu")
        assert ropt.last_lr().tolist() == opt.last_lr().tolist(), f"step {t}"
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed.parameters())), f"step {t}"


@pytest.mark.parametrize("edit", ["other schedule", "no schedule", "groups disagree", "bad lr_source"])
def test_group_entries_are_checked_before_anything_changes(edit):
    model, opt = _plain_run("AdamW", 4)
    sd = _reloaded(opt.state_dict())
    target_model, target = _plain_run("AdamW", 2, seed=1)
    if edit == "other schedule":
        target.set_schedule(warmup_fused.schedules.warmup_cosine(STEPS, warmup=2))
    elif edit == "no schedule":
        target.set_schedule(None)
    elif edit == "groups disagree":
        sd["param_groups"][1]["warmup_fused"]["sched_step"] = 3
    else:
        sd["param_groups"][1]["warmup_fused"]["lr_source"] = "scheduler"
    before = _unchanged(target_model, target)
    match = {"groups disagree": "agree", "bad lr_source": "lr_source"}.get(edit, "schedule")
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(sd)
    _assert_unchanged(before, _unchanged(target_model, target))


def test_entries_a_torch_optimizer_carried_on_are_not_trusted():
    """Ours checkpointed, loaded into torch's fused AdamW, which trains on under its scheduler and saves: the group
    entries it carried are stale (their lr is not the group's any more), so ours loads the checkpoint as torch's
    (the counter from the per-param steps), with a warning, and continues bit-identically with torch."""
    model, opt = _plain_run("AdamW", 5)
    twin = _model("cpu", 1)
    twin.load_state_dict(model.state_dict())
    ref = _torch_opt("AdamW", twin)
    sched = _warmup_cosine(ref)
    with warnings.catch_warnings():  # stepped to where ours is, before torch's optimizer ever steps
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(5):
            sched.step()
    ref.load_state_dict(opt.state_dict())
    for t in range(5, 8):
        _train_step(twin, ref, 0, t, "cpu")
        sched.step()
    resumed = _model("cpu", 2)
    resumed.load_state_dict(twin.state_dict())
    ours = _ours("AdamW", resumed)
    with pytest.warns(UserWarning, match="loaded as a torch checkpoint"):
        ours.load_state_dict(_reloaded(ref.state_dict()))
    assert int(ours.sched_step()) == 8
    for t in range(8, STEPS):
        used = _shown_lrs(ref)
        _train_step(twin, ref, 0, t, "cpu")
        _train_step(resumed, ours, 0, t, "cpu")
        sched.step()
        assert ours.last_lr().tolist() == used, f"step {t}"
        _assert_same(resumed, ours, twin, ref, f"step {t}")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or not dist.is_nccl_available(), reason="needs a GPU and NCCL")
def test_fsdp2_on_one_gpu_in_a_one_rank_nccl_group(tmp_path):
    """FSDP2 on one GPU (a one-rank NCCL group): ours against torch's fused AdamW under FSDP2 and against DDP + torch
    fused for every optimizer, and a checkpoint round trip."""
    pool = _Workers("nccl", 1)
    try:
        for variant in ("plain", "clip", "scaler"):
            pool.run(job_fsdp2_vs_torch_fused_adamw_fsdp2, variant)
        for case in CASES:
            pool.run(job_fsdp2_vs_ddp_torch_fused, case)
        pool.run(job_checkpoint_round_trips, "AdamW", str(tmp_path))
    finally:
        pool.close()


def test_group_entries_carry_the_plateau_state():
    """A reduce_on_plateau schedule's state (best, bad epochs, cooldown, the reduced LRs) is state, not schedule:
    it travels in the entries, and the resumed run reduces its LR exactly when the original does."""
    def run(seed):
        model = _model("cpu", seed)
        return model, warmup_fused.SGD(_groups(model, 0.1), lr=0.1, momentum=0.9, schedule=(
            warmup_fused.schedules.reduce_on_plateau(patience=1, cooldown=1, factor=0.5)))

    metrics = [1.0, 1.0, 1.0, 0.5, 0.6, 0.7, 0.7, 0.7, 0.2, 0.3, 0.3, 0.3]
    model, opt = run(0)
    for t in range(6):
        _train_step(model, opt, 0, t, "cpu")
        opt.observe(metrics[t])
    at_save = _shown_lrs(opt)
    assert at_save[0] < 0.1, "no reduction before the checkpoint"
    sd = _reloaded(opt.state_dict())
    assert sd["param_groups"][0]["warmup_fused"]["plateau"] is not None
    resumed, ropt = run(1)
    resumed.load_state_dict(model.state_dict())
    ropt.load_state_dict(sd)
    for t in range(6, STEPS):
        _train_step(model, opt, 0, t, "cpu")
        _train_step(resumed, ropt, 0, t, "cpu")
        assert ropt.last_lr().tolist() == opt.last_lr().tolist(), f"step {t}"
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed.parameters())), f"step {t}"
        opt.observe(metrics[t])
        ropt.observe(metrics[t])
    assert _shown_lrs(ropt) == _shown_lrs(opt) and _shown_lrs(opt)[0] < at_save[0], "no reduction after it"
