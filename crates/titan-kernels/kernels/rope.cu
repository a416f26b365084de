// Rotary position embedding over x (b, s, h, hd) bf16 in torchtitan's interleaved layout:
// pair j of a head is (x[2j], x[2j+1]), rotated by the angle whose cos/sin are at table
// position (batch, token, j), math in f32:
//   y0 = x0 * c - x1 * sn,  y1 = x0 * sn + x1 * c,  sn = sign * sin
// sign = +1 is the forward; sign = -1 rotates by -angle, which is the backward (the
// rotation is orthogonal). The tables are f32 addressed by element strides, so a broadcast
// batch (stride 0) and narrowed views need no copy.
#include "common.cuh"

extern "C" __global__ void rope_bf16(const bf16 *__restrict__ x, const float *__restrict__ cos_t,
                                     const float *__restrict__ sin_t, bf16 *__restrict__ y,
                                     long long n_tokens, int seq, int heads, int half,
                                     long long tb_stride, long long ts_stride,
                                     long long tf_stride, float sign, int vec) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  const long long start = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (vec) {
    // One item = 4 pairs = one 16-byte vector; half % 4 == 0, so items never straddle heads.
    const int per_head = half >> 2;
    const long long per_token = (long long)heads * per_head;
    const long long items = n_tokens * per_token;
    for (long long i = start; i < items; i += stride) {
      const long long tok = i / per_token;
      const int j0 = (int)((i - tok * per_token) % per_head) * 4;
      const long long bi = tok / seq, si = tok - bi * seq;
      const long long base = bi * tb_stride + si * ts_stride + (long long)j0 * tf_stride;
      float v[8], o[8];
      unpack8(*reinterpret_cast<const bf16x8 *>(x + i * 8), v);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float c = __ldg(cos_t + base + k * tf_stride);
        const float sn = sign * __ldg(sin_t + base + k * tf_stride);
        o[2 * k] = v[2 * k] * c - v[2 * k + 1] * sn;
        o[2 * k + 1] = v[2 * k] * sn + v[2 * k + 1] * c;
      }
      *reinterpret_cast<bf16x8 *>(y + i * 8) = pack8(o);
    }
  } else {
    // One item = one pair.
    const long long per_token = (long long)heads * half;
    const long long items = n_tokens * per_token;
    for (long long i = start; i < items; i += stride) {
      const long long tok = i / per_token;
      const int j = (int)((i - tok * per_token) % half);
      const long long bi = tok / seq, si = tok - bi * seq;
      const long long t = bi * tb_stride + si * ts_stride + (long long)j * tf_stride;
      const float c = __ldg(cos_t + t), sn = sign * __ldg(sin_t + t);
      const __nv_bfloat162 p = *reinterpret_cast<const __nv_bfloat162 *>(x + 2 * i);
      const float2 f = __bfloat1622float2(p);
      *reinterpret_cast<__nv_bfloat162 *>(y + 2 * i) =
          __floats2bfloat162_rn(f.x * c - f.y * sn, f.x * sn + f.y * c);
    }
  }
}
