"""Kernels compiled for sm_90 without a GPU (ptxas ships with Triton): what the CPU tests of the
Gluon kernels check, since Gluon has no interpreter, and of the per-tile Triton kernel's registers
and stores.

Compiling must happen outside Triton's interpreter (Gluon cannot call interpreted helpers), so a
test runs its compile in a child process through :func:`run_in_child`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent


def descriptor_type(block: list[int], dtype: str = "bf16") -> str:
    """The signature type of a TMA descriptor over a ``block`` of ``dtype`` (``bf16`` or ``fp32``)
    in its default swizzled layout."""
    from triton.experimental.gluon import language as gl

    layout = gl.NVMMASharedLayout.get_default_for(block, {"bf16": gl.bfloat16, "fp32": gl.float32}[dtype])
    return f"tensordesc<{dtype}[{', '.join(map(str, block))}],{layout!r}>"


def compile_sm90(kernel, signature: dict[str, str], constexprs: dict, num_warps: int, maxnreg: int | None = None,
                 attrs: dict | None = None) -> tuple[int, str]:
    """Shared memory in bytes and the ``ptxas -v`` report of ``kernel`` compiled for sm_90 from a
    hand-built signature (the probe streams'; a decode kernel compiles a recorded launch through
    :func:`compile_launch_sm90`, which sees what the launch specialises)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    options = {"num_warps": num_warps, **({"maxnreg": maxnreg} if maxnreg else {})}
    compiled = triton.compile(GluonASTSource(kernel, signature, constexprs, attrs),
                              target=GPUTarget("cuda", 90, 32), options=options)
    return compiled.metadata.shared, ptxas_report(compiled.asm["ptx"])


def compile_launch_sm90(kernel, args: list, kwargs: dict):
    """``kernel`` compiled for sm_90 as Triton's JIT specialises a launch with these arguments
    (recorded on the CPU with the kernel replaced, ``tile_kernel_checks.kernel_calls``): pointers
    16-byte aligned, integers equal to 1 as constants, multiples of 16 marked divisible, TMA
    descriptors with their block and layout. Returns the compiled kernel (``metadata.shared``,
    ``asm["ptx"]``). Triton's own binder does the specialising, so the compile is the launch's."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.compiler import ASTSource
    from triton.experimental.gluon._runtime import GluonASTSource, GluonJITFunction
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", 90, 32)
    backend = CUDABackend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    source = (GluonASTSource if isinstance(kernel, GluonJITFunction) else ASTSource)(kernel, signature, constexprs, attrs)
    return triton.compile(source, target=target, options=options.__dict__)


def ptxas_report(ptx_text: str) -> str:
    """The ``ptxas -v`` report (registers, spills) of PTX assembled for sm_90a."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptx = Path(os.environ.get("TMPDIR", "/tmp")) / f"gdn_sm90_{os.getpid()}.ptx"
    ptx.write_text(ptx_text)
    return subprocess.run([get_ptxas(90).path, "-arch=sm_90a", "-v", str(ptx), "-o", str(ptx.with_suffix(".cubin"))],
                          check=True, capture_output=True, text=True).stderr


def assert_no_spills(report: str, at_most: int = 0) -> None:
    """The ``ptxas -v`` report of :func:`compile_sm90` counted its spill stores, and found none
    (or no more than ``at_most`` bytes)."""
    spills = re.findall(r"(\d+) bytes spill stores", report)
    assert spills and all(int(n) <= at_most for n in spills), report


def run_in_child(module: str, expression: str) -> str:
    """Standard output of printing ``expression`` (over ``module`` imported as ``t``) in a child
    process outside the interpreter; the test fails with the child's error if it fails."""
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    # pytest puts the repository and tests/ on sys.path; a child process needs them spelled out
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS.parent), str(TESTS), env.get("PYTHONPATH")]))
    script = f"import {module} as t; print({expression})"
    run = subprocess.run([sys.executable, "-c", script], check=False, cwd=TESTS, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout
