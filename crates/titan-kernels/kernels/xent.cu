// Softmax cross-entropy over rows of `vocab` bf16 logits, math in f32.
//   forward:  lse = log(sum(exp(x))),  row_loss = lse - x[label]  (0 for ignored rows)
//             loss = scale * sum(row_loss), summed by one block in a fixed order (no float
//             atomics, so the loss is bitwise reproducible)
//   backward: d = scale * (exp(x - lse) - onehot(label))  (0 for ignored rows)
// Labels are i64; negative labels are ignored (PyTorch's ignore_index -100). A label at or
// above `vocab` makes its row's loss NaN (so the run stops loudly) and its gradient 0.
// One block per row, a single pass over the logits with an online max/sum. Each row is
// split into a scalar head (up to the first 16-byte boundary), 16-byte vectors and a scalar
// tail; `vec` = 0 (unaligned base pointers) makes the whole row the scalar head.
#include "common.cuh"

// Vectors loaded per step of the online loop: one rescale per 32 logits, 4 loads in flight.
#define XENT_U 4

// Fold one logit into the running (max, sum of exp(x - max)).
__device__ __forceinline__ void online1(float &m, float &s, float x) {
  if (x == -INFINITY) return;
  if (x > m) {
    s = s * __expf(m - x) + 1.f;
    m = x;
  } else {
    s += __expf(x - m);
  }
}

// Merge another partial (mo, so) into (m, s).
__device__ __forceinline__ void combine(float &m, float &s, float mo, float so) {
  const float mn = fmaxf(m, mo);
  if (mn == -INFINITY) return;
  s = s * __expf(m - mn) + so * __expf(mo - mn);
  m = mn;
}

// Where a row's scalar head ends: the first element on a 16-byte boundary (bases aligned).
__device__ __forceinline__ int row_head(int row, int vocab, int vec) {
  if (!vec) return vocab;
  const int mis = (int)(((size_t)row * (size_t)vocab) & 7);
  return mis ? min(8 - mis, vocab) : 0;
}

extern "C" __global__ void xent_fwd_bf16(const bf16 *__restrict__ logits,
                                         const long long *__restrict__ labels,
                                         float *__restrict__ lse_out,
                                         float *__restrict__ row_loss, int rows, int vocab,
                                         int vec) {
  __shared__ float sm_m[32], sm_s[32];
  const int row = blockIdx.x;
  if (row >= rows) return;
  const bf16 *xr = logits + (size_t)row * vocab;
  const int head = row_head(row, vocab, vec);
  const int nvec = (vocab - head) >> 3;
  const int tail0 = head + nvec * 8;
  const bf16x8 *body = reinterpret_cast<const bf16x8 *>(xr + head);
  const int nt = blockDim.x;

  float m = -INFINITY, s = 0.f;
  for (int c = threadIdx.x; c < head; c += nt) online1(m, s, __bfloat162float(xr[c]));
  for (int c = tail0 + threadIdx.x; c < vocab; c += nt) online1(m, s, __bfloat162float(xr[c]));

  int i = threadIdx.x;
  for (; i + (XENT_U - 1) * nt < nvec; i += XENT_U * nt) {
    bf16x8 raw[XENT_U];
#pragma unroll
    for (int u = 0; u < XENT_U; ++u) raw[u] = body[i + u * nt];
    float v[XENT_U][8];
    float cm = -INFINITY;
#pragma unroll
    for (int u = 0; u < XENT_U; ++u) {
      unpack8(raw[u], v[u]);
#pragma unroll
      for (int k = 0; k < 8; ++k) cm = fmaxf(cm, v[u][k]);
    }
    if (cm == -INFINITY) continue;  // all 32 are -inf: they add nothing
    const float mn = fmaxf(m, cm);
    float acc = 0.f;
#pragma unroll
    for (int u = 0; u < XENT_U; ++u)
#pragma unroll
      for (int k = 0; k < 8; ++k) acc += __expf(v[u][k] - mn);
    s = s * __expf(m - mn) + acc;
    m = mn;
  }
  for (; i < nvec; i += nt) {
    float v[8];
    unpack8(body[i], v);
    float cm = v[0];
#pragma unroll
    for (int k = 1; k < 8; ++k) cm = fmaxf(cm, v[k]);
    if (cm == -INFINITY) continue;
    const float mn = fmaxf(m, cm);
    float acc = 0.f;
#pragma unroll
    for (int k = 0; k < 8; ++k) acc += __expf(v[k] - mn);
    s = s * __expf(m - mn) + acc;
    m = mn;
  }

  // Block merge of the (max, sum) partials: warps by shuffles, then warp 0.
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float mo = __shfl_xor_sync(0xffffffffu, m, o);
    const float so = __shfl_xor_sync(0xffffffffu, s, o);
    combine(m, s, mo, so);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sm_m[warp] = m;
    sm_s[warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    const int nwarps = (nt + 31) >> 5;
    m = lane < nwarps ? sm_m[lane] : -INFINITY;
    s = lane < nwarps ? sm_s[lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float mo = __shfl_xor_sync(0xffffffffu, m, o);
      const float so = __shfl_xor_sync(0xffffffffu, s, o);
      combine(m, s, mo, so);
    }
    if (lane == 0) {
      const float lse = m + logf(s);
      lse_out[row] = lse;
      const long long label = labels[row];
      float l = 0.f;
      if (label >= vocab) l = __int_as_float(0x7fc00000);  // NaN
      else if (label >= 0) l = lse - __bfloat162float(xr[label]);
      row_loss[row] = l;
    }
  }
}

