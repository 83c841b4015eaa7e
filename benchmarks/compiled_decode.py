"""End-to-end decode step of a compiled transformers Qwen3-Next model, with and without the pass.

A random-weight Qwen3-Next with the real linear-attention geometry (16 key heads, 32 value heads,
K = V = 128; 3 linear-attention layers and 1 full-attention layer by default, dense MLP, small
vocabulary), a StaticCache, bf16 weights. One decode token per sequence per step is timed under
``torch.compile(mode="reduce-overhead")`` (CUDA graphs) without the pass (transformers' plain
PyTorch recurrence, compiled by Inductor) and with ``fx_passes`` (the fused gdn-ops kernel), and
in eager mode; the compiled logits are checked against eager first.

    python -m benchmarks.compiled_decode [--batch 32] [--layers 4] [--steps 30] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
from pathlib import Path

import torch

import fx_passes


def build(layers: int, device: str, tiny: bool):
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    dims = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
                "linear_key_head_dim": 16, "linear_value_head_dim": 16, "linear_num_key_heads": 2,
                "linear_num_value_heads": 4} if tiny else {
        "hidden_size": 2048, "intermediate_size": 5120, "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256,
        "linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_num_key_heads": 16, "linear_num_value_heads": 32}
    config = Qwen3NextConfig(
        vocab_size=4096, num_hidden_layers=layers, num_experts=0, max_position_embeddings=4096,
        layer_types=["linear_attention"] * (layers - 1) + ["full_attention"], **dims)
    torch.manual_seed(0)
    return config, Qwen3NextForCausalLM(config).eval().to(device=device, dtype=torch.bfloat16)


def decode_times(step, cache, token, start: int, steps: int, device: str) -> tuple[list[float], torch.Tensor]:
    """Run ``steps`` decode steps; per-step milliseconds (CUDA events) and the first step's logits."""
    times, first = [], None
    for i in range(steps):
        position = torch.tensor([start + i], device=device)
        if device == "cuda":
            t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0.record()
        logits = step(input_ids=token, past_key_values=cache, use_cache=True, cache_position=position).logits
        if device == "cuda":
            t1.record()
            torch.cuda.synchronize()
            times.append(t0.elapsed_time(t1))
        if first is None:
            first = logits.clone()
    return times, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30, help="timed steps (after 5 warm-up steps)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    from transformers.cache_utils import StaticCache

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config, model = build(args.layers, device, tiny=device == "cpu")
    prompt = torch.randint(0, config.vocab_size, (args.batch, 8), device=device)
    results = {}
    with torch.no_grad():
        base = StaticCache(config=config, max_cache_len=8 + 5 + args.steps + 1)
        logits = model(input_ids=prompt, past_key_values=base, use_cache=True).logits
        token = logits[:, -1:].argmax(-1)
        variants = {
            "eager": lambda: model,
            "compiled": lambda: torch.compile(model, mode="reduce-overhead"),
            "compiled+fx_passes": lambda: torch.compile(model, options=fx_passes.inductor_options(cudagraphs=True)),
        }
        reference = None
        for name, make in variants.items():
            torch._dynamo.reset()
            fx_passes.reset_counts()
            cache = copy.deepcopy(base)
            step = make()
            _, first = decode_times(step, cache, token, 8, 5, device)
            times, _ = decode_times(step, cache, token, 8 + 5, args.steps, device)
            if reference is None:
                reference = first
            err = (first.float() - reference.float()).abs().max().item()
            med = sorted(times)[len(times) // 2] if times else float("nan")
            results[name] = {"ms_per_step_p50": med, "ms_per_step_all": times,
                             "max_abs_logit_diff_vs_eager": err, "pass_matches": fx_passes.total_counts()}
            print(f"{name:20s} {med:8.3f} ms/step  max |logit - eager| {err:.3g}  matches {fx_passes.total_counts()}",
                  flush=True)
    import transformers
    import triton

    header = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "triton": triton.__version__, "transformers": transformers.__version__,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "batch": args.batch, "layers": args.layers, "layer_types": config.layer_types,
              "hidden_size": config.hidden_size, "linear_heads": [config.linear_num_key_heads,
                                                                 config.linear_num_value_heads]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compiled_decode.json").write_text(json.dumps({"header": header, "results": results}, indent=1))
    if "compiled" in results and "compiled+fx_passes" in results:
        a, b = results["compiled"]["ms_per_step_p50"], results["compiled+fx_passes"]["ms_per_step_p50"]
        print(f"decode step: compiled {a:.3f} ms -> compiled with the pass {b:.3f} ms ({a / b:.2f}x)")


if __name__ == "__main__":
    main()
