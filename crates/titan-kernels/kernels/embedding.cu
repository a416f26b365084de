// Embedding backward: dw[ids[r], :] += d[r, :] for every row r, in f32 with atomicAdd (many
// rows share an id, and candle's index_add is serial). dw (vocab, dim) f32 is zeroed by the
// caller. One block per row; ids at or above `vocab` are skipped (no out-of-bounds write).
// `vec`: dim % 8 == 0 and 16-byte aligned bases, so 16-byte loads and, on sm_90, float4
// atomics (one atomic instruction per 4 columns).
#include "common.cuh"

extern "C" __global__ void embedding_bwd_bf16(const unsigned int *__restrict__ ids,
                                              const bf16 *__restrict__ d, float *__restrict__ dw,
                                              int n, int dim, int vocab, int vec) {
  const int row = blockIdx.x;
  if (row >= n) return;
  const unsigned int id = ids[row];
  if (id >= (unsigned int)vocab) return;
  const bf16 *dr = d + (size_t)row * dim;
  float *wr = dw + (size_t)id * dim;
  if (vec) {
    for (int c = threadIdx.x * 8; c < dim; c += blockDim.x * 8) {
      float v[8];
      unpack8(*reinterpret_cast<const bf16x8 *>(dr + c), v);
#if __CUDA_ARCH__ >= 900
      atomicAdd(reinterpret_cast<float4 *>(wr + c), make_float4(v[0], v[1], v[2], v[3]));
      atomicAdd(reinterpret_cast<float4 *>(wr + c + 4), make_float4(v[4], v[5], v[6], v[7]));
#else
#pragma unroll
      for (int k = 0; k < 8; ++k) atomicAdd(wr + c + k, v[k]);
#endif
    }
  } else {
    for (int c = threadIdx.x; c < dim; c += blockDim.x) atomicAdd(wr + c, __bfloat162float(dr[c]));
  }
}
