// Multi-tensor Adam / AdamW: one launch updates every parameter's f32 master, exp_avg and
// exp_avg_sq in place from its f32 gradient and writes the bf16 compute copy in the same pass.
//
// The arithmetic follows titan-optim's composite update (PyTorch's single-tensor Adam) op by
// op, each op rounded to f32 on its own (__fmul_rn / __fadd_rn stop nvcc from contracting
// a*b+c into an fma), so the fused and composite paths agree bit for bit:
//   g  = grad * scale                       (scale: the clip coefficient, device or host)
//   p  = p * decay                          (AdamW: decay = 1 - lr * weight_decay)
//   g  = g + p * wd                         (Adam: L2 decay on the gradient)
//   m  = lerp(m, g, w)                      (ATen's two forms: m + (g-m) w, or g - (g-m)(1-w))
//   v  = v * beta2 + (g * g) * (1 - beta2)
//   p  = p + (m / (sqrt(v) * inv_bc2_sqrt + eps)) * (-step_size)
//
// Work split: the host lists the tensors (AdamTensor, 64 bytes each) and gives tensor t the
// blocks [first_block, first_block + ceil(n / chunk)); block b finds its tensor by binary
// search and updates elements [(b - first_block) * chunk, +chunk). 16-byte vectors when every
// pointer of the tensor is aligned (chunk is a multiple of 4), scalars otherwise.
#include "common.cuh"

struct AdamTensor {
  float *master;
  const float *grad;
  float *exp_avg;
  float *exp_avg_sq;
  bf16 *compute;  // may be null: no compute copy written
  long long n;
  long long first_block;
  float neg_step_size;  // -(lr / bias_correction1), per tensor (per-parameter step counts)
  float inv_bc2_sqrt;   // 1 / sqrt(bias_correction2)
};
static_assert(sizeof(AdamTensor) == 64, "AdamTensor layout is shared with src/adamw.rs");

struct AdamScalars {
  float scale;
  int wd_mode;  // 0: none, 1: decoupled (AdamW), 2: L2 on the gradient (Adam)
  float decay;  // 1 - lr * wd (mode 1)
  float wd;     // weight decay (mode 2)
  float lerp_w, lerp_omw;  // 1 - beta1 and 1 - (1 - beta1), in f32
  int lerp_small;          // |lerp_w| < 0.5: ATen's first lerp form
  float beta2, omb2;       // beta2 and 1 - beta2
  float eps;
  float neg_step_size, inv_bc2_sqrt;
};

__device__ __forceinline__ void adam_one(float &p, float g, float &m, float &v,
                                         const AdamScalars &s) {
  g = __fmul_rn(g, s.scale);
  if (s.wd_mode == 1) {
    p = __fmul_rn(p, s.decay);
  } else if (s.wd_mode == 2) {
    g = __fadd_rn(g, __fmul_rn(p, s.wd));
  }
  const float diff = __fsub_rn(g, m);
  m = s.lerp_small ? __fadd_rn(m, __fmul_rn(diff, s.lerp_w))
                   : __fsub_rn(g, __fmul_rn(diff, s.lerp_omw));
  v = __fadd_rn(__fmul_rn(v, s.beta2), __fmul_rn(__fmul_rn(g, g), s.omb2));
  const float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(v), s.inv_bc2_sqrt), s.eps);
  p = __fadd_rn(p, __fmul_rn(__fdiv_rn(m, denom), s.neg_step_size));
}

// `scale_ptr`: a device f32 the gradients are multiplied by (the clip coefficient computed on
// the device), or null to use `scale_host`.
extern "C" __global__ void __launch_bounds__(512)
adam_multi_f32(const AdamTensor *__restrict__ tensors, int num_tensors,
               long long chunk, const float *__restrict__ scale_ptr,
               float scale_host, int wd_mode, float decay, float wd, float lerp_w,
               float lerp_omw, int lerp_small, float beta2, float omb2,
               float eps) {
  __shared__ int s_tensor;
  if (threadIdx.x == 0) s_tensor = find_tensor(tensors, num_tensors, (long long)blockIdx.x);
  __syncthreads();
  const AdamTensor t = tensors[s_tensor];
  const long long start = ((long long)blockIdx.x - t.first_block) * chunk;
  if (start < 0 || start >= t.n) return;
  const long long end = min(t.n, start + chunk);

  AdamScalars s;
  s.scale = scale_ptr ? *scale_ptr : scale_host;
  s.wd_mode = wd_mode;
  s.decay = decay;
  s.wd = wd;
  s.lerp_w = lerp_w;
  s.lerp_omw = lerp_omw;
  s.lerp_small = lerp_small;
  s.beta2 = beta2;
  s.omb2 = omb2;
  s.eps = eps;
  s.neg_step_size = t.neg_step_size;
  s.inv_bc2_sqrt = t.inv_bc2_sqrt;

  const uintptr_t align16 = (uintptr_t)t.master | (uintptr_t)t.grad | (uintptr_t)t.exp_avg |
                            (uintptr_t)t.exp_avg_sq;
  const bool vec = (align16 & 15) == 0 && ((uintptr_t)t.compute & 7) == 0;
  long long scalar_from = start;
  if (vec) {
    const long long vec_end = start + ((end - start) & ~3LL);
    for (long long i = start + 4LL * threadIdx.x; i < vec_end; i += 4LL * blockDim.x) {
      float4 p = *reinterpret_cast<const float4 *>(t.master + i);
      const float4 g = *reinterpret_cast<const float4 *>(t.grad + i);
      float4 m = *reinterpret_cast<const float4 *>(t.exp_avg + i);
      float4 v = *reinterpret_cast<const float4 *>(t.exp_avg_sq + i);
      adam_one(p.x, g.x, m.x, v.x, s);
      adam_one(p.y, g.y, m.y, v.y, s);
      adam_one(p.z, g.z, m.z, v.z, s);
      adam_one(p.w, g.w, m.w, v.w, s);
      *reinterpret_cast<float4 *>(t.master + i) = p;
      *reinterpret_cast<float4 *>(t.exp_avg + i) = m;
      *reinterpret_cast<float4 *>(t.exp_avg_sq + i) = v;
      if (t.compute) {
        __nv_bfloat162 lo = __floats2bfloat162_rn(p.x, p.y);
        __nv_bfloat162 hi = __floats2bfloat162_rn(p.z, p.w);
        uint2 packed;
        packed.x = *reinterpret_cast<const unsigned int *>(&lo);
        packed.y = *reinterpret_cast<const unsigned int *>(&hi);
        *reinterpret_cast<uint2 *>(t.compute + i) = packed;
      }
    }
    scalar_from = vec_end;
  }
  for (long long i = scalar_from + threadIdx.x; i < end; i += blockDim.x) {
    float p = t.master[i];
    float m = t.exp_avg[i];
    float v = t.exp_avg_sq[i];
    adam_one(p, t.grad[i], m, v, s);
    t.master[i] = p;
    t.exp_avg[i] = m;
    t.exp_avg_sq[i] = v;
    if (t.compute) t.compute[i] = __float2bfloat16_rn(p);
  }
}
