"""Seq-first regressors, myRNN and myLSTM: a recurrent layer plus a Linear head on every step.

Task: from a noisy sine with a random phase and frequency, predict the clean sine half a radian
ahead, at every step. Input and output are (T, B, 1), time first (batch_first=False).
MSE, Adam lr 0.01.

    python examples/seq_regressors.py --impl fused --model lstm --steps 200
"""
from __future__ import annotations

import torch
from torch import nn

import _common

T, BATCH, HIDDEN, LR, AHEAD = 40, 16, 32, 0.01, 0.5


class SeqRegressor(nn.Module):
    """myRNN (kind="RNN") / myLSTM (kind="LSTM"): (T, B, 1) -> (T, B, 1)."""

    def __init__(self, classes, kind: str):
        super().__init__()
        self.rnn = getattr(classes, kind)(1, HIDDEN)
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)


def batch(generator: torch.Generator, dtype):
    phase = torch.rand(1, BATCH, 1, generator=generator, dtype=torch.float64) * 6.283
    freq = 0.2 + 0.2 * torch.rand(1, BATCH, 1, generator=generator, dtype=torch.float64)
    t = torch.arange(T, dtype=torch.float64).reshape(T, 1, 1)
    noise = 0.05 * torch.randn(T, BATCH, 1, generator=generator, dtype=torch.float64)
    x = torch.sin(freq * t + phase) + noise
    y = torch.sin(freq * t + phase + AHEAD)
    return x.to(dtype), y.to(dtype)


def run(impl="fused", kind="LSTM", steps=200, dtype=torch.float32, seed=0) -> dict:
    model = _common.build_model(lambda c: SeqRegressor(c, kind), impl, seed, dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    data = torch.Generator().manual_seed(seed)
    losses = []
    clock = _common.StepClock()
    for _ in range(steps):
        x, y = batch(data, dtype)
        clock.start()
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        clock.stop()
        losses.append(loss.item())
    return {"losses": losses, "step_ms": clock.ms}


def main(argv=None):
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--model", choices=["rnn", "lstm"], default="lstm")
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args(argv)
    result = run(args.impl, args.model.upper(), args.steps, getattr(torch, args.dtype), args.seed)
    losses = result["losses"]
    for step in range(0, len(losses), 25):
        print(f"step {step:4d}  loss {losses[step]:.5f}")
    print(f"mean loss over the last 20 steps: {sum(losses[-20:]) / len(losses[-20:]):.5f}")
    print(_common.step_time_line(args.impl, result["step_ms"]))
    if args.plot:
        _common.save_loss_plot(args.plot, losses, "step", "MSE")


if __name__ == "__main__":
    main()
