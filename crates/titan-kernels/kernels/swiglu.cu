// SwiGLU gate over n bf16 elements, math in f32:
//   g = silu(a) * b,  silu(a) = a * sigmoid(a)
//   d_a = d_g * b * sigmoid(a) * (1 + a * (1 - sigmoid(a))),  d_b = d_g * silu(a)
// Grid-stride over 16-byte vectors when every pointer is 16-byte aligned (`vec`), then a
// scalar tail; scalars only otherwise.
#include "common.cuh"

__device__ __forceinline__ float sigmoidf_(float a) { return 1.f / (1.f + __expf(-a)); }

extern "C" __global__ void swiglu_fwd_bf16(const bf16 *__restrict__ a, const bf16 *__restrict__ b,
                                           bf16 *__restrict__ g, long long n, int vec) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  const long long start = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const long long nvec = vec ? n / 8 : 0;
  for (long long i = start; i < nvec; i += stride) {
    float av[8], bv[8], o[8];
    unpack8(reinterpret_cast<const bf16x8 *>(a)[i], av);
    unpack8(reinterpret_cast<const bf16x8 *>(b)[i], bv);
#pragma unroll
    for (int k = 0; k < 8; ++k) o[k] = av[k] * sigmoidf_(av[k]) * bv[k];
    reinterpret_cast<bf16x8 *>(g)[i] = pack8(o);
  }
  for (long long i = nvec * 8 + start; i < n; i += stride) {
    const float av = __bfloat162float(a[i]);
    g[i] = __float2bfloat16(av * sigmoidf_(av) * __bfloat162float(b[i]));
  }
}

extern "C" __global__ void swiglu_bwd_bf16(const bf16 *__restrict__ a, const bf16 *__restrict__ b,
                                           const bf16 *__restrict__ dg, bf16 *__restrict__ da,
                                           bf16 *__restrict__ db, long long n, int vec) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  const long long start = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const long long nvec = vec ? n / 8 : 0;
  for (long long i = start; i < nvec; i += stride) {
    float av[8], bv[8], gv[8], oa[8], ob[8];
    unpack8(reinterpret_cast<const bf16x8 *>(a)[i], av);
    unpack8(reinterpret_cast<const bf16x8 *>(b)[i], bv);
    unpack8(reinterpret_cast<const bf16x8 *>(dg)[i], gv);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const float s = sigmoidf_(av[k]);
      oa[k] = gv[k] * bv[k] * s * (1.f + av[k] * (1.f - s));
      ob[k] = gv[k] * av[k] * s;
    }
    reinterpret_cast<bf16x8 *>(da)[i] = pack8(oa);
    reinterpret_cast<bf16x8 *>(db)[i] = pack8(ob);
  }
  for (long long i = nvec * 8 + start; i < n; i += stride) {
    const float av = __bfloat162float(a[i]), bv = __bfloat162float(b[i]);
    const float gv = __bfloat162float(dg[i]);
    const float s = sigmoidf_(av);
    da[i] = __float2bfloat16(gv * bv * s * (1.f + av * (1.f - s)));
    db[i] = __float2bfloat16(gv * av * s);
  }
}
