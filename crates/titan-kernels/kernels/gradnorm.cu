// Multi-tensor sum of squares of f32 gradients (the global grad norm) and in-place scaling.
//
// Deterministic: block b owns a fixed chunk of one tensor (as in adamw.cu: the host gives
// tensor t the blocks [first_block, first_block + ceil(n / chunk))), each thread accumulates
// its elements in f32, the block combines its threads in f64 in a fixed tree and writes one
// partial; a single-block second pass adds the partials in f64 in a fixed order. The same
// inputs give the same bits on every run and every rank.
#include "common.cuh"

struct NormTensor {
  float *p;  // read by the norm, written by the scale kernel
  long long n;
  long long first_block;
  long long pad;
};
static_assert(sizeof(NormTensor) == 32, "NormTensor layout is shared with src/gradnorm.rs");

__device__ __forceinline__ double warp_sum_f64(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block in f64; the result is valid in thread 0. `scratch` holds 32 doubles.
__device__ __forceinline__ double block_sum_f64(double v, double *scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = (blockDim.x + 31) >> 5;
  v = warp_sum_f64(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  double t = 0.0;
  if (warp == 0) {
    t = (lane < nwarps) ? scratch[lane] : 0.0;
    t = warp_sum_f64(t);
  }
  return t;
}

// The chunk [start, end) of block blockIdx.x, or an empty range.
__device__ __forceinline__ NormTensor my_chunk(const NormTensor *tensors, int num_tensors,
                                               long long chunk, long long &start,
                                               long long &end) {
  __shared__ int s_tensor;
  if (threadIdx.x == 0) s_tensor = find_tensor(tensors, num_tensors, (long long)blockIdx.x);
  __syncthreads();
  const NormTensor t = tensors[s_tensor];
  start = ((long long)blockIdx.x - t.first_block) * chunk;
  end = min(t.n, start + chunk);
  if (start < 0 || start > end) start = end = 0;
  return t;
}

// partials[blockIdx.x] = sum of squares of the block's chunk.
extern "C" __global__ void __launch_bounds__(512)
sq_norm_partials_f32(const NormTensor *__restrict__ tensors, int num_tensors,
                     long long chunk, double *__restrict__ partials) {
  __shared__ double scratch[32];
  long long start, end;
  const NormTensor t = my_chunk(tensors, num_tensors, chunk, start, end);
  const float *p = t.p;
  float acc = 0.f;
  long long scalar_from = start;
  if (((uintptr_t)p & 15) == 0) {
    const long long vec_end = start + ((end - start) & ~3LL);
    for (long long i = start + 4LL * threadIdx.x; i < vec_end; i += 4LL * blockDim.x) {
      const float4 g = *reinterpret_cast<const float4 *>(p + i);
      acc += g.x * g.x + g.y * g.y + g.z * g.z + g.w * g.w;
    }
    scalar_from = vec_end;
  }
  for (long long i = scalar_from + threadIdx.x; i < end; i += blockDim.x) acc += p[i] * p[i];
  const double total = block_sum_f64((double)acc, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// One block: out_sq[0] = sum of partials (f64). With `coef` non-null, also the clip
// coefficient as PyTorch computes it from the f32 norm and titan-optim's clip does on the
// host: c = max_norm / (f32(sqrt(total)) + 1e-6), used when below 1, else 1; a non-finite
// norm leaves gradients unclipped (1).
extern "C" __global__ void __launch_bounds__(1024)
sq_norm_finalize(const double *__restrict__ partials, int num_partials,
                 double *__restrict__ out_sq, float max_norm, float *__restrict__ coef) {
  __shared__ double scratch[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < num_partials; i += blockDim.x) acc += partials[i];
  const double total = block_sum_f64(acc, scratch);
  if (threadIdx.x == 0) {
    out_sq[0] = total;
    if (coef) {
      const double norm = sqrt(total);
      float c = 1.f;
      if (isfinite(norm)) {
        const float q = __fdiv_rn(max_norm, __fadd_rn((float)norm, 1e-6f));
        c = (q < 1.f) ? q : 1.f;
      }
      coef[0] = c;
    }
  }
}

// Every tensor *= scale in place (scale read from `scale_ptr` when non-null, else
// `scale_host`).
extern "C" __global__ void __launch_bounds__(512)
scale_multi_f32(const NormTensor *__restrict__ tensors, int num_tensors, long long chunk,
                const float *__restrict__ scale_ptr, float scale_host) {
  long long start, end;
  const NormTensor t = my_chunk(tensors, num_tensors, chunk, start, end);
  const float s = scale_ptr ? *scale_ptr : scale_host;
  float *p = t.p;
  long long scalar_from = start;
  if (((uintptr_t)p & 15) == 0) {
    const long long vec_end = start + ((end - start) & ~3LL);
    for (long long i = start + 4LL * threadIdx.x; i < vec_end; i += 4LL * blockDim.x) {
      float4 g = *reinterpret_cast<const float4 *>(p + i);
      g.x = __fmul_rn(g.x, s);
      g.y = __fmul_rn(g.y, s);
      g.z = __fmul_rn(g.z, s);
      g.w = __fmul_rn(g.w, s);
      *reinterpret_cast<float4 *>(p + i) = g;
    }
    scalar_from = vec_end;
  }
  for (long long i = scalar_from + threadIdx.x; i < end; i += blockDim.x)
    p[i] = __fmul_rn(p[i], s);
}
