"""Hand-built PackedSequence input: checked before anything reads its data. Same error as
torch.nn where torch.nn raises, same result where it computes one from well-formed batch sizes;
zero or increasing batch sizes (torch.nn computes on whatever rows it reaches: [3, 0, 1] gives
3 output rows for 4 data rows) raise a ValueError instead (ATen's _pad_packed_sequence, which
fusedrnn uses, corrupted the heap on them and the process aborted)."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

import fusedrnn

SAME_AS_TORCH = [[3, 1, 2], [3, 2], [3, 2, 1, 1], [3, -1], [4, 1], [2, 2], [2, 1], [4], []]
REJECTED = [[3, 0, 1], [0], [1, 2, 1], [2, 0]]


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


@pytest.mark.parametrize("batch_sizes", SAME_AS_TORCH, ids=str)
@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_malformed_batch_sizes_behave_as_torch_nn(name, batch_sizes):
    ref, fused = _pair(name)
    want, got = _outcome(ref, batch_sizes), _outcome(fused, batch_sizes)
    if isinstance(want[0], type):
        assert got == want
    else:
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("batch_sizes", REJECTED, ids=str)
@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_zero_or_increasing_batch_sizes_are_rejected(name, batch_sizes):
    with pytest.raises(ValueError, match="batch_sizes must be positive and non-increasing"):
        _pair(name)[1](PackedSequence(torch.randn(4, 2), torch.tensor(batch_sizes)))
