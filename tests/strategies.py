"""Hypothesis strategies for decode cases: geometry, dtypes, layouts, strides, padded indices."""

from __future__ import annotations

import dataclasses

import torch
from decode_case import DecodeCase
from hypothesis import strategies as st

HEAD_DIMS = (16, 64, 128, 96)  # 96: not a power of two, so tiles are masked
ACT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
STATE_DTYPES = (torch.float32, torch.bfloat16)


@st.composite
def decode_cases(draw, small: bool = False, state_dtypes=STATE_DTYPES) -> DecodeCase:
    """Any valid case. ``small`` bounds the program count for Triton's interpreter on CPU."""
    if small:
        B, T = draw(st.integers(1, 3)), draw(st.integers(1, 2))
        HK, group = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    else:
        B, T = draw(st.integers(1, 9)), draw(st.integers(1, 4))
        HK, group = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    index_dtype = draw(st.sampled_from((torch.int32, torch.int64, None)))
    padding_rows: tuple[int, ...] = ()
    padding_value = -1
    if index_dtype is not None:
        padding_rows = tuple(sorted(draw(st.sets(st.integers(0, B - 1), max_size=B))))
        # -1 is SGLang's pad; an index >= num_slots must be treated the same (never read or written)
        padding_value = draw(st.sampled_from((-1, -7, "num_slots", "huge")))
    indices_stride = draw(st.sampled_from((1, 1, 3))) if index_dtype is not None else 1
    case = DecodeCase(
        B=B, T=T, HK=HK, group=group,
        K=draw(st.sampled_from(HEAD_DIMS)), V=draw(st.sampled_from(HEAD_DIMS)),
        state_layout=draw(st.sampled_from(("vk", "kv"))),
        state_dtype=draw(st.sampled_from(state_dtypes)),
        act_dtype=draw(st.sampled_from(ACT_DTYPES)),
        fused_gating=draw(st.booleans()),
        gate_dtype=draw(st.sampled_from((torch.float32, torch.bfloat16))),
        l2norm=draw(st.booleans()),
        qkv_layout=draw(st.sampled_from(("separate", "packed", "transposed"))),
        index_dtype=index_dtype,
        padding_rows=padding_rows,
        indices_stride=indices_stride,
        spare_slots=draw(st.integers(0, 3)),
        # 2 and 8: slot strides of 2 or 8 elements' alignment, which the per-tile kernel is told
        # (triton_decode.state_alignment); 5: none
        slot_pad=draw(st.sampled_from((0, 0, 2, 5, 8, 128))),
        out_given=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )
    out_dtype = draw(st.sampled_from((None, torch.float32, case.act_dtype)))
    if padding_value == "num_slots":
        padding_value = case.num_slots
    elif padding_value == "huge":
        padding_value = 2**31 - 1 if index_dtype == torch.int32 else 2**40
    return dataclasses.replace(case, out_dtype=out_dtype, padding_value=padding_value)


@st.composite
def slot_vectors(draw):
    """Distinct slots of a pool in a shuffled order, with padding: -1, repeated, and out-of-range
    values past int32 in an int64 vector (which a cast to int32 would turn into real slots)."""
    B = draw(st.integers(0, 300))
    dtype = draw(st.sampled_from([torch.int32, torch.int64]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    slots = torch.randperm(B + draw(st.integers(0, 64)), generator=gen)[:B].to(dtype)
    padding = torch.rand(B, generator=gen) < draw(st.sampled_from([0.0, 0.2, 1.0]))
    pad = (2**32 + 5) if dtype == torch.int64 and draw(st.booleans()) else -1
    return torch.where(padding, torch.tensor(pad, dtype=dtype), slots)
