"""torch.compile(mode="reduce-overhead") with the gdn-ops pass: the fused kernel inside CUDA graphs.

What users must do: mark the state pool as a static address (``torch._dynamo.mark_static_address``,
or keep it as a registered buffer of the module) so that Inductor's CUDA graphs update it in place
instead of skipping graphs for "mutated inputs".
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from decode_case import padded_indices
from torch._dynamo.utils import counters

import fx_passes
import gdn_ops
from gdn_ops.reference import fused_sigmoid_gating_delta_rule_reference

pytestmark = pytest.mark.gpu

HK, HV, K, V = 2, 4, 128, 128


class GDNDecodeStep(torch.nn.Module):
    """Gating written in PyTorch feeding the unfused op, the way model code computes it."""

    def __init__(self):
        super().__init__()
        self.A_log = torch.nn.Parameter(torch.randn(HV), requires_grad=False)
        self.dt_bias = torch.nn.Parameter(torch.randn(HV), requires_grad=False)

    def forward(self, q, k, v, a, b, pool, indices):
        beta = b.sigmoid()
        g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias)
        return gdn_ops.recurrent_gated_delta_rule_update(q, k, v, g, beta, pool, indices, use_qk_l2norm_in_kernel=True)


def _step_inputs(gen, B, num_slots, live):
    r = lambda *s: torch.randn(*s, generator=gen).to("cuda", torch.bfloat16)
    idx = padded_indices(gen, B, num_slots=num_slots, live=live)
    return r(B, 1, HK, K), r(B, 1, HK, K), r(B, 1, HV, V), r(B, 1, HV), r(B, 1, HV), idx.cuda()


@torch._inductor.config.patch(force_disable_caches=True)  # a cache hit would not run (or count) the pass
def test_reduce_overhead_runs_the_fused_kernel_in_cuda_graphs_across_replays():
    torch._dynamo.reset()
    counters.clear()
    gen = torch.Generator().manual_seed(0)
    model = GDNDecodeStep().cuda()
    num_slots = 40
    pool = torch.randn(num_slots, HV, V, K, generator=gen).cuda()
    torch._dynamo.mark_static_address(pool)
    ref_pool = pool.double()
    fx_passes.reset_counts()
    step = torch.compile(model, fullgraph=True, options=fx_passes.inductor_options(cudagraphs=True))
    batch_sizes = (4, 8)
    with torch.no_grad():
        for i in range(300):
            B = batch_sizes[i % 2]
            q, k, v, a, b, idx = _step_inputs(gen, B, num_slots, live=B - 1)
            o = step(q, k, v, a, b, pool, idx).clone()  # graph outputs are overwritten on the next replay
            o_ref, ref_pool = fused_sigmoid_gating_delta_rule_reference(
                model.A_log, a, model.dt_bias, 1.0, 20.0, q, k, v, b, ref_pool, idx, None, True,
                compute_dtype=torch.float64)
            if i % 25 == 0 or i >= 298:
                assert ((pool.double() - ref_pool).norm() / ref_pool.norm()).item() < 1e-5, f"replay {i}"
                assert ((o.double() - o_ref).norm() / o_ref.norm()).item() < 1e-2, f"replay {i}"
                assert bool((o[idx < 0] == 0).all())
            ref_pool = pool.double()  # fp32 pool: compare one step at a time, not accumulated drift
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    assert sum(fx_passes.total_counts().values()) >= len(batch_sizes), fx_passes.total_counts()
    # one compiled graph per batch size (the second size may be compiled dynamic: then one in all)
    assert counters["stats"]["unique_graphs"] <= len(batch_sizes)


def test_unmarked_pool_is_reported_as_the_reason_cudagraphs_are_skipped():
    """The failure mode the docs warn about: without a static address Inductor skips the graph."""
    torch._dynamo.reset()
    counters.clear()
    gen = torch.Generator().manual_seed(1)
    model = GDNDecodeStep().cuda()
    pool = torch.randn(10, HV, V, K, generator=gen).cuda()  # not marked static
    step = torch.compile(model, fullgraph=True, options=fx_passes.inductor_options(cudagraphs=True))
    with torch.no_grad():
        for _ in range(3):
            q, k, v, a, b, idx = _step_inputs(gen, 4, 10, 3)
            step(q, k, v, a, b, pool, idx)
    assert counters["inductor"]["cudagraph_skips"] >= 1


@torch._inductor.config.patch(force_disable_caches=True)
def test_transformers_qwen3_next_static_cache_reduce_overhead_decodes_32_tokens_fused():
    """A tiny random Qwen3-Next from transformers, its StaticCache, mode="reduce-overhead", the pass on:
    the fused kernel runs inside the CUDA graphs and the logits follow eager for 32 tokens."""
    pytest.importorskip("transformers")
    import copy

    from fx_models import tiny_qwen3_next
    from transformers.cache_utils import StaticCache

    torch._dynamo.reset()
    counters.clear()
    fx_passes.reset_counts()
    config, model = tiny_qwen3_next()
    model = model.to(torch.bfloat16)
    n_linear = config.layer_types.count("linear_attention")
    prompt = torch.randint(0, config.vocab_size, (2, 5), device="cuda")
    with torch.no_grad():
        cache_eager = StaticCache(config=config, max_cache_len=48)
        logits = model(input_ids=prompt, past_key_values=cache_eager, use_cache=True).logits
        cache_compiled = copy.deepcopy(cache_eager)
        token = logits[:, -1:].argmax(-1)
        compiled = torch.compile(model, options=fx_passes.inductor_options(cudagraphs=True))
        worst = 0.0
        for step in range(32):
            position = torch.tensor([prompt.shape[1] + step], device="cuda")
            expected = model(input_ids=token, past_key_values=cache_eager, use_cache=True,
                             cache_position=position).logits
            got = compiled(input_ids=token, past_key_values=cache_compiled, use_cache=True,
                           cache_position=position).logits.clone()
            worst = max(worst, (got.float() - expected.float()).abs().max().item())
            torch.testing.assert_close(got, expected, atol=5e-2, rtol=5e-2)
            token = expected[:, -1:].argmax(-1)  # both decode the same tokens
    assert fx_passes.total_counts().get("hf_recurrence", 0) >= n_linear, fx_passes.total_counts()
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
