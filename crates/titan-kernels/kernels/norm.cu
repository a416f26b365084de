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
// Three kernel families:
//   *_rows1: dim % 8 == 0, aligned rows, dim <= 4096: one vector per thread, 4 rows per block
//     at once (all loads issued first, one barrier round for the 4 row sums).
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

// ---------------------------------------------------------------------------------------------
// Row-group kernels: a block handles R rows at once (dim % 8 == 0, aligned rows, dim / 8 <=
// NV * blockDim.x <= NV * 512). Each thread first issues the loads of all R rows, so R rows
// of memory traffic are in flight per thread, and the R row sums share one barrier round;
// the row-at-a-time kernels above wait a full load latency plus two barriers per row.
// R = 4 with NV = 1: the backward then fits 128 registers without spills (R = 8, or NV = 2,
// spill with nvcc 13.0), i.e. two 256-thread blocks or one 512-thread block per SM, each
// with 8 row vectors of x and dy (4 of d_res) in flight per thread.

// 16-byte accesses through uint4 (a bf16x8 struct copy may compile to four 32-bit accesses).
union Vec16 {
  uint4 u;
  bf16x8 v;
};
// `p`'s 16 bytes if `in`, else zeros (rows/columns outside the tensor, so the math needs no
// predicates), as one predicated 128-bit load.
__device__ __forceinline__ bf16x8 ld16_if(const bf16 *p, bool in) {
  Vec16 t;
  t.u = make_uint4(0u, 0u, 0u, 0u);
  if (in) t.u = __ldg(reinterpret_cast<const uint4 *>(p));
  return t.v;
}
__device__ __forceinline__ void st16(bf16 *p, const bf16x8 &v) {
  Vec16 t;
  t.v = v;
  *reinterpret_cast<uint4 *>(p) = t.u;
}

// Hides `v`'s value from the compiler, so f32 values unpacked from it before this point are
// recomputed after it instead of kept live (two 8-float copies per vector would spill).
__device__ __forceinline__ void opaque(bf16x8 &v) {
#pragma unroll
  for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(*reinterpret_cast<unsigned *>(&v.h[i])));
}

// Sums `v[0..R)` over the block; every thread gets the R sums (the same bits in every
// thread: butterfly sums give all lanes one value). `scratch` holds R * 32 floats and must
// not be written again before the block's next barrier (the backward alternates two
// buffers: the barrier of the group in between orders one use's reads before the next
// use's writes).
template <int R>
__device__ __forceinline__ void block_sums(float (&v)[R], float (*scratch)[32]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const float s = warp_sum(v[r]);
    if (lane == 0) scratch[r][warp] = s;
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < R; ++r) v[r] = warp_sum(lane < nwarps ? scratch[r][lane] : 0.f);
}

// Rows row0 .. row0 + R - 1 of `p`, this thread's NV vectors of each (zeros past `rows` or
// the row's end).
template <int NV, int R>
__device__ __forceinline__ void load_rows(bf16x8 (&out)[R][NV], const bf16 *__restrict__ p,
                                          int row0, int rows, int dim, int nvec) {
#pragma unroll
  for (int j = 0; j < R; ++j) {
#pragma unroll
    for (int k = 0; k < NV; ++k) {
      const int v = threadIdx.x + k * blockDim.x;
      out[j][k] = ld16_if(p + (size_t)(row0 + j) * dim + v * 8, row0 + j < rows && v < nvec);
    }
  }
}

