// Flash attention (FA2 work partitioning) for sm_90: causal / block-causal, GQA, bf16 in and
// out, f32 accumulation, head_dim 64 or 128, any sequence length. The seq x seq matrix is
// never stored: the forward keeps a running max and sum per row (online softmax, base 2 with
// log2(e) folded into the scale) and saves the natural-log log-sum-exp; the backward
// recomputes the probabilities from it.
//
// Layouts (element strides as i64, last dim contiguous, rows 16-byte aligned):
//   q (b, hq, s, hd), k and v (b, hkv, s, hd), dO like q: any strides for b, h, s.
//   out, dq (b, s, hq, hd) and dk, dv (b, s, hkv, hd): contiguous (the caller views them as
//   (b, h, s, hd) through a transpose). lse, D, lse2 (b, hq, s) f32. doc (b, s) u32 or null.
//   dq_acc (b, s, hq, hd) f32, zeroed by the caller.
// Query head h reads kv head h / (hq / hkv).
//
// Fragments: mma.sync m16n8k16 (bf16 -> f32). Shared tiles are row-major with 16-byte chunks
// XOR-swizzled by row, so ldmatrix (8 rows of one chunk column) and cp.async (consecutive
// chunks of a row) are both free of bank conflicts. Out-of-range rows are zero-filled by
// cp.async (src-size 0) and masked or left unwritten.
#include "common.cuh"
#include "wgmma.cuh"

typedef long long i64;

namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr unsigned kFull = 0xffffffffu;

// PTX wrappers (everything below up to "end of PTX wrappers" is inline assembly).
__device__ __forceinline__ uint32_t smem_u32(const void *p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared; `ok == false` writes zeros and reads nothing (src must still be a
// valid address, callers pass the tensor's base).
__device__ __forceinline__ void cp16(const void *dst, const void *src, bool ok) {
  const int n = ok ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(n));
}

__device__ __forceinline__ void cp4(const void *dst, const void *src, bool ok) {
  const int n = ok ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(n));
}

