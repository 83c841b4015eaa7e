"""The ops inside captured CUDA graphs, the way serving engines run decode.

Warm-up rule: call the op once with the shapes, dtypes and layout you will capture (that compiles
the Triton kernel) before ``torch.cuda.graph``; capture then launches exactly that kernel.
"""

from __future__ import annotations

import pytest
import torch
from decode_case import assert_close_to_reference, padded_indices

import gdn_ops
from gdn_ops.reference import fused_sigmoid_gating_delta_rule_reference

pytestmark = pytest.mark.gpu

HK, HV, K, V = 2, 4, 128, 128  # Qwen3-Next at TP=8


class DecodeSlots:
    """Static input buffers of one captured batch size, as an engine holds them."""

    def __init__(self, B: int, T: int = 1, act=torch.bfloat16, out_dtype=None):
        dev = "cuda"
        self.q = torch.empty(B, T, HK, K, device=dev, dtype=act)
        self.k = torch.empty_like(self.q)
        self.v = torch.empty(B, T, HV, V, device=dev, dtype=act)
        self.a = torch.empty(B, T, HV, device=dev, dtype=act)
        self.b = torch.empty_like(self.a)
        self.indices = torch.empty(B, device=dev, dtype=torch.int32)
        self.out = torch.empty(B, T, HV, V, device=dev, dtype=out_dtype or act)
        self.A_log = torch.randn(HV, device=dev)
        self.dt_bias = torch.randn(HV, device=dev)

    def fill(self, gen: torch.Generator, indices: torch.Tensor) -> dict:
        """New random step inputs copied into the static buffers; returns a copy for the reference."""
        for name in ("q", "k", "v", "a", "b"):
            buf = getattr(self, name)
            buf.copy_(torch.randn(buf.shape, generator=gen).to(buf.dtype))
        self.indices.copy_(indices)
        return {n: getattr(self, n).clone() for n in ("q", "k", "v", "a", "b", "indices")}

    def step(self, pool: torch.Tensor) -> None:
        gdn_ops.fused_sigmoid_gating_delta_rule_update(
            self.A_log, self.a, self.dt_bias, 1.0, 20.0, self.q, self.k, self.v, self.b, pool, self.indices,
            use_qk_l2norm_in_kernel=True, out=self.out)


def _capture(fn) -> torch.cuda.CUDAGraph:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # warm-up: compiles the kernel for these shapes
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def test_manual_capture_replays_match_eager_step_for_step():
    gen = torch.Generator().manual_seed(0)
    B, num_slots = 8, 20
    slots = DecodeSlots(B)
    pool = torch.randn(num_slots, HV, V, K, generator=gen).cuda()
    slots.fill(gen, padded_indices(gen, B, 5, num_slots))
    eager_pool = pool.clone()
    graph = _capture(lambda: slots.step(pool))
    pool.copy_(eager_pool)  # the warm-up and capture ran the step once: start over
    for _ in range(20):
        inputs = slots.fill(gen, padded_indices(gen, B, int(torch.randint(0, B + 1, (1,), generator=gen)), num_slots))
        graph.replay()
        o_eager = gdn_ops.fused_sigmoid_gating_delta_rule_update(
            slots.A_log, inputs["a"], slots.dt_bias, 1.0, 20.0, inputs["q"], inputs["k"], inputs["v"], inputs["b"],
            eager_pool, inputs["indices"], use_qk_l2norm_in_kernel=True)
        # same kernel, same launch: bit-identical
        assert torch.equal(slots.out, o_eager)
        assert torch.equal(pool, eager_pool)
        padded = inputs["indices"] < 0
        assert bool((slots.out[padded] == 0).all())