// Forward: block b normalizes rows b * R .. b * R + R - 1 (those below `rows`).
template <int NV, int R>
__device__ __forceinline__ void fwd_rows(const bf16 *__restrict__ x, const bf16 *__restrict__ r,
                                         const bf16 *__restrict__ w, bf16 *__restrict__ h,
                                         bf16 *__restrict__ y, float *__restrict__ rstd_out,
                                         int rows, int dim, float eps) {
  __shared__ float scratch[R][32];
  const int nvec = dim >> 3;
  const int row0 = blockIdx.x * R;
  bf16x8 hv[R][NV];
  // All loads first (x, then r), then the math.
  load_rows<NV, R>(hv, x, row0, rows, dim, nvec);
  if (r != nullptr) {
    bf16x8 rv[R][NV];
    load_rows<NV, R>(rv, r, row0, rows, dim, nvec);
#pragma unroll
    for (int j = 0; j < R; ++j) {
#pragma unroll
      for (int k = 0; k < NV; ++k) {
        const int v = threadIdx.x + k * blockDim.x;
        float fa[8], fb[8];
        unpack8(hv[j][k], fa);
        unpack8(rv[j][k], fb);
#pragma unroll
        for (int i = 0; i < 8; ++i) fa[i] += fb[i];
        hv[j][k] = pack8(fa);  // round once: the norm below sees exactly what `h` holds
        if (row0 + j < rows && v < nvec) st16(h + (size_t)(row0 + j) * dim + v * 8, hv[j][k]);
      }
    }
  }
  float ss[R];
#pragma unroll
  for (int j = 0; j < R; ++j) {
    ss[j] = 0.f;
#pragma unroll
    for (int k = 0; k < NV; ++k) {
      float f[8];
      unpack8(hv[j][k], f);
#pragma unroll
      for (int i = 0; i < 8; ++i) ss[j] += f[i] * f[i];
    }
  }
  block_sums<R>(ss, scratch);
  const float inv_dim = 1.f / (float)dim;
#pragma unroll
  for (int j = 0; j < R; ++j) ss[j] = rsqrtf(ss[j] * inv_dim + eps);
  if (threadIdx.x < R && row0 + threadIdx.x < rows) {
    // Register arrays need constant indices: pick this thread's row by a short unrolled scan.
    float rs = ss[0];
#pragma unroll
    for (int j = 1; j < R; ++j)
      if (threadIdx.x == j) rs = ss[j];
    rstd_out[row0 + threadIdx.x] = rs;
  }
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const int v = threadIdx.x + k * blockDim.x;
    if (v < nvec) {
      float wf[8];
      unpack8(ld16_if(w + v * 8, true), wf);
#pragma unroll
      for (int j = 0; j < R; ++j) {
        if (row0 + j < rows) {
          float f[8], o[8];
          unpack8(hv[j][k], f);
#pragma unroll
          for (int i = 0; i < 8; ++i) o[i] = f[i] * ss[j] * wf[i];
          st16(y + (size_t)(row0 + j) * dim + v * 8, pack8(o));
        }
      }
    }
  }
}

// Backward: block b handles rows b * rows_per_block .. (b + 1) * rows_per_block - 1 in groups
// of R (rows_per_block % R == 0). `dw` (dim f32) must be zeroed by the caller.
template <int NV, int R>
__device__ __forceinline__ void bwd_rows(const bf16 *__restrict__ x, const bf16 *__restrict__ w,
                                         const float *__restrict__ rstd,
                                         const bf16 *__restrict__ dy,
                                         const bf16 *__restrict__ dres, bf16 *__restrict__ dx,
                                         float *__restrict__ dw, int rows, int dim,
                                         int rows_per_block) {
  __shared__ float scratch[2][R][32];
  const int nvec = dim >> 3;
  bf16x8 wv[NV];
  float dwp[NV][8];
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const int v = threadIdx.x + k * blockDim.x;
    wv[k] = ld16_if(w + v * 8, v < nvec);
#pragma unroll
    for (int i = 0; i < 8; ++i) dwp[k][i] = 0.f;
  }
  const float inv_dim = 1.f / (float)dim;
  const int row0 = blockIdx.x * rows_per_block;
  const int row1 = min(rows, row0 + rows_per_block);
  int buf = 0;
  for (int gi = row0; gi < row1; gi += R, buf ^= 1) {  // uniform over the block
    // Hide the group's first row from loop strength reduction, which would otherwise carry
    // one 64-bit pointer per (row, vector, tensor) across iterations (~64 registers).
    int g0 = gi;
    asm volatile("" : "+r"(g0));
    // Rows outside the tensor read as zeros: they add nothing to the sums or to dw.
    float rs[R];
    bf16x8 xv[R][NV], gv[R][NV];
#pragma unroll
    for (int j = 0; j < R; ++j) rs[j] = g0 + j < row1 ? rstd[g0 + j] : 0.f;
    // One 64-bit base per group, 32-bit offsets inside it (R * dim < 2^31), so the R * NV
    // addresses need not stay live in registers until the stores.
    const size_t base = (size_t)g0 * dim;
    const bf16 *xg = x + base, *dyg = dy + base;
#pragma unroll
    for (int j = 0; j < R; ++j) {
#pragma unroll
      for (int k = 0; k < NV; ++k) {
        const int v = threadIdx.x + k * blockDim.x;
        const bool in = g0 + j < row1 && v < nvec;
        const int off = j * dim + v * 8;
        xv[j][k] = ld16_if(xg + off, in);
        gv[j][k] = ld16_if(dyg + off, in);
      }
    }
    float m[R];  // sum of g * xhat per row, then its mean
#pragma unroll
    for (int j = 0; j < R; ++j) {
      m[j] = 0.f;
#pragma unroll
      for (int k = 0; k < NV; ++k) {
        float xf[8], df[8], wf[8];
        unpack8(xv[j][k], xf);
        unpack8(gv[j][k], df);
        unpack8(wv[k], wf);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const float xh = xf[i] * rs[j];
          m[j] += df[i] * wf[i] * xh;
          dwp[k][i] += df[i] * xh;
        }
      }
    }
    block_sums<R>(m, scratch[buf]);
    // dx = rs * g * w - x * (rs^2 * mean(g * xhat)) (+ d_res): one coefficient per row.
