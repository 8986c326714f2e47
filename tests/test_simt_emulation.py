"""Self-tests of the CPU SIMT emulation of CUDA (csrc/emulation/simt.h).

The kernels of csrc/emulation/simt_selftest.cu run under the emulator (torch.ops.fusedrnn_emulated
.simt_*) and are compared with torch on CPU: block barriers and static / dynamic shared memory,
warp shuffles / votes with segment widths and a partial last warp, atomics, __half /
__nv_bfloat16 conversions, cooperative grids with grid_sync. The deliberately broken variants
must give a wrong result (a missing barrier) or fail with the emulator's message (divergent
barriers and shuffles, grid_sync outside a cooperative launch or left early by a block), never
hang: the emulator detects deadlocks itself, and every call runs on a helper thread with a
timeout so that a regression fails instead of blocking the run.
"""
import re
import threading

import pytest
import torch

from emulation import load

pytestmark = pytest.mark.emulation

TIMEOUT_S = 120  # generous: a hang is a bug, not a slow run


@pytest.fixture(scope="module")
def ops():
    return load()


def call(op, *args):
    """op(*args) on a helper thread (also: launches from an OS thread other than the main one)."""
    result = {}

    def target():
        try:
            result["value"] = op(*args)
        except BaseException as e:  # noqa: BLE001  (re-raised on the test's thread)
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(TIMEOUT_S)
    assert not thread.is_alive(), f"{op} did not return within {TIMEOUT_S} s (emulator hang)"
    if "error" in result:
        raise result["error"]
    return result["value"]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ block barriers, shared memory

def block_sums(x, nt, blocks):
    padded = torch.zeros(blocks * nt, dtype=torch.float64)
    padded[: x.numel()] = x.double()
    return padded.view(blocks, nt).sum(1)


