// torch.ops.fusedrnn_emulated.simt_*: the SIMT emulator's self-test kernels (simt_selftest.cu,
// compiled here by the host compiler under FUSEDRNN_SIMT_EMULATION) on CPU float32 tensors, for
// tests/test_simt_emulation.py. A failed launch raises RuntimeError with the emulator's message.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <climits>

#include "simt_selftest.cu"

namespace {

using at::Tensor;
namespace st = fusedrnn::simt_selftest;

void check(cudaError_t err) { TORCH_CHECK(err == cudaSuccess, cudaGetErrorString(err)); }

Tensor input(const Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, "simt: CPU float32 input");
  return x.contiguous();
}

Tensor block_sum(const Tensor& x_, at::IntArrayRef block, int64_t blocks, bool broken) {
  const Tensor x = input(x_);
  TORCH_CHECK(!block.empty() && block.size() <= 3, "block: 1 to 3 dimensions");
  const dim3 b(unsigned(block[0]), block.size() > 1 ? unsigned(block[1]) : 1,
               block.size() > 2 ? unsigned(block[2]) : 1);
  Tensor out = at::empty({blocks}, x.options());
  check(st::block_sum(x.data_ptr<float>(), out.data_ptr<float>(), int(x.numel()), b,
                      unsigned(blocks), broken));
  return out;
}

std::tuple<Tensor, Tensor> warp_segments(const Tensor& x_, int64_t threads, int64_t width) {
  const Tensor x = input(x_);
  TORCH_CHECK(x.numel() % threads == 0, "x: whole blocks");
  Tensor out = at::empty({x.numel(), 5}, x.options());
  Tensor bits = at::empty({x.numel(), 3}, x.options().dtype(at::kInt));
  check(st::warp_segments(x.data_ptr<float>(), out.data_ptr<float>(), bits.data_ptr<int>(),
                          unsigned(x.numel() / threads), int(threads), int(width)));
  return {out, bits};
}

std::tuple<Tensor, Tensor, Tensor> partial_warp(const Tensor& x_) {
  const Tensor x = input(x_);
  const int64_t warps = (x.numel() + 31) / 32;
  Tensor out = at::empty({x.numel(), 2}, x.options());
  Tensor sums = at::empty({warps}, x.options());
  Tensor bits = at::empty({warps, 2}, x.options().dtype(at::kInt));
  check(st::partial_warp(x.data_ptr<float>(), out.data_ptr<float>(), sums.data_ptr<float>(),
                         bits.data_ptr<int>(), int(x.numel())));
  return {out, sums, bits};
}

std::vector<Tensor> atomics(const Tensor& x_, int64_t bins, int64_t blocks, int64_t threads) {
  const Tensor x = input(x_);
  const int n = int(x.numel());
  const auto i32 = x.options().dtype(at::kInt);
  Tensor hist = at::zeros({bins}, i32), fsum = at::zeros({1}, x.options());
  Tensor dsum = at::zeros({1}, x.options().dtype(at::kDouble)), fexch = at::zeros({1}, x.options());
  Tensor ints = at::tensor({INT_MIN, INT_MAX, n, 0, -1}, i32);
  Tensor uints = at::tensor({0, 0, n, -1, 0, -1}, i32);  // -1: UINT_MAX's bits
  Tensor ulls = at::zeros({2}, x.options().dtype(at::kLong));
  check(st::atomics(x.data_ptr<float>(), n, int(bins), unsigned(blocks), int(threads),
                    hist.data_ptr<int>(), fsum.data_ptr<float>(), dsum.data_ptr<double>(),
                    ints.data_ptr<int>(), reinterpret_cast<unsigned*>(uints.data_ptr<int>()),
                    reinterpret_cast<unsigned long long*>(ulls.data_ptr<int64_t>()),
                    fexch.data_ptr<float>()));
  return {hist, fsum, dsum, ints, uints, ulls, fexch};
}

Tensor reverse(const Tensor& x_, int64_t threads, bool broken) {
  const Tensor x = input(x_);
  Tensor out = at::empty_like(x);
  check(st::reverse(x.data_ptr<float>(), out.data_ptr<float>(), int(x.numel()), int(threads),
                    broken));
  return out;
}