// loss[0] = scale * sum(row_loss), one block, f64 partial sums in a fixed order.
extern "C" __global__ void xent_sum_f32(const float *__restrict__ row_loss, float *__restrict__ loss,
                                        int rows, float scale) {
  __shared__ double part[32];
  double acc = 0.0;
  for (int r = threadIdx.x; r < rows; r += blockDim.x) acc += (double)row_loss[r];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) part[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    const int nwarps = (blockDim.x + 31) >> 5;
    acc = lane < nwarps ? part[lane] : 0.0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) loss[0] = (float)(acc * (double)scale);
  }
}

// `dl` may be `logits` itself (the gradient written in place): every element is read and
// then written by the same thread, so neither pointer is `__restrict__`.
extern "C" __global__ void xent_bwd_bf16(const bf16 *logits, const long long *__restrict__ labels,
                                         const float *__restrict__ lse, bf16 *dl, int rows,
                                         int vocab, float scale, int vec) {
  const int row = blockIdx.x;
  if (row >= rows) return;
  const size_t off = (size_t)row * vocab;
  const bf16 *xr = logits + off;
  bf16 *dr = dl + off;
  const int head = row_head(row, vocab, vec);
  const int nvec = (vocab - head) >> 3;
  const int tail0 = head + nvec * 8;
  const int nt = blockDim.x;
  const long long label = labels[row];
  if (label < 0 || label >= vocab) {
    // Ignored row: exact zeros, whatever its logits hold.
    const bf16 z = __float2bfloat16(0.f);
    for (int c = threadIdx.x; c < head; c += nt) dr[c] = z;
    for (int c = tail0 + threadIdx.x; c < vocab; c += nt) dr[c] = z;
    bf16x8 zv;
#pragma unroll
    for (int k = 0; k < 4; ++k) zv.h[k] = __floats2bfloat162_rn(0.f, 0.f);
    for (int i = threadIdx.x; i < nvec; i += nt) reinterpret_cast<bf16x8 *>(dr + head)[i] = zv;
    return;
  }
  const int lab = (int)label;
  const float l = lse[row];
  for (int c = threadIdx.x; c < head; c += nt)
    dr[c] = __float2bfloat16(scale * (__expf(__bfloat162float(xr[c]) - l) - (c == lab ? 1.f : 0.f)));
  for (int c = tail0 + threadIdx.x; c < vocab; c += nt)
    dr[c] = __float2bfloat16(scale * (__expf(__bfloat162float(xr[c]) - l) - (c == lab ? 1.f : 0.f)));
  const bf16x8 *body = reinterpret_cast<const bf16x8 *>(xr + head);
  bf16x8 *dbody = reinterpret_cast<bf16x8 *>(dr + head);
  for (int i = threadIdx.x; i < nvec; i += nt) {
    float v[8], o[8];
    unpack8(body[i], v);
    const int c0 = head + i * 8;
#pragma unroll
    for (int k = 0; k < 8; ++k) o[k] = scale * (__expf(v[k] - l) - (c0 + k == lab ? 1.f : 0.f));
    dbody[i] = pack8(o);
  }
}
