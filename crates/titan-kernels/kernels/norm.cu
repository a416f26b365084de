// RMSNorm forward and backward over rows of `dim` bf16 values, math in f32.
//   y = x * rstd * w,  rstd = 1 / sqrt(mean(x^2) + eps)
//   dx = rstd * (g - xhat * mean(g * xhat)),  g = dy * w,  xhat = x * rstd
//   dw += sum over rows of dy * xhat   (f32, one atomicAdd per column per block)
// One block per row (forward) / per `rows_per_block` rows (backward). Any `dim`: 16-byte
// vectors when the launcher says so (`vec`: dim % 8 == 0 and 16-byte aligned rows), scalars
// otherwise.
#include "common.cuh"

extern "C" __global__ void rmsnorm_fwd_bf16(const bf16 *__restrict__ x, const bf16 *__restrict__ w,
                                            bf16 *__restrict__ y, float *__restrict__ rstd_out,
                                            int rows, int dim, float eps, int vec) {
  __shared__ float scratch[32];
  const int row = blockIdx.x;
  if (row >= rows) return;
  const bf16 *xr = x + (size_t)row * dim;
  bf16 *yr = y + (size_t)row * dim;
  float ss = 0.f;
  if (vec) {
    for (int c = threadIdx.x * 8; c < dim; c += blockDim.x * 8) {
      float v[8];
      unpack8(*reinterpret_cast<const bf16x8 *>(xr + c), v);
#pragma unroll
      for (int i = 0; i < 8; ++i) ss += v[i] * v[i];
    }
  } else {
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
      float v = __bfloat162float(xr[c]);
      ss += v * v;
    }
  }
  ss = block_sum(ss, scratch);
  const float r = rsqrtf(ss / (float)dim + eps);
  if (threadIdx.x == 0) rstd_out[row] = r;
  if (vec) {
    for (int c = threadIdx.x * 8; c < dim; c += blockDim.x * 8) {
      float v[8], wv[8], o[8];
      unpack8(*reinterpret_cast<const bf16x8 *>(xr + c), v);
      unpack8(*reinterpret_cast<const bf16x8 *>(w + c), wv);
#pragma unroll
      for (int i = 0; i < 8; ++i) o[i] = v[i] * r * wv[i];
      *reinterpret_cast<bf16x8 *>(yr + c) = pack8(o);
    }
  } else {
    for (int c = threadIdx.x; c < dim; c += blockDim.x)
      yr[c] = __float2bfloat16(__bfloat162float(xr[c]) * r * __bfloat162float(w[c]));
  }
}

// Backward. `dw` (dim f32) must be zeroed by the caller; each block adds its rows' share.
// Shared memory: dim floats for the block's dw partial sums.
extern "C" __global__ void rmsnorm_bwd_bf16(const bf16 *__restrict__ x, const bf16 *__restrict__ w,
                                            const float *__restrict__ rstd,
                                            const bf16 *__restrict__ dy, bf16 *__restrict__ dx,
                                            float *__restrict__ dw, int rows, int dim,
                                            int rows_per_block, int vec) {
  extern __shared__ float dw_part[];
  __shared__ float scratch[32];
  for (int c = threadIdx.x; c < dim; c += blockDim.x) dw_part[c] = 0.f;
  __syncthreads();
  const int row0 = blockIdx.x * rows_per_block;
  const int row1 = min(rows, row0 + rows_per_block);
  for (int row = row0; row < row1; ++row) {
    const bf16 *xr = x + (size_t)row * dim;
    const bf16 *dyr = dy + (size_t)row * dim;
    bf16 *dxr = dx + (size_t)row * dim;
    const float r = rstd[row];
    // mean(g * xhat)
    float acc = 0.f;
    if (vec) {
      for (int c = threadIdx.x * 8; c < dim; c += blockDim.x * 8) {
        float xv[8], dv[8], wv[8];
        unpack8(*reinterpret_cast<const bf16x8 *>(xr + c), xv);
        unpack8(*reinterpret_cast<const bf16x8 *>(dyr + c), dv);
        unpack8(*reinterpret_cast<const bf16x8 *>(w + c), wv);
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
        unpack8(*reinterpret_cast<const bf16x8 *>(xr + c), xv);
        unpack8(*reinterpret_cast<const bf16x8 *>(dyr + c), dv);
        unpack8(*reinterpret_cast<const bf16x8 *>(w + c), wv);
#pragma unroll
        for (int i = 0; i < 8; ++i) o[i] = r * (dv[i] * wv[i] - xv[i] * r * m);
        *reinterpret_cast<bf16x8 *>(dxr + c) = pack8(o);
      }
    } else {
      for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        const float xv = __bfloat162float(xr[c]);
        dxr[c] = __float2bfloat16(r * (__bfloat162float(dyr[c]) * __bfloat162float(w[c]) - xv * r * m));
      }
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < dim; c += blockDim.x) atomicAdd(dw + c, dw_part[c]);
}