// a (32, 16) and b (16, 8), both float16 or both bfloat16: their product on tensor cores.
Tensor tensor_core_tile(const Tensor& a, const Tensor& b, int64_t mode) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type() &&
                  (a.scalar_type() == at::kHalf || a.scalar_type() == at::kBFloat16),
              "simt_tensor_core_tile: a and b both float16 or both bfloat16");
  const Tensor a16 = a.contiguous().view(at::kShort), b16 = b.t().contiguous().view(at::kShort);
  Tensor out = at::empty({32, 8}, a.options().dtype(at::kFloat));
  check(st::tensor_core_tile(reinterpret_cast<const unsigned short*>(a16.data_ptr()),
                             reinterpret_cast<const unsigned short*>(b16.data_ptr()),
                             a.scalar_type() == at::kBFloat16, out.data_ptr<float>(),
                             static_cast<int>(mode)));
  return out;
}

std::tuple<Tensor, Tensor, Tensor> halves(const Tensor& x_) {
  const Tensor x = input(x_);
  Tensor h = at::empty_like(x, at::kHalf), bf = at::empty_like(x, at::kBFloat16);
  Tensor back = at::empty({x.numel(), 2}, x.options());
  check(st::halves(x.data_ptr<float>(), int(x.numel()), reinterpret_cast<__half*>(h.data_ptr()),
                   reinterpret_cast<__nv_bfloat16*>(bf.data_ptr()), back.data_ptr<float>()));
  return {h, bf, back};
}

Tensor smooth(const Tensor& x, int64_t iters, int64_t blocks, int64_t threads, bool cooperative,
              int64_t short_block) {
  Tensor a = input(x).clone(), b = at::empty_like(a);
  check(st::smooth(a.data_ptr<float>(), b.data_ptr<float>(), int(a.numel()), int(iters),
                   unsigned(blocks), int(threads), cooperative, int(short_block)));
  return iters % 2 ? b : a;
}

Tensor prefix_sum(const Tensor& x_, int64_t threads) {
  const Tensor x = input(x_);
  const int64_t blocks = (x.numel() + threads - 1) / threads;
  Tensor out = at::empty_like(x), totals = at::empty({blocks}, x.options());
  check(st::prefix_sum(x.data_ptr<float>(), out.data_ptr<float>(), totals.data_ptr<float>(),
                       int(x.numel()), unsigned(blocks), int(threads)));
  return out;
}

Tensor divergent_barrier(int64_t blocks, int64_t threads, int64_t mode) {
  Tensor out = at::empty({blocks * threads}, at::kFloat);
  check(st::divergent_barrier(out.data_ptr<float>(), unsigned(blocks), int(threads), int(mode)));
  return out;
}

Tensor bad_shuffle(int64_t threads, int64_t mode) {
  Tensor out = at::empty({threads}, at::kFloat);
  check(st::bad_shuffle(out.data_ptr<float>(), int(threads), int(mode)));
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fusedrnn_emulated, m) {
  m.def("simt_block_sum(Tensor x, int[] block, int blocks, bool broken) -> Tensor");
  m.def("simt_warp_segments(Tensor x, int threads, int width) -> (Tensor, Tensor)");
  m.def("simt_partial_warp(Tensor x) -> (Tensor, Tensor, Tensor)");
  m.def("simt_atomics(Tensor x, int bins, int blocks, int threads) -> Tensor[]");
  m.def("simt_reverse(Tensor x, int threads, bool broken) -> Tensor");
  m.def("simt_halves(Tensor x) -> (Tensor, Tensor, Tensor)");
  m.def("simt_tensor_core_tile(Tensor a, Tensor b, int mode) -> Tensor");
  m.def("simt_smooth(Tensor x, int iters, int blocks, int threads, bool cooperative, "
        "int short_block=-1) -> Tensor");
  m.def("simt_prefix_sum(Tensor x, int threads) -> Tensor");
  // No tensor inputs to dispatch on: catch-all kernels.
  m.def("simt_divergent_barrier(int blocks, int threads, int mode) -> Tensor", &divergent_barrier);
  m.def("simt_bad_shuffle(int threads, int mode) -> Tensor", &bad_shuffle);
}

TORCH_LIBRARY_IMPL(fusedrnn_emulated, CPU, m) {
  m.impl("simt_block_sum", &block_sum);
  m.impl("simt_warp_segments", &warp_segments);
  m.impl("simt_partial_warp", &partial_warp);
  m.impl("simt_atomics", &atomics);
  m.impl("simt_reverse", &reverse);
  m.impl("simt_halves", &halves);
  m.impl("simt_tensor_core_tile", &tensor_core_tile);
  m.impl("simt_smooth", &smooth);
  m.impl("simt_prefix_sum", &prefix_sum);
}
