// RMSNorm forward and backward over rows of `dim` bf16 values, math in f32.
//   y = x * rstd * w,  rstd = 1 / sqrt(mean(x^2) + eps)
//   dx = rstd * (g - xhat * mean(g * xhat)),  g = dy * w,  xhat = x * rstd
//   dw += sum over rows of dy * xhat   (f32, one atomicAdd per column per block)
// Residual forms (nullable pointers, 0 = none):
//   forward: `r` given -> the normalized row is h = bf16(x + r) (the same single rounding as
//     candle's bf16 add), written to `h`; rstd and y come from the rounded h.
//   backward: `dres` given -> dx = bf16(dres + dx_f32): one rounding where the composite
//     (bf16 dx, then a bf16 add) rounds twice.
//
// Two kernel families:
//   *_reg<NV>: 16-byte vectors, each thread holds NV vectors (8 columns each) of its row in
//     registers, so x/r/dy/w are read once per row (backward: w and the dw partials stay in
//     registers for all of the block's rows). Needs dim % 8 == 0, aligned rows and
//     dim / 8 <= NV * blockDim.x.
//   generic: any dim; 16-byte vectors when the launcher says so (`vec`), scalars otherwise;
//     re-reads the row per pass (L1/L2) and keeps dw partials in shared memory.
#include "common.cuh"

__device__ __forceinline__ bf16x8 ld8(const bf16 *p) { return *reinterpret_cast<const bf16x8 *>(p); }
__device__ __forceinline__ void st8(bf16 *p, const bf16x8 &v) { *reinterpret_cast<bf16x8 *>(p) = v; }

// ---------------------------------------------------------------------------------------------
// Register-resident kernels.

// One block per row. Thread t owns vectors t, t + T, ..., t + (NV-1) T of the row.
template <int NV>
__device__ __forceinline__ void fwd_reg(const bf16 *__restrict__ x, const bf16 *__restrict__ r,
                                        const bf16 *__restrict__ w, bf16 *__restrict__ h,
                                        bf16 *__restrict__ y, float *__restrict__ rstd_out,
                                        int rows, int dim, float eps) {
  __shared__ float scratch[32];
  const int row = blockIdx.x;
  if (row >= rows) return;  // uniform over the block
  const int nvec = dim >> 3;
  const size_t base = (size_t)row * dim;
  bf16x8 hv[NV];
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const int v = threadIdx.x + k * blockDim.x;
    if (v < nvec) {
      const size_t off = base + (size_t)v * 8;
      bf16x8 a = ld8(x + off);
      if (r != nullptr) {
        float fa[8], fb[8];
        unpack8(a, fa);
        unpack8(ld8(r + off), fb);
#pragma unroll
        for (int i = 0; i < 8; ++i) fa[i] += fb[i];
        a = pack8(fa);  // round once: the norm below sees exactly what `h` holds
        st8(h + off, a);
      }
      hv[k] = a;
      float f[8];
      unpack8(a, f);
#pragma unroll
      for (int i = 0; i < 8; ++i) ss += f[i] * f[i];
    }
  }
  ss = block_sum(ss, scratch);
  const float rs = rsqrtf(ss / (float)dim + eps);
  if (threadIdx.x == 0) rstd_out[row] = rs;
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const int v = threadIdx.x + k * blockDim.x;
    if (v < nvec) {
      float f[8], wv[8], o[8];
      unpack8(hv[k], f);
      unpack8(ld8(w + v * 8), wv);
#pragma unroll
      for (int i = 0; i < 8; ++i) o[i] = f[i] * rs * wv[i];
      st8(y + base + (size_t)v * 8, pack8(o));
    }
  }
}

