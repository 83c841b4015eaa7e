"""benchmarks/probe_stream.py: its specs name what they time, and its Gluon streams compile for sm_90
(they run on the GPU only, where the probe checks each one before timing it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_specs_name_the_streams():
    from benchmarks.probe_stream import async_provider, reg_provider, tma_provider

    assert tma_provider(2, 3, 1, 1, ("oop",)).name == "tma:h2:b3:p1:lag1:oop"
    assert tma_provider(1, 2, 2, 0).name == "tma:h1:b2:p2:lag0"
    assert async_provider(4, 2, 3, ("seq",)).name == "async:w4:b2:p3:seq"
    assert reg_provider(8).name == "reg:w8"
    assert all(p.yardstick for p in (tma_provider(1, 2, 2, 0), async_provider(4, 2, 3), reg_provider(8)))


def compiled_shared_bytes(kind: str, num_buf: int) -> int:
    """Shared memory of a stream kernel compiled for sm_90 on a bf16 Qwen3-Next pool, without a GPU."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource

    from benchmarks.probe_stream import _async_stream_kernel, _tma_stream_kernel

    K, NC, C = 128, 2, 64
    if kind == "tma":
        layout = gl.NVMMASharedLayout.get_default_for([1, 1, K, NC, C], gl.bfloat16)
        desc = f"tensordesc<bf16[1, 1, {K}, {NC}, {C}],{layout!r}>"
        constexprs = {"HV_BOXES": 32, "HEADS": 1, "K": K, "NC": NC, "C": C, "NUM_BUF": num_buf, "LAG": 1}
        signature = {"src_desc": desc, "dst_desc": desc, "indices_ptr": "*i32", "num_tiles": "i32"}
        kernel, warps, attrs = _tma_stream_kernel, 1, {}
    else:
        constexprs = {"HV": 32, "K": K, "V": NC * C, "WARPS": 4, "NUM_BUF": num_buf}
        signature = {"pool_ptr": "*bf16", "indices_ptr": "*i32", "num_tiles": "i32"}
        kernel, warps = _async_stream_kernel, 4
        # a launch specialises 16-byte aligned pointers, which the 16-byte cp.async needs
        attrs = {(0,): [["tt.divisibility", 16]], (1,): [["tt.divisibility", 16]]}
    signature |= dict.fromkeys(constexprs, "constexpr")
    compiled = triton.compile(GluonASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": warps})
    return compiled.metadata.shared


@pytest.mark.parametrize("kind", ["tma", "async"])
def test_gluon_streams_compile_for_sm90_with_their_buffers(kind):
    root = Path(__file__).parent.parent
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), str(root / "tests"), env.get("PYTHONPATH")]))
    script = f"import test_probe_stream as t; print(t.compiled_shared_bytes({kind!r}, 3))"
    run = subprocess.run([sys.executable, "-c", script], check=False, cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    head = 128 * 128 * 2
    assert int(run.stdout.split()[-1]) >= 3 * head  # three whole bf16 heads in flight
