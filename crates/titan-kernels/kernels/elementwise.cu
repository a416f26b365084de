// Elementwise bf16 kernels over contiguous tensors, in 16-byte vectors (8 bf16 per access).
//   add_bf16: out = bf16(a + b), the sum of two bf16 values taken in f32 and rounded once.
//     f32 holds that sum exactly unless the exponents are far apart, and then the double
//     rounding (f32, then bf16) still gives the correctly rounded bf16 sum (f32 has more
//     than 2 * 8 + 2 bits), so the result is bit for bit candle's bf16 add.
// The launcher guarantees n % 8 == 0 and 16-byte aligned pointers; `n8` = n / 8.
#include "common.cuh"

union Vec16 {
  uint4 u;
  bf16x8 v;
};

// 8 bf16 sums, each taken in f32 and rounded once.
__device__ __forceinline__ uint4 add8(const Vec16 &x, const Vec16 &y) {
  float fa[8], fb[8];
  unpack8(x.v, fa);
  unpack8(y.v, fb);
#pragma unroll
  for (int k = 0; k < 8; ++k) fa[k] += fb[k];
  Vec16 o;
  o.v = pack8(fa);
  return o.u;
}

// Grid-stride over vectors, two per iteration so that each thread has four loads in flight.
extern "C" __global__ void __launch_bounds__(256)
    add_bf16(const bf16 *__restrict__ a, const bf16 *__restrict__ b, bf16 *__restrict__ out,
             long long n8) {
  const uint4 *av = reinterpret_cast<const uint4 *>(a);
  const uint4 *bv = reinterpret_cast<const uint4 *>(b);
  uint4 *ov = reinterpret_cast<uint4 *>(out);
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += 2 * stride) {
    const long long i2 = i + stride;
    const bool second = i2 < n8;
    Vec16 x0, y0, x1, y1;
    x0.u = __ldg(av + i);
    y0.u = __ldg(bv + i);
    x1.u = second ? __ldg(av + i2) : make_uint4(0u, 0u, 0u, 0u);
    y1.u = second ? __ldg(bv + i2) : make_uint4(0u, 0u, 0u, 0u);
    ov[i] = add8(x0, y0);
    if (second) ov[i2] = add8(x1, y1);
  }
}