__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, register i gets
// matrix i (row lane/4, cols 2*(lane%4)..+1), or its transpose with `.trans`.
__device__ __forceinline__ void ldsm4(uint32_t r[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void ldsm4t(uint32_t r[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// A value the compiler must treat as new here, so addresses derived from it are recomputed in
// the loop (one XOR each) instead of being hoisted into dozens of registers.
__device__ __forceinline__ uint32_t opaque(uint32_t x) {
  asm volatile("" : "+r"(x));
  return x;
}

// c += a (16x16, row) * b (16x8, col). Fragment of lane (g = lane/4, t = lane%4):
//   a: {row g, k 2t..}, {row g+8, k 2t..}, {row g, k 2t+8..}, {row g+8, k 2t+8..}
//   b: {k 2t.., col g}, {k 2t+8.., col g};  c: {row g, col 2t, 2t+1}, {row g+8, col 2t, 2t+1}
__device__ __forceinline__ void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x; ex2.approx(-inf) = +0, which masking relies on.
__device__ __forceinline__ float exp2_fast(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
// End of PTX wrappers.

__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t *>(&v);
}


// Element offset of (row r, col c) in a row-major tile of COLS bf16 with swizzled 16-byte
// chunks (c's chunk XOR a few row bits; the 8 elements of a chunk stay together).
template <int COLS>
__device__ __forceinline__ int swz(int r, int c) {
  constexpr int CH = COLS / 8;
  static_assert(CH == 4 || CH % 8 == 0, "tile width");
  const int ch = c >> 3;
  const int p = (CH >= 8) ? (ch ^ (r & 7)) : (ch ^ ((r >> 1) & 3));
  return r * COLS + p * 8 + (c & 7);
}

// Byte offset of this lane's ldmatrix row inside a swizzled tile (COLS wide), for the 16 x 16
// block (0, 0); block (rb, cb) is at `(base + off) ^ (cb << 5)` plus `rb * 16 * COLS * 2`,
// where base is the tile's shared address, aligned to 1 KiB. (The swizzle XORs chunk bits
// only, and 2*cb never overlaps the lane's chunk bit.) Patterns, with r and ch the lane's
// row in the block and its chunk (0 or 1):
//   A operand of a row-major [m][k] tile:        r = lane & 15,                 ch = lane >> 4
//   B operand of an [n][k] tile (also the A^T
//   operand of a [k][m] tile via .trans):        r = (lane>>4)*8 + (lane&7),    ch = (lane>>3)&1
//   B operand of a [k][n] tile via .trans:       r = ((lane>>3)&1)*8 + (lane&7), ch = lane >> 4
template <int COLS>
__device__ __forceinline__ uint32_t lane_off(int r, int ch) {
  constexpr int CH = COLS / 8;
  const int y = (CH >= 8) ? (r & 7) : ((r >> 1) & 3);
  return (uint32_t)(r * COLS * 2 + ((ch ^ y) << 4));
}
__device__ __forceinline__ int ra_(int lane) { return lane & 15; }
__device__ __forceinline__ int ca_(int lane) { return lane >> 4; }
__device__ __forceinline__ int rb_(int lane) { return (lane >> 4) * 8 + (lane & 7); }
__device__ __forceinline__ int cb_(int lane) { return (lane >> 3) & 1; }
__device__ __forceinline__ int rt_(int lane) { return ((lane >> 3) & 1) * 8 + (lane & 7); }
__device__ __forceinline__ int ct_(int lane) { return lane >> 4; }

// The A fragment of a 16 x 16 block (k block kk) from 16 x 8 accumulators (n tiles 2kk, 2kk+1).
__device__ __forceinline__ void acc_to_a(uint32_t a[4], const float c0[4], const float c1[4]) {
  a[0] = pack2(c0[0], c0[1]);
  a[1] = pack2(c0[2], c0[3]);
  a[2] = pack2(c1[0], c1[1]);
  a[3] = pack2(c1[2], c1[3]);
}

// Min and max document id over positions [lo, hi) of one row, for every lane of the warp.
__device__ __forceinline__ void doc_range(const uint32_t *d, int lo, int hi, int lane,
                                          uint32_t &mn, uint32_t &mx) {
  uint32_t a = 0xffffffffu, z = 0u;
  for (int i = lo + lane; i < hi; i += 32) {
    const uint32_t x = __ldg(d + i);
    a = min(a, x);
    z = max(z, x);
  }
  mn = __reduce_min_sync(kFull, a);
  mx = __reduce_max_sync(kFull, z);
}

// Tile loads shared by every kernel below (cp.async, 16 bytes per copy). Rows r0 .. r0 + R - 1
// of a row-major tensor (row stride `ss` elements) go to a swizzled [R][HD] tile; rows at or
// past `seq` are zero-filled (src-size 0, the source stays a valid address).
template <int HD, int R, int NT>
__device__ __forceinline__ void load_rows(bf16 *dst, const bf16 *src, i64 ss, int r0, int seq,
                                          int tid) {
  constexpr int CH = HD / 8;
  for (int idx = tid; idx < R * CH; idx += NT) {
    const int r = idx / CH, c = (idx % CH) * 8;
    const int i = r0 + r;
    const bool ok = i < seq;
    cp16(dst + swz<HD>(r, c), src + (ok ? i * ss + c : 0), ok);
  }
}

// The same rows of two tensors (K and V, Q and dO) into two tiles, in one loop.
template <int HD, int R, int NT>
__device__ __forceinline__ void load_rows2(bf16 *d0, const bf16 *s0, i64 ss0, bf16 *d1,
                                           const bf16 *s1, i64 ss1, int r0, int seq, int tid) {
  constexpr int CH = HD / 8;
  for (int idx = tid; idx < R * CH; idx += NT) {
    const int r = idx / CH, c = (idx % CH) * 8;
    const int i = r0 + r;
    const bool ok = i < seq;
    cp16(d0 + swz<HD>(r, c), s0 + (ok ? i * ss0 + c : 0), ok);
    cp16(d1 + swz<HD>(r, c), s1 + (ok ? i * ss1 + c : 0), ok);
  }
}

// Words r0 .. r0 + R - 1 of `src` (document ids), zero past `seq`.
template <int R, int NT>
__device__ __forceinline__ void load_words(uint32_t *dst, const uint32_t *src, int r0, int seq,
                                           int tid) {
  for (int r = tid; r < R; r += NT) {
    const int i = r0 + r;
    const bool ok = i < seq;
    cp4(dst + r, src + (ok ? i : 0), ok);
  }
}

// Forward with documents: the first kv tile (BN rows, of [0, n_end)) whose ids can meet those
// of q rows [lo, hi); the tiles before it hold ids wholly outside the rows' range. Correct for
// any ids; for packed (nondecreasing) ids it skips every fully masked tile.
template <int BN>
__device__ __forceinline__ int first_doc_tile(const uint32_t *docb, int lo, int hi, int n_end,
                                              int seq, int lane) {
  uint32_t qmn, qmx;
  doc_range(docb, lo, hi, lane, qmn, qmx);
  int n = 0;
  while (n < n_end) {
    uint32_t kmn, kmx;
    doc_range(docb, n * BN, min(seq, n * BN + BN), lane, kmn, kmx);
    if (kmx < qmn || kmn > qmx)
      ++n;
    else
      break;
  }
  return n;
}

// Backward with documents: the end of q tiles (BM rows, of [m_start, m_end)) once the trailing
// run whose ids cannot meet those of kv rows [lo, hi) is dropped.
template <int BM>
__device__ __forceinline__ int doc_tiles_end(const uint32_t *docb, int lo, int hi, int m_start,
                                             int m_end, int seq, int lane) {
  uint32_t kmn, kmx;
  doc_range(docb, lo, hi, lane, kmn, kmx);
  while (m_end > m_start) {
    uint32_t qmn, qmx;
    doc_range(docb, (m_end - 1) * BM, min(seq, m_end * BM), lane, qmn, qmx);
    if (qmx < kmn || qmn > kmx)
      --m_end;
    else
      break;
  }
  return m_end;
}

// ---------------------------------------------------------------------------------------------
// Forward. One CTA per (q tile of BM rows, q head, batch); NW warps own 16 rows each. K/V
// tiles of BN rows are double-buffered with cp.async; kv tiles above the diagonal are never
// loaded, and a warp skips the diagonal tiles that lie wholly after its rows.
// Shared: Q [BM][HD] (reused to stage O), K [2][BN][HD], V [2][BN][HD], doc [2][BN].
template <int HD, int BM, int BN, int NW, bool Q_REGS, bool DOC>
__device__ __forceinline__ void flash_fwd(const bf16 *__restrict__ q, const bf16 *__restrict__ k,
                                          const bf16 *__restrict__ v, bf16 *__restrict__ o,
                                          float *__restrict__ lse, const uint32_t *__restrict__ doc,
                                          int seq, int hq, int hkv, i64 q_sb, i64 q_sh, i64 q_ss,
                                          i64 k_sb, i64 k_sh, i64 k_ss, i64 v_sb, i64 v_sh,
                                          i64 v_ss, float scale_log2) {
  static_assert(BM == 16 * NW, "one 16-row slab per warp");
  constexpr int NT = NW * 32, CH = HD / 8;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  // lane_off's XOR addressing needs 1 KiB-aligned tiles; the launcher adds 1 KiB of slack.
  unsigned char *smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
  bf16 *sQ = reinterpret_cast<bf16 *>(smem);
  bf16 *sK = sQ + BM * HD;
  bf16 *sV = sK + 2 * BN * HD;
  uint32_t *sDoc = reinterpret_cast<uint32_t *>(sV + 2 * BN * HD);

  // Heaviest (last) q tiles are scheduled first: they launch in blockIdx.z order.
  const int m_block = gridDim.z - 1 - blockIdx.z;
  const int h = blockIdx.x, b = blockIdx.y;
  const int hk = h / (hq / hkv);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, tig = lane & 3;
  const int q0 = m_block * BM;

  const bf16 *qb = q + b * q_sb + h * q_sh;
  const bf16 *kb = k + b * k_sb + hk * k_sh;
  const bf16 *vb = v + b * v_sb + hk * v_sh;
  const uint32_t *docb = DOC ? doc + (i64)b * seq : nullptr;

  load_rows<HD, BM, NT>(sQ, qb, q_ss, q0, seq, tid);
  cp_commit();

  // kv tiles [n_start, n_end): causal end; with documents, a leading run of tiles whose ids
  // cannot meet this q tile's (disjoint id ranges) is skipped. Correct for any ids; for
  // packed (nondecreasing) ids it skips every fully masked tile.
  const int row_end = min(seq, q0 + BM);
  const int n_end = (row_end + BN - 1) / BN;
  const int n_start = DOC ? first_doc_tile<BN>(docb, q0, row_end, n_end, seq, lane) : 0;

  auto load_kv = [&](int n, int st) {
    const int j0 = n * BN;
    load_rows2<HD, BN, NT>(sK + st * BN * HD, kb, k_ss, sV + st * BN * HD, vb, v_ss, j0, seq,
                           tid);
    if (DOC) load_words<BN, NT>(sDoc + st * BN, docb, j0, seq, tid);
  };

  if (n_start < n_end) load_kv(n_start, 0);
  cp_commit();
  cp_wait<1>();  // Q has landed
  __syncthreads();

  constexpr uint32_t RB = HD * 2;  // bytes per tile row
  // Q fragments stay in registers (Q_REGS) or are re-read from sQ per kv tile, which frees
  // HD/4 registers (hd 64: 128 registers, two CTAs per SM).
  const uint32_t qa = smem_u32(sQ) + warp * 16 * RB + lane_off<HD>(ra_(lane), ca_(lane));
  uint32_t qf[Q_REGS ? HD / 16 : 1][4];
  if (Q_REGS) {
#pragma unroll
    for (int kk = 0; kk < (Q_REGS ? HD / 16 : 0); ++kk) ldsm4(qf[kk], qa ^ (kk << 5));
  }
  const uint32_t offB = lane_off<HD>(rb_(lane), cb_(lane));
  const uint32_t offT = lane_off<HD>(rt_(lane), ct_(lane));

  const int row0 = q0 + warp * 16 + g;  // this lane's rows: row0 and row0 + 8
  uint32_t dq0 = 0, dq1 = 0;
  if (DOC) {
    dq0 = row0 < seq ? __ldg(docb + row0) : 0xffffffffu;
    dq1 = row0 + 8 < seq ? __ldg(docb + row0 + 8) : 0xffffffffu;
  }

  float oacc[HD / 8][4];
#pragma unroll
  for (int t = 0; t < HD / 8; ++t) oacc[t][0] = oacc[t][1] = oacc[t][2] = oacc[t][3] = 0.f;
  float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.f, 0.f};

  for (int n = n_start; n < n_end; ++n) {
    const int st = (n - n_start) & 1;
    if (n + 1 < n_end) {
      load_kv(n + 1, st ^ 1);
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    __syncthreads();
    const int j0 = n * BN;
    // A warp whose 16 rows all precede the tile sees none of it.
    if (j0 <= q0 + warp * 16 + 15) {
      const uint32_t kaddr = opaque(smem_u32(sK) + st * BN * RB + offB);
      const uint32_t vaddr = opaque(smem_u32(sV) + st * BN * RB + offT);
      float s[BN / 8][4];
#pragma unroll
      for (int t = 0; t < BN / 8; ++t) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < HD / 16; ++kk) {
        uint32_t a[4];
        if (Q_REGS) {
#pragma unroll
          for (int e = 0; e < 4; ++e) a[e] = qf[Q_REGS ? kk : 0][e];
        } else {
          ldsm4(a, opaque(qa) ^ (kk << 5));
        }
#pragma unroll
        for (int jj = 0; jj < BN / 16; ++jj) {
          uint32_t bb[4];
          ldsm4(bb, (kaddr ^ (kk << 5)) + jj * 16 * RB);
          mma(s[2 * jj], a, bb[0], bb[1]);
          mma(s[2 * jj + 1], a, bb[2], bb[3]);
        }
      }
      if (DOC || j0 + BN - 1 > q0 + warp * 16) {
        const uint32_t *cDoc = sDoc + st * BN;
#pragma unroll
        for (int t = 0; t < BN / 8; ++t) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int i = row0 + (e >> 1) * 8;
            const int jc = t * 8 + 2 * tig + (e & 1);
            bool masked = j0 + jc > i;
            if (DOC) masked |= cDoc[jc] != ((e >> 1) ? dq1 : dq0);
            if (masked) s[t][e] = -INFINITY;
          }
        }
      }
      // Online softmax: scale > 0, so max(s) * scale_log2 is the max of the scaled scores.
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int t = 0; t < BN / 8; ++t) {
        mx[0] = fmaxf(mx[0], fmaxf(s[t][0], s[t][1]));
        mx[1] = fmaxf(mx[1], fmaxf(s[t][2], s[t][3]));
      }
      float mu[2], alpha[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(kFull, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(kFull, mx[r], 2));
        const float mn = fmaxf(m_r[r], mx[r] * scale_log2);
        mu[r] = mn == -INFINITY ? 0.f : mn;  // a row masked so far: avoid -inf - -inf
        alpha[r] = exp2_fast(m_r[r] - mu[r]);
        m_r[r] = mn;
        l_r[r] *= alpha[r];
      }
#pragma unroll
      for (int t = 0; t < BN / 8; ++t) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float p = exp2_fast(fmaf(s[t][e], scale_log2, -mu[e >> 1]));
          s[t][e] = p;
          l_r[e >> 1] += p;
        }
      }
#pragma unroll
      for (int t = 0; t < HD / 8; ++t) {
        oacc[t][0] *= alpha[0];
        oacc[t][1] *= alpha[0];
        oacc[t][2] *= alpha[1];
        oacc[t][3] *= alpha[1];
      }
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        uint32_t a[4];
        acc_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
        for (int jj = 0; jj < HD / 16; ++jj) {
          uint32_t bb[4];
          ldsm4t(bb, (vaddr ^ (jj << 5)) + kk * 16 * RB);
          mma(oacc[2 * jj], a, bb[0], bb[1]);
          mma(oacc[2 * jj + 1], a, bb[2], bb[3]);
        }
      }
    }
    __syncthreads();  // the stage read here is refilled next iteration
  }
  cp_wait<0>();

  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = l_r[r];
    l += __shfl_xor_sync(kFull, l, 1);
    l += __shfl_xor_sync(kFull, l, 2);
    inv[r] = l > 0.f ? 1.f / l : 0.f;
    const int i = row0 + r * 8;
    if (tig == 0 && i < seq)
      lse[((i64)b * hq + h) * seq + i] = l > 0.f ? (m_r[r] + log2f(l)) * kLn2 : INFINITY;
  }

  // Stage O through this warp's own rows of sQ (only it read them), then 16-byte stores.
  __syncwarp();
  bf16 *sO = sQ;
