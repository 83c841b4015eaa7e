"""The batch rows ordered by the pool slot they address, for a decode that walks the pool in order.

A decode program handles one row's head (or a tile of it), and the grid runs in row order. With
rows addressing the pool's slots in a shuffled order, programs that run together touch scattered
slots; in ascending slot order the H200 decode ran 1.3-2.7 points of copy bandwidth faster at
B = 256-1024 (NOTES.md, eleventh session). This kernel gives the decode that order: the rows sorted by
their slot (ties, such as -1 padding, by row), as two vectors the decode reads instead of
``indices`` and its own row number. It is a rank count, O(B^2) comparisons: at the batch sizes
where the order pays (hundreds to a few thousand rows) that is a few microseconds' work spread
over B / ROWS programs, with no host sync and the same launch every call (CUDA-graph safe).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# rows ranked per program, and slots compared per loop step
ROWS = 64
COLUMNS = 128


@triton.jit
def _slot_order_kernel(indices_ptr, sorted_slots_ptr, rows_ptr, B, ROWS: tl.constexpr, COLUMNS: tl.constexpr,
                       PDL: tl.constexpr):
    if PDL:
        # the indices may come from the previous kernel; the decode after this one may start now
        # and waits for this kernel in its own gdc_wait
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    live = rows < B
    mine = tl.load(indices_ptr + rows, mask=live, other=0).to(tl.int64)
    rank = tl.zeros([ROWS], tl.int32)
    for start in range(0, B, COLUMNS):
        others = start + tl.arange(0, COLUMNS)
        theirs = tl.load(indices_ptr + others, mask=others < B, other=0).to(tl.int64)
        before = (theirs[None, :] < mine[:, None]) | ((theirs[None, :] == mine[:, None])
                                                      & (others[None, :] < rows[:, None]))
        rank += tl.sum((before & (others < B)[None, :]).to(tl.int32), axis=1)
    tl.store(sorted_slots_ptr + rank, mine.to(sorted_slots_ptr.dtype.element_ty), mask=live)
    tl.store(rows_ptr + rank, rows, mask=live)


def slot_order(indices: torch.Tensor, pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``indices [B]`` (int32 or int64 slots, any values, padding too) -> ``(sorted_slots, rows)``:
    ``rows`` (int32 ``[B]``) is the stable argsort of ``indices`` and ``sorted_slots = indices[rows]``
    (``indices``' dtype). ``pdl`` launches with programmatic dependent launch (sm_90+)."""
    B = indices.shape[0]
    sorted_slots = torch.empty_like(indices)
    rows = torch.empty(B, dtype=torch.int32, device=indices.device)
    if B:
        _slot_order_kernel[(triton.cdiv(B, ROWS),)](indices, sorted_slots, rows, B, ROWS=ROWS, COLUMNS=COLUMNS,
                                                   PDL=pdl, num_warps=4,
                                                   **({"launch_pdl": True} if pdl else {}))
    return sorted_slots, rows
