// The x86-64 instruction sets the CPU's vector kernels are built for, each function compiled for
// its own (target attributes) and chosen at load time by the CPU it runs on: AVX-512F where
// present (unless FUSEDRNN_DISABLE_AVX512 is set: tests and CPUs without it run the AVX2 form),
// else AVX2 + FMA, else (another architecture or compiler) BLAS and plain loops.
#pragma once

#include <cstdlib>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FUSEDRNN_X86_KERNELS 1
#define FUSEDRNN_AVX2 __attribute__((target("avx2,fma")))
#define FUSEDRNN_AVX512 __attribute__((target("avx512f,avx2,fma")))
#else
#define FUSEDRNN_X86_KERNELS 0
#endif

namespace fusedrnn {
namespace cpu {

// AVX2 and FMA on this CPU, and kernels built for them.
inline bool cpu_has_avx2_fma() {
#if FUSEDRNN_X86_KERNELS
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

// Whether the kernels' AVX-512 forms run: AVX-512F (and AVX2 + FMA) here, not disabled.
inline bool use_avx512() {
#if FUSEDRNN_X86_KERNELS
  static const bool use = cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f") &&
                          std::getenv("FUSEDRNN_DISABLE_AVX512") == nullptr;
  return use;
#else
  return false;
#endif
}

// Native bfloat16 dot products on this CPU (AVX512-BF16 or AMX-BF16): where oneDNN's bf16
// kernels, which torch.nn runs in bfloat16, compute at twice the float32 rate or more.
inline bool cpu_has_native_bf16() {
#if FUSEDRNN_X86_KERNELS
  static const bool has =
      __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
  return has;
#else
  return false;
#endif
}

}  // namespace cpu
}  // namespace fusedrnn
