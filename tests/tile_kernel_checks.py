"""What the tests of the decode kernels share: the model-shape case the Gluon kernels are checked
on, a checked launch with a fixed configuration, and a kernel's launch arguments recorded on CPU."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Iterator
from types import ModuleType
from unittest import mock

import torch
from decode_case import DecodeCase, build, check, run_triton


def model_case(heads: tuple[int, int], state_layout: str, changes: dict, seed: int) -> DecodeCase:
    """Qwen3-Next's head shape (``heads = (HK, HV)``, K = V = 128, bf16 state unless ``changes``
    say otherwise) with more tiles than fit on the GPU at once and padding rows at the start,
    middle and end (``changes`` may not move them)."""
    HK, HV = heads
    B = 3 * torch.cuda.get_device_properties(0).multi_processor_count * 8 // HV + 5
    case = DecodeCase(B=B, T=1, HK=HK, group=HV // HK, K=128, V=128, state_layout=state_layout,
                      state_dtype=torch.bfloat16, padding_rows=(0, B // 2, B - 1), spare_slots=7, slot_pad=8,
                      pool_guard=64, out_given=True, seed=seed)
    return dataclasses.replace(case, **{name: value for name, value in changes.items() if name != "padding_rows"})


def check_launch(case: DecodeCase, config) -> None:
    """``case`` on the GPU through ``launch_decode`` with ``config``, against the float64
    reference with its guards; ``config`` must be what launched."""
    launched = []
    check(build(case, "cuda"), lambda inp: run_triton(inp, config, launched))
    assert launched == [config]


@contextlib.contextmanager
def kernel_calls(module: ModuleType, kernel_name: str) -> Iterator[list[tuple]]:
    """While the block runs, ``module.<kernel_name>`` is a recorder: each launch appends its
    ``(grid, args, kwargs)`` to the list yielded, and launches nothing."""
    calls = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append((grid, args, kwargs))

    with mock.patch.object(module, kernel_name, Recorder()):
        yield calls


def record_launch(module: ModuleType, kernel_name: str, launcher_name: str, state_layout: str,
                  config, state_dtype: torch.dtype = torch.bfloat16,
                  slot_pad: int = 8, snapshot_order: bool = False) -> tuple[tuple, dict[str, object], dict]:
    """One launch of ``module.<launcher_name>`` on a small case on CPU (Qwen3-Next's heads, bf16
    activations, a ``state_dtype`` pool whose slots are ``slot_pad`` elements further apart than
    dense; with ``snapshot_order`` the rows in slot order from a snapshot the kernel checks), with the kernel
    ``module.<kernel_name>`` replaced by a recorder. Returns the grid, the positional arguments by
    the kernel parameter each lands on (checked to be of that parameter's kind: descriptor,
    pointer or scalar), and the keywords (checked to be exactly the kernel's constexprs and the
    launch options)."""
    kernel = getattr(module, kernel_name)
    case = DecodeCase(B=3, T=1, HK=16, group=2, K=128, V=128, state_layout=state_layout, state_dtype=state_dtype,
                      padding_rows=(1,), spare_slots=3, slot_pad=slot_pad, pool_guard=64, out_given=True)
    inp = build(case, "cpu")
    indices, order = inp.indices, {}
    if snapshot_order:
        rows = torch.argsort(inp.indices, stable=True).to(torch.int32)
        indices, order = inp.indices[rows].to(torch.int32), {"rows": rows, "batch_indices": inp.indices}
    with kernel_calls(module, kernel_name) as calls:
        getattr(module, launcher_name)(
            inp.q, inp.k, inp.v, inp.a, inp.b, inp.A_log, inp.dt_bias, inp.pool.view, indices, inp.out.view,
            scale=0.125, use_qk_l2norm_in_kernel=True, softplus_beta=1.0, softplus_threshold=20.0, config=config,
            pdl=True, l2_eps=1e-6, **order)
    (grid, args, kwargs), = calls
    params = list(inspect.signature(kernel.fn).parameters)
    positional, constexprs = params[:len(args)], params[len(args):]
    for param, arg in zip(positional, args):
        kind = "desc" if param.endswith("_desc") else "ptr" if param.endswith("_ptr") else "scalar"
        assert kind == ("desc" if hasattr(arg, "block_shape") else "ptr" if isinstance(arg, torch.Tensor) else "scalar"), param
    assert set(kwargs) - {"num_warps", "maxnreg", "launch_pdl"} == set(constexprs)
    return grid, dict(zip(positional, args)), kwargs


def compile_recorded_launch(module: ModuleType, kernel_name: str, launcher_name: str, state_layout: str, config,
                            state_dtype: torch.dtype = torch.bfloat16, slot_pad: int = 0,
                            snapshot_order: bool = False):
    """``module.<kernel_name>`` compiled for sm_90 as Triton specialises its launch by
    ``module.<launcher_name>`` with ``config`` on a ``state_dtype`` pool, dense by default (as
    engines allocate it and the benchmark times it) or with slots ``slot_pad`` elements further
    apart, recorded on CPU (:func:`record_launch`; an H200's 132 SMs where the launcher sizes its
    grid by them). Returns the compiled kernel."""
    from sm90_compile import compile_launch_sm90

    sms = mock.patch.object(module, "sm_count", lambda index: 132) if hasattr(module, "sm_count") else contextlib.nullcontext()
    with sms:
        _, args, kwargs = record_launch(module, kernel_name, launcher_name, state_layout, config, state_dtype, slot_pad,
                                        snapshot_order)
    return compile_launch_sm90(getattr(module, kernel_name), list(args.values()), kwargs)