#pragma unroll
  for (int t = 0; t < HD / 8; ++t) {
    const int c = t * 8 + 2 * tig;
    *reinterpret_cast<uint32_t *>(sO + swz<HD>(warp * 16 + g, c)) =
        pack2(oacc[t][0] * inv[0], oacc[t][1] * inv[0]);
    *reinterpret_cast<uint32_t *>(sO + swz<HD>(warp * 16 + g + 8, c)) =
        pack2(oacc[t][2] * inv[1], oacc[t][3] * inv[1]);
  }
  __syncwarp();
#pragma unroll
  for (int idx = lane; idx < 16 * CH; idx += 32) {
    const int r = idx / CH, c = (idx % CH) * 8;
    const int i = q0 + warp * 16 + r;
    if (i < seq)
      *reinterpret_cast<uint4 *>(o + (((i64)b * seq + i) * hq + h) * HD + c) =
          *reinterpret_cast<const uint4 *>(sO + swz<HD>(warp * 16 + r, c));
  }
}

// ---------------------------------------------------------------------------------------------
// Backward preprocess: D = rowsum(dO * O) and lse2 = lse * log2(e), both (b, hq, s).
// HD/8 lanes per row, one 16-byte chunk each.
template <int HD>
__device__ __forceinline__ void flash_bwd_pre(const bf16 *__restrict__ o,
                                              const bf16 *__restrict__ dout,
                                              const float *__restrict__ lse,
                                              float *__restrict__ lse2, float *__restrict__ dsum,
                                              int batch, int hq, int seq, i64 o_sb, i64 o_sh,
                                              i64 o_ss, i64 do_sb, i64 do_sh, i64 do_ss) {
  constexpr int CH = HD / 8;
  const i64 gt = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  const i64 row = gt / CH;
  const int c = (int)(gt % CH) * 8;
  const i64 rows = (i64)batch * hq * seq;
  float acc = 0.f;
  if (row < rows) {
    const int i = (int)(row % seq);
    const i64 bh = row / seq;
    const int h = (int)(bh % hq), b = (int)(bh / hq);
    float x[8], y[8];
    unpack8(*reinterpret_cast<const bf16x8 *>(o + b * o_sb + h * o_sh + i * o_ss + c), x);
    unpack8(*reinterpret_cast<const bf16x8 *>(dout + b * do_sb + h * do_sh + i * do_ss + c), y);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc += x[e] * y[e];
  }
#pragma unroll
  for (int off = CH / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(kFull, acc, off);
  if (row < rows && c == 0) {
    dsum[row] = acc;
    lse2[row] = lse[row] * kLog2e;
  }
}

// ---------------------------------------------------------------------------------------------
// Backward. One CTA per (kv tile of BN rows, kv head, batch); NW warps own 16 kv rows each and
// accumulate dK, dV for them in registers over every q tile (BM rows) of every q head of the
// GQA group, from the diagonal on. Per q tile, in transposed form (kv rows as M):
//   S^T = K Q^T, P^T = exp2(S^T * scale_log2 - lse2), dP^T = V dO^T, dV += P^T dO,
//   dS^T = P^T (dP^T - D), dK += dS^T Q, dQ += dS K (dS^T through shared memory, the warps
//   re-split by q rows x hd columns, f32 atomics into dq_acc).
// dK is scaled at the end, dQ by the convert kernel.
// Shared: K, V [BN][HD], Q, dO [2][BM][HD], dS^T [BN][BM], lse2, D, doc [2][BM].
template <int HD, int BN, int BM, int NW, bool KV_REGS, bool DOC>
__device__ __forceinline__ void flash_bwd(
    const bf16 *__restrict__ q, const bf16 *__restrict__ k, const bf16 *__restrict__ v,
    const bf16 *__restrict__ dout, const float *__restrict__ lse2, const float *__restrict__ dsum,
    float *__restrict__ dq_acc, bf16 *__restrict__ dk, bf16 *__restrict__ dv,
    const uint32_t *__restrict__ doc, int seq, int hq, int hkv, i64 q_sb, i64 q_sh, i64 q_ss,
    i64 k_sb, i64 k_sh, i64 k_ss, i64 v_sb, i64 v_sh, i64 v_ss, i64 do_sb, i64 do_sh, i64 do_ss,
    float scale_log2, float scale) {
  static_assert(BN == 16 * NW, "one 16-row kv slab per warp");
  constexpr int NT = NW * 32, CH = HD / 8;
  constexpr int WM = BM / 16, WN = NW / WM, DQN = HD / WN;  // dQ: WM x WN warps, DQN cols each
  static_assert(WM * WN == NW && DQN % 16 == 0, "dQ warp grid");
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char *smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
  bf16 *sK = reinterpret_cast<bf16 *>(smem);
  bf16 *sV = sK + BN * HD;
  bf16 *sQ = sV + BN * HD;
  bf16 *sdO = sQ + 2 * BM * HD;
  bf16 *sdS = sdO + 2 * BM * HD;
  float *sL = reinterpret_cast<float *>(sdS + BN * BM);
  float *sD = sL + 2 * BM;
  uint32_t *sDoc = reinterpret_cast<uint32_t *>(sD + 2 * BM);

  // Low kv tiles see the most q tiles: they launch first.
  const int n_block = blockIdx.z;
  const int hk = blockIdx.x, b = blockIdx.y;
  const int rep = hq / hkv;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, tig = lane & 3;
  const int j0 = n_block * BN;
  const int jr0 = j0 + warp * 16 + g;  // this lane's kv rows: jr0 and jr0 + 8

  const bf16 *kb = k + b * k_sb + hk * k_sh;
  const bf16 *vb = v + b * v_sb + hk * v_sh;
  const uint32_t *docb = DOC ? doc + (i64)b * seq : nullptr;

  load_rows2<HD, BN, NT>(sK, kb, k_ss, sV, vb, v_ss, j0, seq, tid);
  cp_commit();

  // q tiles [m_start, m_end): from the diagonal; with documents, a trailing run of q tiles
  // whose ids cannot meet this kv tile's is dropped (see the forward).
  const int m_start = j0 / BM;
  int m_end = (seq + BM - 1) / BM;
  uint32_t dk0 = 0, dk1 = 0;
  if (DOC) {
    m_end = doc_tiles_end<BM>(docb, j0, min(seq, j0 + BN), m_start, m_end, seq, lane);
    dk0 = jr0 < seq ? __ldg(docb + jr0) : 0xffffffffu;
    dk1 = jr0 + 8 < seq ? __ldg(docb + jr0 + 8) : 0xffffffffu;
  }
  const int nm = max(0, m_end - m_start);
  const int total = nm * rep;  // work items: (q head of the group, q tile)

  auto load_q = [&](int t, int st) {
    const int h = hk * rep + t / nm;
    const int i0 = (m_start + t % nm) * BM;
    const bf16 *qb = q + b * q_sb + h * q_sh;
    const bf16 *ob = dout + b * do_sb + h * do_sh;
    load_rows2<HD, BM, NT>(sQ + st * BM * HD, qb, q_ss, sdO + st * BM * HD, ob, do_ss, i0, seq,
                           tid);
    // Zero-filled rows past seq give P^T = 1 there, but their dO and D are 0, so they add
    // nothing to dV, dS, dK; their dQ is not written.
    const i64 lrow = ((i64)b * hq + h) * seq;
    for (int r = tid; r < BM; r += NT) {
      const int i = i0 + r;
      const bool ok = i < seq;
      cp4(sL + st * BM + r, lse2 + lrow + (ok ? i : 0), ok);
      cp4(sD + st * BM + r, dsum + lrow + (ok ? i : 0), ok);
      if (DOC) cp4(sDoc + st * BM + r, docb + (ok ? i : 0), ok);
    }
  };

  if (total > 0) load_q(0, 0);
  cp_commit();

  constexpr uint32_t RB = HD * 2, RBS = BM * 2;  // bytes per row: Q/dO/K/V, dS^T
  const uint32_t offA = warp * 16 * RB + lane_off<HD>(ra_(lane), ca_(lane));
  const uint32_t offB = lane_off<HD>(rb_(lane), cb_(lane));
  const uint32_t offT = lane_off<HD>(rt_(lane), ct_(lane));
  const uint32_t sKa = smem_u32(sK), sVa = smem_u32(sV), sQa = smem_u32(sQ);
  const uint32_t sdOa = smem_u32(sdO), sdSa = smem_u32(sdS);
  uint32_t kf[KV_REGS ? HD / 16 : 1][4], vf[KV_REGS ? HD / 16 : 1][4];
  if (KV_REGS) {
    cp_wait<1>();  // K, V have landed
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < (KV_REGS ? HD / 16 : 0); ++kk) {
      ldsm4(kf[kk], (sKa + offA) ^ (kk << 5));
      ldsm4(vf[kk], (sVa + offA) ^ (kk << 5));
    }
  }

  float dka[HD / 8][4], dva[HD / 8][4];
#pragma unroll
  for (int t = 0; t < HD / 8; ++t)
#pragma unroll
    for (int e = 0; e < 4; ++e) dka[t][e] = dva[t][e] = 0.f;

  for (int t = 0; t < total; ++t) {
    const int st = t & 1;
    if (t + 1 < total) {
      load_q(t + 1, st ^ 1);
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    __syncthreads();
    const int h = hk * rep + t / nm;
    const int i0 = (m_start + t % nm) * BM;
    const uint32_t qB = opaque(sQa + st * BM * RB + offB), qT = opaque(sQa + st * BM * RB + offT);
    const uint32_t oB = opaque(sdOa + st * BM * RB + offB), oT = opaque(sdOa + st * BM * RB + offT);
    const float *cL = sL + st * BM;
    const float *cD = sD + st * BM;
    const uint32_t *cDoc = sDoc + st * BM;

    if (j0 + warp * 16 <= i0 + BM - 1) {
      // 1. S^T = K Q^T: 16 kv rows x BM q columns.
      float s[BM / 8][4];
#pragma unroll
      for (int u = 0; u < BM / 8; ++u) s[u][0] = s[u][1] = s[u][2] = s[u][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < HD / 16; ++kk) {
        uint32_t a[4];
        if (KV_REGS) {
#pragma unroll
          for (int e = 0; e < 4; ++e) a[e] = kf[KV_REGS ? kk : 0][e];
        } else {
          ldsm4(a, opaque(sKa + offA) ^ (kk << 5));
        }
#pragma unroll
        for (int jj = 0; jj < BM / 16; ++jj) {
          uint32_t bb[4];
          ldsm4(bb, (qB ^ (kk << 5)) + jj * 16 * RB);
          mma(s[2 * jj], a, bb[0], bb[1]);
          mma(s[2 * jj + 1], a, bb[2], bb[3]);
        }
      }
      // 2. P^T, masked where kv row j > q row i or the documents differ.
      const bool need_mask = DOC || (j0 + warp * 16 + 15 > i0);
#pragma unroll
      for (int u = 0; u < BM / 8; ++u) {
        const int c = u * 8 + 2 * tig;
        const float2 L = *reinterpret_cast<const float2 *>(cL + c);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = s[u][e];
          if (need_mask) {
            const int col = c + (e & 1);
            bool masked = ((e >> 1) ? jr0 + 8 : jr0) > i0 + col;
            if (DOC) masked |= cDoc[col] != ((e >> 1) ? dk1 : dk0);
            if (masked) x = -INFINITY;
          }
          s[u][e] = exp2_fast(fmaf(x, scale_log2, -((e & 1) ? L.y : L.x)));
        }
      }
      // 3. dP^T = V dO^T.
      float dp[BM / 8][4];
#pragma unroll
      for (int u = 0; u < BM / 8; ++u) dp[u][0] = dp[u][1] = dp[u][2] = dp[u][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < HD / 16; ++kk) {
        uint32_t a[4];
        if (KV_REGS) {
#pragma unroll
          for (int e = 0; e < 4; ++e) a[e] = vf[KV_REGS ? kk : 0][e];
        } else {
          ldsm4(a, opaque(sVa + offA) ^ (kk << 5));
        }
#pragma unroll
        for (int jj = 0; jj < BM / 16; ++jj) {
          uint32_t bb[4];
          ldsm4(bb, (oB ^ (kk << 5)) + jj * 16 * RB);
          mma(dp[2 * jj], a, bb[0], bb[1]);
          mma(dp[2 * jj + 1], a, bb[2], bb[3]);
        }
      }
      // 4. dV += P^T dO (k = q rows).
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk) {
        uint32_t a[4];
        acc_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
        for (int jj = 0; jj < HD / 16; ++jj) {
          uint32_t bb[4];
          ldsm4t(bb, (oT ^ (jj << 5)) + kk * 16 * RB);
          mma(dva[2 * jj], a, bb[0], bb[1]);
          mma(dva[2 * jj + 1], a, bb[2], bb[3]);
        }
      }
      // 5. dS^T = P^T (dP^T - D).
#pragma unroll
      for (int u = 0; u < BM / 8; ++u) {
        const float2 Dv = *reinterpret_cast<const float2 *>(cD + u * 8 + 2 * tig);
        dp[u][0] = s[u][0] * (dp[u][0] - Dv.x);
        dp[u][1] = s[u][1] * (dp[u][1] - Dv.y);
        dp[u][2] = s[u][2] * (dp[u][2] - Dv.x);
        dp[u][3] = s[u][3] * (dp[u][3] - Dv.y);
      }
      // 6. dK += dS^T Q, and dS^T (bf16, the same values) to shared memory for dQ.
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk) {
        uint32_t a[4];
        acc_to_a(a, dp[2 * kk], dp[2 * kk + 1]);
        const int r = warp * 16 + g, c = kk * 16 + 2 * tig;
        *reinterpret_cast<uint32_t *>(sdS + swz<BM>(r, c)) = a[0];
        *reinterpret_cast<uint32_t *>(sdS + swz<BM>(r + 8, c)) = a[1];
        *reinterpret_cast<uint32_t *>(sdS + swz<BM>(r, c + 8)) = a[2];
        *reinterpret_cast<uint32_t *>(sdS + swz<BM>(r + 8, c + 8)) = a[3];
#pragma unroll
        for (int jj = 0; jj < HD / 16; ++jj) {
          uint32_t bb[4];
          ldsm4t(bb, (qT ^ (jj << 5)) + kk * 16 * RB);
          mma(dka[2 * jj], a, bb[0], bb[1]);
          mma(dka[2 * jj + 1], a, bb[2], bb[3]);
        }
      }
    } else {
      // This warp's kv rows all follow the q tile: dS^T is zero there.
      uint4 *z = reinterpret_cast<uint4 *>(sdS + warp * 16 * BM);
#pragma unroll
      for (int idx = lane; idx < 16 * BM / 8; idx += 32) z[idx] = make_uint4(0, 0, 0, 0);
    }
    __syncthreads();

    // 7. dQ += dS K for q rows wm*16.. and hd columns wn*DQN.. (k = kv rows).
    {
      const int wm = warp % WM, wn = warp / WM;
      const uint32_t dsA = opaque(sdSa + lane_off<BM>(rb_(lane), cb_(lane))) ^ (wm << 5);
      const uint32_t kT = opaque(sKa + offT) ^ ((wn * DQN / 16) << 5);
      float dqa[DQN / 8][4];
#pragma unroll
      for (int u = 0; u < DQN / 8; ++u) dqa[u][0] = dqa[u][1] = dqa[u][2] = dqa[u][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        uint32_t a[4];
        ldsm4t(a, dsA + kk * 16 * RBS);
#pragma unroll
        for (int jj = 0; jj < DQN / 16; ++jj) {
          uint32_t bb[4];
          ldsm4t(bb, (kT ^ (jj << 5)) + kk * 16 * RB);
          mma(dqa[2 * jj], a, bb[0], bb[1]);
          mma(dqa[2 * jj + 1], a, bb[2], bb[3]);
        }
      }
      const i64 rs = (i64)hq * HD;  // dq_acc row stride
      const int i = i0 + wm * 16 + g;
      float *dqb = dq_acc + ((i64)b * seq + i) * rs + (i64)h * HD + wn * DQN + 2 * tig;
#pragma unroll
      for (int u = 0; u < DQN / 8; ++u) {
        if (i < seq)
          atomicAdd(reinterpret_cast<float2 *>(dqb + u * 8), make_float2(dqa[u][0], dqa[u][1]));
        if (i + 8 < seq)
          atomicAdd(reinterpret_cast<float2 *>(dqb + 8 * rs + u * 8),
                    make_float2(dqa[u][2], dqa[u][3]));
      }
    }
    __syncthreads();  // the Q/dO stage and dS^T are rewritten next iteration
  }
  cp_wait<0>();
  __syncthreads();

  // Stage dK (scaled) in sK and dV in sV, this warp's rows, then 16-byte stores.
