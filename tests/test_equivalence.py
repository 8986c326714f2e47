"""fusedrnn vs torch.nn with shared weights: outputs, h_n/c_n and every gradient."""
import itertools
import zlib

import pytest
import torch

from helpers import CELLS, DEVICES, Case, check_case

INPUT_KINDS = ["batched", "unbatched", "packed_sorted", "packed_unsorted"]

GRID = [
    (cell, layers, bidir, batch_first, bias, kind, with_h0)
    for cell, layers, bidir, batch_first, bias, kind, with_h0 in itertools.product(
        CELLS, [1, 2, 3], [False, True], [False, True], [True, False], INPUT_KINDS, [True, False])
    # batch_first has no effect on packed input: keep one of the two
    if not (kind.startswith("packed") and batch_first)
]


def _id(p):
    cell, layers, bidir, bf, bias, kind, h0 = p
    return f"{cell}-L{layers}-{'bi' if bidir else 'uni'}-{'bf' if bf else 'sf'}-" \
           f"{'bias' if bias else 'nobias'}-{kind}-{'h0' if h0 else 'noh0'}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("params", GRID, ids=[_id(p) for p in GRID])
def test_matches_torch_nn(params, dtype, device):
    cell, layers, bidir, batch_first, bias, kind, with_h0 = params
    case = Case(cell, num_layers=layers, bidirectional=bidir, batch_first=batch_first, bias=bias,
                input_kind=kind, with_h0=with_h0)
    # crc32, not hash(): str hashes change from process to process, and so would the data
    check_case(case, dtype, device, seed=zlib.crc32(_id(params).encode()) % 1000)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", list(CELLS))
def test_long_sequence_stays_finite_and_matches(cell, device):
    case = Case(cell, T=2000, B=2, I=4, H=16, num_layers=1)
    check_case(case, torch.float32, device, seed=7)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh"])
def test_larger_shapes_fp32(cell):
    """Shapes where the BLAS takes its blocked paths and rows run on several threads."""
    case = Case(cell, T=20, B=33, I=40, H=96, num_layers=2, bidirectional=True,
                input_kind="packed_unsorted")
    check_case(case, torch.float32, seed=3)


@pytest.mark.parametrize("cell", list(CELLS))
def test_bfloat16_cpu(cell):
    """bf16 on CPU computes in fp32 and returns bf16; compared by the rule with torch.nn bf16."""
    check_case(Case(cell, num_layers=2, bidirectional=True), torch.bfloat16, seed=5)


def _check_dropout_parity(case: Case):
    """With the same seed, training-mode dropout between layers gives torch.nn's outputs and
    gradients (the same masks)."""
    from helpers import clone_inputs, make_inputs, make_pair, outputs_and_grads, max_err
    ref, fused = make_pair(case)
    ref.train(), fused.train()
    x, hx, lengths = make_inputs(case, ref, torch.float64, "cpu", torch.Generator().manual_seed(1))
    torch.manual_seed(11)
    to, tg = outputs_and_grads(ref, case, *clone_inputs(x, hx), lengths, 2)
    torch.manual_seed(11)
    fo, fg = outputs_and_grads(fused, case, *clone_inputs(x, hx), lengths, 2)
    assert max_err(fo, to) < 1e-10 and max_err(fg, tg) < 1e-10
    return fused, x


@pytest.mark.parametrize("cell", list(CELLS))
def test_dropout_matches_torch_nn_rng(cell):
    """Dropout between layers draws the same masks as torch.nn for the same seed (unpacked input)."""
    fused, x = _check_dropout_parity(Case(cell, num_layers=3, bidirectional=True, dropout=0.5))
    # and dropout is off in eval mode: the output is deterministic
    fused.eval()
    with torch.no_grad():
        assert torch.equal(fused(x)[0], fused(x)[0])


@pytest.mark.parametrize("kind", ["packed_sorted", "packed_unsorted"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_dropout_on_packed_input_matches_torch_nn_rng(cell, kind):
    """torch.nn drops out the packed rows between layers; so does fusedrnn on the CPU."""
    _check_dropout_parity(Case(cell, num_layers=3, bidirectional=True, dropout=0.5,
                               input_kind=kind, B=4))


def test_no_dropout_when_single_layer_or_eval():
    case = Case("lstm", num_layers=2, dropout=0.9)
    from helpers import make_pair
    ref, fused = make_pair(case)
    fused.eval()
    x = torch.randn(4, 2, case.I, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(fused(x)[0], ref.eval()(x)[0], atol=1e-12)


ONE_STEP_GRID = list(itertools.product(CELLS, [1, 2], [False, True], ["batched", "batch_first",
                                                                      "unbatched",
                                                                      "packed_unsorted"]))


@pytest.mark.parametrize("params", ONE_STEP_GRID, ids=["-".join(map(str, p)) for p in ONE_STEP_GRID])
def test_one_step_matches_torch_nn(params):
    """T = 1 (on the CPU the one-step op runs each layer, except packed input and proj_size)."""
    cell, layers, bidir, kind = params
    batch_first = kind == "batch_first"
    case = Case(cell, T=1, num_layers=layers, bidirectional=bidir, batch_first=batch_first,
                input_kind="batched" if batch_first else kind, with_h0=layers == 1)
    check_case(case, torch.float64, seed=11)