// Rows row0 .. row0 + rows_per_block of one block. `dw` (dim f32) must be zeroed by the caller.
template <int NV>
__device__ __forceinline__ void bwd_reg(const bf16 *__restrict__ x, const bf16 *__restrict__ w,
                                        const float *__restrict__ rstd,
                                        const bf16 *__restrict__ dy,
                                        const bf16 *__restrict__ dres, bf16 *__restrict__ dx,
                                        float *__restrict__ dw, int rows, int dim,
                                        int rows_per_block) {
  __shared__ float scratch[32];
  const int nvec = dim >> 3;
  bf16x8 wv[NV];
  float dwp[NV][8];
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const int v = threadIdx.x + k * blockDim.x;
    if (v < nvec) wv[k] = ld8(w + v * 8);
#pragma unroll
    for (int i = 0; i < 8; ++i) dwp[k][i] = 0.f;
  }
  const int row0 = blockIdx.x * rows_per_block;
  const int row1 = min(rows, row0 + rows_per_block);
  for (int row = row0; row < row1; ++row) {  // uniform over the block
    const size_t base = (size_t)row * dim;
    const float rs = rstd[row];
    bf16x8 xv[NV], gv[NV];
    float acc = 0.f;  // sum of g * xhat
#pragma unroll
    for (int k = 0; k < NV; ++k) {
      const int v = threadIdx.x + k * blockDim.x;
      if (v < nvec) {
        const size_t off = base + (size_t)v * 8;
        xv[k] = ld8(x + off);
        gv[k] = ld8(dy + off);
        float xf[8], df[8], wf[8];
        unpack8(xv[k], xf);
        unpack8(gv[k], df);
        unpack8(wv[k], wf);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const float xh = xf[i] * rs;
          acc += df[i] * wf[i] * xh;
          dwp[k][i] += df[i] * xh;
        }
      }
    }
    const float m = block_sum(acc, scratch) / (float)dim;
#pragma unroll
    for (int k = 0; k < NV; ++k) {
      const int v = threadIdx.x + k * blockDim.x;
      if (v < nvec) {
        const size_t off = base + (size_t)v * 8;
        float xf[8], df[8], wf[8], o[8];
        unpack8(xv[k], xf);
        unpack8(gv[k], df);
        unpack8(wv[k], wf);
#pragma unroll
        for (int i = 0; i < 8; ++i) o[i] = rs * (df[i] * wf[i] - xf[i] * rs * m);
        if (dres != nullptr) {
          float rf[8];
          unpack8(ld8(dres + off), rf);
#pragma unroll
          for (int i = 0; i < 8; ++i) o[i] += rf[i];
        }
        st8(dx + off, pack8(o));
      }
    }
  }
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const int v = threadIdx.x + k * blockDim.x;
    if (v < nvec) {
#pragma unroll
      for (int i = 0; i < 8; ++i) atomicAdd(dw + v * 8 + i, dwp[k][i]);
    }
  }
}

// At most 1024 threads: with NV <= 2 the kernels fit the 64 registers that allows.
#define NORM_REG_KERNELS(NV)                                                                       \
  extern "C" __global__ void __launch_bounds__(1024)                                               \
      rmsnorm_fwd_reg##NV##_bf16(const bf16 *__restrict__ x, const bf16 *__restrict__ r,           \
                                 const bf16 *__restrict__ w, bf16 *__restrict__ h,                 \
                                 bf16 *__restrict__ y, float *__restrict__ rstd_out, int rows,     \
                                 int dim, float eps) {                                             \
    fwd_reg<NV>(x, r, w, h, y, rstd_out, rows, dim, eps);                                          \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(1024) rmsnorm_bwd_reg##NV##_bf16(                   \
      const bf16 *__restrict__ x, const bf16 *__restrict__ w, const float *__restrict__ rstd,      \
      const bf16 *__restrict__ dy, const bf16 *__restrict__ dres, bf16 *__restrict__ dx,           \
      float *__restrict__ dw, int rows, int dim, int rows_per_block) {                             \
    bwd_reg<NV>(x, w, rstd, dy, dres, dx, dw, rows, dim, rows_per_block);                          \
  }

NORM_REG_KERNELS(1)
NORM_REG_KERNELS(2)

// ---------------------------------------------------------------------------------------------
// Generic kernels (any dim).

