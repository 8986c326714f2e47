"""Hand-built PackedSequence input: checked before anything reads its data. Same error as
torch.nn where torch.nn raises, same result where it computes one: well-formed batch sizes on the
fused path, zero or increasing ones (torch.nn computes on whatever rows its loop reaches: [3, 0, 1]
gives 3 output rows for 4 data rows) by torch.nn's own forward, since ATen's
_pad_packed_sequence, which the fused path uses, corrupted the heap on them (the process
aborted)."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

import fusedrnn

WELL_FORMED = [[3, 1], [2, 2], [2, 1], [4], [1, 1, 1, 1]]
MALFORMED = [[3, 1, 2], [3, 2], [3, 2, 1, 1], [3, -1], [4, 1], [], [3, 0, 1], [0], [1, 2, 1],
             [2, 0]]


def _outcome(module, batch_sizes):
    torch.manual_seed(1)
    packed = PackedSequence(torch.randn(4, 2), torch.tensor(batch_sizes, dtype=torch.int64))
    try:
        out, hidden = module(packed)
    except Exception as e:  # noqa: BLE001 (the outcome under test)
        return type(e), str(e)
    return out.data, hidden


def _pair(name):
    ref = getattr(nn, name)(2, 3)
    fused = getattr(fusedrnn, name)(2, 3)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


@pytest.mark.parametrize("batch_sizes", WELL_FORMED + MALFORMED, ids=str)
@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_hand_built_batch_sizes_behave_as_torch_nn(name, batch_sizes):
    ref, fused = _pair(name)
    want, got = _outcome(ref, batch_sizes), _outcome(fused, batch_sizes)
    if isinstance(want[0], type):
        assert got == want
    else:
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_only_well_formed_batch_sizes_take_the_fused_path(name, monkeypatch):
    """Zero or increasing batch sizes go to torch.nn's forward, well-formed ones never do."""
    calls = []
    forward = fusedrnn.modules._TORCH_FORWARD
    monkeypatch.setattr(fusedrnn.modules, "_TORCH_FORWARD", {
        mode: (lambda f: lambda *a: calls.append(1) or f(*a))(f) for mode, f in forward.items()})
    fused = _pair(name)[1]
    for batch_sizes in WELL_FORMED:
        fused(PackedSequence(torch.randn(4, 2), torch.tensor(batch_sizes)))
    assert not calls
    fused(PackedSequence(torch.randn(4, 2), torch.tensor([3, 0, 1])))
    assert calls
