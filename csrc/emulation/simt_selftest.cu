// Self-test kernels of the SIMT emulation; see simt_selftest.h. Plain CUDA: compiled by nvcc
// like every .cu, and by the host compiler under FUSEDRNN_SIMT_EMULATION (included by
// simt_selftest_ops.cpp).
#include "simt_selftest.h"

namespace fusedrnn {
namespace simt_selftest {
namespace {

constexpr unsigned kFull = 0xffffffffu;

__global__ void block_sum_kernel(const float* x, float* out, int n, bool broken) {
  __shared__ float partial[1024];
  const unsigned nt = blockDim.x * blockDim.y * blockDim.z;
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const long long i = (long long)blockIdx.x * nt + t;
  partial[t] = i < n ? x[i] : 0.0f;
  if (!broken) __syncthreads();
  unsigned p = 1;  // the largest power of two <= nt; the tail folds onto the first nt - p
  while (2 * p <= nt) p *= 2;
  if (t >= p) partial[t - p] += partial[t];
  if (!broken) __syncthreads();
  for (unsigned s = p / 2; s > 0; s /= 2) {
    if (t < s) partial[t] += partial[t + s];
    if (!broken) __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = partial[0];
}

__global__ void warp_segments_kernel(const float* x, float* out, int* bits, int width) {
  __shared__ float exchange[1024];
  const unsigned t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
  const int seg_lane = int(t % 32) % width;
  const float v = x[i];
  float sum = v;
  for (int m = width / 2; m > 0; m /= 2) sum += __shfl_xor_sync(kFull, sum, m, width);
  float down = v;
  for (int d = width / 2; d > 0; d /= 2) down += __shfl_down_sync(kFull, down, d, width);
  float scan = v;
  for (int d = 1; d < width; d *= 2) {
    const float o = __shfl_up_sync(kFull, scan, d, width);
    if (seg_lane >= d) scan += o;
  }
  const float bcast = __shfl_sync(kFull, v, width + 3, width);
  exchange[t] = v;
  __syncwarp();
  const float neighbour = exchange[t ^ 1];
  out[5 * i + 0] = sum;
  out[5 * i + 1] = seg_lane == 0 ? down : 0.0f;
  out[5 * i + 2] = scan;
  out[5 * i + 3] = bcast;
  out[5 * i + 4] = neighbour;
  bits[3 * i + 0] = int(__ballot_sync(kFull, v > 0.0f));
  bits[3 * i + 1] = __any_sync(kFull, v > 1.5f);
  bits[3 * i + 2] = __all_sync(kFull, v > -1.5f);
}

__global__ void partial_warp_kernel(const float* x, float* out, float* warp_sum, int* warp_bits) {
  const unsigned t = threadIdx.x, lane = t % 32, w = t / 32;
  const unsigned live = blockDim.x - w * 32 >= 32 ? 32 : blockDim.x - w * 32;
  const unsigned mask = live == 32 ? kFull : (1u << live) - 1;
  const float v = x[t];
  float sum = v;
  for (unsigned d = 16; d > 0; d /= 2) {
    const float o = __shfl_down_sync(mask, sum, d);  // undefined from lanes past `live`
    if (lane + d < live) sum += o;
  }
  float scan = v;
  for (unsigned d = 1; d < 32; d *= 2) {
    const float o = __shfl_up_sync(mask, scan, d);
    if (lane >= d) scan += o;
  }
  out[2 * t] = __shfl_sync(mask, v, 0);
  out[2 * t + 1] = scan;
  const unsigned ballot = __ballot_sync(mask, v > 0.0f);
  const unsigned active = __activemask();
  if (lane == 0) {
    warp_sum[w] = sum;
    warp_bits[2 * w] = int(ballot);
    warp_bits[2 * w + 1] = int(active);
  }
}

__global__ void atomics_kernel(const float* x, int n, int bins, int* hist, float* fsum,
                               double* dsum, int* ints, unsigned* uints, unsigned long long* ulls,
                               float* fexch) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += stride) {
    const float v = x[i];
    const int bin = int(v * bins) < bins ? int(v * bins) : bins - 1;
    const int q = int(v * 1000.0f) - 500;
    atomicAdd(hist + bin, 1);
    atomicAdd(fsum, v);
    atomicAdd(dsum, double(v));
    atomicMax(ints + 0, q);
    atomicMin(ints + 1, q);
    atomicSub(ints + 2, 1);
    for (int old = ints[3], assumed = old + 1; old != assumed;) {
      assumed = old;
      old = atomicCAS(ints + 3, assumed, assumed + bin);
    }
    atomicExch(ints + 4, int(i));
    atomicAdd(uints + 0, 1u);
    atomicMax(uints + 1, unsigned(i));
    atomicSub(uints + 2, 1u);
    atomicMin(uints + 3, unsigned(i) + 5);
    for (unsigned old = uints[4], assumed = old + 1; old != assumed;) {
      assumed = old;
      old = atomicCAS(uints + 4, assumed, assumed + 1);
    }
    atomicExch(uints + 5, unsigned(i));
    atomicAdd(ulls + 0, (unsigned long long)i);
    for (unsigned long long old = ulls[1], assumed = old + 1; old != assumed;) {
      assumed = old;
      old = atomicCAS(ulls + 1, assumed, assumed + (unsigned long long)i);
    }
    atomicExch(fexch, v);
  }
}

__global__ void reverse_kernel(const float* x, float* out, int n, bool broken) {
  float* s = fusedrnn::cuda::dynamic_shared_memory<float>();
  const unsigned t = threadIdx.x;
  const long long base = (long long)blockIdx.x * blockDim.x;
  const unsigned len = n - base < blockDim.x ? unsigned(n - base) : blockDim.x;
  if (t < len) s[t] = x[base + t];
  if (!broken) __syncthreads();
  if (t < len) out[base + t] = s[len - 1 - t];
}

__global__ void halves_kernel(const float* x, int n, __half* h, __nv_bfloat16* bf, float* back) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += stride) {
    h[i] = __float2half(x[i]);
    bf[i] = __float2bfloat16(x[i]);
    back[2 * i] = __half2float(h[i]);
    back[2 * i + 1] = __bfloat162float(bf[i]);
  }
}