#pragma unroll
  for (int t = 0; t < HD / 8; ++t) {
    const int r = warp * 16 + g, c = t * 8 + 2 * tig;
    *reinterpret_cast<uint32_t *>(sK + swz<HD>(r, c)) = pack2(dka[t][0] * scale, dka[t][1] * scale);
    *reinterpret_cast<uint32_t *>(sK + swz<HD>(r + 8, c)) =
        pack2(dka[t][2] * scale, dka[t][3] * scale);
    *reinterpret_cast<uint32_t *>(sV + swz<HD>(r, c)) = pack2(dva[t][0], dva[t][1]);
    *reinterpret_cast<uint32_t *>(sV + swz<HD>(r + 8, c)) = pack2(dva[t][2], dva[t][3]);
  }
  __syncwarp();
#pragma unroll
  for (int idx = lane; idx < 16 * CH; idx += 32) {
    const int r = idx / CH, c = (idx % CH) * 8;
    const int j = j0 + warp * 16 + r;
    if (j < seq) {
      const i64 off = (((i64)b * seq + j) * hkv + hk) * HD + c;
      *reinterpret_cast<uint4 *>(dk + off) =
          *reinterpret_cast<const uint4 *>(sK + swz<HD>(warp * 16 + r, c));
      *reinterpret_cast<uint4 *>(dv + off) =
          *reinterpret_cast<const uint4 *>(sV + swz<HD>(warp * 16 + r, c));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Forward on Hopper's warpgroup MMA (sm_90a), head_dim 64: same tiles, loads, masking and
// online softmax as flash_fwd, but each warpgroup (4 warps, 64 q rows) issues S = Q K^T with
// both operands from shared memory and O += P V with P from registers (the S accumulator
// converted to bf16 is already wgmma's A fragment) and V read MN-major. Every hd-64 tile is a
// [rows][64] bf16 tile of 128-byte rows whose 16-byte chunks are XORed with row % 8 (swz<64>):
// exactly wgmma's 128-byte-swizzle layout, so the cp.async loads are unchanged. K steps along
// head_dim advance the descriptor 32 bytes inside the swizzled row; steps along kv rows (V)
// advance 16 rows (2 KiB). SBO = 1 KiB (8 rows); LBO is unused for these shapes.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) || !defined(__CUDA_ARCH__)
template <int BN, bool DOC>
__device__ __forceinline__ void flash_fwd_wg64(const bf16 *__restrict__ q, const bf16 *__restrict__ k,
                                               const bf16 *__restrict__ v, bf16 *__restrict__ o,
                                               float *__restrict__ lse,
                                               const uint32_t *__restrict__ doc, int seq, int hq,
                                               int hkv, i64 q_sb, i64 q_sh, i64 q_ss, i64 k_sb,
                                               i64 k_sh, i64 k_ss, i64 v_sb, i64 v_sh, i64 v_ss,
                                               float scale_log2) {
  // 64 kv rows per tile: 128 (one m64n128 S per warpgroup) needs 158 registers, one CTA per SM,
  // and ran slower.
  static_assert(BN == 64, "S is one m64n64 wgmma");
  constexpr int HD = 64, BM = 128, NT = 256, CH = HD / 8;
  constexpr uint32_t RB = HD * 2;  // bytes per tile row
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char *smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
  bf16 *sQ = reinterpret_cast<bf16 *>(smem);
  bf16 *sK = sQ + BM * HD;
  bf16 *sV = sK + 2 * BN * HD;
  uint32_t *sDoc = reinterpret_cast<uint32_t *>(sV + 2 * BN * HD);

  const int m_block = gridDim.z - 1 - blockIdx.z;
  const int h = blockIdx.x, b = blockIdx.y;
  const int hk = h / (hq / hkv);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int wg = warp >> 2, wl = warp & 3;  // warpgroup, warp within it
  const int g = lane >> 2, tig = lane & 3;
  const int q0 = m_block * BM;
  const int wq0 = q0 + wg * 64;  // this warpgroup's first row

  const bf16 *qb = q + b * q_sb + h * q_sh;
  const bf16 *kb = k + b * k_sb + hk * k_sh;
  const bf16 *vb = v + b * v_sb + hk * v_sh;
  const uint32_t *docb = DOC ? doc + (i64)b * seq : nullptr;

  load_rows<HD, BM, NT>(sQ, qb, q_ss, q0, seq, tid);
  cp_commit();

  const int row_end = min(seq, q0 + BM);
  const int n_end = (row_end + BN - 1) / BN;
  const int n_start = DOC ? first_doc_tile<BN>(docb, q0, row_end, n_end, seq, lane) : 0;

  auto load_kv = [&](int n, int st) {
    const int j0 = n * BN;
    load_rows2<HD, BN, NT>(sK + st * BN * HD, kb, k_ss, sV + st * BN * HD, vb, v_ss, j0, seq,
                           tid);
    if (DOC) load_words<BN, NT>(sDoc + st * BN, docb, j0, seq, tid);
  };

  if (n_start < n_end) load_kv(n_start, 0);
  cp_commit();

  const uint32_t sQa = smem_u32(sQ) + wg * 64 * RB, sKa = smem_u32(sK), sVa = smem_u32(sV);
  const int row0 = wq0 + wl * 16 + g;  // this lane's rows: row0 and row0 + 8
  uint32_t dq0 = 0, dq1 = 0;
  if (DOC) {
    dq0 = row0 < seq ? __ldg(docb + row0) : 0xffffffffu;
    dq1 = row0 + 8 < seq ? __ldg(docb + row0 + 8) : 0xffffffffu;
  }

  float oacc[HD / 2];
#pragma unroll
  for (int i = 0; i < HD / 2; ++i) oacc[i] = 0.f;
  float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.f, 0.f};

  for (int n = n_start; n < n_end; ++n) {
    const int st = (n - n_start) & 1;
    if (n + 1 < n_end) {
      load_kv(n + 1, st ^ 1);
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    fence_async_smem();  // cp.async wrote the tiles the tensor cores read next
    __syncthreads();
    const int j0 = n * BN;
    // A warpgroup whose 64 rows all precede the tile sees none of it.
    if (j0 <= wq0 + 63) {
      float s[BN / 2];
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < HD / 16; ++kk) {
        const uint64_t da = wg_desc(sQa + kk * 32, 16, 1024);
        const uint64_t db = wg_desc(sKa + st * BN * RB + kk * 32, 16, 1024);
        wgmma_m64n64_ss<0, 0>(s, da, db, kk);
      }
      wg_commit();
      wg_wait<0>();
      wg_keep(s);
      if (DOC || j0 + BN - 1 > wq0 + wl * 16) {
        const uint32_t *cDoc = sDoc + st * BN;
#pragma unroll
        for (int t = 0; t < BN / 8; ++t) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int i = row0 + (e >> 1) * 8;
            const int jc = t * 8 + 2 * tig + (e & 1);
            bool masked = j0 + jc > i;
            if (DOC) masked |= cDoc[jc] != ((e >> 1) ? dq1 : dq0);
            if (masked) s[4 * t + e] = -INFINITY;
          }
        }
      }
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int t = 0; t < BN / 8; ++t) {
        mx[0] = fmaxf(mx[0], fmaxf(s[4 * t], s[4 * t + 1]));
        mx[1] = fmaxf(mx[1], fmaxf(s[4 * t + 2], s[4 * t + 3]));
      }
      float mu[2], alpha[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(kFull, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(kFull, mx[r], 2));
        const float mn = fmaxf(m_r[r], mx[r] * scale_log2);
        mu[r] = mn == -INFINITY ? 0.f : mn;
        alpha[r] = exp2_fast(m_r[r] - mu[r]);
        m_r[r] = mn;
        l_r[r] *= alpha[r];
      }
#pragma unroll
      for (int t = 0; t < BN / 8; ++t) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float p = exp2_fast(fmaf(s[4 * t + e], scale_log2, -mu[e >> 1]));
          s[4 * t + e] = p;
          l_r[e >> 1] += p;
        }
      }