@pytest.mark.parametrize("block", [[1], [32], [100], [256], [1000], [1024], [16, 12], [8, 4, 2]])
def test_block_reduction(ops, block):
    nt, blocks = torch.tensor(block).prod().item(), 3
    x = torch.randn(blocks * nt - nt // 3, generator=gen())  # a partial last block
    out = call(ops.simt_block_sum, x, block, blocks, False)
    torch.testing.assert_close(out.double(), block_sums(x, nt, blocks), rtol=1e-5, atol=1e-4)


def test_block_reduction_without_barriers_is_wrong(ops):
    # Threads run one after another until a barrier: without them each reads partial sums that
    # threads started later have not written yet (static shared memory holds stale values).
    x = torch.rand(4 * 256, generator=gen(1)) + 1
    out = call(ops.simt_block_sum, x, [256], 4, True)
    assert not torch.allclose(out.double(), block_sums(x, 256, 4), rtol=1e-3)


@pytest.mark.parametrize("threads", [1, 32, 100, 256])
def test_dynamic_shared_reverse(ops, threads):
    x = torch.randn(1000, generator=gen())
    out = call(ops.simt_reverse, x, threads, False)
    expected = torch.cat([s.flip(0) for s in x.split(threads)])
    assert torch.equal(out, expected)


def test_reverse_without_barrier_reads_unwritten_shared_memory(ops):
    x = torch.randn(1000, generator=gen())
    out = call(ops.simt_reverse, x, 256, True)
    # Threads run one after another until a barrier: the ones whose partner has not started
    # read the 0xFF fill of dynamic shared memory (NaN).
    assert out.isnan().any()
    assert not torch.equal(out, torch.cat([s.flip(0) for s in x.split(256)]))


# ---------------------------------------------------------------------------------- warps

def segment_reference(x, width):
    seg = x.view(-1, width).double()
    sums = seg.sum(1, keepdim=True).expand_as(seg)
    leader = torch.zeros_like(seg)
    leader[:, 0] = seg.sum(1)
    bcast = seg[:, (width + 3) % width].unsqueeze(1).expand_as(seg)
    neighbour = x.view(-1, 2).flip(1).reshape(-1)
    return torch.stack([sums.reshape(-1), leader.reshape(-1), seg.cumsum(1).reshape(-1),
                        bcast.reshape(-1), neighbour.double()], 1)


def ballot(pred):
    """Per lane group of 32: the int32 bit pattern of the lanes where pred holds."""
    bits = (pred.view(-1, 32).long() << torch.arange(32)).sum(1)
    return torch.where(bits >= 2**31, bits - 2**32, bits).int()


@pytest.mark.parametrize("width", [32, 16, 8, 4, 2, 1])
def test_warp_shuffles_and_votes(ops, width):
    threads, blocks = 64, 3
    x = torch.randn(blocks * threads, generator=gen(width))
    x[32:64] = x[32:64].abs() + 0.1  # one warp all positive, so ballots and votes vary
    out, bits = call(ops.simt_warp_segments, x, threads, width)
    torch.testing.assert_close(out.double(), segment_reference(x, width), rtol=1e-5, atol=1e-5)
    per_lane = lambda v: v.repeat_interleave(32)  # noqa: E731
    assert torch.equal(bits[:, 0], per_lane(ballot(x > 0)))
    assert torch.equal(bits[:, 1], per_lane((x > 1.5).view(-1, 32).any(1).int()))
    assert torch.equal(bits[:, 2], per_lane((x > -1.5).view(-1, 32).all(1).int()))


@pytest.mark.parametrize("threads", [1, 33, 50, 70, 100])
def test_partial_last_warp(ops, threads):
    x = torch.randn(threads, generator=gen(threads))
    out, sums, bits = call(ops.simt_partial_warp, x)
    warps = x.split(32)
    assert torch.equal(out[:, 0], torch.cat([w[0].expand(len(w)) for w in warps]))
    torch.testing.assert_close(out[:, 1], torch.cat([w.cumsum(0) for w in warps]))
    torch.testing.assert_close(sums, torch.stack([w.sum() for w in warps]))
    padded = torch.zeros(len(warps) * 32)
    padded[:threads] = x
    assert torch.equal(bits[:, 0], ballot(padded > 0))
    # Lanes run diverged under the emulation: __activemask() is the caller's (lane 0's) bit.
    assert bits[:, 1].tolist() == [1] * len(warps)


# -------------------------------------------------------------------------------- atomics

def test_atomics(ops):
    n, bins = 5000, 16
    x = torch.rand(n, generator=gen(2))
    hist, fsum, dsum, ints, uints, ulls, fexch = call(ops.simt_atomics, x, bins, 7, 128)
    bin_of = (x * bins).long().clamp(max=bins - 1)
    assert torch.equal(hist, torch.bincount(bin_of, minlength=bins).int())
    torch.testing.assert_close(fsum.double(), x.double().sum().view(1), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(dsum, x.double().sum().view(1), rtol=1e-12, atol=1e-9)
    q = (x * 1000).int() - 500
    assert ints[:4].tolist() == [q.max().item(), q.min().item(), 0, bin_of.sum().item()]
    assert 0 <= ints[4].item() < n
    u = uints.long() & 0xFFFFFFFF
    assert u[:5].tolist() == [n, n - 1, 0, 5, n]
    assert 0 <= u[5].item() < n
    assert ulls.tolist() == [n * (n - 1) // 2] * 2
    assert (x == fexch).any()


# ---------------------------------------------------------------------------- half types

def test_half_and_bfloat16_conversions_match_torch(ops):
    x = torch.cat([
        torch.randn(4000, generator=gen(5)) * torch.logspace(-12, 12, 4000),  # over/underflow
        torch.randn(1000, generator=gen(6)) * 1e-5,  # fp16 subnormals
        # ties: halfway between two fp16 / bfloat16 values, both parities
        (torch.arange(1024, 1064, dtype=torch.float64) + 0.5).float() * 2.0**-10,
        torch.tensor([0x3F808000, 0x3F818000, 0x7F7FFFFF], dtype=torch.int32).view(torch.float32),
        torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 65504, 65520, -65520]),
    ])
    nans = torch.tensor([float("nan")] * 2)
    nans[1:].view(torch.int32)[0] = 0xFFC00001 - 2**32  # a negative NaN with payload
    x = torch.cat([x, nans])
    h, bf, back = call(ops.simt_halves, x)
    finite = ~x.isnan()
    assert torch.equal(h[finite].view(torch.int16), x[finite].half().view(torch.int16))
    assert torch.equal(bf[finite].view(torch.int16), x[finite].bfloat16().view(torch.int16))
    assert h[~finite].isnan().all() and bf[~finite].isnan().all()
    assert torch.allclose(back[:, 0], h.float(), rtol=0, atol=0, equal_nan=True)
    assert torch.allclose(back[:, 1], bf.float(), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_tensor_core_tile(ops, dtype):
    """wmma m32n8k16: the product of the 16-bit tiles in float; read back before the
    __syncwarp after the store, elements other lanes hold are unwritten (NaN); a misaligned
    tile fails the launch."""
    a = torch.randn(32, 16, generator=gen(7)).to(dtype)
    b = torch.randn(16, 8, generator=gen(8)).to(dtype)
    want = a.double() @ b.double()
    got = call(ops.simt_tensor_core_tile, a, b, 0)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    unsynced = call(ops.simt_tensor_core_tile, a, b, 1)
    assert unsynced.isnan().any()
    with pytest.raises(RuntimeError, match="load_matrix_sync.*not 256-bit aligned"):
        call(ops.simt_tensor_core_tile, a, b, 2)


# ------------------------------------------------------------------------- cooperative grids

def smooth_reference(x, iters):
    for _ in range(iters):
        left = torch.cat([x[:1], x[:-1]])
        right = torch.cat([x[1:], x[-1:]])
        x = (left + x + right) / 3
    return x


@pytest.mark.parametrize("blocks,threads,iters", [(4, 32, 5), (1, 64, 3), (6, 50, 4), (3, 96, 0)])
def test_cooperative_grid_sync_phases(ops, blocks, threads, iters):
    x = torch.randn(1000, generator=gen(3))  # more than blocks * threads: grid-stride
    out = call(ops.simt_smooth, x, iters, blocks, threads, True)
    assert torch.equal(out, smooth_reference(x, iters))


@pytest.mark.parametrize("threads", [32, 100, 256])
def test_cooperative_prefix_sum(ops, threads):
    x = torch.randn(3000, generator=gen(4))
    out = call(ops.simt_prefix_sum, x, threads)
    torch.testing.assert_close(out.double(), x.double().cumsum(0), rtol=1e-4, atol=1e-3)


def test_grid_sync_outside_cooperative_launch_fails(ops):
    with pytest.raises(RuntimeError, match=r"grid_sync\(\) in a non-cooperative launch"):
        call(ops.simt_smooth, torch.randn(100), 2, 2, 32, False)


@pytest.mark.parametrize("short_block", [0, 2])
def test_block_leaving_grid_sync_early_fails(ops, short_block):
    with pytest.raises(RuntimeError, match=r"simt: grid_sync: block \(\d+,0,0\) (exited while \d+ "
                                           r"blocks wait at grid_sync|waits at grid_sync but)"):
        call(ops.simt_smooth, torch.randn(500), 3, 4, 32, True, short_block)


def test_cooperative_grid_too_large(ops):
    with pytest.raises(RuntimeError, match="cooperative launch of 300 blocks"):
        call(ops.simt_smooth, torch.randn(100), 2, 300, 32, True)


# ---------------------------------------------------------------------------- broken kernels

def test_barrier_skipped_by_exiting_threads_fails(ops):
    with pytest.raises(RuntimeError, match=r"simt: barrier divergence: block \(\d+,0,0\): 3 of "
                                           r"256 threads exited while others wait at "
                                           r"__syncthreads \(simt_selftest\.cu:\d+\)"):
        call(ops.simt_divergent_barrier, 2, 256, 0)


def test_threads_at_different_barriers_fail(ops):
    with pytest.raises(RuntimeError) as info:
        call(ops.simt_divergent_barrier, 2, 64, 1)
    lines = re.findall(r"__syncthreads \(simt_selftest\.cu:(\d+)\)", str(info.value))
    assert "barrier divergence" in str(info.value) and len(set(lines)) == 2, str(info.value)


@pytest.mark.parametrize("threads,mode,message", [
    (64, 0, r"warp deadlock: block \(0,0,0\), warp [01]: __shfl_xor_sync\(mask 0xffffffff\) "
            r"waits for lanes 0x80000000 that exited"),
    (48, 1, r"__shfl_xor_sync\(mask 0xffffffff, width 32\) in block \(0,0,0\) thread "
            r"\(\d+,0,0\) \(warp 1, lane \d+\): the mask names lanes that do not exist"),
    (32, 2, r"different collective"),
    (32, 3, r"thread \(0,0,0\) \(warp 0, lane 0\): the mask does not name the calling lane"),
])
def test_bad_shuffles_fail(ops, threads, mode, message):
    with pytest.raises(RuntimeError, match=message):
        call(ops.simt_bad_shuffle, threads, mode)


@pytest.mark.parametrize("block,blocks", [([2048], 1), ([1, 1, 65], 1), ([32, 33], 1), ([32], 0)])
def test_invalid_configuration(ops, block, blocks):
    with pytest.raises(RuntimeError, match="simt: invalid configuration"):
        call(ops.simt_block_sum, torch.randn(64), block, blocks, False)


def test_launches_work_after_failures_and_from_several_threads(ops):
    with pytest.raises(RuntimeError):
        call(ops.simt_divergent_barrier, 1, 128, 0)  # leaves parked fibers behind
    xs = [torch.randn(2000, generator=gen(10 + i)) for i in range(4)]
    results = [None] * len(xs)

    def work(i):
        results[i] = (ops.simt_prefix_sum(xs[i], 64), ops.simt_block_sum(xs[i], [128], 16, False))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
        assert not t.is_alive(), "emulator hang"
    for x, (scan, sums) in zip(xs, results):
        torch.testing.assert_close(scan.double(), x.double().cumsum(0), rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(sums.double(), block_sums(x, 128, 16), rtol=1e-5, atol=1e-4)
