"""Regress cos from sin with a stacked RNN, one new pi-window per training step.

2 layers: input is two copies of sin (INPUT_SIZE=2). 3 layers: one copy, plus grad-norm clipping
at 1.0 and ReduceLROnPlateau(factor 0.5, patience 10). Hidden 32, TIME_STEP 10, Adam lr 0.02,
MSE; the hidden state is carried from step to step (detached).

    python examples/sin_to_cos.py --impl fused --layers 2 --steps 400 --plot sin_to_cos.png
"""
from __future__ import annotations

import math

import torch
from torch import nn

import _common

HIDDEN, TIME_STEP, LR = 32, 10, 0.02


class SinToCos(nn.Module):
    def __init__(self, classes, input_size: int, layers: int):
        super().__init__()
        self.rnn = classes.RNN(input_size, HIDDEN, num_layers=layers, batch_first=True)
        self.out = nn.Linear(HIDDEN, 1)

    def forward(self, x, h):  # x (1, TIME_STEP, input_size) -> (1, TIME_STEP, 1)
        y, h = self.rnn(x, h)
        return self.out(y), h


def window(step: int, input_size: int, dtype):
    t = torch.linspace(step * math.pi, (step + 1) * math.pi, TIME_STEP, dtype=torch.float64)
    x = torch.sin(t).reshape(1, TIME_STEP, 1).expand(1, TIME_STEP, input_size)
    return t, x.to(dtype), torch.cos(t).reshape(1, TIME_STEP, 1).to(dtype)


def run(impl="fused", layers=2, steps=400, dtype=torch.float32, seed=0) -> dict:
    input_size = 2 if layers == 2 else 1
    model = _common.build_model(lambda c: SinToCos(c, input_size, layers), impl, seed, dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    plateau = (torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=10)
               if layers == 3 else None)
    h, losses = None, []
    clock = _common.StepClock()
    for step in range(steps):
        t, x, y = window(step, input_size, dtype)
        clock.start()
        prediction, h = model(x, h)
        h = h.detach()  # carry the state, not the graph
        loss = nn.functional.mse_loss(prediction, y)
        optimizer.zero_grad()
        loss.backward()
        if layers == 3:
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        clock.stop()
        if plateau is not None:
            plateau.step(loss.item())
        losses.append(loss.item())
    return {"losses": losses, "t": t, "prediction": prediction.detach().flatten(),
            "target": y.flatten(), "step_ms": clock.ms}


def main(argv=None):
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, choices=[2, 3], default=2)
    p.add_argument("--steps", type=int, default=400)
    args = p.parse_args(argv)
    result = run(args.impl, args.layers, args.steps, getattr(torch, args.dtype), args.seed)
    losses = result["losses"]
    for step in range(0, len(losses), 50):
        print(f"step {step:4d}  loss {losses[step]:.5f}")
    print(f"mean loss over the last 50 steps: {sum(losses[-50:]) / len(losses[-50:]):.5f}")
    print(_common.step_time_line(args.impl, result["step_ms"]))
    if args.plot:
        def draw(plt):
            fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
            a.plot(result["t"], result["target"], "r-", label="cos (target)")
            a.plot(result["t"], result["prediction"], "b-", label=f"prediction ({args.impl})")
            a.legend()
            b.semilogy(losses)
            b.set_xlabel("step")
            b.set_ylabel("MSE")
        _common.save_plot(args.plot, draw)


if __name__ == "__main__":
    main()