#pragma unroll
      for (int t = 0; t < HD / 8; ++t) {
        oacc[4 * t] *= alpha[0];
        oacc[4 * t + 1] *= alpha[0];
        oacc[4 * t + 2] *= alpha[1];
        oacc[4 * t + 3] *= alpha[1];
      }
      uint32_t pa[BN / 16][4];
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        pa[kk][0] = pack2(s[8 * kk], s[8 * kk + 1]);
        pa[kk][1] = pack2(s[8 * kk + 2], s[8 * kk + 3]);
        pa[kk][2] = pack2(s[8 * kk + 4], s[8 * kk + 5]);
        pa[kk][3] = pack2(s[8 * kk + 6], s[8 * kk + 7]);
      }
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        const uint64_t db = wg_desc(sVa + st * BN * RB + kk * 16 * RB, 1024, 1024);
        wgmma_m64n64_rs<1>(oacc, pa[kk], db, 1);
      }
      wg_commit();
      wg_wait<0>();
      wg_keep(oacc);
    }
    __syncthreads();  // the stage read here is refilled next iteration
  }
  cp_wait<0>();

  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = l_r[r];
    l += __shfl_xor_sync(kFull, l, 1);
    l += __shfl_xor_sync(kFull, l, 2);
    inv[r] = l > 0.f ? 1.f / l : 0.f;
    const int i = row0 + r * 8;
    if (tig == 0 && i < seq)
      lse[((i64)b * hq + h) * seq + i] = l > 0.f ? (m_r[r] + log2f(l)) * kLn2 : INFINITY;
  }

  // Stage O through this warp's own 16 rows of sQ (its warpgroup's wgmmas are done), then
  // 16-byte stores.
  __syncwarp();
  bf16 *sO = sQ;
  const int orow = wg * 64 + wl * 16;
