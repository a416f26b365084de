#!/usr/bin/env python3
"""An independent PyTorch implementation of torchtitan 0.2.2's Llama 3, for Titan's golden tests.

Reads a Titan-written safetensors file of model weights (torchtitan FQNs) and a token file,
computes logits and the mean cross-entropy loss in float32 on the CPU, and writes them as
safetensors plus a JSON summary. Run it where PyTorch is installed (Titan's GPU machine):

    python3 scripts/llama3_reference.py --weights W.safetensors --tokens T.safetensors \
        --config args.json --out golden.safetensors --summary golden.json

Written for Titan from the math in torchtitan's llama3 model (RoPE in the interleaved complex
layout with Llama 3.1 scaling, RMSNorm, GQA with SDPA, SwiGLU); no torchtitan code is imported.
"""
import argparse
import json
import math

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file


def precompute_freqs_cis(dim, end, theta, scaling):
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
    if scaling is not None:
        factor = scaling["scaling_factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        orig = scaling["original_max_position_embeddings"]
        low_freq_wavelen = orig / low
        high_freq_wavelen = orig / high
        wavelen = 2 * math.pi / freqs
        freqs = torch.where(wavelen > low_freq_wavelen, freqs / factor, freqs)
        smooth = (orig / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * freqs / factor + smooth * freqs
        medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        freqs = torch.where(medium, smoothed, freqs)
    t = torch.arange(end, device=freqs.device)
    freqs = torch.outer(t, freqs).float()
    return torch.polar(torch.ones_like(freqs), freqs)


def apply_rotary_emb(x, freqs_cis):
    # x: (b, s, h, d); pairs (x[2i], x[2i+1]) are complex numbers.
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    fc = freqs_cis.view(1, x.shape[1], 1, x.shape[-1] // 2)
    return torch.view_as_real(xc * fc).flatten(3).type_as(x)


def rms_norm(x, w, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * w


def forward(w, tokens, a):
    dim, n_heads = a["dim"], a["n_heads"]
    n_kv = a.get("n_kv_heads") or n_heads
    hd = dim // n_heads
    b, s = tokens.shape
    h = F.embedding(tokens, w["tok_embeddings.weight"])
    freqs_cis = precompute_freqs_cis(hd, s, a["rope_theta"], a.get("rope_scaling"))
    for i in range(a["n_layers"]):
        p = f"layers.{i}."
        x = rms_norm(h, w[p + "attention_norm.weight"], a["norm_eps"])
        q = (x @ w[p + "attention.wq.weight"].T).view(b, s, n_heads, hd)
        k = (x @ w[p + "attention.wk.weight"].T).view(b, s, n_kv, hd)
        v = (x @ w[p + "attention.wv.weight"].T).view(b, s, n_kv, hd)
        q, k = apply_rotary_emb(q, freqs_cis), apply_rotary_emb(k, freqs_cis)
        rep = n_heads // n_kv
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        o = o.transpose(1, 2).reshape(b, s, dim)
        h = h + o @ w[p + "attention.wo.weight"].T
        x = rms_norm(h, w[p + "ffn_norm.weight"], a["norm_eps"])
        ff = (F.silu(x @ w[p + "feed_forward.w1.weight"].T) * (x @ w[p + "feed_forward.w3.weight"].T))
        h = h + ff @ w[p + "feed_forward.w2.weight"].T
    h = rms_norm(h, w["norm.weight"], a["norm_eps"])
    return h @ w["output.weight"].T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--tokens", required=True, help="safetensors with 'tokens' (b, s) and 'labels' (b, s) int64")
    ap.add_argument("--config", required=True, help="JSON of the model arguments")
    ap.add_argument("--out", required=True)
    ap.add_argument("--summary", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    w = {k: v.float() for k, v in load_file(args.weights).items()}
    t = load_file(args.tokens)
    a = json.load(open(args.config))
    with torch.no_grad():
        logits = forward(w, t["tokens"].long(), a)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), t["labels"].long().flatten(), ignore_index=-100)
    save_file({"logits": logits.contiguous()}, args.out)
    json.dump(
        {"loss": loss.item(), "torch": torch.__version__, "logits_shape": list(logits.shape)},
        open(args.summary, "w"),
        indent=2,
    )
    print(f"loss {loss.item():.8f} logits {tuple(logits.shape)}")


if __name__ == "__main__":
    main()
