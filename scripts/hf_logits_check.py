#!/usr/bin/env python3
"""Loads Titan's Hugging Face export with transformers.LlamaForCausalLM and compares its logits
with Titan's for the same tokens. Prints a JSON summary (max abs and relative difference).

    python3 scripts/hf_logits_check.py --hf HF_DIR --tokens T.safetensors --titan-logits L.safetensors
"""
import argparse
import json

import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--titan-logits", required=True)
    args = ap.parse_args()
    model = LlamaForCausalLM.from_pretrained(args.hf, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    tokens = load_file(args.tokens)["tokens"].long()
    titan = load_file(args.titan_logits)["logits"].float()
    with torch.no_grad():
        hf = model(input_ids=tokens).logits.float()
    diff = (hf - titan).abs()
    out = {
        "transformers_model": type(model).__name__,
        "logits_shape": list(hf.shape),
        "max_abs_diff": diff.max().item(),
        "rel_l2_diff": ((hf - titan).norm() / titan.norm()).item(),
        "max_abs_logit": titan.abs().max().item(),
        "argmax_agreement": (hf.argmax(-1) == titan.argmax(-1)).float().mean().item(),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