#pragma unroll
  for (int t = 0; t < HD / 8; ++t) {
    const int c = t * 8 + 2 * tig;
    *reinterpret_cast<uint32_t *>(sO + swz<HD>(orow + g, c)) =
        pack2(oacc[4 * t] * inv[0], oacc[4 * t + 1] * inv[0]);
    *reinterpret_cast<uint32_t *>(sO + swz<HD>(orow + g + 8, c)) =
        pack2(oacc[4 * t + 2] * inv[1], oacc[4 * t + 3] * inv[1]);
  }
  __syncwarp();
#pragma unroll
  for (int idx = lane; idx < 16 * CH; idx += 32) {
    const int r = idx / CH, c = (idx % CH) * 8;
    const int i = q0 + orow + r;
    if (i < seq)
      *reinterpret_cast<uint4 *>(o + (((i64)b * seq + i) * hq + h) * HD + c) =
          *reinterpret_cast<const uint4 *>(sO + swz<HD>(orow + r, c));
  }
}
#endif  // sm_90a or host pass

// ---------------------------------------------------------------------------------------------
// Backward on Hopper's warpgroup MMA (sm_90a), head_dim 64: flash_bwd's tiles (BN = 128 kv
// rows per CTA, BM = 64 q rows per step), loads and math, with each warpgroup owning 64 kv
// rows. Per q tile: S^T = K Q^T and dP^T = V dO^T (A = K / V rows, B = Q / dO, all from shared
// memory, K-major), then dV += P^T dO and dK += dS^T Q with the bf16 P^T / dS^T fragments as
// register A and dO / Q read MN-major; dS^T goes to shared memory and dQ = dS K is split by
// head_dim columns (warpgroup w: columns 32w..32w+31; A = dS^T read MN-major, B = K MN-major).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) || !defined(__CUDA_ARCH__)
template <bool DOC>
__device__ __forceinline__ void flash_bwd_wg64(
    const bf16 *__restrict__ q, const bf16 *__restrict__ k, const bf16 *__restrict__ v,
    const bf16 *__restrict__ dout, const float *__restrict__ lse2, const float *__restrict__ dsum,
    float *__restrict__ dq_acc, bf16 *__restrict__ dk, bf16 *__restrict__ dv,
    const uint32_t *__restrict__ doc, int seq, int hq, int hkv, i64 q_sb, i64 q_sh, i64 q_ss,
    i64 k_sb, i64 k_sh, i64 k_ss, i64 v_sb, i64 v_sh, i64 v_ss, i64 do_sb, i64 do_sh, i64 do_ss,
    float scale_log2, float scale) {
  constexpr int HD = 64, BN = 128, BM = 64, NT = 256, CH = HD / 8;
  constexpr uint32_t RB = HD * 2;  // bytes per row of every tile (BM * 2 too)
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char *smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
  bf16 *sK = reinterpret_cast<bf16 *>(smem);
  bf16 *sV = sK + BN * HD;
  bf16 *sQ = sV + BN * HD;
  bf16 *sdO = sQ + 2 * BM * HD;
  bf16 *sdS = sdO + 2 * BM * HD;
  float *sL = reinterpret_cast<float *>(sdS + BN * BM);
  float *sD = sL + 2 * BM;
  uint32_t *sDoc = reinterpret_cast<uint32_t *>(sD + 2 * BM);

  const int n_block = blockIdx.z;
  const int hk = blockIdx.x, b = blockIdx.y;
  const int rep = hq / hkv;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int wg = warp >> 2, wl = warp & 3;
  const int g = lane >> 2, tig = lane & 3;
  const int j0 = n_block * BN;
  const int wj0 = j0 + wg * 64;        // this warpgroup's first kv row
  const int jr0 = wj0 + wl * 16 + g;   // this lane's kv rows: jr0 and jr0 + 8

  const bf16 *kb = k + b * k_sb + hk * k_sh;
  const bf16 *vb = v + b * v_sb + hk * v_sh;
  const uint32_t *docb = DOC ? doc + (i64)b * seq : nullptr;

  load_rows2<HD, BN, NT>(sK, kb, k_ss, sV, vb, v_ss, j0, seq, tid);
  cp_commit();

  const int m_start = j0 / BM;
  int m_end = (seq + BM - 1) / BM;
  uint32_t dk0 = 0, dk1 = 0;
  if (DOC) {
    m_end = doc_tiles_end<BM>(docb, j0, min(seq, j0 + BN), m_start, m_end, seq, lane);
    dk0 = jr0 < seq ? __ldg(docb + jr0) : 0xffffffffu;
    dk1 = jr0 + 8 < seq ? __ldg(docb + jr0 + 8) : 0xffffffffu;
  }
  const int nm = max(0, m_end - m_start);
  const int total = nm * rep;

  auto load_q = [&](int t, int st) {
    const int h = hk * rep + t / nm;
    const int i0 = (m_start + t % nm) * BM;
    const bf16 *qb = q + b * q_sb + h * q_sh;
    const bf16 *ob = dout + b * do_sb + h * do_sh;
    load_rows2<HD, BM, NT>(sQ + st * BM * HD, qb, q_ss, sdO + st * BM * HD, ob, do_ss, i0, seq,
                           tid);
    const i64 lrow = ((i64)b * hq + h) * seq;
    for (int r = tid; r < BM; r += NT) {
      const int i = i0 + r;
      const bool ok = i < seq;
      cp4(sL + st * BM + r, lse2 + lrow + (ok ? i : 0), ok);
      cp4(sD + st * BM + r, dsum + lrow + (ok ? i : 0), ok);
      if (DOC) cp4(sDoc + st * BM + r, docb + (ok ? i : 0), ok);
    }
  };

  if (total > 0) load_q(0, 0);
  cp_commit();

  const uint32_t sKa = smem_u32(sK), sVa = smem_u32(sV), sQa = smem_u32(sQ);
  const uint32_t sdOa = smem_u32(sdO), sdSa = smem_u32(sdS);
  const uint32_t kA = sKa + wg * 64 * RB, vA = sVa + wg * 64 * RB;

  float dka[HD / 2], dva[HD / 2];
#pragma unroll
  for (int i = 0; i < HD / 2; ++i) dka[i] = dva[i] = 0.f;

  for (int t = 0; t < total; ++t) {
    const int st = t & 1;
    if (t + 1 < total) {
      load_q(t + 1, st ^ 1);
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    fence_async_smem();
    __syncthreads();
    const int h = hk * rep + t / nm;
    const int i0 = (m_start + t % nm) * BM;
    const uint32_t qS = sQa + st * BM * RB, oS = sdOa + st * BM * RB;
    const float *cL = sL + st * BM;
    const float *cD = sD + st * BM;
    const uint32_t *cDoc = sDoc + st * BM;

    // Every warpgroup runs every step, also where all its kv rows follow the q tile (masking
    // gives P^T = dS^T = 0 there): skipping it in a branch that ptxas cannot prove uniform per
    // warpgroup made it serialize every wgmma (C7520), 11% slower at the 1B shape.
    {
      // 1, 3. S^T = K Q^T and dP^T = V dO^T (64 kv rows x BM q columns each).
      float s[BM / 2], dp[BM / 2];
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < HD / 16; ++kk)
        wgmma_m64n64_ss<0, 0>(s, wg_desc(kA + kk * 32, 16, 1024), wg_desc(qS + kk * 32, 16, 1024), kk);
      wg_commit();
#pragma unroll
      for (int kk = 0; kk < HD / 16; ++kk)
        wgmma_m64n64_ss<0, 0>(dp, wg_desc(vA + kk * 32, 16, 1024), wg_desc(oS + kk * 32, 16, 1024), kk);
      wg_commit();
      wg_wait<1>();
      wg_keep(s);
      // 2. P^T, masked where kv row j > q row i or the documents differ.
      const bool need_mask = DOC || (wj0 + wl * 16 + 15 > i0);
#pragma unroll
      for (int u = 0; u < BM / 8; ++u) {
        const int c = u * 8 + 2 * tig;
        const float2 L = *reinterpret_cast<const float2 *>(cL + c);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = s[4 * u + e];
          if (need_mask) {
            const int col = c + (e & 1);
            bool masked = ((e >> 1) ? jr0 + 8 : jr0) > i0 + col;
            if (DOC) masked |= cDoc[col] != ((e >> 1) ? dk1 : dk0);
            if (masked) x = -INFINITY;
          }
          s[4 * u + e] = exp2_fast(fmaf(x, scale_log2, -((e & 1) ? L.y : L.x)));
        }
      }
      uint32_t pa[BM / 16][4];
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk) {
        pa[kk][0] = pack2(s[8 * kk], s[8 * kk + 1]);
        pa[kk][1] = pack2(s[8 * kk + 2], s[8 * kk + 3]);
        pa[kk][2] = pack2(s[8 * kk + 4], s[8 * kk + 5]);
        pa[kk][3] = pack2(s[8 * kk + 6], s[8 * kk + 7]);
      }
      wg_wait<0>();
      wg_keep(dp);
      // 4. dV += P^T dO (k = q rows; dO read MN-major).
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk)
        wgmma_m64n64_rs<1>(dva, pa[kk], wg_desc(oS + kk * 16 * RB, 1024, 1024), 1);
      wg_commit();
      // 5. dS^T = P^T (dP^T - D), to registers (bf16 A fragments) and shared memory.
      uint32_t da[BM / 16][4];
