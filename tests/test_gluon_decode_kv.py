"""The persistent Gluon kv kernel: against the float64 reference on the GPU, compiled for sm_90 on CPU.

Gluon has no interpreter, so CI (no GPU) only compiles the kernel; what it checks there is the
design the kernel exists for: its shared memory is the pipeline's buffers and barriers and nothing
more, i.e. no key sum goes through shared memory.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from decode_case import (
    PERSISTENT_CASE,
    PERSISTENT_VARIANTS,
    DecodeCase,
    build,
    check,
    run_triton,
)
from sm90_compile import run_in_child
from tile_kernel_checks import compile_recorded_launch

from gdn_ops.gluon_decode_kv import (
    KV_2B_GLUON_CONFIG,
    KV_2B_GLUON_LARGE_CONFIG,
    GluonKVConfig,
    chunk_columns,
    gluon_reason,
)

# K = 32 takes 8 lanes along the keys; 2 warps of 4 lanes x 4 values cover BV = 32.
SMALL_CONFIG = GluonKVConfig(BV=32, num_warps=2, num_buf=2, programs_per_sm=1)
VARIANTS = {**PERSISTENT_VARIANTS, "fp16-state": {"state_dtype": torch.float16}}


@pytest.mark.gpu
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_small_shape_matches_reference(variant):
    case = dataclasses.replace(PERSISTENT_CASE, seed=len(variant), **VARIANTS[variant])
    launched = []
    check(build(case, "cuda"), lambda inp: run_triton(inp, SMALL_CONFIG, launched))
    assert launched == [SMALL_CONFIG]


@pytest.mark.gpu
@pytest.mark.parametrize("heads", [(16, 32), (4, 8)], ids=["tp1", "tp4"])
@pytest.mark.parametrize("variant", ["fused", "unfused", "past-pool-int64"])
@pytest.mark.parametrize(
    "config",
    [KV_2B_GLUON_CONFIG, KV_2B_GLUON_LARGE_CONFIG, GluonKVConfig(128, 8, 3, 1, vec=2),
     KV_2B_GLUON_CONFIG._replace(programs_per_sm=1)],
    ids=["small", "large", "8-warps-vec2", "one-per-sm"],
)
def test_model_shape_matches_reference(heads, variant, config):
    """Enough rows that every program walks several tiles and wraps its buffers more than once."""
    HK, HV = heads
    B = 8 * torch.cuda.get_device_properties(0).multi_processor_count * config.programs_per_sm // HV + 5
    case = DecodeCase(B=B, T=1, HK=HK, group=HV // HK, K=128, V=128, state_layout="kv", state_dtype=torch.bfloat16,
                      padding_rows=(0, B // 2, B - 1), spare_slots=7, slot_pad=8, pool_guard=64, out_given=True,
                      seed=3)
    changes = dict(VARIANTS[variant])
    changes.pop("padding_rows", None)
    case = dataclasses.replace(case, **changes)
    launched = []
    check(build(case, "cuda"), lambda inp: run_triton(inp, config, launched))
    assert launched == [config]


@pytest.mark.parametrize(
    ("changes", "config", "needs"),
    [
        ({"state_layout": "vk"}, SMALL_CONFIG, "state_layout='kv'"),
        ({"T": 2}, SMALL_CONFIG, "one token per call"),
        ({"slot_pad": 3}, SMALL_CONFIG, "initial_state_source with a 16-byte aligned base"),
        ({}, SMALL_CONFIG._replace(BV=4), "BV=4 columns of at least 16 bytes"),
        ({}, SMALL_CONFIG._replace(vec=3), r"C=32 columns, C a multiple of num_warps\*vec=6"),
        ({"K": 16}, SMALL_CONFIG._replace(BV=8), "leaves K=16 a multiple of the lanes"),
        ({"K": 256, "V": 128}, GluonKVConfig(128, 16, 3, 1), "within 232448 bytes of shared memory"),
        ({"K": 128, "V": 128}, KV_2B_GLUON_LARGE_CONFIG._replace(programs_per_sm=3), "within an SM's 233472 bytes"),
    ],
)
def test_refuses_operands_it_cannot_run(changes, config, needs):
    """Checked before any launch, on metadata only: a clear error naming what is needed."""
    case = dataclasses.replace(PERSISTENT_CASE, **changes)
    with pytest.raises(ValueError, match=needs):
        run_triton(build(case, "cuda" if torch.cuda.is_available() else "cpu"), config)


@pytest.mark.skipif(torch.cuda.is_available(), reason="off the GPU only: a GPU compiles it by running it")
def test_refuses_to_run_off_the_gpu():
    with pytest.raises(ValueError, match="an sm_90"):
        run_triton(build(PERSISTENT_CASE, "cpu"), SMALL_CONFIG)


def compiled_shared_bytes(config: GluonKVConfig) -> int:
    """Shared memory of the kernel as Triton specialises ``config``'s launch on a bf16 Qwen3-Next
    head, compiled for sm_90 (an H200's 132 SMs for the persistent grid)."""
    import gdn_ops.gluon_decode_kv as persistent

    return compile_recorded_launch(persistent, "_decode_kv_gluon_kernel", "launch_decode_kv_gluon", "kv",
                                   config).metadata.shared


@pytest.mark.parametrize("config", [KV_2B_GLUON_CONFIG, KV_2B_GLUON_LARGE_CONFIG])
def test_compiles_for_sm90_with_only_the_pipeline_in_shared_memory(config):
    """A key sum that crossed warps would add reduction scratch to the shared memory beyond the
    tile, q and k buffers, the output tile and the barriers. Half-head and whole-head tiles (one
    and two 128-byte chunks per key row)."""
    stdout = run_in_child("test_gluon_decode_kv", f"t.compiled_shared_bytes(t.{config!r})")
    K = 128
    buffers = (config.num_buf * (K * config.BV + 2 * K) + K * config.BV) * 2
    barriers = config.num_buf * 8
    assert int(stdout.split()[-1]) == buffers + barriers


@pytest.mark.parametrize(("BV", "itemsize", "columns"), [(128, 2, 64), (64, 2, 64), (32, 2, 32), (64, 4, 32), (8, 2, 8)])
def test_chunks_are_128_bytes_or_the_whole_tile_row(BV, itemsize, columns):
    """A whole-head bf16 tile (BV=128) is two 128-byte chunks per key row: one TMA copy of
    consecutive rows under the 128-byte swizzle, not two copies of half rows."""
    assert chunk_columns(BV, itemsize) == columns


@pytest.mark.parametrize("config", [KV_2B_GLUON_CONFIG, KV_2B_GLUON_LARGE_CONFIG])
def test_shipped_configurations_fit_the_model_shape(config):
    """Every configuration a GPU rule can pick covers Qwen3-Next's [128, 128] bf16 head and fits
    sm_90's shared memory and register file at its programs per SM."""
    q = torch.empty(1, 1, 16, 128, dtype=torch.bfloat16, device="meta")
    state = torch.empty(1, 32, 128, 128, dtype=torch.bfloat16, device="meta")
    assert gluon_reason(q, state, config) is None
    assert 128 % config.BV == 0
    assert config.maxnreg * config.num_warps * 32 * config.programs_per_sm <= 65536
    assert config.maxnreg >= 128  # what the sm_90 compiles without spills used; fewer were not tried
