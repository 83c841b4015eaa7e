"""benchmarks/probe_stream.py: its specs name what they time, and its Gluon streams compile for sm_90
(they run on the GPU only, where the probe checks each one before timing it)."""

from __future__ import annotations

import pytest
import torch
from sm90_compile import compile_sm90, descriptor_type, run_in_child


def test_specs_name_the_streams():
    from benchmarks.probe_stream import (
        async_provider,
        decode_provider,
        reg_provider,
        tma_provider,
    )

    assert tma_provider(2, 3, 1, 1, ("oop",)).name == "tma:h2:b3:p1:lag1:oop"
    assert tma_provider(1, 2, 2, 0).name == "tma:h1:b2:p2:lag0"
    assert async_provider(4, 2, 3, ("seq",)).name == "async:w4:b2:p3:seq"
    assert reg_provider(8).name == "reg:w8"
    assert reg_provider(4, ("c2048", "oop", "seq")).name == "reg:w4:c2048:oop:seq"
    assert [decode_provider(o).name for o in ((), ("seq",), ("seq", "plan"))] == ["decode", "decode:seq",
                                                                                  "decode:seq:plan"]
    assert all(p.yardstick for p in (tma_provider(1, 2, 2, 0), async_provider(4, 2, 3), reg_provider(8)))


def test_the_probe_takes_the_timers_options():
    """The streams are timed as the tuning scripts time (``tune_decode.add_timing_arguments``), so a
    ceiling and the decode it bounds can be read with as many calls a graph as the sweep."""
    from benchmarks.probe_stream import parser

    args = parser().parse_args(["--reg", "1:c2048:seq", "--tma", "--async", "--min-pools", "8", "--seed", "2"])
    assert (args.reg, args.tma, args.async_, args.min_pools, args.seed) == (["1:c2048:seq"], [], [], 8, 2)
    with pytest.raises(SystemExit):
        parser().parse_args(["--min-pools", "1"])


def compiled_shared_bytes(kind: str, num_buf: int) -> int:
    """Shared memory of a stream kernel compiled for sm_90 on a bf16 Qwen3-Next pool, without a GPU."""
    from benchmarks.probe_stream import _async_stream_kernel, _tma_stream_kernel

    K, NC, C = 128, 2, 64
    if kind == "tma":
        desc = descriptor_type([1, 1, K, NC, C])
        constexprs = {"HV_BOXES": 32, "HEADS": 1, "K": K, "NC": NC, "C": C, "NUM_BUF": num_buf, "LAG": 1}
        signature = {"src_desc": desc, "dst_desc": desc, "indices_ptr": "*i32", "num_tiles": "i32"}
        kernel, warps, attrs = _tma_stream_kernel, 1, None
    else:
        constexprs = {"HV": 32, "K": K, "V": NC * C, "WARPS": 4, "NUM_BUF": num_buf}
        signature = {"pool_ptr": "*bf16", "indices_ptr": "*i32", "num_tiles": "i32"}
        kernel, warps = _async_stream_kernel, 4
        # a launch specialises 16-byte aligned pointers, which the 16-byte cp.async needs
        attrs = {(0,): [["tt.divisibility", 16]], (1,): [["tt.divisibility", 16]]}
    signature |= dict.fromkeys(constexprs, "constexpr")
    return compile_sm90(kernel, signature, constexprs, warps, attrs=attrs)[0]


@pytest.mark.parametrize("kind", ["tma", "async"])
def test_gluon_streams_compile_for_sm90_with_their_buffers(kind):
    stdout = run_in_child("test_probe_stream", f"t.compiled_shared_bytes({kind!r}, 3)")
    head = 128 * 128 * 2
    assert int(stdout.split()[-1]) >= 3 * head  # three whole bf16 heads in flight


@pytest.mark.parametrize("spec", ["4", "2:c256", "1:c128:oop", "2:c512:seq", "2:c256:oop:seq", "1:c128:x1:oop",
                                  "1:c256:x4:oop:seq", "2:x2:oop"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_register_streams_move_exactly_the_addressed_heads(spec, dtype):
    """Whole heads or chunks of them, in place or into a second pool: the check the probe runs
    before timing passes (on CPU through Triton's interpreter)."""
    from benchmarks.probe_stream import check_stream, reg_provider
    from benchmarks.providers import Config

    cfg = Config(tp=1, HK=2, HV=4, K=16, V=32, B=3, state_dtype=dtype, layout="kv")
    warps, *options = spec.split(":")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert check_stream(cfg, reg_provider(int(warps), tuple(options)), device) is None


def test_a_register_stream_chunk_must_divide_a_head():
    from benchmarks.probe_stream import reg_provider
    from benchmarks.providers import Config

    cfg = Config(tp=1, HK=2, HV=4, K=16, V=32, B=3, state_dtype=torch.float32, layout="kv")
    pool = torch.zeros(4, 4, 16, 32)
    with pytest.raises(ValueError, match="chunk c384 must divide a head's 512 elements"):
        reg_provider(2, ("c384",)).make(cfg, pool, torch.arange(3, dtype=torch.int32), {})


def test_a_register_stream_group_across_rows_must_divide_a_row():
    from benchmarks.probe_stream import reg_provider
    from benchmarks.providers import Config

    cfg = Config(tp=1, HK=2, HV=4, K=16, V=32, B=3, state_dtype=torch.float32, layout="kv")
    pool = torch.zeros(4, 4, 16, 32)
    with pytest.raises(ValueError, match="x3 must divide a row's 16 programs"):
        reg_provider(1, ("c128", "x3")).make(cfg, pool, torch.arange(3, dtype=torch.int32), {})


def test_the_decode_in_slot_order_is_the_decode_of_ascending_indices():
    """``decode:seq`` runs the shipped step with the slots in ascending order whatever indices it
    is given (on CPU through Triton's interpreter); plain ``decode`` keeps the shuffled ones."""
    from benchmarks.probe_stream import decode_provider, in_order
    from benchmarks.providers import Config, make_problem

    cfg = Config(tp=1, HK=2, HV=4, K=16, V=32, B=5, state_dtype=torch.float32, layout="vk")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    problem = make_problem(cfg, device)
    problem.indices.copy_(torch.tensor([3, 0, 4, 1, 2], dtype=torch.int32))
    pools = {name: problem.pool.clone() for name in ("seq", "ascending", "shuffled")}
    seq = decode_provider(("seq",)).make(cfg, pools["seq"], problem.indices, problem.inputs)().clone()
    ascending = decode_provider().make(cfg, pools["ascending"], in_order(problem.indices), problem.inputs)().clone()
    decode_provider().make(cfg, pools["shuffled"], problem.indices, problem.inputs)()
    assert decode_provider(("seq",)).name == "decode:seq" and decode_provider().name == "decode"
    assert torch.equal(seq, ascending) and torch.equal(pools["seq"], pools["ascending"])
    assert not torch.equal(pools["seq"], pools["shuffled"])