#pragma unroll
      for (int u = 0; u < BM / 8; ++u) {
        const float2 Dv = *reinterpret_cast<const float2 *>(cD + u * 8 + 2 * tig);
        dp[4 * u] = s[4 * u] * (dp[4 * u] - Dv.x);
        dp[4 * u + 1] = s[4 * u + 1] * (dp[4 * u + 1] - Dv.y);
        dp[4 * u + 2] = s[4 * u + 2] * (dp[4 * u + 2] - Dv.x);
        dp[4 * u + 3] = s[4 * u + 3] * (dp[4 * u + 3] - Dv.y);
      }
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk) {
        da[kk][0] = pack2(dp[8 * kk], dp[8 * kk + 1]);
        da[kk][1] = pack2(dp[8 * kk + 2], dp[8 * kk + 3]);
        da[kk][2] = pack2(dp[8 * kk + 4], dp[8 * kk + 5]);
        da[kk][3] = pack2(dp[8 * kk + 6], dp[8 * kk + 7]);
        const int r = wg * 64 + wl * 16 + g, c = kk * 16 + 2 * tig;
        *reinterpret_cast<uint32_t *>(sdS + swz<BM>(r, c)) = da[kk][0];
        *reinterpret_cast<uint32_t *>(sdS + swz<BM>(r + 8, c)) = da[kk][1];
        *reinterpret_cast<uint32_t *>(sdS + swz<BM>(r, c + 8)) = da[kk][2];
        *reinterpret_cast<uint32_t *>(sdS + swz<BM>(r + 8, c + 8)) = da[kk][3];
      }
      // 6. dK += dS^T Q (Q read MN-major).
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk)
        wgmma_m64n64_rs<1>(dka, da[kk], wg_desc(qS + kk * 16 * RB, 1024, 1024), 1);
      wg_commit();
      // dV and dK stay in flight across the barrier and dQ's issue (waited for below).
    }
    fence_async_smem();  // dS^T, written by ordinary stores, is read by wgmma next
    __syncthreads();

    // 7. dQ += dS K for the BM q rows and head_dim columns 32 wg .. 32 wg + 31 (k = kv rows).
    {
      float dqa[16];
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk)
        wgmma_m64n32_ss<1, 1>(dqa, wg_desc(sdSa + kk * 16 * RB, 1024, 1024),
                              wg_desc(sKa + kk * 16 * RB + wg * 64, 1024, 1024), kk);
      wg_commit();
      wg_wait<0>();
      wg_keep(dqa);
      wg_keep(dva);
      wg_keep(dka);
      // 16-byte atomics (half the atomic instructions of the fragment's float pairs): lanes
      // tig and tig ^ 1 swap halves so the even one holds row g, the odd one row g + 8, four
      // consecutive columns each. These atomics are most of the dQ phase's cost.
      const i64 rs = (i64)hq * HD;  // dq_acc row stride
      const int odd = tig & 1;
      const int i = i0 + wl * 16 + g + odd * 8;
      float *dqb = dq_acc + ((i64)b * seq + i) * rs + (i64)h * HD + wg * 32 + 4 * (tig >> 1);
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const float s0 = odd ? dqa[4 * u] : dqa[4 * u + 2];
        const float s1 = odd ? dqa[4 * u + 1] : dqa[4 * u + 3];
        const float r0 = __shfl_xor_sync(kFull, s0, 1);
        const float r1 = __shfl_xor_sync(kFull, s1, 1);
        const float4 val = odd ? make_float4(r0, r1, dqa[4 * u + 2], dqa[4 * u + 3])
                               : make_float4(dqa[4 * u], dqa[4 * u + 1], r0, r1);
        if (i < seq) atomicAdd(reinterpret_cast<float4 *>(dqb + u * 8), val);
      }
    }
    __syncthreads();  // the Q/dO stage and dS^T are rewritten next iteration
  }
  cp_wait<0>();
  __syncthreads();

  // Stage dK (scaled) in sK and dV in sV, this warp's rows, then 16-byte stores.
  const int wr = wg * 64 + wl * 16;
#pragma unroll
  for (int t = 0; t < HD / 8; ++t) {
    const int r = wr + g, c = t * 8 + 2 * tig;
    *reinterpret_cast<uint32_t *>(sK + swz<HD>(r, c)) =
        pack2(dka[4 * t] * scale, dka[4 * t + 1] * scale);
    *reinterpret_cast<uint32_t *>(sK + swz<HD>(r + 8, c)) =
        pack2(dka[4 * t + 2] * scale, dka[4 * t + 3] * scale);
    *reinterpret_cast<uint32_t *>(sV + swz<HD>(r, c)) = pack2(dva[4 * t], dva[4 * t + 1]);
    *reinterpret_cast<uint32_t *>(sV + swz<HD>(r + 8, c)) = pack2(dva[4 * t + 2], dva[4 * t + 3]);
  }
  __syncwarp();
