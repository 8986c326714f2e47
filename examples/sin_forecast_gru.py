"""Next-value prediction of a sine with a GRU: windows of 5 values -> the 6th.

GRU hidden 64 + Linear on the last step, batch 64, MAE loss, Adam lr 1e-3, a few epochs over
10,000 training windows; tested on the 1000 points that follow the training range.

    python examples/sin_forecast_gru.py --impl fused --epochs 3
"""
from __future__ import annotations

import torch
from torch import nn

import _common

WINDOW, HIDDEN, BATCH, LR = 5, 64, 64, 1e-3
TRAIN, TEST = 10_000, 1_000
STEP = 0.05  # radians between consecutive samples


class Forecaster(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.gru = classes.GRU(1, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, x):  # x (B, WINDOW, 1) -> (B, 1)
        y, _ = self.gru(x)
        return self.head(y[:, -1])


def windows(start: int, count: int, dtype):
    """count windows of the series sin(STEP * n), n = start.., and the value after each."""
    n = torch.arange(start, start + count + WINDOW, dtype=torch.float64)
    series = torch.sin(STEP * n).to(dtype)
    x = series.unfold(0, WINDOW, 1)[:count].unsqueeze(-1)  # (count, WINDOW, 1)
    return x, series[WINDOW:WINDOW + count].unsqueeze(-1)


def run(impl="fused", epochs=3, dtype=torch.float32, seed=0, max_batches=None) -> dict:
    model = _common.build_model(Forecaster, impl, seed, dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    x_train, y_train = windows(0, TRAIN, dtype)
    x_test, y_test = windows(TRAIN, TEST, dtype)  # the points after the training range
    order = torch.Generator().manual_seed(seed)
    losses = []
    clock = _common.StepClock()
    for _ in range(epochs):
        perm = torch.randperm(TRAIN, generator=order)
        for k, i in enumerate(range(0, TRAIN, BATCH)):
            if max_batches is not None and k >= max_batches:
                break
            idx = perm[i:i + BATCH]
            clock.start()
            loss = nn.functional.l1_loss(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            clock.stop()
            losses.append(loss.item())
    with torch.no_grad():
        test_mae = nn.functional.l1_loss(model(x_test), y_test).item()
    return {"losses": losses, "test_mae": test_mae, "step_ms": clock.ms}


def main(argv=None):
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args(argv)
    result = run(args.impl, args.epochs, getattr(torch, args.dtype), args.seed)
    per_epoch = len(result["losses"]) // args.epochs
    for e in range(args.epochs):
        chunk = result["losses"][e * per_epoch:(e + 1) * per_epoch]
        print(f"epoch {e + 1}  train MAE {sum(chunk) / len(chunk):.5f}")
    print(f"test MAE on the next {TEST} points: {result['test_mae']:.5f}")
    print(_common.step_time_line(args.impl, result["step_ms"]))
    if args.plot:
        _common.save_loss_plot(args.plot, result["losses"], "batch", "train MAE")


if __name__ == "__main__":
    main()
