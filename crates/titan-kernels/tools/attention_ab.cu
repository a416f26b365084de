// A/B of the head-dim-64 flash attention kernels: warpgroup MMA (wgmma) against mma.sync on
// the same random inputs, outputs compared (and the forward against an f64 CPU reference on
// sampled rows), each kernel timed alone with CUDA events (median of 15 after 3 warm-ups).
// Not part of the build; compile with the nvcc that builds the crate and run on the GPU:
//   nvcc -gencode=arch=compute_90a,code=sm_90a -O3 -std=c++17 -I crates/titan-kernels/kernels \
//        -L <dir of libcudart_static.a> -o attention_ab crates/titan-kernels/tools/attention_ab.cu
// The gpu_check binary is the correctness test of record (every size and mask against f64).
#include "attention.cu"
#include <cstdio>
#include <vector>
#include <random>
#include <cmath>
#include <algorithm>
#include <cstring>
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("CUDA %s at %d: %s\n", #x, __LINE__, cudaGetErrorString(e)); exit(1);} } while (0)
typedef void (*FwdFn)(FWD_PARAMS);
typedef void (*BwdFn)(BWD_PARAMS);
static float bf2f(bf16 x) { return __bfloat162float(x); }
struct Case { int b, hq, hkv, s; };
int main(int argc, char **argv) {
  Case cases[] = {{4, 32, 8, 2048}, {1, 4, 2, 1000}, {2, 8, 8, 333}, {1, 2, 1, 130}, {1, 32, 8, 8192}};
  struct K { const char *name; FwdFn fn; int bn; } ks[] = {
    {"mma.sync flash_fwd_hd64", flash_fwd_hd64, -1},
    {"wgmma flash_fwd_wg_hd64", flash_fwd_wg_hd64, 64},
  };
  std::mt19937 rng(1234);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (auto c : cases) {
    const int HD = 64;
    size_t nq = (size_t)c.b * c.hq * c.s * HD, nk = (size_t)c.b * c.hkv * c.s * HD;
    std::vector<bf16> hq_(nq), hk(nk), hv(nk);
    for (auto &x : hq_) x = __float2bfloat16(nd(rng));
    for (auto &x : hk) x = __float2bfloat16(nd(rng));
    for (auto &x : hv) x = __float2bfloat16(nd(rng));
    bf16 *dq, *dk, *dv, *dout[2]; float *dl[2];
    CK(cudaMalloc(&dq, nq * 2)); CK(cudaMalloc(&dk, nk * 2)); CK(cudaMalloc(&dv, nk * 2));
    CK(cudaMemcpy(dq, hq_.data(), nq * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dk, hk.data(), nk * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dv, hv.data(), nk * 2, cudaMemcpyHostToDevice));
    std::vector<std::vector<bf16>> outs(2, std::vector<bf16>(nq));
    std::vector<std::vector<float>> lses(2, std::vector<float>((size_t)c.b * c.hq * c.s));
    float scale_log2 = 0.125f * 1.4426950408889634f;
    printf("case b=%d hq=%d hkv=%d s=%d\n", c.b, c.hq, c.hkv, c.s);
    for (int ki = 0; ki < 2; ++ki) {
      CK(cudaMalloc(&dout[ki], nq * 2)); CK(cudaMalloc(&dl[ki], lses[ki].size() * 4));
      CK(cudaMemset(dout[ki], 0xFF, nq * 2)); CK(cudaMemset(dl[ki], 0xFF, lses[ki].size() * 4));
      int bn = ks[ki].bn < 0 ? 64 : ks[ki].bn;
      size_t smem = 1024 + 128 * HD * 2 + 2 * 2 * bn * HD * 2 + 2 * bn * 4;
      CK(cudaFuncSetAttribute(ks[ki].fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
      dim3 grid(c.hq, c.b, (c.s + 127) / 128);
      i64 q_sb = (i64)c.hq * c.s * HD, q_sh = (i64)c.s * HD, k_sb = (i64)c.hkv * c.s * HD, k_sh = (i64)c.s * HD;
      auto launch = [&]() {
        ks[ki].fn<<<grid, 256, smem>>>(dq, dk, dv, dout[ki], dl[ki], nullptr, c.s, c.hq, c.hkv, q_sb, q_sh, HD, k_sb, k_sh, HD, k_sb, k_sh, HD, scale_log2);
      };
      launch(); CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
      CK(cudaMemcpy(outs[ki].data(), dout[ki], nq * 2, cudaMemcpyDeviceToHost));
      CK(cudaMemcpy(lses[ki].data(), dl[ki], lses[ki].size() * 4, cudaMemcpyDeviceToHost));
      // timing
      cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
      std::vector<float> ts;
      for (int r = 0; r < 3; ++r) launch();
      for (int r = 0; r < 15; ++r) { cudaEventRecord(e0); launch(); cudaEventRecord(e1); cudaEventSynchronize(e1); float ms; cudaEventElapsedTime(&ms, e0, e1); ts.push_back(ms); }
      std::sort(ts.begin(), ts.end());
      double flops = 4.0 * c.b * c.hq * (double)c.s * c.s * HD / 2;
      // compare with kernel 0 and f64 reference on sampled rows
      double num = 0, den = 0, lmax = 0; size_t bad = 0;
      for (size_t i = 0; i < nq; ++i) { float a = bf2f(outs[ki][i]), r = bf2f(outs[0][i]); if (!std::isfinite(a)) ++bad; num += (a - r) * (a - r); den += r * r; }
      for (size_t i = 0; i < lses[ki].size(); ++i) { if (!std::isfinite(lses[ki][i])) ++bad; lmax = std::max(lmax, (double)fabs(lses[ki][i] - lses[0][i])); }
      // f64 reference on up to 64 rows
      double rn = 0, rd = 0;
      std::mt19937 r2(7);
      for (int t = 0; t < 64; ++t) {
        int bb = r2() % c.b, h = r2() % c.hq, i = r2() % c.s, hk2 = h / (c.hq / c.hkv);
        std::vector<double> sc(i + 1); double mx = -1e300;
        for (int j = 0; j <= i; ++j) { double acc = 0; for (int d = 0; d < HD; ++d) acc += (double)bf2f(hq_[(((size_t)bb * c.hq + h) * c.s + i) * HD + d]) * bf2f(hk[(((size_t)bb * c.hkv + hk2) * c.s + j) * HD + d]); sc[j] = acc * 0.125; mx = std::max(mx, sc[j]); }
        double l = 0; for (int j = 0; j <= i; ++j) { sc[j] = exp(sc[j] - mx); l += sc[j]; }
        for (int d = 0; d < HD; ++d) { double o = 0; for (int j = 0; j <= i; ++j) o += sc[j] * bf2f(hv[(((size_t)bb * c.hkv + hk2) * c.s + j) * HD + d]); o /= l;
          float got = bf2f(outs[ki][(((size_t)bb * c.s + i) * c.hq + h) * HD + d]); rn += (got - o) * (got - o); rd += o * o; }
      }
      printf("  %-26s %8.1f us  %6.1f TFLOP/s  vs mma.sync: rel %.2e  lse max %.2e  nonfinite %zu  vs f64: rel %.2e\n", ks[ki].name, ts[ts.size() / 2] * 1e3, flops / (ts[ts.size() / 2] * 1e-3) / 1e12, sqrt(num / std::max(den, 1e-30)), lmax, bad, sqrt(rn / rd));
      cudaFree(dout[ki]); cudaFree(dl[ki]);
    }
    {
      // backward: o, lse from the mma.sync forward; random dO; pre; then each backward kernel.
      bf16 *o, *ddo; float *lse, *lse2, *dsum;
      size_t rows = (size_t)c.b * c.hq * c.s;
      CK(cudaMalloc(&o, nq * 2)); CK(cudaMalloc(&ddo, nq * 2)); CK(cudaMalloc(&lse, rows * 4)); CK(cudaMalloc(&lse2, rows * 4)); CK(cudaMalloc(&dsum, rows * 4));
      std::vector<bf16> hdo(nq); for (auto &x : hdo) x = __float2bfloat16(nd(rng));
      CK(cudaMemcpy(ddo, hdo.data(), nq * 2, cudaMemcpyHostToDevice));
      i64 q_sb = (i64)c.hq * c.s * HD, q_sh = (i64)c.s * HD, k_sb = (i64)c.hkv * c.s * HD, k_sh = (i64)c.s * HD;
      size_t fsm = 1024 + 128 * HD * 2 + 2 * 2 * 64 * HD * 2 + 2 * 64 * 4;
      flash_fwd_hd64<<<dim3(c.hq, c.b, (c.s + 127) / 128), 256, fsm>>>(dq, dk, dv, o, lse, nullptr, c.s, c.hq, c.hkv, q_sb, q_sh, HD, k_sb, k_sh, HD, k_sb, k_sh, HD, scale_log2);
      CK(cudaGetLastError());
      flash_bwd_pre_hd64<<<(unsigned)((rows * 8 + 255) / 256), 256>>>(o, ddo, lse, lse2, dsum, c.b, c.hq, c.s, (i64)c.s * c.hq * HD, HD, (i64)c.hq * HD, q_sb, q_sh, HD);
      CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
      struct B { const char *name; BwdFn fn; } bs[] = {{"mma.sync flash_bwd_hd64", flash_bwd_hd64}, {"wgmma flash_bwd_wg_hd64", flash_bwd_wg_hd64}};
      size_t bsm = 1024 + 2 * 128 * HD * 2 + 2 * 2 * 64 * HD * 2 + 128 * 64 * 2 + 3 * 2 * 64 * 4;
      std::vector<float> ref_dq; std::vector<bf16> ref_dk, ref_dv;
      float *acc; bf16 *gk, *gv; CK(cudaMalloc(&acc, nq * 4)); CK(cudaMalloc(&gk, nk * 2)); CK(cudaMalloc(&gv, nk * 2));
      for (int bi = 0; bi < 2; ++bi) {
        CK(cudaFuncSetAttribute(bs[bi].fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bsm));
        dim3 grid(c.hkv, c.b, (c.s + 127) / 128);
        auto launch = [&]() { bs[bi].fn<<<grid, 256, bsm>>>(dq, dk, dv, ddo, lse2, dsum, acc, gk, gv, nullptr, c.s, c.hq, c.hkv, q_sb, q_sh, HD, k_sb, k_sh, HD, k_sb, k_sh, HD, q_sb, q_sh, HD, scale_log2, 0.125f); };
        CK(cudaMemset(acc, 0, nq * 4)); CK(cudaMemset(gk, 0xFF, nk * 2)); CK(cudaMemset(gv, 0xFF, nk * 2));
        launch(); CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
        std::vector<float> hdq(nq); std::vector<bf16> hdk(nk), hdv(nk);
        CK(cudaMemcpy(hdq.data(), acc, nq * 4, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(hdk.data(), gk, nk * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(hdv.data(), gv, nk * 2, cudaMemcpyDeviceToHost));
        if (bi == 0) { ref_dq = hdq; ref_dk = hdk; ref_dv = hdv; }
        auto rel = [](auto &a, auto &r, size_t &bad) { double n = 0, d = 0; for (size_t i = 0; i < a.size(); ++i) { double x = (double)(float)a[i], y = (double)(float)r[i]; if (!std::isfinite(x)) ++bad; n += (x - y) * (x - y); d += y * y; } return sqrt(n / std::max(d, 1e-30)); };
        size_t bad = 0;
        double rq = rel(hdq, ref_dq, bad), rk = rel(hdk, ref_dk, bad), rv = rel(hdv, ref_dv, bad);
        cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
        std::vector<float> ts;
        for (int r = 0; r < 3; ++r) launch();
        for (int r = 0; r < 15; ++r) { cudaEventRecord(e0); launch(); cudaEventRecord(e1); cudaEventSynchronize(e1); float ms; cudaEventElapsedTime(&ms, e0, e1); ts.push_back(ms); }
        std::sort(ts.begin(), ts.end());
        double flops = 2.5 * 4.0 * c.b * c.hq * (double)c.s * c.s * HD / 2;
        printf("  %-26s %8.1f us  %6.1f TFLOP/s  vs mma.sync: dq %.2e dk %.2e dv %.2e nonfinite %zu\n", bs[bi].name, ts[ts.size() / 2] * 1e3, flops / (ts[ts.size() / 2] * 1e-3) / 1e12, rq, rk, rv, bad);
      }
      cudaFree(acc); cudaFree(gk); cudaFree(gv); cudaFree(o); cudaFree(ddo); cudaFree(lse); cudaFree(lse2); cudaFree(dsum);
    }
    cudaFree(dq); cudaFree(dk); cudaFree(dv);
  }
  return 0;
}