#pragma unroll
  for (int idx = lane; idx < 16 * CH; idx += 32) {
    const int r = idx / CH, c = (idx % CH) * 8;
    const int j = j0 + wr + r;
    if (j < seq) {
      const i64 off = (((i64)b * seq + j) * hkv + hk) * HD + c;
      *reinterpret_cast<uint4 *>(dk + off) = *reinterpret_cast<const uint4 *>(sK + swz<HD>(wr + r, c));
      *reinterpret_cast<uint4 *>(dv + off) = *reinterpret_cast<const uint4 *>(sV + swz<HD>(wr + r, c));
    }
  }
}
#endif  // sm_90a or host pass

}  // namespace

// Tile sizes; the launcher (src/attention.rs) mirrors them for grids and shared memory.
// Resources (nvcc 13.0, sm_90, no spills), registers / dynamic shared memory incl. 1 KiB slack:
//   flash_fwd_hd64[_doc]   128 / 128   49.5 KiB   2 CTAs (16 warps) per SM
//   flash_fwd_hd128[_doc]  205 / 218   97.5 KiB   1 CTA per SM
//   flash_bwd_hd64[_doc]   249 / 255   82.5 KiB   1 CTA per SM
//   flash_bwd_hd128[_doc]  250 / 248  105.8 KiB   1 CTA per SM
//   flash_bwd_pre_*, flash_bwd_dq_convert: 28 / 22, no shared memory.
// (hd 64 / hd 128): forward BM 128, BN 64, 8 warps, 2 / 1 CTAs per SM (Q re-read / in
// registers); backward BN 128, BM 64 / 32, 8 warps, 1 CTA per SM (K, V in registers / re-read).
#define FWD_BM 128
#define FWD_BN 64
#define FWD_WG_BN 64
#define BWD_BN 128
#define BWD_BM64 64
#define BWD_BM128 32
#define NWARPS 8

#define FWD_PARAMS                                                                              \
  const bf16 *__restrict__ q, const bf16 *__restrict__ k, const bf16 *__restrict__ v,           \
      bf16 *__restrict__ o, float *__restrict__ lse, const uint32_t *__restrict__ doc, int seq, \
      int hq, int hkv, i64 q_sb, i64 q_sh, i64 q_ss, i64 k_sb, i64 k_sh, i64 k_ss, i64 v_sb,    \
      i64 v_sh, i64 v_ss, float scale_log2
#define FWD_ARGS \
  q, k, v, o, lse, doc, seq, hq, hkv, q_sb, q_sh, q_ss, k_sb, k_sh, k_ss, v_sb, v_sh, v_ss, scale_log2

// DOC: block-causal (doc ids given) or plain causal, as separate kernels so the causal one
// carries no document state.
#define FWD_KERNEL(name, hd, minb, q_regs, doc)                                     \
  extern "C" __global__ void __launch_bounds__(NWARPS * 32, minb) name(FWD_PARAMS) { \
    flash_fwd<hd, FWD_BM, FWD_BN, NWARPS, q_regs, doc>(FWD_ARGS);                  \
  }
FWD_KERNEL(flash_fwd_hd64, 64, 2, false, false)
FWD_KERNEL(flash_fwd_hd64_doc, 64, 2, false, true)
FWD_KERNEL(flash_fwd_hd128, 128, 1, true, false)
FWD_KERNEL(flash_fwd_hd128_doc, 128, 1, true, true)

// The warpgroup-MMA forward (hd 64, BN kv rows per tile). wgmma exists only in sm_90a code:
// built for another target these kernels trap, and the launcher never picks them (build.rs
// tells it which target the cubins have).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) || !defined(__CUDA_ARCH__)
#define FWD_WG_BODY(bn, doc) flash_fwd_wg64<bn, doc>(FWD_ARGS);
#else
#define FWD_WG_BODY(bn, doc) __trap();
#endif
#define FWD_WG_KERNEL(name, bn, doc)                                          \
  extern "C" __global__ void __launch_bounds__(256, 2) name(FWD_PARAMS) { \
    FWD_WG_BODY(bn, doc)                                                    \
  }
FWD_WG_KERNEL(flash_fwd_wg_hd64, FWD_WG_BN, false)
FWD_WG_KERNEL(flash_fwd_wg_hd64_doc, FWD_WG_BN, true)

#define PRE_PARAMS                                                                            \
  const bf16 *__restrict__ o, const bf16 *__restrict__ dout, const float *__restrict__ lse,   \
      float *__restrict__ lse2, float *__restrict__ dsum, int batch, int hq, int seq, i64 o_sb, \
      i64 o_sh, i64 o_ss, i64 do_sb, i64 do_sh, i64 do_ss
#define PRE_ARGS o, dout, lse, lse2, dsum, batch, hq, seq, o_sb, o_sh, o_ss, do_sb, do_sh, do_ss

extern "C" __global__ void flash_bwd_pre_hd64(PRE_PARAMS) { flash_bwd_pre<64>(PRE_ARGS); }
extern "C" __global__ void flash_bwd_pre_hd128(PRE_PARAMS) { flash_bwd_pre<128>(PRE_ARGS); }

#define BWD_PARAMS                                                                              \
  const bf16 *__restrict__ q, const bf16 *__restrict__ k, const bf16 *__restrict__ v,           \
      const bf16 *__restrict__ dout, const float *__restrict__ lse2,                            \
      const float *__restrict__ dsum, float *__restrict__ dq_acc, bf16 *__restrict__ dk,        \
      bf16 *__restrict__ dv, const uint32_t *__restrict__ doc, int seq, int hq, int hkv,        \
      i64 q_sb, i64 q_sh, i64 q_ss, i64 k_sb, i64 k_sh, i64 k_ss, i64 v_sb, i64 v_sh, i64 v_ss, \
      i64 do_sb, i64 do_sh, i64 do_ss, float scale_log2, float scale
#define BWD_ARGS                                                                               \
  q, k, v, dout, lse2, dsum, dq_acc, dk, dv, doc, seq, hq, hkv, q_sb, q_sh, q_ss, k_sb, k_sh, \
      k_ss, v_sb, v_sh, v_ss, do_sb, do_sh, do_ss, scale_log2, scale

#define BWD_KERNEL(name, hd, bm, kv_regs, doc)                                  \
  extern "C" __global__ void __launch_bounds__(NWARPS * 32, 1) name(BWD_PARAMS) { \
    flash_bwd<hd, BWD_BN, bm, NWARPS, kv_regs, doc>(BWD_ARGS);                    \
  }
BWD_KERNEL(flash_bwd_hd64, 64, BWD_BM64, true, false)
BWD_KERNEL(flash_bwd_hd64_doc, 64, BWD_BM64, true, true)
BWD_KERNEL(flash_bwd_hd128, 128, BWD_BM128, false, false)
BWD_KERNEL(flash_bwd_hd128_doc, 128, BWD_BM128, false, true)

// The warpgroup-MMA backward (hd 64); built for another target than sm_90a it traps, as the
// forward's.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) || !defined(__CUDA_ARCH__)
#define BWD_WG_BODY(doc) flash_bwd_wg64<doc>(BWD_ARGS);
#else
#define BWD_WG_BODY(doc) __trap();
#endif
#define BWD_WG_KERNEL(name, doc)                                              \
  extern "C" __global__ void __launch_bounds__(256, 1) name(BWD_PARAMS) { \
    BWD_WG_BODY(doc)                                                        \
  }
BWD_WG_KERNEL(flash_bwd_wg_hd64, false)
BWD_WG_KERNEL(flash_bwd_wg_hd64_doc, true)

// dq (b, s, hq, hd) bf16 = dq_acc * scale; n is a multiple of 8.
extern "C" __global__ void flash_bwd_dq_convert(const float *__restrict__ acc,
                                                bf16 *__restrict__ dq, i64 n, float scale) {
  const i64 step = (i64)gridDim.x * blockDim.x * 8;
  for (i64 i = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * 8; i < n; i += step) {
    const float4 a = *reinterpret_cast<const float4 *>(acc + i);
    const float4 c = *reinterpret_cast<const float4 *>(acc + i + 4);
    const float x[8] = {a.x * scale, a.y * scale, a.z * scale, a.w * scale,
                        c.x * scale, c.y * scale, c.z * scale, c.w * scale};
    *reinterpret_cast<bf16x8 *>(dq + i) = pack8(x);
  }
}