extern "C" __global__ void rmsnorm_fwd_bf16(const bf16 *__restrict__ x, const bf16 *__restrict__ r,
                                            const bf16 *__restrict__ w, bf16 *__restrict__ h,
                                            bf16 *__restrict__ y, float *__restrict__ rstd_out,
                                            int rows, int dim, float eps, int vec) {
  __shared__ float scratch[32];
  const int row = blockIdx.x;
  if (row >= rows) return;
  const size_t base = (size_t)row * dim;
  const bf16 *xr = x + base;
  const bf16 *rr = r != nullptr ? r + base : nullptr;
  bf16 *yr = y + base;
  // Pass 1 writes h; pass 2 recomputes it from x and r (bitwise the same) instead of reading
  // `h` back, so no pointer is both written and read.
  float ss = 0.f;
  if (vec) {
    for (int c = threadIdx.x * 8; c < dim; c += blockDim.x * 8) {
      float v[8];
      unpack8(ld8(xr + c), v);
      if (rr != nullptr) {
        float b[8];
        unpack8(ld8(rr + c), b);
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] += b[i];
        const bf16x8 hv = pack8(v);
        st8(h + base + c, hv);
        unpack8(hv, v);
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) ss += v[i] * v[i];
    }
  } else {
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
      float v = __bfloat162float(xr[c]);
      if (rr != nullptr) {
        const bf16 hv = __float2bfloat16(v + __bfloat162float(rr[c]));
        h[base + c] = hv;
        v = __bfloat162float(hv);
      }
      ss += v * v;
    }
  }
  ss = block_sum(ss, scratch);
  const float rs = rsqrtf(ss / (float)dim + eps);
  if (threadIdx.x == 0) rstd_out[row] = rs;
  if (vec) {
    for (int c = threadIdx.x * 8; c < dim; c += blockDim.x * 8) {
      float v[8], wv[8], o[8];
      unpack8(ld8(xr + c), v);
      if (rr != nullptr) {
        float b[8];
        unpack8(ld8(rr + c), b);
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] += b[i];
        unpack8(pack8(v), v);
      }
      unpack8(ld8(w + c), wv);
#pragma unroll
      for (int i = 0; i < 8; ++i) o[i] = v[i] * rs * wv[i];
      st8(yr + c, pack8(o));
    }
  } else {
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
      float v = __bfloat162float(xr[c]);
      if (rr != nullptr) v = __bfloat162float(__float2bfloat16(v + __bfloat162float(rr[c])));
      yr[c] = __float2bfloat16(v * rs * __bfloat162float(w[c]));
    }
  }
}

// Backward. `dw` (dim f32) must be zeroed by the caller; each block adds its rows' share.
// Shared memory: dim floats for the block's dw partial sums.
extern "C" __global__ void rmsnorm_bwd_bf16(const bf16 *__restrict__ x, const bf16 *__restrict__ w,
                                            const float *__restrict__ rstd,
                                            const bf16 *__restrict__ dy,
                                            const bf16 *__restrict__ dres, bf16 *__restrict__ dx,
                                            float *__restrict__ dw, int rows, int dim,
                                            int rows_per_block, int vec) {
  extern __shared__ float dw_part[];
  __shared__ float scratch[32];
  for (int c = threadIdx.x; c < dim; c += blockDim.x) dw_part[c] = 0.f;
  __syncthreads();
  const int row0 = blockIdx.x * rows_per_block;
  const int row1 = min(rows, row0 + rows_per_block);
  for (int row = row0; row < row1; ++row) {
    const size_t base = (size_t)row * dim;
    const bf16 *xr = x + base;
    const bf16 *dyr = dy + base;
    const bf16 *rr = dres != nullptr ? dres + base : nullptr;
    bf16 *dxr = dx + base;
    const float r = rstd[row];
    // mean(g * xhat)
    float acc = 0.f;
    if (vec) {
      for (int c = threadIdx.x * 8; c < dim; c += blockDim.x * 8) {
        float xv[8], dv[8], wv[8];
        unpack8(ld8(xr + c), xv);
        unpack8(ld8(dyr + c), dv);
        unpack8(ld8(w + c), wv);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const float xh = xv[i] * r;
          acc += dv[i] * wv[i] * xh;
          dw_part[c + i] += dv[i] * xh;  // each column is owned by one thread
        }
      }
    } else {
      for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        const float xh = __bfloat162float(xr[c]) * r;
        const float dv = __bfloat162float(dyr[c]);
        acc += dv * __bfloat162float(w[c]) * xh;
        dw_part[c] += dv * xh;
      }
    }
    const float m = block_sum(acc, scratch) / (float)dim;
    if (vec) {
      for (int c = threadIdx.x * 8; c < dim; c += blockDim.x * 8) {
        float xv[8], dv[8], wv[8], o[8];
        unpack8(ld8(xr + c), xv);
        unpack8(ld8(dyr + c), dv);
        unpack8(ld8(w + c), wv);
#pragma unroll
        for (int i = 0; i < 8; ++i) o[i] = r * (dv[i] * wv[i] - xv[i] * r * m);
        if (rr != nullptr) {
          float rf[8];
          unpack8(ld8(rr + c), rf);
#pragma unroll
          for (int i = 0; i < 8; ++i) o[i] += rf[i];
        }
        st8(dxr + c, pack8(o));
      }
    } else {
      for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        const float xv = __bfloat162float(xr[c]);
        float o = r * (__bfloat162float(dyr[c]) * __bfloat162float(w[c]) - xv * r * m);
        if (rr != nullptr) o += __bfloat162float(rr[c]);
        dxr[c] = __float2bfloat16(o);
      }
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < dim; c += blockDim.x) atomicAdd(dw + c, dw_part[c]);
}