template <typename T>
__global__ void tensor_core_tile_kernel(const unsigned short* a16, const unsigned short* b16,
                                        float* out, int mode) {
  namespace wmma = nvcuda::wmma;
  // a (32 x 16, row-major) at 0, b (16 x 8, col-major: column j at 16 j) after it, the product
  // (32 x 8, row-major) after that; mode 2 shifts a by 8 bytes.
  unsigned char* shared = fusedrnn::cuda::dynamic_shared_memory<unsigned char>();
  T* a = reinterpret_cast<T*>(shared + (mode == 2 ? 8 : 0));
  T* b = reinterpret_cast<T*>(shared + 2048);
  float* d = reinterpret_cast<float*>(shared + 4096);
  const unsigned short* a_bits = a16;
  unsigned short* a_dst = reinterpret_cast<unsigned short*>(a);
  unsigned short* b_dst = reinterpret_cast<unsigned short*>(b);
  for (int i = threadIdx.x; i < 32 * 16; i += blockDim.x) a_dst[i] = a_bits[i];
  for (int i = threadIdx.x; i < 16 * 8; i += blockDim.x) b_dst[i] = b16[i];
  __syncwarp();
  wmma::fragment<wmma::matrix_a, 32, 8, 16, T, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 32, 8, 16, T, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 32, 8, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(d, acc, 8, wmma::mem_row_major);
  if (mode != 1) __syncwarp();
  // Each lane copies elements its neighbour stored.
  for (int i = threadIdx.x; i < 32 * 8; i += blockDim.x) out[(i + 1) % 256] = d[(i + 1) % 256];
}

__global__ void smooth_kernel(float* a, float* b, int n, int iters, int short_block) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  const int phases = int(blockIdx.x) == short_block ? iters - 1 : iters;
  for (int it = 0; it < phases; ++it) {
    const float* src = it % 2 ? b : a;
    float* dst = it % 2 ? a : b;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += stride) {
      const float left = src[i > 0 ? i - 1 : i], right = src[i + 1 < n ? i + 1 : i];
      dst[i] = (left + src[i] + right) / 3.0f;
    }
    fusedrnn::cuda::grid_sync();  // the next phase reads neighbours other blocks wrote
  }
}

__global__ void prefix_sum_kernel(const float* x, float* out, float* totals, int n) {
  float* s = fusedrnn::cuda::dynamic_shared_memory<float>();
  const unsigned t = threadIdx.x;
  const long long i = (long long)blockIdx.x * blockDim.x + t;
  s[t] = i < n ? x[i] : 0.0f;
  __syncthreads();
  for (unsigned d = 1; d < blockDim.x; d *= 2) {  // Hillis-Steele inclusive scan
    const float o = t >= d ? s[t - d] : 0.0f;
    __syncthreads();
    s[t] += o;
    __syncthreads();
  }
  if (t == blockDim.x - 1) totals[blockIdx.x] = s[t];
  fusedrnn::cuda::grid_sync();
  float offset = 0.0f;
  for (unsigned k = 0; k < blockIdx.x; ++k) offset += totals[k];
  if (i < n) out[i] = s[t] + offset;
}