def _replay_against_reference(graph: torch.cuda.CUDAGraph, slots: DecodeSlots, pool: torch.Tensor,
                              gen: torch.Generator, live_rows: tuple[int, ...], layout: str) -> None:
    """For each count of live rows: new step inputs and padded indices, one replay, then the output
    and pool against the float64 reference, no unaddressed slot written, and zero padded outputs."""
    B, num_slots = slots.indices.shape[0], pool.shape[0]
    for live in live_rows:
        inputs = slots.fill(gen, padded_indices(gen, B, live, num_slots))
        before = pool.clone()
        ref_o, ref_pool = fused_sigmoid_gating_delta_rule_reference(
            slots.A_log, inputs["a"], slots.dt_bias, 1.0, 20.0, inputs["q"], inputs["k"], inputs["v"], inputs["b"],
            before, inputs["indices"], None, True, state_layout=layout, compute_dtype=torch.float64)
        graph.replay()
        assert_close_to_reference("o", slots.out, ref_o, slots.out.dtype)
        assert_close_to_reference("pool", pool, ref_pool, pool.dtype)
        untouched = torch.ones(num_slots, dtype=torch.bool, device="cuda")
        untouched[inputs["indices"][inputs["indices"] >= 0].long()] = False
        assert torch.equal(pool[untouched], before[untouched]), "a slot no live row addresses was written"
        assert bool((slots.out[inputs["indices"] < 0] == 0).all())


