"""One decode-step test case: random inputs, a state pool and an output inside NaN guards, and the
checks against the float64 reference.

A case is plain parameters (hypothesis draws them, see ``strategies.py``); ``build`` turns it into
tensors on a device from a seed, ``run`` calls an implementation, ``check`` compares with the
reference and verifies that nothing outside the addressed pool rows and the output changed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from gdn_ops.reference import (
    fused_sigmoid_gating_delta_rule_reference,
    gdn_gating_reference,
    recurrent_gated_delta_rule_reference,
)

# Relative RMS error against the float64 reference, by the dtype the result is stored in. Inputs
# are rounded to their dtype before the reference sees them, so these bound the kernel's fp32
# arithmetic plus one rounding of the result.
REL_RMS_TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
# The largest single-element error, as a multiple of the tolerance times the reference's max |x|.
MAX_ABS_FACTOR = 8.0


@dataclasses.dataclass(frozen=True)
class DecodeCase:
    B: int
    T: int
    HK: int
    group: int  # HV // HK
    K: int
    V: int
    state_layout: str = "vk"
    state_dtype: torch.dtype = torch.float32
    act_dtype: torch.dtype = torch.bfloat16
    out_dtype: torch.dtype | None = None
    fused_gating: bool = True
    gate_dtype: torch.dtype = torch.float32  # dtype of precomputed g/beta (unfused op)
    l2norm: bool = False
    qkv_layout: str = "separate"  # "separate" | "packed" (slices of one projection) | "transposed"
    index_dtype: torch.dtype | None = torch.int32  # None: no indices, pool has exactly B slots
    padding_rows: tuple[int, ...] = ()
    padding_value: int = -1
    indices_stride: int = 1  # > 1: the indices are every n-th element of a larger buffer
    spare_slots: int = 2
    slot_pad: int = 0  # extra elements between slots (page-strided pool)
    pool_guard: int = 37  # NaN elements before the pool; a multiple of 8 keeps it 16-byte aligned (TMA)
    out_given: bool = False
    seed: int = 0

    @property
    def HV(self) -> int:
        return self.HK * self.group

    @property
    def num_slots(self) -> int:
        return self.B if self.index_dtype is None else self.B + self.spare_slots

    @property
    def result_dtype(self) -> torch.dtype:
        return self.out_dtype or self.act_dtype


@dataclasses.dataclass
class Guarded:
    """A view embedded in a NaN-filled storage; ``outside_untouched`` checks the guards."""

    storage: torch.Tensor
    view: torch.Tensor

    def outside_untouched(self) -> bool:
        covered = torch.zeros(self.storage.shape, dtype=torch.bool, device=self.storage.device)
        covered.as_strided(self.view.shape, self.view.stride(), self.view.storage_offset()).fill_(True)
        return bool(torch.isnan(self.storage[~covered].float()).all())


def guarded(shape: tuple[int, ...], dtype: torch.dtype, device, pad_dim0: int = 0, guard: int = 37) -> Guarded:
    """A dense-inner view of ``shape`` inside NaN storage; dim 0 gets ``pad_dim0`` extra elements of stride."""
    inner = math.prod(shape[1:])
    stride0 = inner + pad_dim0
    storage = torch.full((2 * guard + shape[0] * stride0,), float("nan"), dtype=dtype, device=device)
    strides = [stride0] + [math.prod(shape[i + 1:]) for i in range(1, len(shape))]
    return Guarded(storage, storage.as_strided(shape, strides, guard))


@dataclasses.dataclass
class DecodeInputs:
    case: DecodeCase
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    A_log: torch.Tensor
    dt_bias: torch.Tensor
    g: torch.Tensor
    beta: torch.Tensor
    pool: Guarded
    indices: torch.Tensor | None
    out: Guarded | None
    live_slots: torch.Tensor  # slots addressed by non-padding rows
    scale: float | None = None

    def reference(self) -> tuple[torch.Tensor, torch.Tensor]:
        """float64 ``(o, new_pool)`` for the current inputs (call before running the kernel)."""
        c = self.case
        if c.fused_gating:
            return fused_sigmoid_gating_delta_rule_reference(
                self.A_log, self.a, self.dt_bias, 1.0, 20.0, self.q, self.k, self.v, self.b, self.pool.view,
                self.indices, self.scale, c.l2norm, state_layout=c.state_layout, compute_dtype=torch.float64,
            )
        return recurrent_gated_delta_rule_reference(
            self.q, self.k, self.v, self.g, self.beta, self.pool.view, self.indices, self.scale, c.l2norm,
            state_layout=c.state_layout, compute_dtype=torch.float64,
        )


# A small case for the persistent kernels (kv layout, one token): TMA needs 16-byte aligned bases
# and strides, hence pool_guard=64 and slot_pad=8 (a page-strided pool that stays aligned).
PERSISTENT_CASE = DecodeCase(B=3, T=1, HK=2, group=2, K=32, V=64, state_layout="kv", state_dtype=torch.bfloat16,
                             padding_rows=(1,), spare_slots=3, slot_pad=8, pool_guard=64, out_given=True)
# Changes to PERSISTENT_CASE that each persistent kernel is checked under.
PERSISTENT_VARIANTS = {
    "fused": {},
    "unfused": {"fused_gating": False},
    "l2norm-packed": {"l2norm": True, "qkv_layout": "packed"},
    "no-indices": {"index_dtype": None, "padding_rows": ()},
    "past-pool-int64": {"index_dtype": torch.int64, "padding_value": 1000},
}


def build(case: DecodeCase, device) -> DecodeInputs:
    gen = torch.Generator(device="cpu").manual_seed(case.seed)

    def randn(*shape, dtype=torch.float32, std=1.0):
        return (torch.randn(shape, generator=gen) * std).to(dtype=dtype, device=device)

    B, T, HK, HV, K, V = case.B, case.T, case.HK, case.HV, case.K, case.V
    # Unit-norm-ish keys keep the delta rule contractive, as in real models; with the in-kernel
    # l2norm the raw inputs are deliberately far from unit norm.
    qk_std = 2.0 if case.l2norm else K**-0.5
    if case.qkv_layout == "packed":
        widths = [HK * K, HK * K, HV * V, HV, HV]
        proj = randn(B, T, sum(widths), dtype=case.act_dtype)
        proj[..., : 2 * HK * K] *= qk_std
        q, k, v, a, b = proj.split(widths, dim=-1)
        q, k, v = q.unflatten(-1, (HK, K)), k.unflatten(-1, (HK, K)), v.unflatten(-1, (HV, V))
    elif case.qkv_layout == "transposed":
        q = randn(B, T, K, HK, dtype=case.act_dtype, std=qk_std).transpose(-1, -2)
        k = randn(B, T, K, HK, dtype=case.act_dtype, std=qk_std).transpose(-1, -2)
        v = randn(T, B, HV, V, dtype=case.act_dtype).transpose(0, 1)
        a = randn(B, HV, T, dtype=case.act_dtype).transpose(1, 2)
        b = randn(B, HV, T, dtype=case.act_dtype).transpose(1, 2)
    else:
        q = randn(B, T, HK, K, dtype=case.act_dtype, std=qk_std)
        k = randn(B, T, HK, K, dtype=case.act_dtype, std=qk_std)
        v = randn(B, T, HV, V, dtype=case.act_dtype)
        a = randn(B, T, HV, dtype=case.act_dtype)
        b = randn(B, T, HV, dtype=case.act_dtype)
    # per-head parameters as strided views in the packed/transposed cases (slices of a bigger tensor)
    head_stride = 1 if case.qkv_layout == "separate" else 3
    A_log = randn(HV * head_stride, std=0.5)[::head_stride]
    dt_bias = randn(HV * head_stride, std=0.5)[::head_stride]
    g, beta = gdn_gating_reference(A_log, a, dt_bias, b)
    g, beta = g.to(case.gate_dtype), beta.to(case.gate_dtype)

    inner = (HV, V, K) if case.state_layout == "vk" else (HV, K, V)
    pool = guarded((case.num_slots, *inner), case.state_dtype, device, pad_dim0=case.slot_pad, guard=case.pool_guard)
    if case.index_dtype is None:
        slots = torch.arange(B)
        indices = None
    else:
        slots = torch.randperm(case.num_slots, generator=gen)[:B]
        values = slots.clone()
        for row in case.padding_rows:
            values[row] = case.padding_value
        indices = values.to(dtype=case.index_dtype, device=device)
        if case.indices_stride > 1:
            # the elements between hold other rows' slots, which a read as if contiguous would take
            buffer = indices.flip(0).repeat_interleave(case.indices_stride)
            buffer[::case.indices_stride] = indices
            indices = buffer[::case.indices_stride]
    live = torch.tensor([r for r in range(B) if r not in case.padding_rows], dtype=torch.long)
    live_slots = slots[live].to(device)
    # Only addressed slots hold data; every other slot stays NaN, so a stray read or write shows.
    pool.view[live_slots] = randn(len(live), *inner, dtype=case.state_dtype)
    out = guarded((B, T, HV, V), case.result_dtype, device, pad_dim0=5) if case.out_given else None
    return DecodeInputs(case, q, k, v, a, b, A_log, dt_bias, g, beta, pool, indices, out, live_slots)


def padded_indices(gen: torch.Generator, B: int, live: int, num_slots: int) -> torch.Tensor:
    """int32 ``[B]``: ``live`` random rows get distinct random slots, the others are -1 padding (CPU)."""
    idx = torch.full((B,), -1, dtype=torch.int32)
    rows = torch.randperm(B, generator=gen)[:live]
    idx[rows] = torch.randperm(num_slots, generator=gen)[:live].to(torch.int32)
    return idx


Runner = Callable[[DecodeInputs], torch.Tensor]


def run_op(inp: DecodeInputs) -> torch.Tensor:
    """The public function (dispatches to the CPU or the CUDA kernel by device)."""
    import gdn_ops

    c = inp.case
    out = inp.out.view if inp.out is not None else None
    if c.fused_gating:
        return gdn_ops.fused_sigmoid_gating_delta_rule_update(
            inp.A_log, inp.a, inp.dt_bias, 1.0, 20.0, inp.q, inp.k, inp.v, inp.b, inp.pool.view, inp.indices,
            inp.scale, c.l2norm, state_layout=c.state_layout, out_dtype=c.out_dtype, out=out,
        )
    return gdn_ops.recurrent_gated_delta_rule_update(
        inp.q, inp.k, inp.v, inp.g, inp.beta, inp.pool.view, inp.indices, inp.scale, c.l2norm,
        state_layout=c.state_layout, out_dtype=c.out_dtype, out=out,
    )


def run_triton(inp: DecodeInputs, config=None, launched: list | None = None, order: torch.Tensor | None = None,
               launch_decode: Callable | None = None) -> torch.Tensor:
    """The Triton launcher directly (in the interpreter on CPU tensors), optionally with a fixed
    configuration, a given slot ``order`` and another module's ``launch_decode`` (a variant's);
    appends the configuration it launched to ``launched``."""
    if launch_decode is None:
        from gdn_ops.triton_decode import launch_decode

    c = inp.case
    out = inp.out.view if inp.out is not None else torch.empty(inp.v.shape, dtype=c.result_dtype, device=inp.v.device)
    scale = c.K**-0.5 if inp.scale is None else inp.scale
    gate_a, gate_b = (inp.a, inp.b) if c.fused_gating else (inp.g, inp.beta)
    config = launch_decode(
        inp.q, inp.k, inp.v, gate_a, gate_b, inp.A_log if c.fused_gating else None,
        inp.dt_bias if c.fused_gating else None, inp.pool.view, inp.indices, out,
        scale=scale, use_qk_l2norm_in_kernel=c.l2norm, state_layout=c.state_layout, config=config, order=order,
    )
    if launched is not None:
        launched.append(config)
    return out


def assert_close_to_reference(name: str, actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """NaN exactly where the reference has NaN; elsewhere relative RMS and max-abs error bounds."""
    actual = actual.to(torch.float64)
    expected = expected.to(torch.float64)
    nan_a, nan_e = torch.isnan(actual), torch.isnan(expected)
    assert torch.equal(nan_a, nan_e), f"{name}: NaN at {int((nan_a ^ nan_e).sum())} unexpected positions"
    a, e = actual[~nan_e], expected[~nan_e]
    if e.numel() == 0:
        return
    tol = REL_RMS_TOL[dtype]
    scale = e.norm().item()
    rel = (a - e).norm().item() / max(scale, 1e-30)
    worst = (a - e).abs().max().item()
    assert rel <= tol, f"{name}: relative RMS error {rel:.3g} > {tol:g} ({dtype})"
    bound = MAX_ABS_FACTOR * tol * e.abs().max().item()
    assert worst <= bound, f"{name}: max abs error {worst:.3g} > {bound:.3g} ({dtype})"


def check(inp: DecodeInputs, run: Runner, dropped_rows: tuple[int, ...] = ()) -> None:
    """Run ``run`` on the inputs and check output, pool and guards against the reference.
    ``dropped_rows`` (with an ``out`` buffer) must be left alone: their output and slot unchanged."""
    c = inp.case
    q0, k0, v0 = inp.q.clone(), inp.k.clone(), inp.v.clone()
    ref_o, ref_pool = inp.reference()
    for row in dropped_rows:
        ref_o[row] = inp.out.view[row]
        slot = int(inp.indices[row])
        if 0 <= slot < c.num_slots:
            ref_pool[slot] = inp.pool.view[slot]
    o = run(inp)
    assert o.shape == (c.B, c.T, c.HV, c.V) and o.dtype == c.result_dtype
    if inp.out is not None:
        assert o.data_ptr() == inp.out.view.data_ptr(), "out= buffer was not used"
        assert inp.out.outside_untouched(), "output guard region was written"
    assert_close_to_reference("o", o, ref_o, c.result_dtype)
    for row in set(c.padding_rows) - set(dropped_rows):
        assert bool((o[row] == 0).all()), f"padding row {row} has a non-zero output"
    assert_close_to_reference("state pool", inp.pool.view, ref_pool, c.state_dtype)
    assert inp.pool.outside_untouched(), "state pool guard region (between or around slots) was written"
    assert torch.equal(inp.q, q0) and torch.equal(inp.k, k0) and torch.equal(inp.v, v0), "q/k/v were modified"