__global__ void divergent_barrier_kernel(float* out, int mode) {
  __shared__ float s[1024];
  const unsigned t = threadIdx.x;
  s[t] = float(t);
  if (mode == 0) {
    if (t + 3 < blockDim.x) __syncthreads();  // the last 3 threads skip it (and exit)
  } else if (t % 2) {
    __syncthreads();
  } else {
    __syncthreads();  // a different barrier than the odd threads'
  }
  out[blockIdx.x * blockDim.x + t] = s[blockDim.x - 1 - t];
}

__global__ void bad_shuffle_kernel(float* out, int mode) {
  const unsigned t = threadIdx.x, lane = t % 32;
  float v = float(t);
  if (mode == 0 && lane == 31) return;  // exits; the other lanes still name it
  unsigned mask = kFull;                // mode 1: names lanes a partial warp lacks
  if (mode == 2 && lane < 16) mask = 0xffffu;
  if (mode == 3 && lane == 0) mask = kFull & ~1u;
  v += __shfl_xor_sync(mask, v, 1);
  out[t] = v;
}

}  // namespace

cudaError_t block_sum(const float* x, float* out, int n, dim3 block, unsigned blocks,
                      bool broken) {
  return cuda::launch(block_sum_kernel, dim3(blocks), block, 0, nullptr, x, out, n, broken);
}

cudaError_t warp_segments(const float* x, float* out, int* bits, unsigned blocks, int threads,
                          int width) {
  return cuda::launch(warp_segments_kernel, dim3(blocks), dim3(threads), 0, nullptr, x, out,
                      bits, width);
}

cudaError_t partial_warp(const float* x, float* out, float* warp_sum, int* warp_bits,
                         int threads) {
  return cuda::launch(partial_warp_kernel, dim3(1), dim3(threads), 0, nullptr, x, out, warp_sum,
                      warp_bits);
}

cudaError_t atomics(const float* x, int n, int bins, unsigned blocks, int threads, int* hist,
                    float* fsum, double* dsum, int* ints, unsigned* uints,
                    unsigned long long* ulls, float* fexch) {
  return cuda::launch(atomics_kernel, dim3(blocks), dim3(threads), 0, nullptr, x, n, bins, hist,
                      fsum, dsum, ints, uints, ulls, fexch);
}

cudaError_t reverse(const float* x, float* out, int n, int threads, bool broken) {
  const unsigned blocks = unsigned((n + threads - 1) / threads);
  return cuda::launch(reverse_kernel, dim3(blocks), dim3(threads), threads * sizeof(float),
                      nullptr, x, out, n, broken);
}

cudaError_t halves(const float* x, int n, __half* h, __nv_bfloat16* bf, float* back) {
  return cuda::launch(halves_kernel, dim3(4), dim3(96), 0, nullptr, x, n, h, bf, back);
}

cudaError_t tensor_core_tile(const unsigned short* a16, const unsigned short* b16, bool bf16,
                             float* out, int mode) {
  constexpr size_t kShared = 4096 + 32 * 8 * sizeof(float);
  return bf16 ? cuda::launch(tensor_core_tile_kernel<__nv_bfloat16>, dim3(1), dim3(32), kShared,
                             nullptr, a16, b16, out, mode)
              : cuda::launch(tensor_core_tile_kernel<__half>, dim3(1), dim3(32), kShared, nullptr,
                             a16, b16, out, mode);
}

cudaError_t smooth(float* a, float* b, int n, int iters, unsigned blocks, int threads,
                   bool cooperative, int short_block) {
  if (cooperative)
    return cuda::launch_cooperative(smooth_kernel, dim3(blocks), dim3(threads), 0, nullptr, a,
                                    b, n, iters, short_block);
  return cuda::launch(smooth_kernel, dim3(blocks), dim3(threads), 0, nullptr, a, b, n, iters,
                      short_block);
}

cudaError_t prefix_sum(const float* x, float* out, float* totals, int n, unsigned blocks,
                       int threads) {
  return cuda::launch_cooperative(prefix_sum_kernel, dim3(blocks), dim3(threads),
                                  threads * sizeof(float), nullptr, x, out, totals, n);
}

cudaError_t divergent_barrier(float* out, unsigned blocks, int threads, int mode) {
  return cuda::launch(divergent_barrier_kernel, dim3(blocks), dim3(threads), 0, nullptr, out,
                      mode);
}

cudaError_t bad_shuffle(float* out, int threads, int mode) {
  return cuda::launch(bad_shuffle_kernel, dim3(1), dim3(threads), 0, nullptr, out, mode);
}

}  // namespace simt_selftest
}  // namespace fusedrnn