@pytest.mark.parametrize("B", [1024 // HV, 4160 // HV], ids=["small-tile", "large-tile"])
def test_persistent_kernel_replays_match_reference(B):
    """A large bf16 kv pool runs a TMA kernel (on an H100 or H200 the Gluon kernel of one program per
    tile, else the persistent Triton one): its descriptors are captured by value, and every replay
    must still read that step's inputs and slot indices."""
    from gdn_ops.gluon_decode_kv_tile import GluonTileConfig
    from gdn_ops.triton_decode import default_config
    from gdn_ops.triton_decode_tma import PersistentConfig

    gen = torch.Generator().manual_seed(7)
    num_slots = B + 16
    slots = DecodeSlots(B)
    pool = torch.randn(num_slots, HV, K, V, generator=gen).to(torch.bfloat16).cuda()
    config = default_config(slots.q, slots.k, slots.v, pool, "kv")
    if B * HV < 16384 and not isinstance(config, GluonTileConfig):
        pytest.skip(f"B*HV = {B * HV} is below this GPU's TMA-kernel threshold ({config})")
    assert isinstance(config, (PersistentConfig, GluonTileConfig))

    def step():
        gdn_ops.fused_sigmoid_gating_delta_rule_update(
            slots.A_log, slots.a, slots.dt_bias, 1.0, 20.0, slots.q, slots.k, slots.v, slots.b, pool, slots.indices,
            use_qk_l2norm_in_kernel=True, state_layout="kv", out=slots.out)

    slots.fill(gen, padded_indices(gen, B, B - 5, num_slots))
    _replay_against_reference(_capture(step), slots, pool, gen, (B - 7, B, B // 2), "kv")


@pytest.mark.parametrize("kernel", ["per-tile-vk", "gluon-kv-tile", "gluon-vk-tile-ranked", "gluon-vk-tile-snapshot",
                                    "gluon-kv-tile-snapshot"])
def test_rows_in_slot_order_replay_with_each_steps_indices(kernel):
    """A decode that sorts its rows by slot (``sort_rows``): the sort runs inside the graph (the
    rank kernel, or each program ranking the slots itself), so each replay must order that step's
    indices, padding included, and leave unaddressed slots alone. The snapshot order
    (``snapshot_order``) is sorted in one program and checked slot by slot in the tiles."""
    from gdn_ops.gluon_decode_kv_tile import KV_2B_TILE_CONFIG
    from gdn_ops.gluon_decode_vk_tile import RANK_IN_PROGRAM_MAX_ROWS, VK_4B_TILE_CONFIG
    from gdn_ops.triton_decode import DecodeConfig, is_sm90_gpu, launch_decode

    layout = "kv" if kernel.startswith("gluon-kv-tile") else "vk"
    if kernel.startswith("gluon") and not is_sm90_gpu(torch.device("cuda")):
        pytest.skip("the Gluon kernels need sm_90+")
    config = {"per-tile-vk": DecodeConfig(BV=8, BK=128, num_warps=1, sort_rows=True),
              "gluon-kv-tile": KV_2B_TILE_CONFIG._replace(sort_rows=True),
              "gluon-vk-tile-ranked": VK_4B_TILE_CONFIG._replace(sort_rows=True, rank_in_program=True),
              "gluon-vk-tile-snapshot": VK_4B_TILE_CONFIG._replace(sort_rows=True, snapshot_order=True),
              "gluon-kv-tile-snapshot": KV_2B_TILE_CONFIG._replace(sort_rows=True, snapshot_order=True)}[kernel]
    state_dtype = torch.bfloat16 if layout == "kv" else torch.float32
    gen = torch.Generator().manual_seed(11)
    B, num_slots = (RANK_IN_PROGRAM_MAX_ROWS, 40) if kernel == "gluon-vk-tile-ranked" else (96, 120)
    slots = DecodeSlots(B)
    inner = (HV, V, K) if layout == "vk" else (HV, K, V)
    pool = torch.randn(num_slots, *inner, generator=gen).to(state_dtype).cuda()

    def step():
        launch_decode(slots.q, slots.k, slots.v, slots.a, slots.b, slots.A_log, slots.dt_bias, pool, slots.indices,
                      slots.out, scale=K**-0.5, use_qk_l2norm_in_kernel=True, state_layout=layout, config=config)

    slots.fill(gen, padded_indices(gen, B, B - 9, num_slots))
    _replay_against_reference(_capture(step), slots, pool, gen, (B - 3, B, B // 3), layout)


@pytest.mark.parametrize("layout", ["vk", "kv"])
def test_a_step_order_computed_in_the_graph_feeds_the_layer_call(layout):
    """An engine's step: the slot order computed once from the step's indices, then each layer's
    call given it, all in one graph. Every replay must order that step's indices; B*HV = 1024 sorts
    with a given order on the H200 (elsewhere the order is ignored and this is the plain step)."""
    gen = torch.Generator().manual_seed(23)
    B, num_slots = 1024 // HV, 1024 // HV + 40
    slots = DecodeSlots(B)
    inner = (HV, V, K) if layout == "vk" else (HV, K, V)
    pool = torch.randn(num_slots, *inner, generator=gen).to(torch.bfloat16).cuda()

    def step():
        order = gdn_ops.slot_order(slots.indices)
        gdn_ops.fused_sigmoid_gating_delta_rule_update(
            slots.A_log, slots.a, slots.dt_bias, 1.0, 20.0, slots.q, slots.k, slots.v, slots.b, pool, slots.indices,
            use_qk_l2norm_in_kernel=True, state_layout=layout, out=slots.out, initial_state_order=order)

    slots.fill(gen, padded_indices(gen, B, B - 11, num_slots))
    _replay_against_reference(_capture(step), slots, pool, gen, (B - 2, B, B // 4), layout)


def test_capture_launches_the_kernel_compiled_at_warm_up():
    """A capture must not compile: a new specialisation would be a different launch than warm-up's."""
    knobs = pytest.importorskip("triton.knobs")
    compiled = []

    def on_compile(*args, **kwargs):
        compiled.append(kwargs.get("fn"))
        return False

    gen = torch.Generator().manual_seed(1)
    slots = DecodeSlots(16)
    pool = torch.randn(40, HV, V, K, generator=gen).cuda()
    slots.fill(gen, padded_indices(gen, 16, 9, 40))
    previous = knobs.runtime.jit_post_compile_hook
    knobs.runtime.jit_post_compile_hook = on_compile
    try:
        slots.step(pool)  # warm-up may compile
        torch.cuda.synchronize()
        at_warm_up = len(compiled)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            slots.step(pool)
    finally:
        knobs.runtime.jit_post_compile_hook = previous
    assert len(compiled) == at_warm_up, "the captured call compiled a kernel the warm-up did not launch"
    # and the hook does fire on a compile, so the check above can fail: a new V makes a new kernel
    knobs.runtime.jit_post_compile_hook = on_compile
    try:
        other = DecodeSlots(3)
        other.v = other.v[..., :96].contiguous()
        other.out = other.out[..., :96].contiguous()
        other.fill(gen, torch.tensor([0, 1, -1], dtype=torch.int32))
        other.step(torch.randn(4, HV, 96, K).cuda())
    finally:
        knobs.runtime.jit_post_compile_hook = previous
    assert len(compiled) > at_warm_up


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_ops_never_synchronise_the_host(fused):
    gen = torch.Generator().manual_seed(2)
    slots = DecodeSlots(4)
    pool = torch.randn(9, HV, V, K, generator=gen).cuda()
    slots.fill(gen, padded_indices(gen, 4, 3, 9))
    g, beta = gdn_ops.gdn_gating(slots.A_log, slots.a, slots.dt_bias, slots.b)
    call = (lambda: slots.step(pool)) if fused else (lambda: gdn_ops.recurrent_gated_delta_rule_update(
        slots.q, slots.k, slots.v, g, beta, pool, slots.indices, out=slots.out))
    call()  # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        call()
        gdn_ops.gdn_gating(slots.A_log, slots.a, slots.dt_bias, slots.b)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_engine_loop_1000_replays_keeps_canaries_and_matches_reference(state_dtype):
    """A vLLM/SGLang-style loop: spare slots hold NaN canaries, the batch is padded to the captured
    size with -1 rows, and every replay assigns the live sequences to a fresh shuffle of slots."""
    gen = torch.Generator().manual_seed(3)
    B, num_slots, seqs = 8, 24, 6  # 6 live sequences, captured at 8 rows, 24 slots
    slots = DecodeSlots(B)
    pool = torch.full((num_slots, HV, V, K), float("nan"), device="cuda", dtype=state_dtype)
    graph = _capture(lambda: slots.step(pool))  # captured on NaN garbage: nothing live yet
    seq_slot = torch.randperm(num_slots, generator=gen)[:seqs]
    pool.fill_(float("nan"))
    pool[seq_slot.cuda()] = torch.randn(seqs, HV, V, K, generator=gen).cuda().to(state_dtype)
    ref_states = pool[seq_slot.cuda()].double()  # float64 state of each sequence, by sequence
    worst = 0.0
    for step in range(1000):
        # move every sequence to a new free slot (as a scheduler reshuffling its pool would)
        new_slot = torch.randperm(num_slots, generator=gen)[:seqs]
        moved = pool[seq_slot.cuda()].clone()
        pool[seq_slot.cuda()] = float("nan")
        pool[new_slot.cuda()] = moved
        seq_slot = new_slot
        rows = torch.randperm(B, generator=gen)[:seqs]
        idx = torch.full((B,), -1, dtype=torch.int32)
        idx[rows] = seq_slot.to(torch.int32)
        inputs = slots.fill(gen, idx)
        graph.replay()
        o_ref, new_ref = fused_sigmoid_gating_delta_rule_reference(
            slots.A_log, inputs["a"][rows], slots.dt_bias, 1.0, 20.0, inputs["q"][rows], inputs["k"][rows],
            inputs["v"][rows], inputs["b"][rows], ref_states, None, None, True, compute_dtype=torch.float64)
        # the reference keeps the pool's rounding so that the comparison measures one step's error
        ref_states = new_ref.to(state_dtype).double()
        if step % 50 == 0 or step == 999:
            got = pool[seq_slot.cuda()].double()
            err = ((got - ref_states).norm() / ref_states.norm()).item()
            worst = max(worst, err)
            assert err < (1e-5 if state_dtype == torch.float32 else 1e-2), f"step {step}: state error {err:.2e}"
            o_err = ((slots.out[rows.cuda()].double() - o_ref).norm() / o_ref.norm()).item()
            assert o_err < 1e-2, f"step {step}: output error {o_err:.2e}"
            free = torch.ones(num_slots, dtype=torch.bool)
            free[seq_slot] = False
            assert bool(torch.isnan(pool[free.cuda()].float()).all()), f"step {step}: a canary slot was written"
            assert bool((slots.out[(idx < 0).cuda()] == 0).all())
