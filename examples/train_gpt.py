"""Train a tiny GPT on synthetic data with warmup_fused.AdamW and a warmup-cosine schedule.

On a GPU the whole training step (forward, backward, optimizer step with its on-device LR) is captured once
in a CUDA graph and replayed; the LR still follows the schedule because the kernel reads a device counter.
On CPU it runs eagerly. Prints loss and the LR the kernel used (opt.last_lr()) every --log-every steps.

    python examples/train_gpt.py              # < 30 s on a laptop CPU
    python examples/train_gpt.py --steps 2000 --device cuda
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import warmup_fused
from warmup_fused import schedules


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab=64, d=64, heads=4, layers=2, ctx=32):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(ctx, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.register_buffer("mask", torch.triu(torch.full((ctx, ctx), float("-inf")), 1))

    def forward(self, idx):
        x = self.tok(idx) + self.pos[: idx.shape[1]]
        for b in self.blocks:
            x = b(x, self.mask[: idx.shape[1], : idx.shape[1]])
        return self.head(self.ln(x))


def synthetic_batch(gen, batch, ctx, vocab, device):
    """Sequences that count up modulo vocab from a random start: learnable, so the loss falls."""
    start = torch.randint(0, vocab, (batch, 1), generator=gen)
    seq = (start + torch.arange(ctx + 1)) % vocab
    return seq[:, :-1].to(device), seq[:, 1:].to(device)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-graph", action="store_true", help="run eagerly on CUDA too")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (a model this small runs best on one)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = TinyGPT(args.vocab, ctx=args.ctx).to(device)
    schedule = schedules.warmup_cosine(args.steps, warmup=args.warmup)
    opt = warmup_fused.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, schedule=schedule)
    gen = torch.Generator().manual_seed(0)
    x_buf, y_buf = synthetic_batch(gen, args.batch, args.ctx, args.vocab, device)
    loss_buf = torch.zeros((), device=device)

    def train_step():
        logits = model(x_buf)
        loss = F.cross_entropy(logits.reshape(-1, args.vocab), y_buf.reshape(-1))
        loss.backward()
        opt.step()
        loss_buf.copy_(loss.detach())

    use_graph = device.type == "cuda" and not args.no_graph
    graph = None
    t0 = time.perf_counter()
    for step in range(args.steps):
        x, y = synthetic_batch(gen, args.batch, args.ctx, args.vocab, device)
        x_buf.copy_(x)
        y_buf.copy_(y)
        if graph is not None:
            graph.replay()  # zeroes grads, forward, backward, optimizer step (LR from the device counter)
        else:
            model.zero_grad(set_to_none=False)
            if use_graph and step == 3:  # a few eager steps allocate grads and optimizer state, then capture
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    for p in model.parameters():
                        p.grad.zero_()
                    train_step()
                graph.replay()
            else:
                train_step()
        if step % args.log_every == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss_buf.item():.4f}  lr {opt.last_lr()[0].item():.3e}", flush=True)
    print(f"{args.steps} steps in {time.perf_counter() - t0:.1f} s on {device}"
          f"{' (CUDA graph)' if graph is not None else ''}")


if __name__ == "__main__":
    main()