#pragma unroll
    for (int j = 0; j < R; ++j) m[j] *= rs[j] * rs[j] * inv_dim;
    // All of the residual gradient's loads go out before its first use.
    bf16x8 rv[R][NV];
    if (dres != nullptr) {
#pragma unroll
      for (int j = 0; j < R; ++j) {
#pragma unroll
        for (int k = 0; k < NV; ++k) {
          const int v = threadIdx.x + k * blockDim.x;
          rv[j][k] = ld16_if(dres + base + j * dim + v * 8, g0 + j < row1 && v < nvec);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < R; ++j) {
#pragma unroll
      for (int k = 0; k < NV; ++k) {
        opaque(xv[j][k]);
        opaque(gv[j][k]);
      }
    }
#pragma unroll
    for (int j = 0; j < R; ++j) {
#pragma unroll
      for (int k = 0; k < NV; ++k) {
        const int v = threadIdx.x + k * blockDim.x;
        float xf[8], df[8], wf[8], o[8];
        unpack8(xv[j][k], xf);
        unpack8(gv[j][k], df);
        unpack8(wv[k], wf);
#pragma unroll
        for (int i = 0; i < 8; ++i) o[i] = rs[j] * df[i] * wf[i] - xf[i] * m[j];
        if (dres != nullptr) {
          float rf[8];
          unpack8(rv[j][k], rf);
#pragma unroll
          for (int i = 0; i < 8; ++i) o[i] += rf[i];
        }
        if (g0 + j < row1 && v < nvec) st16(dx + base + j * dim + v * 8, pack8(o));
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
extern "C" __global__ void __launch_bounds__(1024)
    rmsnorm_fwd_reg2_bf16(const bf16 *__restrict__ x, const bf16 *__restrict__ r,
                          const bf16 *__restrict__ w, bf16 *__restrict__ h, bf16 *__restrict__ y,
                          float *__restrict__ rstd_out, int rows, int dim, float eps) {
  fwd_reg<2>(x, r, w, h, y, rstd_out, rows, dim, eps);
}
extern "C" __global__ void __launch_bounds__(1024)
    rmsnorm_bwd_reg2_bf16(const bf16 *__restrict__ x, const bf16 *__restrict__ w,
                          const float *__restrict__ rstd, const bf16 *__restrict__ dy,
                          const bf16 *__restrict__ dres, bf16 *__restrict__ dx,
                          float *__restrict__ dw, int rows, int dim, int rows_per_block) {
  bwd_reg<2>(x, w, rstd, dy, dres, dx, dw, rows, dim, rows_per_block);
}

// Row-group kernels: at most 512 threads, so up to 128 registers.
#define NORM_ROWS_KERNELS(NV, R)                                                                   \
  extern "C" __global__ void __launch_bounds__(512)                                                \
      rmsnorm_fwd_rows##NV##_bf16(const bf16 *__restrict__ x, const bf16 *__restrict__ r,          \
                                  const bf16 *__restrict__ w, bf16 *__restrict__ h,                \
                                  bf16 *__restrict__ y, float *__restrict__ rstd_out, int rows,    \
                                  int dim, float eps) {                                            \
    fwd_rows<NV, R>(x, r, w, h, y, rstd_out, rows, dim, eps);                                      \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(512) rmsnorm_bwd_rows##NV##_bf16(                   \
      const bf16 *__restrict__ x, const bf16 *__restrict__ w, const float *__restrict__ rstd,      \
      const bf16 *__restrict__ dy, const bf16 *__restrict__ dres, bf16 *__restrict__ dx,           \
      float *__restrict__ dw, int rows, int dim, int rows_per_block) {                             \
    bwd_rows<NV, R>(x, w, rstd, dy, dres, dx, dw, rows, dim, rows_per_block);                      \
  }

// Rows per block of the row-group kernels (the launcher's ROWS_R must match).
NORM_ROWS_KERNELS(1, 4)

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
