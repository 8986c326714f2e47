// Self-test kernels of the SIMT emulation (simt.h), written as ordinary CUDA so that nvcc
// compiles them as well. Every launcher takes device pointers (host memory under emulation) and
// returns its launch's cudaError_t; tests/test_simt_emulation.py compares the results with torch
// (through csrc/emulation/simt_selftest_ops.cpp). `broken` / `mode` select deliberately wrong
// kernels that the emulator must expose.
#pragma once

#include "../cuda/cuda_api.h"

namespace fusedrnn {
namespace simt_selftest {

// out[b] = sum of block b's slice of x (block.x * block.y * block.z elements, zero past n) by a
// tree reduction in static shared memory. broken: without its __syncthreads.
cudaError_t block_sum(const float* x, float* out, int n, dim3 block, unsigned blocks,
                      bool broken);

// x has blocks * threads elements, threads a multiple of 32. Per thread i, in segments of
// `width` lanes (full mask): out[5i + 0] segment sum by __shfl_xor_sync, [1] segment sum by
// __shfl_down_sync on the segment's first lane (0 elsewhere), [2] inclusive scan by
// __shfl_up_sync, [3] __shfl_sync(x, width + 3) (lane (width + 3) % width of the segment), [4]
// x[i ^ 1] through shared memory and __syncwarp. bits[3i + 0..2]: __ballot_sync(x > 0),
// __any_sync(x > 1.5), __all_sync(x > -1.5).
cudaError_t warp_segments(const float* x, float* out, int* bits, unsigned blocks, int threads,
                          int width);

// One block of `threads` (not a multiple of 32: a partial last warp), every warp using the mask
// of its existing lanes. out[2t] = lane 0's x (__shfl_sync), out[2t + 1] = inclusive scan in
// the warp (__shfl_up_sync); per warp w: warp_sum[w] (guarded __shfl_down_sync tree),
// warp_bits[2w] = __ballot_sync(x > 0), warp_bits[2w + 1] = __activemask() (on the GPU the
// converged lanes, all of the warp here; the emulation runs lanes diverged: the caller's bit).
cudaError_t partial_warp(const float* x, float* out, float* warp_sum, int* warp_bits,
                         int threads);

// Atomics from every thread of `blocks` x `threads` (x has n elements in [0, 1), i its index,
// q = int(1000 x) - 500, bin = int(bins x)): hist[bin] += 1, *fsum += x, *dsum += x,
// ints = {max q, min q, n - count (atomicSub), sum of bins (atomicCAS loop), some i (atomicExch)},
// uints = {count, max i, n - count, min i + 5, count (atomicCAS loop), some i (atomicExch)},
// ulls = {sum of i (atomicAdd), sum of i (atomicCAS loop)}, *fexch = some x (atomicExch).
// The caller initializes ints to {INT_MIN, INT_MAX, n, 0, -1}, uints to {0, 0, n, UINT_MAX, 0,
// UINT_MAX} and everything else to zero.
cudaError_t atomics(const float* x, int n, int bins, unsigned blocks, int threads, int* hist,
                    float* fsum, double* dsum, int* ints, unsigned* uints,
                    unsigned long long* ulls, float* fexch);

// out = x reversed within each block's slice of `threads` elements, through dynamic shared
// memory. broken: without its __syncthreads.
cudaError_t reverse(const float* x, float* out, int n, int threads, bool broken);

// h = __float2half(x), bf = __float2bfloat16(x); back[2i], back[2i + 1] = their __half2float /
// __bfloat162float.
cudaError_t halves(const float* x, int n, __half* h, __nv_bfloat16* bf, float* back);

// One warp: out (32, 8) = a (32, 16) b (16, 8) on tensor cores (wmma m32n8k16, 16-bit a and b
// as T = __half or __nv_bfloat16 bits in a16 / b16, float accumulation), staged through dynamic
// shared memory; out is copied from the stored tile by every lane. mode 0: correct; 1: the
// copy without the __syncwarp after store_matrix_sync (reads elements other lanes have not
// stored yet); 2: a tile pointer off 256-bit alignment (the launch must fail).
cudaError_t tensor_core_tile(const unsigned short* a16, const unsigned short* b16, bool bf16,
                             float* out, int mode);

// Cooperative: `iters` grid_sync phases of a 3-point average (ends clamped) over n elements,
// grid-stride, ping-ponging between a (holding x at the start) and b: the result is in b for odd
// iters, a for even. Broken: cooperative = false launches it plainly, which must fail at
// grid_sync; block short_block (-1: none) stops a phase early, leaving the others in grid_sync.
cudaError_t smooth(float* a, float* b, int n, int iters, unsigned blocks, int threads,
                   bool cooperative, int short_block);

// Cooperative: inclusive prefix sum of n <= blocks * threads elements: each block scans its
// slice in dynamic shared memory and publishes its total, grid_sync, then adds the totals of
// the blocks before it. totals has `blocks` elements.
cudaError_t prefix_sum(const float* x, float* out, float* totals, int n, unsigned blocks,
                       int threads);

// Broken barriers: mode 0, the last 3 threads of every block skip a __syncthreads and exit;
// mode 1, odd and even threads wait at two different __syncthreads. out: blocks * threads.
cudaError_t divergent_barrier(float* out, unsigned blocks, int threads, int mode);

// Broken shuffles (a __shfl_xor_sync over one block of `threads`): mode 0, lane 31 of each warp
// exits first while the others name it; mode 1, a full mask in a partial last warp (threads not
// a multiple of 32); mode 2, lanes 0-15 use mask 0xffff while lanes 16-31 use the full mask;
// mode 3, lane 0 passes a mask without itself. out: threads.
cudaError_t bad_shuffle(float* out, int threads, int mode);

}  // namespace simt_selftest
}  // namespace fusedrnn
