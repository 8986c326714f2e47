"""Seeded fuzz against torch.nn: random configurations (every cell, 1-3 layers, uni/bidirectional,
batch_first, bias, batched / unbatched / packed sorted / packed unsorted, with or without h0,
T = 1 included, cell modules looped over T) in fp32 and fp64; outputs, states and every gradient
by the fp64 rule (fusedrnn.verification). One case in eight has B 9-40 and H 40-80, where the
float32 CPU loops of GRU and LSTM (RNN where B H^2 reaches 65536) run on a thread team on an
idle machine (csrc/cpu/team.h; from B = 16 on its workers split the batch rows, below it the
hidden units); their bitwise equality with one worker is tests/test_cpu_kernels.py's.
FUSEDRNN_FUZZ_CASES sets how many (default 300), FUSEDRNN_FUZZ_SEED which ones (default 0):
each case is reproducible from its index alone."""
import os
import random

import pytest
import torch

from helpers import CELLS, Case, check_case
from fusedrnn.verification import CELL_LOOP_CELLS, INPUT_KINDS

CASES = int(os.environ.get("FUSEDRNN_FUZZ_CASES", "300"))
SEED = int(os.environ.get("FUSEDRNN_FUZZ_SEED", "0"))


def draw(index: int):
    """The index-th random configuration and dtype."""
    rng = random.Random(SEED * 1_000_003 + index)
    cell = rng.choice(list(CELLS))
    team_sized = rng.random() < 0.125
    sizes = dict(T=rng.choice([1, 1, 2, 3, 5, 8, 13]),
                 B=rng.randint(9, 40) if team_sized else rng.randint(1, 5), I=rng.randint(1, 8),
                 H=rng.randint(40, 80) if team_sized else
                 rng.randint(4 if cell == "lstm_proj" else 1, 12),
                 bias=rng.random() < 0.8)
    dtype = rng.choice([torch.float32, torch.float64])
    if cell in CELL_LOOP_CELLS and rng.random() < 0.1:
        return Case(cell, cell_loop=True, **sizes), dtype
    return Case(cell, num_layers=rng.randint(1, 3), bidirectional=rng.random() < 0.5,
                batch_first=rng.random() < 0.5, input_kind=rng.choice(INPUT_KINDS),
                with_h0=rng.random() < 0.7, **sizes), dtype


@pytest.mark.parametrize("index", range(CASES))
def test_fuzz_against_torch_nn(index):
    case, dtype = draw(index)
    check_case(case, dtype, seed=index)
