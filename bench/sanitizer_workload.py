"""A small forward+backward of every cell on CUDA, for compute-sanitizer (bench/gpu_check.sh):
packed input with unsorted lengths, bidirectional, 2 layers, every cell of the cell table and
LSTM with proj_size (fusedrnn.verification.CELLS), every dtype the CUDA kernels support."""
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn.verification import CELLS


def main():
    torch.manual_seed(0)
    lengths = torch.tensor([7, 3, 5, 1])
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for name, kw in CELLS.values():
            m = getattr(fusedrnn, name)(6, 8, num_layers=2, bidirectional=True, **kw)
            m = m.to("cuda", dtype)
            x = torch.randn(7, 4, 6, device="cuda", dtype=dtype, requires_grad=True)
            out, _ = m(pack_padded_sequence(x, lengths, enforce_sorted=False))
            out.data.float().sum().backward()
            dense, _ = m(x)
            dense.float().sum().backward()
    torch.cuda.synchronize()
    print("sanitizer workload done")


if __name__ == "__main__":
    main()
