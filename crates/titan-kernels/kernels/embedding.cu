// Embedding backward: dw[ids[r] - lo, :] += d[r, :] for every row r whose id is in
// [lo, lo + rows), in f32 with atomicAdd (many rows share an id, and candle's index_add is
// serial). dw (rows, dim) f32 is zeroed by the caller: the whole table (lo = 0, rows = vocab),
// or one rank's row shard of it (FSDP, from every rank's gathered ids and output gradients).
// One block per row; other ids are skipped (no out-of-bounds write). `vec`: dim % 8 == 0 and
// 16-byte aligned bases, so 16-byte loads and, on sm_90, float4 atomics (one atomic
// instruction per 4 columns).
#include "common.cuh"

extern "C" __global__ void embedding_bwd_bf16(const unsigned int *__restrict__ ids,
                                              const bf16 *__restrict__ d, float *__restrict__ dw,
                                              int n, int dim, unsigned int lo, int rows,
                                              int vec) {
  const int row = blockIdx.x;
  if (row >= n) return;
  // Unsigned: ids below `lo` wrap to large values and fail the test too.
  const unsigned int id = ids[row] - lo;
  if (id >= (unsigned int)rows) return;
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

// Embedding forward: out[r, :] = w[ids[r], :] (bf16 rows, a gather). One block per row of
// 16-byte vectors (`vec`: dim % 8 == 0 and 16-byte aligned bases) or scalars. An id at or
// above `vocab` reads nothing and writes a zero row (the caller checks ids on the host).
extern "C" __global__ void embedding_fwd_bf16(const unsigned int *__restrict__ ids,
                                              const bf16 *__restrict__ w, bf16 *__restrict__ out,
                                              int n, int dim, int vocab, int vec) {
  const int row = blockIdx.x;
  if (row >= n) return;
  const unsigned int id = ids[row];
  const bool ok = id < (unsigned int)vocab;
  const bf16 *wr = w + (size_t)(ok ? id : 0) * dim;
  bf16 *orow = out + (size_t)row * dim;
  if (vec) {
    const uint4 *src = reinterpret_cast<const uint4 *>(wr);
    uint4 *dst = reinterpret_cast<uint4 *>(orow);
    for (int c = threadIdx.x; c < (dim >> 3); c += blockDim.x)
      dst[c] = ok ? __ldg(src + c) : make_uint4(0u, 0u, 0u, 0u);
  } else {
    for (int c = threadIdx.x; c < dim; c += blockDim.x)
      orow[c] = ok ? wr[c] : __float2bfloat16(0.f);
  }
}
