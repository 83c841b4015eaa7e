"""Kernel experiments as source patches of the decode kernels, timed beside the shipped kernel.

Each variant is a list of (old, new) text replacements; ``load_variant`` writes the patched file
next to this one (Triton reads kernel source from a file) and imports it as its own module. A
variant that wins is folded into the kernel and recorded in NOTES.md; this keeps the losers'
exact code reproducible without a flag per experiment in the shipped kernel.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import tempfile
import textwrap
from pathlib import Path
from types import ModuleType

import gdn_ops.gluon_decode_kv as shipped_gluon
import gdn_ops.gluon_decode_kv_tile as shipped_kv_tile
import gdn_ops.gluon_decode_vk_tile as shipped_vk_tile
import gdn_ops.triton_decode as shipped
import gdn_ops.triton_decode_tma as shipped_tma
import gdn_ops.triton_gating as shipped_gating
import gdn_ops.triton_slot_order as shipped_slot_order

# The launcher's operands-first order turned off (variants written against the slot-first order)
_OPERANDS_FIRST_OFF = ("    operands_first = config.operands_first and T == 1 and rows is None\n",
                       "    operands_first = False\n")

VARIANTS: dict[str, list[tuple[str, str]]] = {
    # PDL without the early L2 prefetch of the state tile (launch overlap alone)
    "pdl_no_prefetch": [
        ("PREFETCH_MAX_STATE_BYTES = 4 << 20", "PREFETCH_MAX_STATE_BYTES = -1"),
    ],
    # trigger the next launch before this kernel's own wait (the first PDL version): early
    # launches then pile up several kernels ahead
    "trigger_at_start": [
        ("    if PREFETCH:\n", "    if PDL:\n        tl.extra.cuda.gdc_launch_dependents()\n    if PREFETCH:\n"),
        ("        tl.extra.cuda.gdc_wait()\n        tl.extra.cuda.gdc_launch_dependents()\n", "        tl.extra.cuda.gdc_wait()\n"),
    ],
    # PDL with an early L2 prefetch of the slot index when the state is not prefetched
    "index_prefetch": [
        ("    if PDL:\n        # Launched beside",
         ("    elif PDL and HAS_INDICES:\n        _prefetch_l2(indices_ptr + row + tl.zeros([1], tl.int64))\n"
          "    if PDL:\n        # Launched beside")),
    ],
    # A deliberate bug, for tests/test_pdl.py to show it catches one: every read (slot, state,
    # q/k/v) happens before gdc_wait(), i.e. possibly before the previous kernel has written it.
    "mutant_read_before_wait": [
        ("        tl.extra.cuda.gdc_wait()\n        tl.extra.cuda.gdc_launch_dependents()\n",
         "        tl.extra.cuda.gdc_launch_dependents()\n"),
        ("        o = tl.where(valid, o, 0.0)\n",
         "        o = tl.where(valid, o, 0.0)\n        if PDL:\n            tl.extra.cuda.gdc_wait()\n"),
    ],
    # Ceilings of the per-tile kernel, not decode steps (fifty-ninth session): where a kv call at
    # B=1 spends its time. ``step_out`` keeps the loads of the state, v and the gates and the
    # stores, with no arithmetic on the tile (the state leaves unchanged, o = beta * g * v; q and k,
    # then unused, are not read: 1% of the bytes); ``sums_only`` keeps the two sums over the keys
    # (S k and S q, with the norms of q and k) and the state leaves unchanged, o from the sums.
    # H100, TP=1 fp32 B=1 (results/h100/b1c_h100_20067bc.json): kv 2.97 / 3.11 us against the
    # decode's 3.09, vk 2.88 / 2.85 against 2.86.
    "step_out": [
        ("            S, o = delta_rule_step_from_old_state(S, q, k, v, g, beta, scale, USE_L2NORM, L2_EPS)\n",
         "            o = beta * g * v\n"),
    ],
    "sums_only": [
        ("from gdn_ops.triton_step import delta_rule_step, delta_rule_step_from_old_state\n",
         "from gdn_ops.triton_step import delta_rule_step, delta_rule_step_from_old_state, old_state_sums\n"),
        ("            S, o = delta_rule_step_from_old_state(S, q, k, v, g, beta, scale, USE_L2NORM, L2_EPS)\n",
         "            o = old_state_sums(S, q, k, v, g, beta, scale, USE_L2NORM, L2_EPS)[3]\n"),
    ],
    # With the state's L2 prefetch before the PDL wait, the step's other operands too: q and k (the
    # key head's row), this tile's v and the two gates. In a model the kernel before writes them, so
    # they are only prefetched there (no register sees them before the wait); in the benchmark they
    # are cold, and after the wait their loads from DRAM run beside the state's from L2. Slower on
    # the H100 at TP=1 B=1 (results/h100/op1_h100_a763562.json): fp32 kv +0.09 us, vk +0.75 (the
    # 32 programs of a head each prefetch the same q and k), bf16 kv -0.03, vk +0.93.
    "operand_prefetch": [
        ("    if PDL:\n        # Launched beside",
         ("    if PREFETCH and not SORTED_ROWS:\n"
         "        offs_k_lines = tl.arange(0, BK // 32) * 32\n"
         "        offs_k_lines = tl.where(offs_k_lines < K, offs_k_lines, 0)\n"
         "        _prefetch_l2(q_ptr + rank * s_qb + h * s_qh + offs_k_lines * s_qk)\n"
         "        _prefetch_l2(k_ptr + rank * s_kb + h * s_kh + offs_k_lines * s_kk)\n"
         "        one = tl.zeros([1], tl.int64)\n"
         "        _prefetch_l2(v_ptr + rank * s_vb + hv * s_vh + (v_block * BV) * s_vv + one)\n"
         "        _prefetch_l2(gate_a_ptr + rank * s_ab + hv * s_ah + one)\n"
         "        _prefetch_l2(gate_b_ptr + rank * s_bb + hv * s_bh + one)\n"
         "    if PDL:\n        # Launched beside")),
    ],
    # The slot (and the state) before one token's operands, the order shipped until the sixtieth
    # session, where ``DecodeConfig.operands_first`` asks for the operands first
    "slot_first": [_OPERANDS_FIRST_OFF],
    # PDL with the L2 prefetch at every size
    "prefetch_always": [
        ("PREFETCH_MAX_STATE_BYTES = 4 << 20", "PREFETCH_MAX_STATE_BYTES = 1 << 62"),
    ],
    # the state store evict-first in L2 instead of .cs (the vk tile's store hints, twenty-seventh
    # session): level with .cs at fp32 vk B=8 on the H200 (tune_triton_store_hint_fp32_2970fee.json)
    "store_evict_first": [
        ("tl.store(state_ptrs, S.to(state_ptr.dtype.element_ty), mask=state_mask, cache_modifier=\".cs\")",
         "tl.store(state_ptrs, S.to(state_ptr.dtype.element_ty), mask=state_mask, eviction_policy=\"evict_first\")"),
    ],
    # the .cs state store is shipped (2026-11-27); this restores the plain store for comparison
    "plain_store": [
        ("tl.store(state_ptrs, S.to(state_ptr.dtype.element_ty), mask=state_mask, cache_modifier=\".cs\")",
         "tl.store(state_ptrs, S.to(state_ptr.dtype.element_ty), mask=state_mask)"),
    ],
    # one_pass, one_pass_fused, evict_load and their combination (eleventh session) were folded into
    # the kernel as DecodeConfig.from_old_state / evict_first (evict_first dropped in the twelfth
    # session: it lost in the sweep); their patches are in commit 8221df7
    # The slot (and row) and the state tile read before the PDL wait, q, k, v and the gates after it.
    # Not a safe default: it assumes the kernel launched just before writes neither the pool nor
    # the indices (true of the benchmark's calls, each on its own pool, and of a model whose decode
    # follows the conv kernel). It measures what a caller's promise of that could buy: the state's
    # first bytes arrive while the previous kernel drains instead of after it. Measured on the H200
    # (results/h200/tune_early_state_triton.json): slower at every point, by 0.1-2.3 us per call.
    "early_state": [
        ("""    if PDL:
        # Launched beside the previous kernel's last programs, this waits for it to finish; then
        # the next kernel may launch beside this one. Triggering before the wait instead let a
        # chain of launches pile up ahead: ~1 us more per call at B=1 in the kv layout (NOTES.md).
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
""", ""),
        ("    S = tl.load(state_ptrs, mask=state_mask, other=0.0).to(tl.float32)\n",
         ("    S = tl.load(state_ptrs, mask=state_mask, other=0.0).to(tl.float32)\n"
          "    if PDL:\n        tl.extra.cuda.gdc_wait()\n        tl.extra.cuda.gdc_launch_dependents()\n")),
    ],
    "evict_last_qk": [
        ("q = tl.load(q_ptr + row * s_qb + t * s_qt + h * s_qh + offs_k * s_qk, mask=mask_k, other=0.0)",
         "q = tl.load(q_ptr + row * s_qb + t * s_qt + h * s_qh + offs_k * s_qk, mask=mask_k, other=0.0, eviction_policy=\"evict_last\")"),
        ("k = tl.load(k_ptr + row * s_kb + t * s_kt + h * s_kh + offs_k * s_kk, mask=mask_k, other=0.0)",
         "k = tl.load(k_ptr + row * s_kb + t * s_kt + h * s_kh + offs_k * s_kk, mask=mask_k, other=0.0, eviction_policy=\"evict_last\")"),
    ],
}


# The per-tile kernel's tile loaded in the state's dtype (not widened), and its step call, which the
# two variants below replace.
_TILE_IN_STATE_DTYPE = ("    S = tl.load(state_ptrs, mask=state_mask, other=0.0).to(tl.float32)\n",
                        "    S = tl.load(state_ptrs, mask=state_mask, other=0.0)\n")
_SHIPPED_STEP_CALL = (
    "        if FROM_OLD_STATE:\n            S, o = delta_rule_step_from_old_state(S, q, k, v, g, beta, scale, USE_L2NORM, L2_EPS)\n"
    "        else:\n            S, o = delta_rule_step(S, q, k, v, g, beta, scale, USE_L2NORM, L2_EPS)\n")
# A 2-byte state held packed (two values per register) through the step instead of widened to fp32
# on load: the register count, not the memory system, caps the per-tile kernel's bytes in flight for
# a bf16 state (NOTES.md, thirteenth session). The sums read one fp32 widening; the update widens
# again in asm that the compiler may neither merge with the first nor hoist above the sums, so only
# the packed tile stays live across them. One pass (o from the old state) for every tile.
_IMPORT_SUMS = "from gdn_ops.triton_step import old_state_sums\n\n\n"
_PACKED_STEP = _IMPORT_SUMS + """@triton.jit
def _widen_again(S):
    if S.dtype == tl.bfloat16:
        return tl.inline_asm_elementwise("shl.b32 $0, $2, 16;\\n\\tand.b32 $1, $2, 0xFFFF0000;", "=r,=r,r", [S],
                                         dtype=tl.float32, is_pure=False, pack=2)
    else:
        return S.to(tl.float32)


@triton.jit
def _packed_step(S, q, k, v, g, beta, scale, USE_L2NORM: tl.constexpr, L2_EPS: tl.constexpr):
    u, k, decay, o = old_state_sums(S.to(tl.float32), q, k, v, g, beta, scale, USE_L2NORM, L2_EPS)
    S = (_widen_again(S) * decay + u[:, None] * k[None, :]).to(S.dtype)
    return S, o


"""
VARIANTS["packed_state"] = [
    _TILE_IN_STATE_DTYPE,
    (_SHIPPED_STEP_CALL,
     "        S, o = _packed_step(S, q, k, v, g, beta, scale, USE_L2NORM, L2_EPS)\n"),
    ("@triton.jit\ndef _decode_kernel(", _PACKED_STEP + "@triton.jit\ndef _decode_kernel("),
]


# The sums over the keys taken with q and k as loaded, their norms and the scale applied to the sums
# afterwards (as the Gluon kv tile does): the norms' reduction and square roots then run beside the
# tile's sums instead of before them, one reduction chain fewer between the operands' arrival and
# the stores, which is what a latency-bound call (B=1) waits on. The arithmetic is the shipped
# step's: u = beta (v - d rk S k), o = d rq s S q + u rk rq s (k . q), S = d S + (rk u) k^T.
_NORM_FACTOR_STEP = """from gdn_ops.triton_step import _add2, _add3


@triton.jit
def _norm_factor_step(S, q, k, v, g, beta, scale, USE_L2NORM: tl.constexpr, L2_EPS: tl.constexpr):
    Sk, Sq = tl.reduce((S * k[None, :], S * q[None, :]), 1, _add2)
    qq, kk, kq = tl.reduce((q * q, k * k, k * q), 0, _add3)
    if USE_L2NORM:
        rq = 1.0 / tl.sqrt(qq + L2_EPS)
        rk = 1.0 / tl.sqrt(kk + L2_EPS)
    else:
        rq = 1.0
        rk = 1.0
    decay = tl.exp(g)
    u = beta * (v - (decay * rk) * Sk)
    o = (decay * rq * scale) * Sq + u * (kq * rk * rq * scale)
    S = S * decay + (u * rk)[:, None] * k[None, :]
    return S, o


"""
VARIANTS["norm_factors"] = [
    ("            S, o = delta_rule_step_from_old_state(S, q, k, v, g, beta, scale, USE_L2NORM, L2_EPS)\n",
     "            S, o = _norm_factor_step(S, q, k, v, g, beta, scale, USE_L2NORM, L2_EPS)\n"),
    ("@triton.jit\ndef _decode_kernel(", _NORM_FACTOR_STEP + "@triton.jit\ndef _decode_kernel("),
]


# Speculation on the slot read before the PDL wait (kept for the L2 prefetch's address): the tile
# at that slot is loaded as soon as the wait returns, beside the index's re-read instead of after
# it, and kept only where the re-read finds the same slot; otherwise the tile at the re-read slot
# is loaded (the loads are predicated on the mismatch, so a match costs no second read). Every
# byte used is read after the wait, so it is as safe as the shipped order. At B=1 this takes one
# L2 round trip (the index's) off the path from the wait to the stores.
# The tile at the slot read before the wait, and the tile at the re-read slot where the two differ,
# loaded into the early tile's registers (``other``); unindented, for each variant to indent where
# it puts them.
_EARLY_TILE = textwrap.dedent("""\
    if PREFETCH and HAS_INDICES:
        early_ok = (early_slot >= 0) & (early_slot < num_slots)
        early_base = tl.multiple_of(tl.where(early_ok, early_slot, 0) * s_slot + head_offset, STATE_ALIGN)
        S_early = tl.load(state_ptr + early_base + tile, mask=(mask_v[:, None] & mask_k[None, :]) & early_ok,
                          other=0.0)
""")
_TILE_AT_SLOT_OR_EARLY = textwrap.dedent("""\
    if PREFETCH and HAS_INDICES:
        S = tl.load(state_ptrs, mask=state_mask & (raw_slot != early_slot), other=S_early).to(tl.float32)
    else:
        S = tl.load(state_ptrs, mask=state_mask, other=0.0).to(tl.float32)
""")
_SLOT_LOAD = "        slot = tl.load(indices_ptr + rank, volatile=EARLY_TILE).to(tl.int64)\n"
_TILE_LOAD = "    S = tl.load(state_ptrs, mask=state_mask, other=0.0).to(tl.float32)\n"


def _shipped_tile_load() -> str:
    """The per-tile kernel's tile load as shipped: the early tile's path (``EARLY_TILE``), else the
    plain load."""
    source = Path(shipped.__file__).read_text()
    start = source.index("    if EARLY_TILE:\n        # the slot changed under the wait")
    return source[start:source.index(_TILE_LOAD, start) + len(_TILE_LOAD)]


_SHIPPED_TILE_LOAD = _shipped_tile_load()
_SORTED_ROWS_START = "    if SORTED_ROWS:\n        row = tl.load(rows_ptr + rank).to(tl.int64)\n"
VARIANTS["early_slot_load"] = [
    _OPERANDS_FIRST_OFF,
    (_SORTED_ROWS_START, textwrap.indent(_EARLY_TILE, " " * 4) + _SORTED_ROWS_START),
    (_SLOT_LOAD, _SLOT_LOAD + "        raw_slot = slot\n"),
    (_SHIPPED_TILE_LOAD, textwrap.indent(_TILE_AT_SLOT_OR_EARLY, " " * 4)),
]


# The same speculation in the operands-first order (sixty-first session) was measured as four
# variants here (``early_tile_branch``, ``_select``, ``_branch_volatile``, ``_volatile``; results/
# h100/sp_*_h100_d94786c.json, k32_*_h100_f24e9eb.json). The fastest, ``early_tile_volatile``,
# ships as ``DecodeConfig.early_tile`` (sixty-second session); the four are in git up to dc068ca.
# A deliberate bug, for tests/test_pdl.py to show that its test of the early tile reaches the
# mismatch: the tile at the early slot is kept whatever the slot's read after the wait says.
VARIANTS["mutant_early_tile_unchecked"] = [
    ("        if read_slot != early_slot:\n            S = tl.load(state_ptrs, mask=state_mask, other=0.0)\n", "")]
# The early tile where Triton's interpreter can run it (no PDL, no prefetch instruction: the
# launcher takes the slot read before the wait without them) and with that read stale at odd rows:
# there it gives the next row's slot, as if the kernel before had rewritten the indices after it.
# For the CPU test of the choice between the early tile and its reload (tests/test_decode_kernel.py).
VARIANTS["early_tile_stale_slot"] = [
    ("            early_slot = tl.load(indices_ptr + rank, cache_modifier=\".cg\").to(tl.int64)\n",
     ("            early_rank = tl.where(rank % 2 == 1, (rank + 1) % (tl.num_programs(0) // (NV * HV)), rank)\n"
      "            early_slot = tl.load(indices_ptr + early_rank, cache_modifier=\".cg\").to(tl.int64)\n")),
    ("            _prefetch_l2(tl.where(line_mask, head_ptr + line_tile, head_ptr))\n", ""),
    ("    prefetch = bool(pdl) and rows is None and", "    prefetch = rows is None and"),
]
VARIANTS["mutant_early_tile_unchecked_stale_slot"] = (VARIANTS["early_tile_stale_slot"]
                                                      + VARIANTS["mutant_early_tile_unchecked"])


def _volatile_head_gate_params() -> str:
    """``head_gate_params``' body (up to its return) with its loads volatile, unindented, for a
    variant to inline where a ``.replace`` may rewrite them (``operands_before_slot_cv``)."""
    source = Path(shipped_gating.__file__).read_text()
    start = source.index("    if FUSED_GATING:\n", source.index("def head_gate_params("))
    body = source[start:source.index("    return neg_exp_A, dt_bias\n", start)]
    return textwrap.dedent(body.replace("volatile=VOLATILE", "volatile=True"))


_VOLATILE_HEAD_GATE_PARAMS = _volatile_head_gate_params()
# One token in slot order as given (T == 1, rows not sorted): q, k, v and the gates loaded right
# after the PDL wait, before the slot, as volatile loads (``ld.volatile``) so that ptxas keeps them
# ahead of the slot's load instead of issuing some after the slot has come back, as it does in
# the shipped kernel (v among them at TP=1 B=1 kv, SASS); A_log and dt_bias too. The state's loads
# still wait on the slot.
_OPERANDS_BEFORE_SLOT = """    if not SORTED_ROWS:
        if T == 1:
            q = tl.load(q_ptr + rank * s_qb + h * s_qh + offs_k * s_qk, mask=mask_k, other=0.0, volatile=True)
            k = tl.load(k_ptr + rank * s_kb + h * s_kh + offs_k * s_kk, mask=mask_k, other=0.0, volatile=True)
            v = tl.load(v_ptr + rank * s_vb + hv * s_vh + offs_v * s_vv, mask=mask_v, other=0.0, volatile=True)
            gate_a = tl.load(gate_a_ptr + rank * s_ab + hv * s_ah, volatile=True).to(tl.float32)
            gate_b = tl.load(gate_b_ptr + rank * s_bb + hv * s_bh, volatile=True).to(tl.float32)
""" + textwrap.indent(_VOLATILE_HEAD_GATE_PARAMS, " " * 12) + """\
            if HAS_INDICES:
                slot = tl.load(indices_ptr + rank, volatile=True).to(tl.int64)
                valid = (slot >= 0) & (slot < num_slots)
                slot = tl.where(valid, slot, 0)
            else:
                slot = rank
                valid = rank >= 0
            state_ptrs = state_ptr + tl.multiple_of(slot * s_slot + head_offset, STATE_ALIGN) + tile
            state_mask = (mask_v[:, None] & mask_k[None, :]) & valid
            S = tl.load(state_ptrs, mask=state_mask, other=0.0).to(tl.float32)
            g, beta = decode_gates(gate_a, gate_b, neg_exp_A, dt_bias, softplus_beta, softplus_threshold,
                                   FUSED_GATING)
            q = q.to(tl.float32)
            k = k.to(tl.float32)
            v = v.to(tl.float32)
            if FROM_OLD_STATE:
                S, o = delta_rule_step_from_old_state(S, q, k, v, g, beta, scale, USE_L2NORM, L2_EPS)
            else:
                S, o = delta_rule_step(S, q, k, v, g, beta, scale, USE_L2NORM, L2_EPS)
            o = tl.where(valid, o, 0.0)
            tl.store(o_ptr + rank * s_ob + hv * s_oh + offs_v * s_ov, o.to(o_ptr.dtype.element_ty), mask=mask_v)
            tl.store(state_ptrs, S.to(state_ptr.dtype.element_ty), mask=state_mask, cache_modifier=".cs")
            return
"""
# With ``early``, also the tile at the slot read before the wait (as ``early_slot_load``), loaded
# after the operands and before the slot's re-read, and kept where the re-read finds that slot.
_TILE_AT_SLOT = textwrap.indent(_TILE_LOAD, " " * 8)


def _operands_before_slot(early: bool) -> list[tuple[str, str]]:
    block = _OPERANDS_BEFORE_SLOT
    if early:
        block = block.replace("            if HAS_INDICES:\n", textwrap.indent(_EARLY_TILE, " " * 12)
                              + "            if HAS_INDICES:\n", 1)
        block = block.replace("                slot = tl.load(indices_ptr + rank, volatile=True).to(tl.int64)\n",
                              "                slot = tl.load(indices_ptr + rank, volatile=True).to(tl.int64)\n"
                              "                raw_slot = slot\n")
        block = block.replace(_TILE_AT_SLOT, textwrap.indent(_TILE_AT_SLOT_OR_EARLY, " " * 12))
    return [_OPERANDS_FIRST_OFF, (_SORTED_ROWS_START, block + _SORTED_ROWS_START)]


VARIANTS["operands_before_slot"] = _operands_before_slot(early=False)
# the same order asked for with the ".cv" cache operator instead of volatile: ptxas (Triton 3.6)
# compiles it as the same order with plain loads, which issues q, k, a gate and A_log before the
# slot's first use (v and the rest after it); as fast as the volatile order at TP=1 kv B=1 and 2
# (H100, results/h100/lo2_tp1_h100_77f12c6.json). Shipped as ``DecodeConfig.operands_first``.
VARIANTS["operands_before_slot_cv"] = [(old, new.replace("volatile=True", 'cache_modifier=".cv"'))
                                       for old, new in _operands_before_slot(early=False)]
VARIANTS["operands_before_slot_early"] = _operands_before_slot(early=True)
# the operands before the slot and the norms as factors
VARIANTS["operands_before_slot_norm_factors"] = _operands_before_slot(early=False) + VARIANTS["norm_factors"]


# The same aim by another route: the update reads the tile again (a volatile load, which the
# compiler may not merge with the first; it should hit L1 or L2) instead of keeping it in registers
# across the sums. Decode steps of one token only (T = 1): a second token would read the old tile.
VARIANTS["reload_state"] = [
    _TILE_IN_STATE_DTYPE,
    (_SHIPPED_STEP_CALL,
     ("        u, k, decay, o = old_state_sums(S.to(tl.float32), q, k, v, g, beta, scale, USE_L2NORM, L2_EPS)\n"
      "        again = tl.load(state_ptrs, mask=state_mask, other=0.0, volatile=True).to(tl.float32)\n"
      "        S = (again * decay + u[:, None] * k[None, :]).to(S.dtype)\n")),
    ("@triton.jit\ndef _decode_kernel(", _IMPORT_SUMS + "@triton.jit\ndef _decode_kernel("),
]


# The tile's two halves of value rows loaded at once, then worked one after the other: while the
# first half's sums and update run, the second half's bytes are still on their way, so a program is
# not idle on the memory system through its arithmetic (ncu at B=512 bf16 vk, NOTES.md, thirteenth
# session). The barrier keeps the compiler from interleaving the halves (which would widen both at
# once). One token only (T = 1).
_SHIPPED_TILE_TAIL_START = "    state_ptrs = state_ptr + tl.multiple_of(slot * s_slot + head_offset, STATE_ALIGN) + tile\n"
_SHIPPED_TILE_TAIL_END = 'cache_modifier=".cs")\n'
_ROW_HALVES_TAIL = """    HALF: tl.constexpr = BV // 2
    base = state_ptr + tl.multiple_of(slot * s_slot + head_offset, STATE_ALIGN)
    offs_a = v_block * BV + tl.arange(0, HALF)
    offs_b = offs_a + HALF
    if STATE_VK:
        tile_a = offs_a[:, None] * K + offs_k[None, :]
        tile_b = offs_b[:, None] * K + offs_k[None, :]
    else:
        tile_a = offs_k[None, :] * V + offs_a[:, None]
        tile_b = offs_k[None, :] * V + offs_b[:, None]
    mask_a = ((offs_a < V)[:, None] & mask_k[None, :]) & valid
    mask_b = ((offs_b < V)[:, None] & mask_k[None, :]) & valid
    S_a = tl.load(base + tile_a, mask=mask_a, other=0.0)
    S_b = tl.load(base + tile_b, mask=mask_b, other=0.0)

    neg_exp_A, dt_bias = head_gate_params(A_log_ptr, dt_bias_ptr, hv, s_A, s_dt, FUSED_GATING)
    q = tl.load(q_ptr + row * s_qb + h * s_qh + offs_k * s_qk, mask=mask_k, other=0.0).to(tl.float32)
    k = tl.load(k_ptr + row * s_kb + h * s_kh + offs_k * s_kk, mask=mask_k, other=0.0).to(tl.float32)
    gate_a = tl.load(gate_a_ptr + row * s_ab + hv * s_ah).to(tl.float32)
    gate_b = tl.load(gate_b_ptr + row * s_bb + hv * s_bh).to(tl.float32)
    g, beta = decode_gates(gate_a, gate_b, neg_exp_A, dt_bias, softplus_beta, softplus_threshold, FUSED_GATING)
    for half in tl.static_range(2):
        if half == 0:
            S, offs_h, tile_h, mask_h = S_a, offs_a, tile_a, mask_a
        else:
            tl.debug_barrier()
            S, offs_h, tile_h, mask_h = S_b, offs_b, tile_b, mask_b
        v = tl.load(v_ptr + row * s_vb + hv * s_vh + offs_h * s_vv, mask=offs_h < V, other=0.0).to(tl.float32)
        S, o = delta_rule_step_from_old_state(S.to(tl.float32), q, k, v, g, beta, scale, USE_L2NORM, L2_EPS)
        o = tl.where(valid, o, 0.0)
        tl.store(o_ptr + row * s_ob + hv * s_oh + offs_h * s_ov, o.to(o_ptr.dtype.element_ty), mask=offs_h < V)
        tl.store(base + tile_h, S.to(state_ptr.dtype.element_ty), mask=mask_h, cache_modifier=".cs")
"""


def _shipped_tile_tail() -> str:
    """The per-tile kernel's source from its state pointers to its state store."""
    source = Path(shipped.__file__).read_text()
    start = source.index(_SHIPPED_TILE_TAIL_START)
    return source[start:source.index(_SHIPPED_TILE_TAIL_END, start) + len(_SHIPPED_TILE_TAIL_END)]


# (its tail loads the token's operands itself, so the launcher's operands-first order, which
# would load them a second time before the slot, stays off)
VARIANTS["row_halves"] = [(_shipped_tile_tail(), _ROW_HALVES_TAIL), _OPERANDS_FIRST_OFF]


# A persistent per-tile kernel: P programs per SM, each working tiles pid, pid + grid, ... in grid
# order (so in slot order where the rows are sorted), and asking for its next tile's state before
# this tile's arithmetic (``ahead``), so that it keeps bytes in flight through the sums and the
# update. The streams that beat the bf16 decode by 4-6 points have nothing between a program's load
# and its store; a decode program has its arithmetic there (ncu at B=512, NOTES.md, thirteenth
# session). ``ahead=False`` is the control: the same persistent loop, each tile loaded at the top of
# its own iteration. Untimed when written (fourteenth session, no device time left).
_PLACE_HELPERS = """@triton.jit
def _tile_place(tile, num_tiles, indices_ptr, rows_ptr, num_slots, s_slot, s_head, NV: tl.constexpr,
                HV: tl.constexpr, BV: tl.constexpr, HAS_INDICES: tl.constexpr, SORTED_ROWS: tl.constexpr):
    live = tile < num_tiles
    row_head = tl.where(live, tile, 0) // NV
    rank = (row_head // HV).to(tl.int64)
    hv = row_head % HV
ROW_AND_SLOT
    in_batch = in_batch & live
    valid = valid & live
    offs_v = (tl.where(live, tile, 0) % NV) * BV + tl.arange(0, BV)
    return row, hv, offs_v, valid, in_batch, slot * s_slot + hv.to(tl.int64) * s_head


@triton.jit
def _tile_at(offs_v, offs_k, mask_k, valid, K: tl.constexpr, V: tl.constexpr, STATE_VK: tl.constexpr):
    if STATE_VK:
        tile = offs_v[:, None] * K + offs_k[None, :]
    else:
        tile = offs_k[None, :] * V + offs_v[:, None]
    return tile, ((offs_v < V)[:, None] & mask_k[None, :]) & valid


"""
_PERSISTENT_BODY = """    NV: tl.constexpr = (V + BV - 1) // BV
    offs_k = tl.arange(0, BK)
    mask_k = offs_k < K
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    step = tl.num_programs(0)
    first = tl.program_id(0)
    row, hv, offs_v, valid, in_batch, base = _tile_place(first, num_tiles, indices_ptr, rows_ptr, num_slots, s_slot,
                                                         s_head, NV, HV, BV, HAS_INDICES, SORTED_ROWS)
    tile_offs, state_mask = _tile_at(offs_v, offs_k, mask_k, valid, K, V, STATE_VK)
FIRST_LOAD
    for tile in range(first, num_tiles, step):
        n_row, n_hv, n_offs_v, n_valid, n_in_batch, n_base = _tile_place(
            tile + step, num_tiles, indices_ptr, rows_ptr, num_slots, s_slot, s_head, NV, HV, BV, HAS_INDICES,
            SORTED_ROWS)
        n_tile_offs, n_state_mask = _tile_at(n_offs_v, offs_k, mask_k, n_valid, K, V, STATE_VK)
LOAD_NEXT
        h = hv // GROUP
        mask_v = offs_v < V
        S = S_raw.to(tl.float32)
        neg_exp_A, dt_bias = head_gate_params(A_log_ptr, dt_bias_ptr, hv, s_A, s_dt, FUSED_GATING)
TOKEN_LOOP
        tl.store(state_ptr + base + tile_offs, S.to(state_ptr.dtype.element_ty), mask=state_mask, cache_modifier=".cs")
        row, hv, offs_v, valid, in_batch, base = n_row, n_hv, n_offs_v, n_valid, n_in_batch, n_base
        tile_offs, state_mask = n_tile_offs, n_state_mask
"""
_LOAD_NEXT_AHEAD = ("        # the next tile's state is asked for before this tile's arithmetic\n"
                    "        n_S_raw = tl.load(state_ptr + n_base + n_tile_offs, mask=n_state_mask, other=0.0)\n")
_LOAD_AT_TOP = ("        S_raw = tl.load(state_ptr + base + tile_offs, mask=state_mask, other=0.0)\n"
                "        n_S_raw = S_raw\n")


def _persistent(programs_per_sm: int, ahead: bool) -> list[tuple[str, str]]:
    """The patches of the persistent per-tile kernel (above): its body (with the shipped kernel's
    token loop), ``num_tiles`` as an argument, and a grid of ``programs_per_sm`` programs per SM (one
    SM's worth in the interpreter)."""
    source = Path(shipped.__file__).read_text()
    start = source.index("    NV: tl.constexpr = (V + BV - 1) // BV\n    pid = tl.program_id(0)\n")
    end = source.index(_SHIPPED_TILE_TAIL_END, start) + len(_SHIPPED_TILE_TAIL_END)
    first_load = ("    S_raw = tl.load(state_ptr + base + tile_offs, mask=state_mask, other=0.0)\n" if ahead
                  else "    S_raw = tl.zeros([BV, BK], state_ptr.dtype.element_ty)\n")
    # the shipped kernel's row and slot of a place in the grid, for any tile of a persistent program
    place_start = source.index("    if SORTED_ROWS:\n        row = tl.load(rows_ptr + rank)", start)
    place_end = source.index("        valid = row >= 0\n", place_start) + len("        valid = row >= 0\n")
    # (without the early tile's volatile slot read, which a persistent program does not take)
    helpers = _PLACE_HELPERS.replace("ROW_AND_SLOT\n", source[place_start:place_end].replace(
        "tl.num_programs(0) // (NV * HV)", "num_tiles // (NV * HV)").replace(", volatile=EARLY_TILE", "").replace(
        "        read_slot = slot\n", ""))
    loop_start = source.index("    for t in range(T):\n", start)
    loop_end = source.index("mask=mask_v & in_batch)\n", loop_start) + len("mask=mask_v & in_batch)\n")
    body = (_PERSISTENT_BODY.replace("FIRST_LOAD\n", first_load)
            .replace("LOAD_NEXT\n", _LOAD_NEXT_AHEAD if ahead else _LOAD_AT_TOP)
            .replace("TOKEN_LOOP\n", textwrap.indent(source[loop_start:loop_end], "    ")))
    body += "        S_raw = n_S_raw\n"
    return [
        (source[start:end], body),
        ("@triton.jit\ndef _decode_kernel(", helpers + "@triton.jit\ndef _decode_kernel("),
        ("    T, num_slots, scale, softplus_beta, softplus_threshold,\n",
         "    T, num_tiles, num_slots, scale, softplus_beta, softplus_threshold,\n"),
        ("    grid = (B * HV * triton.cdiv(V, config.BV),)\n",
         ("    num_tiles = B * HV * triton.cdiv(V, config.BV)\n"
          f"    programs = {programs_per_sm} * (sm_count(q.device.index or 0) if q.is_cuda else 1)\n"
          "    grid = (min(num_tiles, programs),)\n")),
        ("        T, state.shape[0], float(scale),", "        T, num_tiles, state.shape[0], float(scale),"),
        ("    persistent_config,\n", "    persistent_config,\n    sm_count,\n"),
        _OPERANDS_FIRST_OFF,
    ]


for _programs in (8, 12, 16):
    VARIANTS[f"next_tile_ahead_p{_programs}"] = _persistent(_programs, ahead=True)
    VARIANTS[f"persistent_p{_programs}"] = _persistent(_programs, ahead=False)


# Experiments on the persistent TMA kernel (gdn_ops/triton_decode_tma.py); timed by tune_tma.
TMA_VARIANTS: dict[str, list[tuple[str, str]]] = {
    # The first shipped order (until 2026-11-28): the next kernel may launch right after the wait.
    "tma_trigger_at_start": [
        ("        tl.extra.cuda.gdc_wait()\n", "        tl.extra.cuda.gdc_wait()\n        tl.extra.cuda.gdc_launch_dependents()\n"),
        ("    if PDL:\n        tl.extra.cuda.gdc_launch_dependents()\n", ""),
    ],
    # The q and k norms in one two-operand reduction (one cross-warp round trip instead of two).
    "tma_norms_together": [
        ("from gdn_ops.triton_step import delta_rule_step\n", "from gdn_ops.triton_step import _add2, delta_rule_step\n"),
        ("        S, o = delta_rule_step(S, q, k, v, g, beta, scale, USE_L2NORM, L2_EPS)\n",
         ("        if USE_L2NORM:\n"
         "            qq, kk = tl.reduce((q * q, k * k), 0, _add2)\n"
         "            q = q / tl.sqrt(qq + L2_EPS)\n"
         "            k = k / tl.sqrt(kk + L2_EPS)\n"
         "        S, o = delta_rule_step(S, q, k, v, g, beta, scale, False, L2_EPS)\n")),
    ],
    # Registers capped at 96 (128 bytes of spills per thread in the sm_90 compile) so that 5 programs
    # of 4 warps fit on an SM instead of 4: more warps to hide the per-tile latency chains.
    "tma_maxnreg96": [
        ("        num_warps=config.num_warps,", "        num_warps=config.num_warps, maxnreg=96,"),
    ],
    # The persistent kernel on a vk pool ([slots, HV, V, K]): [BV, K] boxes, K contiguous. It lost
    # to the per-tile kernel before the gates came a tile ahead (tma_probe_bf16.json).
    "tma_vk": [
        ("        S = tl.trans(state_desc.load([slot, hv, 0, v0]).reshape(K, BV)).to(tl.float32)\n",
         "        S = state_desc.load([slot, hv, v0, 0]).reshape(BV, K).to(tl.float32)\n"),
        ("        tile_offs = offs_k[None, :] * V + (v0 + offs_bv)[:, None]\n",
         "        tile_offs = offs_k[None, :] + (v0 + offs_bv)[:, None] * K\n"),
        ("list(state.stride()), [1, 1, K, BV])", "list(state.stride()), [1, 1, BV, K])"),
    ],
    # Both K products of the old state in one two-operand reduction, and the q/k norms and k.q in
    # one three-operand reduction: with 4 warps split along K each reduction crosses warps through
    # shared memory and a barrier, so 2 round trips per tile instead of 4 (o = d*(S q) + u*(k.q)).
    # The per-tile kernel's step since the eleventh session (triton_step.delta_rule_step_from_old_state).
    "tma_one_pass": [
        ("from gdn_ops.triton_step import delta_rule_step\n", "from gdn_ops.triton_step import delta_rule_step_from_old_state\n"),
        ("        S, o = delta_rule_step(S, q, k, v, g, beta, scale, USE_L2NORM, L2_EPS)\n",
         "        S, o = delta_rule_step_from_old_state(S, q, k, v, g, beta, scale, USE_L2NORM, L2_EPS)\n"),
    ],
}

_GLUON_NEXT_INPUTS = (
    "        next_inputs = _tile_inputs(\n"
    "            tile + step, (tile + step) // NV // HV, num_tiles, indices_ptr, num_slots, v_ptr, gate_a_ptr, gate_b_ptr,\n"
    "            A_log_ptr, dt_bias_ptr, s_vb, s_vh, s_vv, s_ab, s_ah, s_bb, s_bh, s_A, s_dt, NV, HV, BV, C, HAS_INDICES,\n"
    "            FUSED_GATING, cols_layout)\n"
)

# the step's arithmetic on the tile, replaced by an o that needs no tile
_GLUON_STEP_ARITHMETIC = (
    ("        S = S * gl.exp(g)\n"
     "        u = beta * (v - gl.sum(S * k[:, None, None], axis=0))\n"
     "        S = S + k[:, None, None] * u[None, :, :]\n"
     "        o = gl.sum(S * q[:, None, None], axis=0)\n"),
    "        o = v\n",
)
GLUON_VARIANTS: dict[str, list[tuple[str, str]]] = {
    # The next tile's small inputs (slot, v, gates) loaded at the end of the current tile, as in the
    # first version, instead of at its start: their latency is then exposed at the next tile's start.
    "gluon_inputs_late": [
        ("        # The next tile's small inputs first, so that their latency hides behind this tile's work.\n"
         + _GLUON_NEXT_INPUTS, ""),
        ("        slot, v_in, gate_a_in, gate_b_in, A_log_in, dt_bias_in = next_inputs\n",
         _GLUON_NEXT_INPUTS + "        slot, v_in, gate_a_in, gate_b_in, A_log_in, dt_bias_in = next_inputs\n"),
    ],
    # A ceiling, not a decode step: the same pipeline (TMA loads, the tile through registers, TMA
    # store) with the step's arithmetic taken out, so the tile is written back unchanged.
    "gluon_copy_only": [_GLUON_STEP_ARITHMETIC],
    # A ceiling below that one: no register round trip, each tile leaves by a TMA store straight
    # from the buffer it arrived in (before the buffer is refilled), the o output as above.
    "gluon_dma_only": [
        _GLUON_STEP_ARITHMETIC,
        ("        mbarrier.wait(bars.index(buf), (i // NUM_BUF) & 1)\n",
         ("        mbarrier.wait(bars.index(buf), (i // NUM_BUF) & 1)\n"
          "        tma.async_copy_shared_to_global(state_desc, [slot, (tile // NV) % HV, 0, (tile % NV) * NC, 0],\n"
          "                                        tile_smem.index(buf))\n")),
        (("        out_smem.reshape([K, NC, C]).store(S.to(state_desc.dtype))\n"
          "        fence_async_shared()\n"
          "        _cta_barrier()\n"
          "        # a padded row's slot is one past the pool: TMA drops out-of-bounds writes\n"
          "        tma.async_copy_shared_to_global(state_desc, [slot, hv, 0, (tile % NV) * NC, 0], out_smem)\n"), ""),
    ],
    # The previous view of a tile: whole key rows of BV columns. A 128-column bf16 tile then moves
    # as two TMA copies of 128-byte half rows (the swizzle's width), issued by two lanes.
    "gluon_half_rows": [("    return min(BV, 128 // itemsize)\n", "    return BV\n")],
}

# The Gluon tile kernels trigger the next launch right after their PDL wait (folded in the
# eighteenth session); the order they had before, a trigger at the end of each program, starts the
# next launch only once every program of this one has finished.
_GLUON_WAIT = "        _gdc_wait()\n        _gdc_launch_dependents()\n"
_END_TRIGGER = "    if PDL:\n        _gdc_launch_dependents()\n"


def _gluon_trigger_at_end(invalidate: str) -> list[tuple[str, str]]:
    """The tile kernel triggering after ``invalidate``, its last line, instead of after its wait."""
    return [(_GLUON_WAIT, "        _gdc_wait()\n"), (invalidate, invalidate + _END_TRIGGER)]


_TILE_WAIT = ("    if PDL:\n        # nothing is read before the previous kernel has finished; the next launch may start then,\n"
              "        # its programs taking the SM slots this launch's last wave frees (NOTES.md, eighteenth session)\n"
              + _GLUON_WAIT)
# the state's copy on its own barrier, before q, k and v's
_VK_TILE_COPIES = """    mbarrier.expect(state_bar, state_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(state_desc, [slot, hv, v0, 0, 0], state_bar, tile_smem)
"""
_VK_STATE_WAIT = "    mbarrier.wait(state_bar, state_phase)\n"
# the wait and trigger where the early-state variants put them, after the state's copies
_EARLY_WAIT = "    if PDL:\n" + _GLUON_WAIT
# the kernel's row sums and row update, as written in its step loop, for variants that change them
_VK_SUM_K = "gl.sum(gl.sum(S * k[None, :, :], axis=2), axis=1)"
_VK_SUM_Q = "gl.sum(gl.sum(S * q[None, :, :], axis=2), axis=1)"
_VK_ROW_UPDATE = "(S * decay + u[:, None, None] * k[None, :, :])"
VK_TILE_VARIANTS: dict[str, list[tuple[str, str]]] = {
    "vk_tile_trigger_at_end": _gluon_trigger_at_end("    mbarrier.invalidate(bar)\n"),
    # The slot (and row) and the tile's state read before the wait, q, k and v after it (under the
    # promise that early_state states). H200 (results/h200/tune_trigger_bf16_vk.json): level to
    # 0.4 points slower.
    "vk_tile_early_state": [
        (_TILE_WAIT, ""),
        (_VK_TILE_COPIES, _VK_TILE_COPIES + _EARLY_WAIT),
    ],
    # A ceiling, not a decode step: the same loads, steps and stores, with the rows stored
    # unchanged (the sums and o are still computed, so the loads are not dead). In the kernel's
    # first version, whose rows left by one TMA store, it timed level with the decode
    # (results/h200/tune_vk_tile_variants_h200.json).
    "vk_tile_rows_unchanged": [
        ("        gl.store(state_rows + (i * ROWS) * s_sv, (S * decay + u[:, None, None] * k[None, :, :]).to(state_desc.dtype),\n",
         "        gl.store(state_rows + (i * ROWS) * s_sv, S.to(state_desc.dtype),\n"),
    ],
    # Each lane holds VEC keys of every chunk of its row (the row's NK chunks in its registers)
    # instead of one chunk: C // VEC lanes a row instead of K // VEC, so each of S k and S q takes
    # one shuffle level less for twice the rows a warp instruction; a store still covers whole
    # 128-byte chunks (C // VEC lanes of 16 bytes side by side), where 32 bytes a lane
    # (`t128:4:16:6:16`) split every store into half sectors and lost 14-20 points (NOTES.md,
    # nineteenth session). H200: 1.4-1.8 points slower than the shipped bf16 tile
    # (results/h200/tune_vk_chunks_per_lane_bf16.json) and 0.8-1.6 slower on fp32's one-warp tile
    # (tune_vk_one_warp_fp32.json), with the same store sectors and instruction count; not explained.
    "vk_tile_chunks_per_lane": [
        (("    rows_layout: gl.constexpr = gl.BlockedLayout([1, 1, VEC], [32 // (NK * LANES_C), NK, LANES_C], [WARPS, 1, 1],\n"
          "                                                 [2, 1, 0])\n"),
         ("    rows_layout: gl.constexpr = gl.BlockedLayout([1, NK, VEC], [32 // LANES_C, 1, LANES_C], [WARPS, 1, 1],\n"
          "                                                 [2, 1, 0])\n")),
        # and every sum over a row takes its chunks first, inside the lane, then the lanes
        ("gl.sum(gl.sum(q * q, axis=1), axis=0)", "gl.sum(gl.sum(q * q, axis=0), axis=0)"),
        ("gl.sum(gl.sum(k * k, axis=1), axis=0)", "gl.sum(gl.sum(k * k, axis=0), axis=0)"),
        ("gl.sum(gl.sum(k * q, axis=1), axis=0)", "gl.sum(gl.sum(k * q, axis=0), axis=0)"),
        # (the same rows by lane as the values' layout, which slices the keys first)
        (_VK_SUM_K, "gl.convert_layout(gl.sum(gl.sum(S * k[None, :, :], axis=1), axis=1), values_layout)"),
        (_VK_SUM_Q, "gl.convert_layout(gl.sum(gl.sum(S * q[None, :, :], axis=1), axis=1), values_layout)"),
    ],
}
# The tile's state through registers: each lane loads its 16-byte pieces of whole rows by plain
# vector loads, issued before the TMA copies of q, k and v (which keep their barrier), and no shared
# memory for the state. Four warps on a 4 KB fp32 tile (each warp two whole rows) are the geometry
# of the in-place stream that read 91.5% at fp32 vk B=32 in slot order, against 89.3 for one warp
# (results/h200/probe_head_fp32_76821c7.json); the same four warps with the tile by TMA lost
# (`t8:4:8:*`, 81.7-85.2, tune_vk_fp32_warps_180292e.json). One step a tile (rows == BV). H200,
# given the order, fp32 B=32: four warps 87.3-87.9% against 84.5-85.1 by TMA, still under the
# one-warp tile's 88.7 (which loses 0.2-0.7 this way); eight warps 55 (tune_vk_regloads_fp32_e17b18a.json,
# tune_vk_plain_loads_fp32_7cda0fe.json, tune_vk_no_gates_fp32_03e7307.json). Nsight Compute: the
# many-warp programs are bound by instruction issue, each warp repeating the program's fixed work
# (NOTES.md, twenty-sixth session).
VK_TILE_VARIANTS["vk_tile_register_loads"] = [
    ("    tile_smem = gl.allocate_shared_memory(state_desc.dtype, [1, 1, BV, NK, C], state_desc.layout)\n", ""),
    (_VK_TILE_COPIES,
     ("    gl.static_assert(STEPS == 1, \"one step a tile: rows == BV\")\n"
      "    keys = (gl.arange(0, NK, layout=gl.SliceLayout(1, keys_layout))[:, None] * C\n"
      "            + gl.arange(0, C, layout=gl.SliceLayout(0, keys_layout))[None, :])\n"
      "    tile_rows = gl.arange(0, ROWS, layout=values_layout)\n"
      "    tile_starts = gl.multiple_of(slot.to(gl.int64) * s_sb + hv * s_sh + (v0 + tile_rows).to(gl.int64) * s_sv,\n"
      "                                 128 // state_desc.dtype.primitive_bitwidth)\n"
      "    S_in = gl.load(state_ptr + tile_starts[:, None, None] + keys[None, :, :], mask=slot < num_slots, other=0.0)\n")),
    (_VK_STATE_WAIT + "    rows_smem = tile_smem.reshape([BV, NK, C])\n", ""),
    ("        S = rows_smem.slice(i * ROWS, ROWS).load(rows_layout).to(gl.float32)\n",
     "        S = S_in.to(gl.float32)\n"),
]
# (vk_tile_register_loads_unchanged, a ceiling with the rows stored unchanged, read 1.7-2.1 points
# under the decode at four warps; vk_tile_plain_loads, q, k and v by plain loads too, lost 6.4-7.1
# points at four warps and ran within 0.2 of register loads at one (H200, fp32 B=32-128, given the
# order, tune_vk_plain_loads_fp32_7cda0fe.json). Retired after the measurement; they patch the
# kernel at commit 73e01f4.)
# A ceiling: `vk_tile_register_loads` without its four gate loads a program (a, b, A_log, dt_bias;
# each warp loads each one for itself), the gates made from the head's index instead. Whether a
# four-warp program's small loads, four times a one-warp program's, are what it loses to the
# four-warp stream. H200, fp32 B=32 given the order: worth 0.3 points at four warps and 0.5 at one
# (tune_vk_no_gates_fp32_03e7307.json).
VK_TILE_VARIANTS["vk_tile_register_loads_no_gates"] = VK_TILE_VARIANTS["vk_tile_register_loads"] + [
    ("    gate_a = gl.load(gate_a_ptr + row.to(gl.int64) * s_ab + hv * s_ah).to(gl.float32)\n",
     "    gate_a = (hv % 7).to(gl.float32) * 0.25\n"),
    ("    gate_b = gl.load(gate_b_ptr + row.to(gl.int64) * s_bb + hv * s_bh).to(gl.float32)\n",
     "    gate_b = (hv % 5).to(gl.float32) * 0.5 - 1.0\n"),
    ("    neg_exp_A, dt_bias = head_gate_params(A_log_ptr, dt_bias_ptr, hv, s_A, s_dt, FUSED_GATING)\n",
     "    neg_exp_A = -(hv % 3).to(gl.float32) * 0.5 - 0.25\n    dt_bias = (hv % 4).to(gl.float32) * 0.125\n"),
]
# A ceiling further down: also without the norms of q and k (two of a program's three sums over the
# keys, each a five-level shuffle tree, and a square root and a division each, done by every warp).
# Nsight Compute put the four- and eight-warp programs at 0.87-0.90 instructions issued a cycle per
# scheduler, against 0.40 for one warp: each warp repeats the program's fixed work. H200, fp32 given
# the order, B = 32 / 64 / 128: four warps 89.23 / 91.72 / 94.26, one warp 88.93 / 91.74 / 95.21,
# eight warps 65.4-67.6 (tune_vk_state_barrier_fp32_6bfac9a.json).
VK_TILE_VARIANTS["vk_tile_register_loads_light"] = VK_TILE_VARIANTS["vk_tile_register_loads_no_gates"] + [
    (("        q = q * (scale / gl.sqrt(gl.sum(gl.sum(q * q, axis=1), axis=0) + L2_EPS))\n"
      "        k = k / gl.sqrt(gl.sum(gl.sum(k * k, axis=1), axis=0) + L2_EPS)\n"),
     "        q = q * scale\n"),
]
# The lowest ceiling of the family: `vk_tile_register_loads_light` without any q, k or v copy, any
# barrier or the gates' softplus. Each warp makes its q, k, v, decay and beta from its lane's key
# and row indices; what is left is the in-place stream (the slot, the rows by plain 16-byte loads and
# stores) with the rows' own arithmetic (S k, S q, k . q, the update, o). Whether a program of four
# or eight warps whose fixed work were done once could reach the four- and eight-warp streams
# (91.3-92.0% at fp32 B=32 in slot order, against 88.9-89.5 for one and two warps). H200, fp32 B=32
# given the order: four warps 88.3-89.0, eight 84.0-84.4, two 89.9-90.0, one 87.6-87.8, so no
# program of four or eight warps reaches 90 there (tune_vk_bare_fp32_*_85cc4f7.json; NOTES.md,
# thirty-fifth session).
VK_TILE_VARIANTS["vk_tile_register_loads_bare"] = VK_TILE_VARIANTS["vk_tile_register_loads_light"] + [
    (("    mbarrier.expect(bar, nbytes)\n"
      "    tma.async_copy_global_to_shared(q_desc, [row, hv // GROUP, 0, 0], bar, q_smem)\n"
      "    tma.async_copy_global_to_shared(k_desc, [row, hv // GROUP, 0, 0], bar, k_smem)\n"
      "    tma.async_copy_global_to_shared(v_desc, [row, hv, v0], bar, v_smem)\n"), ""),
    ("    g, beta = decode_gates(gate_a, gate_b, neg_exp_A, dt_bias, softplus_beta, softplus_threshold, FUSED_GATING)\n",
     "    g = neg_exp_A * (gate_a + dt_bias)\n    beta = gate_b * 0.125 + 0.5\n"),
    ("    mbarrier.wait(bar, 0)\n", ""),
    ("    q = q_smem.reshape([NK, C]).load(keys_layout).to(gl.float32)\n",
     "    q = keys.to(gl.float32) * 0.0005 + 0.01\n"),
    ("    k = k_smem.reshape([NK, C]).load(keys_layout).to(gl.float32)\n",
     "    k = keys.to(gl.float32) * -0.0004 + 0.03\n"),
    ("    values = v_smem.reshape([BV])\n", ""),
    ("values.slice(i * ROWS, ROWS).load(values_layout).to(gl.float32)", "(v0 + step_rows).to(gl.float32) * 0.01"),
]

# The in-place stream inside the tile's own program: `vk_tile_register_loads_bare` without the rows'
# sums (S k, S q) and with the rows stored as loaded, so what is left is the slot, the PDL wait, the
# rows by plain 16-byte loads and their stores. Against `_bare` it prices the rows' arithmetic. H200,
# given the order: one warp level with `_bare` or 0.5 under it (bf16 B=128 94.4-94.5, TP=4 B=512
# 94.8-94.9, TP=4 fp32 B=256 94.5), two warps 95.7-95.9 at bf16, where the decode on two warps reads
# 91-94 (results/h200/sums_*_d1a8ae1.json, warps_stream_*_1aa65a6.json, ladder2_*_f8869f2.json;
# NOTES.md, thirty-ninth session).
VK_TILE_VARIANTS["vk_tile_register_loads_stream"] = VK_TILE_VARIANTS["vk_tile_register_loads_bare"] + [
    (_VK_SUM_K, "gl.zeros([ROWS], gl.float32, values_layout)"),
    (_VK_SUM_Q, "gl.zeros([ROWS], gl.float32, values_layout)"),
    (_VK_ROW_UPDATE + ".to(state_desc.dtype)", "S_in"),
]

# The kernel before the fortieth session: the state on the program's one barrier with q, k and v, so
# that the norms of q and k and k . q wait for the state too. The state on a barrier of its own
# (vk_tile_state_barrier until then) read +0.04..+0.51 on one-warp bf16 tiles at B=256-512 in
# fifteen readings and fp32 B=32-128 -0.70..+0.38 (tune_vk_state_barrier_*_6bfac9a.json; NOTES.md,
# twenty-sixth session), +0.0..+0.2 in six more (normf_*_c99c1f9.json), and +1.9..+2.1 on two-warp
# bf16 tiles (thirty-ninth session), which with 18 programs an SM then led the one-warp tile
# (w2_*_1c2b670.json, g_*_76d4a1f.json; fortieth session); folded there.
VK_TILE_VARIANTS["vk_tile_one_barrier"] = [
    (_VK_TILE_COPIES + "    nbytes: gl.constexpr = q_desc.block_type.nbytes",
     ("    nbytes: gl.constexpr = state_desc.block_type.nbytes + q_desc.block_type.nbytes")),
    ("    mbarrier.expect(bar, nbytes)\n",
     "    mbarrier.expect(bar, nbytes)\n    tma.async_copy_global_to_shared(state_desc, [slot, hv, v0, 0, 0], bar, tile_smem)\n"),
    (_VK_STATE_WAIT, ""),
]

# q and k enter the rows' sums as loaded, and their norms (and the scale) are factors on each row's
# two sums and on u, as the kv tile takes them: the norms' shuffle trees, square roots and
# divisions leave the path from the state's arrival to the rows' stores. Against a two-warp stream
# of the same 4 KB pieces (95.7% given the order at bf16 B=128), the norms cost a two-warp program
# 1.6 points and its rows' arithmetic 2.0, a one-warp program next to nothing. Alone and with the
# state on its own barrier. H200, bf16 vk given the order: on one warp -0.2..+0.1 against the
# shipped tile at B=128, 256 and TP=4 B=512; on two warps -0.3..+0.6 against the same spec, and
# with the state's barrier it undoes that barrier's +1.9..+2.1 (results/h200/normf_*_c99c1f9.json;
# NOTES.md, thirty-ninth session). (vk_tile_norm_factors_state_barrier, the same with the state on
# its own barrier, is now this variant on the kernel; it measured with the norm factors above.)
_VK_NORM_FACTORS = [
    (("        q = q * (scale / gl.sqrt(gl.sum(gl.sum(q * q, axis=1), axis=0) + L2_EPS))\n"
      "        k = k / gl.sqrt(gl.sum(gl.sum(k * k, axis=1), axis=0) + L2_EPS)\n"
      "    else:\n"
      "        q = q * scale\n"
      "    kq = gl.sum(gl.sum(k * q, axis=1), axis=0)\n"),
     ("        q_factor = scale / gl.sqrt(gl.sum(gl.sum(q * q, axis=1), axis=0) + L2_EPS)\n"
      "        k_factor = 1.0 / gl.sqrt(gl.sum(gl.sum(k * k, axis=1), axis=0) + L2_EPS)\n"
      "    else:\n"
      "        q_factor = scale\n"
      "        k_factor = 1.0\n"
      "    kq = gl.sum(gl.sum(k * q, axis=1), axis=0) * (k_factor * q_factor)\n")),
    (_VK_SUM_K, _VK_SUM_K + " * k_factor"),
    (_VK_SUM_Q, _VK_SUM_Q + " * q_factor"),
    (_VK_ROW_UPDATE, "(S * decay + (u * k_factor)[:, None, None] * k[None, :, :])"),
]
VK_TILE_VARIANTS["vk_tile_norm_factors"] = _VK_NORM_FACTORS
# (vk_tile_chunks_per_lane_state_barrier, `vk_tile_chunks_per_lane` with the state on its own
# barrier, a shuffle tree of 3 levels instead of 4 where a two-warp program's stores wait on it:
# H200, bf16 vk B=128 and TP=4 B=512 given the order, two warps, 1.1-1.4 points under the state's
# barrier alone (results/h200/cpl_*_831cefa.json; NOTES.md, thirty-ninth session). With the state's
# barrier in the kernel it is `vk_tile_chunks_per_lane` now.)


def _vk_tile_across_rows(group: str) -> list[tuple[str, str]]:
    """The vk tile's programs taken across the batch rows, ``group`` (a constexpr expression of the
    kernel) at a time in each row: the same places of every row before the next ones. An order of
    the grid that needs no sort of the slots; rows in slot order (``SORTED_ROWS``) are crossed in
    that order."""
    return [("    tile = gl.program_id(0)\n",
             ("    tile = gl.program_id(0)\n"
              f"    ACROSS: gl.constexpr = {group}\n"
              "    rows = num_tiles // (NV * HV)\n"
              "    tile = (tile // ACROSS % rows) * (NV * HV) + tile // ACROSS // rows * ACROSS + tile % ACROSS\n"))]


# Programs across the rows, one tile (across_rows) or one head's tiles (across_heads) a row at a
# time: whether the order that sorting the slots buys (1.3-4.1 points at B*HV >= 4096, the rank
# kernel costing ~1.8 of them unless the caller gives the order) can be had from the grid alone.
# It cannot: on the H200 both ran 1.6-3.1 points under the plain row order at bf16 vk B=256-512 and
# fp32 vk B=128, and 90.0-91.1% on sorted rows given the order, where the shipped tile read
# 94.7-97.0 (results/h200/tune_across_*_2d7e686.json; the bare 4 KB streams the same,
# probe_across_*_vk_2d7e686.json).
VK_TILE_VARIANTS["vk_tile_across_rows"] = _vk_tile_across_rows("1")
VK_TILE_VARIANTS["vk_tile_across_heads"] = _vk_tile_across_rows("NV")


# The updated rows stored with a cache hint: streaming (`.cs`, which the per-tile Triton kernel's
# state store has carried since the first session) or evict-first in L2, in place of the
# configuration's policy. On the H200 both lost 0.5-2.3 points at fp32 vk B=32-128 and bf16 vk
# B=256-512 (results/h200/tune_vk_store_hint_*_2970fee.json). The third, evict-last
# (vk_tile_store_evict_last, tune_vk_store_evict_last_*_dab202c.json), gained from B*HV 4096 and is
# the kernel's GluonTileConfig.store_eviction (NOTES.md, twenty-seventh session).
_VK_STATE_STORE = (f"        gl.store(state_rows + (i * ROWS) * s_sv, {_VK_ROW_UPDATE}.to(state_desc.dtype),\n"
                   "                 mask=live, eviction_policy=STORE_EVICTION)\n")
VK_TILE_VARIANTS["vk_tile_cs_store"] = [
    (_VK_STATE_STORE, _VK_STATE_STORE.replace("eviction_policy=STORE_EVICTION)", 'cache_modifier=".cs")'))]
VK_TILE_VARIANTS["vk_tile_store_evict_first"] = [
    (_VK_STATE_STORE, _VK_STATE_STORE.replace("eviction_policy=STORE_EVICTION)", 'eviction_policy="evict_first")'))]

# (vk_tile_16_per_sm, vk_tile_10_per_sm: the one-warp fp32 tile held to 16 and 10 programs an SM by
# unused shared memory, lost 0.3-1.3 and 5.3-5.6 points at fp32 B=32-128 given the order on the H200
# (tune_vk_plain_loads_fp32_7cda0fe.json): fewer 4 KB runs open at once on an SM do not pay.
# Retired after the measurement; they patch the kernel at commit 73e01f4.)

# Tiles of fewer than 16 bytes of v (the 2 KB fp32 tile, 4 value rows, bf16 v): v arrives in the
# 16-byte box (8 bf16 values) that holds the tile's values, a box starting on 16 bytes (one that
# does not is an illegal instruction), and the kernel takes its half. The one-warp 2 KB in-place
# stream had led the 4 KB one by 2 points at fp32 B=32 in slot order (probe_b32_fp32_vk.json); the
# tile did not: H200, given the order, 77.4 / 78.0 / 79.4% at B=32 / 64 / 128 against 88.5 / 91.8 /
# 94.8 for the shipped 4 KB tile (results/h200/tune_vk_fp32_2k_22f3416.json), about 0.8 G programs
# a second at every B: a ceiling of programs, not of bandwidth (NOTES.md, twenty-second session).
VK_TILE_VARIANTS["vk_tile_v_box_floor"] = [
    ("    if config.BV > 256 or config.BV * v.element_size() < 16:\n", "    if config.BV > 256:\n"),
    ("tma_descriptor(v3, list(v3.shape), list(v3.stride()), [1, 1, config.BV]),",
     "tma_descriptor(v3, list(v3.shape), list(v3.stride()), [1, 1, max(config.BV, 16 // v.element_size())]),"),
    ("    v_smem = gl.allocate_shared_memory(v_desc.dtype, [1, 1, BV], v_desc.layout)\n",
     ("    V_BOX: gl.constexpr = v_desc.block_type.shape[2]\n"
      "    v_smem = gl.allocate_shared_memory(v_desc.dtype, [1, 1, V_BOX], v_desc.layout)\n")),
    ("    values = v_smem.reshape([BV])\n", "    values = v_smem.reshape([V_BOX])\n"),
    # a TMA box starts on 16 bytes: the box holding the tile's values, and the tile's half of it
    ("    tma.async_copy_global_to_shared(v_desc, [row, hv, v0], bar, v_smem)\n",
     "    tma.async_copy_global_to_shared(v_desc, [row, hv, v0 // V_BOX * V_BOX], bar, v_smem)\n"),
    ("        u = beta * (values.slice(i * ROWS, ROWS).load(values_layout).to(gl.float32) - decay * Sk)\n",
     ("        v_step = values.slice(i * ROWS, ROWS).load(values_layout)\n"
      "        if V_BOX > BV:\n"
      "            v_step = gl.where(v0 % V_BOX == 0, v_step, values.slice(BV + i * ROWS, ROWS).load(values_layout))\n"
      "        u = beta * (v_step.to(gl.float32) - decay * Sk)\n")),
]
# (vk_tile_parts, the vk tile in one TMA copy a step, each on its own barrier, and its timeline
# vk_tile_parts_timeline: worth 1.4-2.5 points to an 8 KB tile (`t16:1:8:23:4`), which still ran
# level with the shipped 4 KB tile at fp32 B=128 and 0.3-0.8 under it at fp32 B=32-256 and bf16
# B=128-256 on the H200, its slots 75% busy for the same span (results/h200/tune_vk_parts*_c07da78.json,
# timeline_parts_fp32_vk_128_c07da78.json.gz; NOTES.md, twenty-fifth session). Retired after the
# measurement; they patch the kernel at commit 567a45c.)
# (vk_reg_store, the rows stored from registers, was folded into the kernel; the TMA-store version
# it replaced is the kernel at commit 3b75ddc.)

# (vk_tile_rank_in_tile: the rows in slot order without the rank kernel, each vk tile program
# ranking the B slots itself after its wait (B x B comparisons, 32 columns a lane at a time) and
# taking the row at its place, the launcher's slot_order handing the slots through. On the H200,
# without the order, against the sorting spec with the rank kernel: fp32 TP=1 B=32 +0.8, +0.7
# points (+0.9, +0.1 over the shipped unsorted default), but B=64 -5.2, -5.4, TP=4 B=128 (B*HV
# 1024) 36.9% of copy against 86.7; bf16 B=32 +0.5, +0.2, B=64 -10.5, -10.8, TP=4 B=128 31.5%
# against 79.0 (results/h200/tune_rank_in_tile_*_7553381.json; NOTES.md, thirty-first session): the
# comparisons grow as B^2 in every one of the B*HV*V/BV programs. Retired after the measurement;
# it patches the kernel at commit 7553381, with tune_tma swapping in the variant's slot_order.)

KV_TILE_VARIANTS: dict[str, list[tuple[str, str]]] = {
    "kv_tile_trigger_at_end": _gluon_trigger_at_end("        mbarrier.invalidate(bars.index(j))\n"),
}
# (kv_tile_early_state, the slot, row and every part of the tile's state read before the PDL wait
# and q, k, v and the gates after it, was 2-18 points slower at the H200 rule's tiles
# (results/h200/tune_trigger_{fp32,bf16}_kv.json, NOTES.md eighteenth session). Retired: its patch
# rewrote _issue_tile's copies inside the kernel; it patches the kernel at commit 1471afe.)
# (kv_reg_store, the vk kernel's register stores in the kv kernel, 1.8-3.9x slower on the H200
# (results/h200/tune_kv_reg_store_h200.json), was retired when the kernel's step moved into a
# helper for the tail split; it patches the kernel at commit fc01092.)

# The kv tile's parts leaving as soon as the second pass has updated them (a fence and a CTA
# barrier per part), so that the stores overlap the rest of the pass, instead of all at the end.
# (The update pass is the shared helper update_rows; these variants put its loop back in the kernel.)
_KV_TILE_UPDATE_CALL = "    update_rows(rows_smem, k_keys, k_factor, decay, u, ROWS, STEPS, rows_layout, keys_layout)\n"
_KV_TILE_UPDATE_LOOP = ("    for i in gl.static_range(STEPS):\n"
                        "        S = rows_smem.slice(i * ROWS, ROWS).load(rows_layout).to(gl.float32)\n"
                        "        k = k_keys.slice(i * ROWS, ROWS).load(keys_layout).to(gl.float32) * k_factor\n")
KV_TILE_VARIANTS["kv_tile_early_stores"] = [
    (_KV_TILE_UPDATE_CALL,
     (_KV_TILE_UPDATE_LOOP +
      "        rows_smem.slice(i * ROWS, ROWS).store((S * decay + k[:, None, None] * u[None, :, :]).to(state_desc.dtype))\n"
      "        if ((i + 1) * ROWS) % PART == 0:\n"
      "            fence_async_shared()\n"
      "            _cta_barrier()\n"
      "            tma.async_copy_shared_to_global(state_desc, [slot, hv, (i + 1) * ROWS - PART, (tile % NV) * NC, 0],\n"
      "                                            tile_smem.slice((i + 1) * ROWS - PART, PART, dim=2))\n")),
    (("    fence_async_shared()\n"
      "    _cta_barrier()\n"
      "    # a padded row's slot is one past the pool: TMA drops out-of-bounds writes\n"
      "    for j in gl.static_range(PARTS):\n"
      "        tma.async_copy_shared_to_global(state_desc, [slot, hv, j * PART, (tile % NV) * NC, 0],\n"
      "                                        tile_smem.slice(j * PART, PART, dim=2))\n"), ""),
]

# Ceilings of the kv tile, not decode steps (twenty-second session): where the bf16 kv tile's time
# goes between its structure (the whole tile read before any of it is written) and its passes over
# shared memory. ``kv_tile_rows_unchanged`` keeps the sums' pass and o but drops the update pass (the
# tile leaves as it arrived); ``kv_tile_copy_only`` drops the sums too, so each program waits for its
# parts and sends them back: the kv tile's data movement alone. H200, given the order, at the
# shipped tiles: both under the decode (bf16 B=512: decode 94.9, rows unchanged 93.8, copy only
# 93.4; fp32 B=128 93.7 / 92.9 / 92.9; results/h200/tune_kv_ceilings_*_e0d64f9.json).
KV_TILE_VARIANTS["kv_tile_rows_unchanged"] = [(_KV_TILE_UPDATE_CALL, "")]
KV_TILE_VARIANTS["kv_tile_copy_only"] = [
    (_KV_TILE_UPDATE_CALL, ""),
    ("    Sk = gl.sum(sk, axis=0) * k_factor\n    Sq = gl.sum(sq, axis=0) * q_factor\n",
     "    Sk = gl.zeros([NC, C], gl.float32, cols_layout)\n    Sq = gl.zeros([NC, C], gl.float32, cols_layout)\n"),
]


# The kv tile's updated rows stored from registers, a step of key rows at a time as the second pass
# makes them, in 16-byte vectors (a row start hinted to 16 bytes, as the vk tile's), instead of
# written back to shared memory for TMA stores at the end: no shared-memory stores in the second
# pass (so none of the CTA barriers Triton puts around them), no fence, and the stores overlap the
# rest of the pass. kv_reg_store, its retired ancestor (1.8-3.9x slower, eighth session), stored
# without the alignment hint, so element by element (as the page-strided vk tile did before the
# twentieth session). The kernel and its launcher take the pool's pointer and strides. H200: 3.5-4.7
# points under the shipped TMA stores given the order at bf16 B=128-1024 and fp32 B=128-512, and
# half the speed at fp32 B=32 (results/h200/tune_kv_reg_stores_*_f5b7ddd.json).
_KV_STATE_ARGS = "rows_ptr, batch_indices_ptr, state_ptr, s_sb, s_sh, s_sk,"
KV_TILE_VARIANTS["kv_tile_reg_stores"] = [
    ("s_ob, s_oh, s_ov, s_A, s_dt, rows_ptr, batch_indices_ptr,\n",
     f"s_ob, s_oh, s_ov, s_A, s_dt, {_KV_STATE_ARGS}\n"),
    ("rows_ptr, tail_state_desc, whole_tiles,\n", "rows_ptr, tail_state_desc, whole_tiles, state_ptr, s_sb, s_sh, s_sk,\n"),
    ("(*args, rows if rows is not None else state, tail_desc, whole_tiles,\n",
     ("(*args, rows if rows is not None else state, tail_desc, whole_tiles,\n"
      "                                    state, state.stride(0), state.stride(1), state.stride(2),\n")),
    (_KV_TILE_UPDATE_CALL,
     ("    key_rows = gl.arange(0, ROWS, layout=keys_layout)\n"
      "    row_starts = gl.multiple_of(slot.to(gl.int64) * s_sb + hv * s_sh + key_rows.to(gl.int64) * s_sk\n"
      "                                + (tile % NV) * BV, 128 // state_desc.dtype.primitive_bitwidth)\n"
      "    state_rows = state_ptr + row_starts[:, None, None] + _tile_columns(BV, C, cols_layout)[None, :, :]\n"
      "    live = slot < num_slots\n"
      "    for i in gl.static_range(STEPS):\n"
      "        S = rows_smem.slice(i * ROWS, ROWS).load(rows_layout).to(gl.float32)\n"
      "        k = k_keys.slice(i * ROWS, ROWS).load(keys_layout).to(gl.float32) * k_factor\n"
      "        gl.store(state_rows + (i * ROWS) * s_sk, (S * decay + k[:, None, None] * u[None, :, :])"
      ".to(state_desc.dtype),\n                 mask=live)\n")),
    (("    fence_async_shared()\n"
      "    _cta_barrier()\n"
      "    # a padded row's slot is one past the pool: TMA drops out-of-bounds writes\n"
      "    for j in gl.static_range(PARTS):\n"
      "        tma.async_copy_shared_to_global(state_desc, [slot, hv, j * PART, (tile % NV) * NC, 0],\n"
      "                                        tile_smem.slice(j * PART, PART, dim=2))\n"
      "    tma.store_wait(0)\n"), ""),
]


# kv_tile_reg_stores' warps sit side by side along the columns (the sums' layout), so each store
# instruction of a warp writes 32 bytes of each of 8 rows. Here the second pass reads the rows in a
# layout of whole rows a warp (as the vk tile's stores: a warp instruction writes 2 whole rows of a
# whole-head bf16 tile, 512 contiguous bytes), with u converted to it once. H200, given the order:
# level at bf16 B=128 (88.3 / 88.0), 1.0-1.2 under at 256-1024, 0.5-0.6 under for fp32 at 128-256
# (results/h200/tune_kv_row_stores_*_c196976.json).
_KV_ROW_STORES = (
    "    update_layout: gl.constexpr = gl.BlockedLayout([1, 1, VEC], [32 // (C // VEC * NC), NC, C // VEC],\n"
    "                                                   [WARPS, 1, 1], [2, 1, 0])\n"
    "    update_keys: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(2, update_layout))\n"
    "    update_cols: gl.constexpr = gl.SliceLayout(0, update_layout)\n"
    "    u_rows = gl.convert_layout(u, update_cols)\n"
    "    key_rows = gl.arange(0, ROWS, layout=update_keys)\n"
    "    row_starts = gl.multiple_of(slot.to(gl.int64) * s_sb + hv * s_sh + key_rows.to(gl.int64) * s_sk\n"
    "                                + (tile % NV) * BV, 128 // state_desc.dtype.primitive_bitwidth)\n"
    "    state_rows = state_ptr + row_starts[:, None, None] + _tile_columns(BV, C, update_cols)[None, :, :]\n"
    "    live = slot < num_slots\n"
    "    for i in gl.static_range(STEPS):\n"
    "        S = rows_smem.slice(i * ROWS, ROWS).load(update_layout).to(gl.float32)\n"
    "        k = k_keys.slice(i * ROWS, ROWS).load(update_keys).to(gl.float32) * k_factor\n"
    "        gl.store(state_rows + (i * ROWS) * s_sk, (S * decay + k[:, None, None] * u_rows[None, :, :])"
    ".to(state_desc.dtype),\n                 mask=live)\n")
KV_TILE_VARIANTS["kv_tile_row_stores"] = [
    (old, _KV_ROW_STORES if old == _KV_TILE_UPDATE_CALL else new)
    for old, new in KV_TILE_VARIANTS["kv_tile_reg_stores"]]
# The same with the vk tile's store hints (vk_tile_cs_store, vk_tile_store_evict_first, and
# evict-last): rows that leave from registers can carry them, TMA stores in Gluon cannot. On the
# H200, given the order: .cs and evict-first 0.5-1.3 under the plain register stores; evict-last
# level with the shipped TMA stores at bf16 kv B=512 (94.8), 0.2 under at B=256, 0.2 over at fp32
# B=128 and 2.5 under at fp32 B=32 (results/h200/tune_kv_store_hint_*_2970fee.json,
# tune_kv_store_evict_last_*_dab202c.json).
for _hint, _name in (('cache_modifier=".cs"', "kv_tile_row_stores_cs"),
                     ('eviction_policy="evict_first"', "kv_tile_row_stores_evict_first"),
                     ('eviction_policy="evict_last"', "kv_tile_row_stores_evict_last")):
    KV_TILE_VARIANTS[_name] = [(old, new.replace("mask=live)\n", f"mask=live, {_hint})\n"))
                               for old, new in KV_TILE_VARIANTS["kv_tile_row_stores"]]


# The kv tile's TMA stores with the vk tile's evict-last L2 policy, by a PTX rewrite (Gluon's TMA
# store takes no hint), gained from B*HV 4096 and is the kernel's GluonTileConfig.store_eviction
# with gdn_ops.ptx_rewrite (results/h200/tune_kv_tma_evict_last_*_b9b0c46.json; NOTES.md,
# twenty-eighth session).


def _kv_tile_padding(words: int) -> list[tuple[str, str]]:
    """The kv tile kernel with ``words`` int32 of unused shared memory beside its tile (a corner
    written, so the allocation is kept): fewer programs then fit an SM."""
    return [
        ("    k_smem = gl.allocate_shared_memory(k_desc.dtype, [1, 1, K], k_desc.layout)\n",
         ("    k_smem = gl.allocate_shared_memory(k_desc.dtype, [1, 1, K], k_desc.layout)\n"
          f"    pad_smem = gl.allocate_shared_memory(gl.int32, [{words}], gl.SwizzledSharedLayout(1, 1, 1, [0]))\n"
          "    pad_smem.slice(0, 32 * WARPS).store(gl.zeros([32 * WARPS], gl.int32, gl.BlockedLayout([1], [32], [WARPS], [0])))\n")),
    ]


# A test of the wave arithmetic in NOTES.md (fifteenth session, Next 4). With 16 KB of padding an
# fp32 half-head tile takes about 49 KB and 4 programs fit an SM instead of 6: at B=32 the shipped
# residency makes 2.59 waves of programs, this one 3.88, with 128 KB in flight per SM as the fp32 vk
# tile. With 8 KB, 5 fit (41 KB each): 3.10 waves at B=32, 12.4 at B=128 (10.3 shipped).
KV_TILE_VARIANTS["kv_tile_four_per_sm"] = _kv_tile_padding(4096)
KV_TILE_VARIANTS["kv_tile_five_per_sm"] = _kv_tile_padding(2048)

# A measurement, not a decode change: each program of a tile kernel records, in a buffer of
# [grid, 4] int64 per launch (TIMELINES of the patched module), the global timer (ns) when it
# starts, when its PDL wait returns, when it ends, and its SM. benchmarks/timeline_kv.py reads them
# to see how the SMs' slots fill and empty around the boundary between consecutive launches.
_CLOCK = 'gl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=gl.int64, is_pure=False, pack=1)'


def _timeline_patches(kernel_args: tuple[str, str], launch_args: tuple[str, str], started_after: str,
                      waited_before: str, ended_after: str, launcher: str) -> list[tuple[str, str]]:
    """The patches that make a tile kernel record its programs: ``kernel_args`` and
    ``launch_args`` are the (text, text with the buffer) of its signature and its launch, the
    records are taken after ``started_after``, before ``waited_before`` and after ``ended_after``,
    and the buffers kept by a function defined before ``def {launcher}(``."""
    return [
        kernel_args, launch_args,
        (started_after, f"{started_after}    started = {_CLOCK}\n"),
        (waited_before, f"    waited = {_CLOCK}\n{waited_before}"),
        (ended_after,
         (f"{ended_after}    ended = {_CLOCK}\n"
          '    sm = gl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=gl.int32, is_pure=True, pack=1)\n'
          "    record = timeline_ptr + gl.program_id(0) * 4\n"
          "    gl.store(record, started)\n"
          "    gl.store(record + 1, waited)\n"
          "    gl.store(record + 2, ended)\n"
          "    gl.store(record + 3, sm.to(gl.int64))\n")),
        (f"def {launcher}(",
         ("TIMELINES = []\n\n\n"
          "def _timeline(grid, device):\n"
          "    TIMELINES.append(torch.empty(grid, 4, dtype=torch.int64, device=device))  # no kernel between launches\n"
          "    return TIMELINES[-1]\n\n\n"
          f"def {launcher}(")),
    ]


KV_TILE_VARIANTS["kv_tile_timeline"] = _timeline_patches(
    ("rows_ptr, tail_state_desc, whole_tiles,\n", "rows_ptr, tail_state_desc, whole_tiles, timeline_ptr,\n"),
    ("(*args, rows if rows is not None else state, tail_desc, whole_tiles,\n",
     "(*args, rows if rows is not None else state, tail_desc, whole_tiles, _timeline(grid, state.device),\n"),
    "        mbarrier.init(bars.index(j), count=1)\n", "    pid = gl.program_id(0)\n    if TAIL_SPLIT == 1",
    "        mbarrier.invalidate(bars.index(j))\n", "launch_decode_kv_tile")

# The same records of the vk tile kernel's one-warp programs (NOTES.md, twenty-fifth session).
VK_TILE_VARIANTS["vk_tile_timeline"] = _timeline_patches(
    ("s_sb, s_sh, s_sv, rows_ptr, batch_indices_ptr,\n", "s_sb, s_sh, s_sv, rows_ptr, batch_indices_ptr, timeline_ptr,\n"),
    ("        rows if rows is not None else state, batch_indices if batch_indices is not None else state,\n",
     ("        rows if rows is not None else state, batch_indices if batch_indices is not None else state,\n"
      "        _timeline(num_tiles, state.device),\n")),
    "    mbarrier.init(bar, count=1)\n", "    # with SORTED_ROWS, indices_ptr holds", "    mbarrier.invalidate(bar)\n",
    "launch_decode_vk_tile")


def _kv_tile_stagger(step_ns: int) -> list[tuple[str, str]]:
    """The kv tile's first wave started in steps: within an SM the six programs of a launch start
    together and then run in lockstep (forty-sixth session, call 2); here the r-th program of an SM
    (program id // SMs) spins until ``r * step_ns`` after its PDL wait returned, so that the SM's
    programs start, end and are replaced at staggered times. A test of whether the lockstep costs
    the body, for the H200 (6 programs an SM, 132 SMs)."""
    return [("    pid = gl.program_id(0)\n    if TAIL_SPLIT == 1",
             ("    pid = gl.program_id(0)\n"
              "    if pid < 6 * 132:\n"
              f"        now = {_CLOCK}\n"
              f"        until = now + (pid // 132).to(gl.int64) * {step_ns}\n"
              "        while now < until:\n"
              f"            now = {_CLOCK}\n"
              "    if TAIL_SPLIT == 1"))]


KV_TILE_VARIANTS["kv_tile_stagger1000"] = _kv_tile_stagger(1000)
KV_TILE_VARIANTS["kv_tile_stagger2000"] = _kv_tile_stagger(2000)
# the same with the timeline's records (benchmarks/timeline_kv.py --variant), to see the lockstep go
KV_TILE_VARIANTS["kv_tile_stagger2000_timeline"] = KV_TILE_VARIANTS["kv_tile_timeline"] + _kv_tile_stagger(2000)


def _kv_tile_l2_policy(key: str, body: str, copies: str = "stores") -> list[tuple[str, str]]:
    """The kv tile's binary whose ``copies`` ("stores": a spec with ``el``, "loads": one with
    ``lel``, not both) the launcher hints evict-last, compiled through a function of the PTX ``ptx``
    with ``body`` (which may call ``tma_stores_evict_last`` or ``tma_state_loads_evict_last``) in
    place of that rewrite; ``key`` is added to the kernel's ``STORE_EVICTION`` or ``LOAD_EVICTION``
    constexpr, so that Triton's cache (keyed without the hook in 3.6) keeps this binary apart from
    the shipped one. Tests of the forty-seventh session's reading: the kv tile pays for the dirty
    lines the previous call leaves in L2 (ncu, call 2) about 3 us where the vk tile pays 0.6."""
    entry, rewrite, constexpr = {
        "stores": ('("", "evict_last")', "tma_stores_evict_last", "STORE_EVICTION=config.store_eviction"),
        "loads": ('("evict_last", "")', "tma_state_loads_evict_last", "LOAD_EVICTION=config.load_eviction"),
    }[copies]
    return [("    tma_stores_evict_last,\n)\n",
             ("    tma_stores_evict_last,\n)\n\n\n"
              "def _variant_rewrite(ptx):\n" + textwrap.indent(textwrap.dedent(body).lstrip("\n"), "    "))),
            (f"{entry}: {rewrite},", f"{entry}: _variant_rewrite,"),
            (f"{constexpr},", f"{constexpr} + {key!r},")]


# the shipped rewrite (gdn_ops.ptx_rewrite) that hints the kv tile's stores or its state's loads
# evict-last, and the pattern it finds them by
_KV_TILE_COPIES = {"stores": ("tma_stores_evict_last", "_TMA_STORE"),
                   "loads": ("tma_state_loads_evict_last", "_TMA_STATE_LOAD")}


def _kv_tile_fraction(copies: str, percent: int) -> list[tuple[str, str]]:
    """The kv tile's evict-last ``copies`` ("stores" or "loads", as :func:`_kv_tile_l2_policy`) on
    ``percent``% of their lines (``createpolicy.fractional``'s fraction; the rest evict-normal)."""
    rewrite = _KV_TILE_COPIES[copies][0]
    return _kv_tile_l2_policy(f"@{percent}", f"""
        return {rewrite}(ptx).replace("L2::evict_last.b64 %gdn_l2_evict_last, 1.0;",
                                      "L2::evict_last.b64 %gdn_l2_evict_last, {percent / 100};")
        """, copies)


def _kv_tile_evict_first(copies: str) -> list[tuple[str, str]]:
    """The kv tile's ``copies`` ("stores" or "loads") evict-first beside the other copies evict-last
    by the shipped rewrite (so at a spec with ``lel`` for the stores, ``el`` for the loads)."""
    held = "loads" if copies == "stores" else "stores"
    rewrite, pattern = _KV_TILE_COPIES[held][0], _KV_TILE_COPIES[copies][1]
    return _kv_tile_l2_policy(f"@{copies}_evict_first", f"""
        from gdn_ops.ptx_rewrite import {pattern}, _hinted

        return _hinted({rewrite}(ptx), {pattern}, "kv tile {copies[:-1]} to hint evict-first", "evict_first")
        """, held)


# The variants that change the shipped PTX rewrite of the kv tile's evict-last stores act only at a
# spec with ``el`` and without ``lel``; those that change the rewrite of its evict-last loads, only at
# a spec with ``lel`` and without ``el`` (the launcher's rewrite for both is the shipped one).
KV_TILE_STORE_POLICY_VARIANTS: set[str] = set()
KV_TILE_LOAD_POLICY_VARIANTS: set[str] = set()


def _add_policy_variant(name: str, held: str, patches: list[tuple[str, str]]) -> None:
    """Register kv tile variant ``name`` as one that rewrites the PTX of the ``held`` copies' policy."""
    KV_TILE_VARIANTS[name] = patches
    (KV_TILE_STORE_POLICY_VARIANTS if held == "stores" else KV_TILE_LOAD_POLICY_VARIANTS).add(name)


# Only a fraction of the stored lines evict-last: fewer dirty lines held into the next call, and
# less of what evict-last gained.
# Only a fraction of the state's loaded lines evict-last (NOTES.md, forty-eighth session): at 64 MB
# of state a call (fp32 B*HV 1024, bf16 2048; about the L2) the whole state evict-last was level or
# lost 0.2-0.6 points, where from 128 MB it gains 1.5-3; a fraction keeps some of a tile's lines
# until its store without holding a whole call's state against the next call's reads. Measured
# (call 5, lelf_*_35def64.json): every fraction lost, 0.7-1.9 points at bf16 B=128 against the whole
# state evict-last and at fp32 B=32 more than it (-2.2..-2.4 against the plain loads sorting).
for _percent in (25, 50, 75):
    _add_policy_variant(f"kv_tile_el_fraction{_percent}", "stores", _kv_tile_fraction("stores", _percent))
    _add_policy_variant(f"kv_tile_lel_fraction{_percent}", "loads", _kv_tile_fraction("loads", _percent))

# The state's TMA loads (5-d: the pool; q and k are 3-d) evict-first beside the evict-last stores:
# a line read is dead once in shared memory, the update rewriting it whole, so L2 might drop it
# before any dirty line. Measured (call 5): 4-7 points lost, and the loads evict-last gained (now
# GluonTileConfig.load_eviction, tune spec word ``lel``). (Call 3 ran it under Triton 3.6, which
# writes these loads shared::cluster where 3.7 writes shared::cta, before the pattern took both:
# unhinted.) The rewrite raises where it hints no load.
_add_policy_variant("kv_tile_loads_evict_first", "stores", _kv_tile_evict_first("loads"))

# The state's loads evict-last (the rule from 128 MB of state a call) and the tile's TMA stores
# evict-first: a stored line is dead to this call, and left evict-normal it stays dirty in L2 into
# the next call, whose kv tile paid about 3 us a launch for such lines before its loads took the
# policy (NOTES.md, forty-seventh session); evict-first it should be written back within the call,
# leaving L2 to the held read lines. Not measured yet (prepared in the forty-ninth session).
_add_policy_variant("kv_tile_lel_stores_evict_first", "loads", _kv_tile_evict_first("stores"))

# (kv_tile_two_tiles: two whole tiles a program through the same shared buffer, each on its own
# barriers, the tail's pieces one a program, to halve the slots' turnovers; kv_tile_two_tiles_strided:
# the same paired a wave apart, tiles i and i + W in each block of 2W; and their timelines, the
# last with a record at the switch between a pair's tiles. On the H200, given the order, 2.2-3.2 /
# 1.4-2.7 points slower at bf16 kv B=256-1024 and 3.4-6.7 / 2.8-6.2 at fp32 B=32 and 128; the
# switch cost 0.03 us and a pair with its turnover took what two one-tile programs with theirs do,
# so the launch body runs at the memory system's pace and the pairs lose their longer drain
# (results/h200/tune_kv_two_tiles*_{4f68079,387176a}.json, timeline_two_tiles*.json.gz,
# timeline_switch_*_16aedb1.json.gz; NOTES.md, twenty-fifth session). Retired after the
# measurement; they patch the kernel at commit 567a45c.)

# (vk_tile_registers, the vk tile kernel with its state through registers instead of shared
# memory, barrier-free programs of 4 warps, lost 1.8-3.6 points with fp32 and 16-45 with bf16
# (results/h200/tune_vk_tile_registers_*.json, NOTES.md fifteenth session). Retired when the
# kernel's step moved into a helper for the tail split; it patches the kernel at commit fc01092.)

# (vk_tile_parts2/4/8, the vk tile's state arriving in parts, each on its own barrier, ran level
# with the shipped kernel on the H200 (bf16, B=128-1024; results/h200/tune_vk_tile_parts_bf16.json);
# the kv kernel gained from it and took it as its ``GluonTileConfig.parts``. Retired when the vk
# kernel's step moved into a helper for the tail split; they patch the kernel at commit fc01092.)

# (The one-warp tile over two or four 4 KB parts, each on its own barrier, as ``GluonTileConfig.parts``
# in the kernel at ebd4538: at bf16 B=128 (TP=1) and B=512 (TP=4), given the order, two parts
# 0.6-1.1 points under the shipped 4 KB tile and 1.6-1.9 over the same 8 KB on one barrier, four
# parts 1.5-3.4 under; at fp32 TP=4 B=256 0.1-1.6 under the shipped two-warp tile, in two runs
# (results/h200/parts_*_ebd4538.json; NOTES.md, thirty-ninth session). Not kept: the kernel is back
# to one copy, which these variants' patches expect.)


# The rank kernel (gdn_ops/triton_slot_order.py) that a sorting decode launches when the caller
# gives no order. Two variants ran against it at 5c25153 (NOTES.md, twenty-ninth session; results/h200/
# tune_rank_*_5c25153.json): `rank_trigger_first` (let the decode launch before the wait for the
# previous kernel) -0.25..+0.39 points, within the spread; `rank_before_wait` (that, and count from
# the slots read before the wait, check them after it, count again only if one changed) +0.00..+0.61
# in all 10 pairs without the order, 0.1-1.0 us: folded as the kernel's one-step path.
# `rank_waits_first` is the kernel before the fold (wait, let the decode launch, then count), to
# run that comparison again.
# `rank_comparisons_{2048,512}` (at d94f041) held 4 and 16 times fewer comparisons a program than
# the 8192 then shipped (more programs, each shorter after the wait): 2048 -0.28..+0.65 points
# without the order, +0.4..+0.65 in 3 of 4 pairs at B=128, where 8192 made 2 programs; folded.
# `rank_comparisons_8192` is the kernel before that fold.
SLOT_ORDER_VARIANTS: dict[str, list[tuple[str, str]]] = {
    "rank_waits_first": [("ONE_STEP=B <= MAX_COLUMNS", "ONE_STEP=False")],
    "rank_comparisons_8192": [("COMPARISONS = 2048\n", "COMPARISONS = 8192\n")],
}
# The rank kernel's programs on one warp instead of four (64 comparisons a thread before the wait):
# after the wait, the check of the slots and the counts' sums stay inside a warp (no shared memory,
# no CTA barrier), and a program of one warp finds a slot beside the previous kernel's last wave more
# easily. With 512 comparisons a program as well, four times the programs, each a quarter as long.
# H200, without the order, seeds 0 and 1 (results/h200/rk{1,4}_*_c332fd7.json; NOTES.md, forty-first
# session): one warp -0.13..+0.44 against the shipped rank kernel at bf16 vk B=128, fp32 kv B=128 and
# TP=4 bf16 vk B=512, fp32 vk B=256, fp32 kv B=512; with 512 comparisons -1.1..+0.25 (it loses at 512
# rows). Neither folded.
SLOT_ORDER_VARIANTS["rank_one_warp"] = [("                                                          num_warps=4,\n",
                                         "                                                          num_warps=1,\n")]
SLOT_ORDER_VARIANTS["rank_one_warp_512"] = [*SLOT_ORDER_VARIANTS["rank_one_warp"],
                                            ("COMPARISONS = 2048\n", "COMPARISONS = 512\n")]
# A ceiling, not a safe kernel: the rank kernel trusts the counts it made before its wait (no second
# read of the slots, no check, no recount), so it is wrong whenever the previous kernel writes the
# slots; the benchmark's slots are written long before, so its results still pass the check. What
# is left between the previous kernel's end and the decode is then the wait, the stores and the
# kernel boundary: how much of the rank kernel's cost the second read is.
# The slots read before the wait with an evict-last L2 policy, so that their line is still in L2 for
# the second read after it: the previous decode's last wave stores its rows evict-last from B*HV 4096
# and may push a line of normal priority out to DRAM in the meantime. H200, without the order, seeds
# 0 and 1 (results/h200/el{1,4}_*_9493701.json; NOTES.md, forty-first session): -0.2..-0.05 against
# the shipped rank kernel, where rank_no_recheck (below) ran +0.25..+0.75 (and +0.33..+0.68 in
# nr{1,4}_*_dd5d654.json): the line was in L2 already, and the second read's round trip is the cost.
SLOT_ORDER_VARIANTS["rank_slots_evict_last"] = [(
    """        others = tl.arange(0, COLUMNS)
        mine = tl.load(indices_ptr + rows, mask=live, other=0)
        theirs = tl.load(indices_ptr + others, mask=others < B, other=0)
""", """        others = tl.arange(0, COLUMNS)
        mine = tl.load(indices_ptr + rows, mask=live, other=0, eviction_policy="evict_last")
        theirs = tl.load(indices_ptr + others, mask=others < B, other=0, eviction_policy="evict_last")
""")]
SLOT_ORDER_VARIANTS["rank_no_recheck"] = [(
    """        if PDL:
            tl.extra.cuda.gdc_wait()
            mine_now = tl.load(indices_ptr + rows, mask=live, other=0, cache_modifier=".cg")
""", """        if PDL:
            tl.extra.cuda.gdc_wait()
        if False:
            mine_now = tl.load(indices_ptr + rows, mask=live, other=0, cache_modifier=".cg")
""")]

# The snapshot order ranked by counting instead of tl.sort's bitonic network: each row's rank is how
# many of the B keys (one read of the slots, in registers) are smaller, B^2 comparisons in one
# program, then the rows scattered to their places after the wait. Rows past B get distinct keys
# after every row of the batch, so the ranks are a permutation.
SLOT_ORDER_VARIANTS["snapshot_count"] = [(
    """    key = tl.where(rows < B, ((slot + 1) << 32) | rows, 9223372036854775807)
    key = tl.sort(key)
    if PDL:
        # the order buffer may still be read by the previous decode
        tl.extra.cuda.gdc_wait()
    tl.store(order_ptr + rows, ((key >> 32) - 1).to(tl.int32), mask=rows < B)
    tl.store(order_ptr + B + rows, (key & 0xFFFFFFFF).to(tl.int32), mask=rows < B)
""", """    key = tl.where(rows < B, ((slot + 1) << 32) | rows, rows.to(tl.int64) + (9223372036854775807 - N))
    rank = tl.sum((key[None, :] < key[:, None]).to(tl.int32), axis=1)
    if PDL:
        tl.extra.cuda.gdc_wait()
    tl.store(order_ptr + rank, slot.to(tl.int32), mask=rows < B)
    tl.store(order_ptr + B + rank, rows, mask=rows < B)
""")]
# The snapshot's one program on fewer warps: tl.sort exchanges keys between warps through shared
# memory (with a barrier) and within a warp by shuffles, so on one warp (up to 8 keys a lane at
# B=256) a stage never leaves the warp; few_warps keeps 128 keys a warp.
SLOT_ORDER_VARIANTS["snapshot_one_warp"] = [
    ("num_warps=max(4, min(16, N // 64))", "num_warps=1")]
SLOT_ORDER_VARIANTS["snapshot_few_warps"] = [
    ("num_warps=max(4, min(16, N // 64))", "num_warps=max(1, min(16, N // 128))")]
# Ceilings, not safe kernels: the tiles take the snapshot order's slots without checking them against
# the slots after the wait (wrong whenever the previous kernel writes the slots; the benchmark's are
# written long before). What the check costs a tile.
VK_TILE_VARIANTS["vk_tile_snapshot_unchecked"] = [
    ("CHECK_SLOTS=rows is not None and batch_indices is not None,", "CHECK_SLOTS=False,")]
KV_TILE_VARIANTS["kv_tile_snapshot_unchecked"] = VK_TILE_VARIANTS["vk_tile_snapshot_unchecked"]
# A ceiling, not a safe kernel: the kv tile's PDL wait (and trigger) moved from the program's start
# to just before its first TMA copies, so that its row, slot, v and gates are read before the
# previous grid ends. Right only where the kernel before it writes none of them: in the benchmark
# given the order (rows and slots written long before), wrong without it (the rank kernel writes
# the order just before). What the dependent reads at a launch's start cost its first wave, where
# every program waits for its row and slot before it can ask for its state. H200, given the order,
# two seeds: level at TP=1 bf16 kv B=128, 0.4-0.5 us less at TP=4 fp32 kv B=256 (sbw_*_ec99b5f.json;
# NOTES.md, fifty-second session).
_KV_FIRST_COPIES = ("    _issue_tile(tile, slot, row, True, state_desc, q_desc, k_desc, tile_smem, q_smem, k_smem, bars, 0,\n"
                    "                NV, HV, GROUP, NC, PART, PARTS)\n\n    hv = tile // NV % HV\n")
# (The moved wait and trigger are unconditional: launched without PDL they do nothing.)
_KV_PROLOGUE_WAIT = ("    if PDL:\n        # nothing is read before the previous kernel has finished; the next launch may start then,\n"
                     "        # its programs taking the SM slots this launch's last wave frees (NOTES.md, eighteenth session)\n"
                     + _GLUON_WAIT)
KV_TILE_VARIANTS["kv_tile_slots_before_wait"] = [
    (_KV_PROLOGUE_WAIT, ""),
    (_KV_FIRST_COPIES, "    _gdc_wait()\n    _gdc_launch_dependents()\n" + _KV_FIRST_COPIES),
]
def _jit_function_source(module: ModuleType, name: str) -> str:
    """The source of ``module``'s ``@gluon.jit`` function ``name``, up to the next such function."""
    source = Path(module.__file__).read_text()
    start = source.index(f"@gluon.jit\ndef {name}(")
    return source[start:source.index("@gluon.jit\n", start + 1)]


def _volatile_copy(helper: str, load: str) -> str:
    """The shipped ``gluon_decode_kv`` helper ``helper``, renamed ``{helper}_now``, its ``load`` (the
    text of its one gl.load's closing arguments) made volatile."""
    source = _jit_function_source(shipped_gluon, helper)
    assert source.count(load) == 1, (helper, load)
    return source.replace(f"def {helper}(", f"def {helper}_now(").replace(load, load[:-1] + ", volatile=True)")


# The safe form of kv_tile_slots_before_wait: the row and slot read before the wait and the state's
# copies issued from them just after it; then the row and slot read again (volatile, so not merged
# with the early reads) with v and the gates, and where either changed, the stale copies awaited and
# the tile copied again, as CHECK_SLOTS does for the snapshot order. Right whatever the kernel
# before it writes; without the order the rank kernel writes the rows just before, so most tiles
# copy twice there. H200: 2.2-3.3 us slower than the shipped tile given the order, 4.8-6.1 without;
# not shipped.
_KV_NOW_HELPERS = (_volatile_copy("_tile_row", "mask=tile < num_tiles, other=0)")
                   + _volatile_copy("_tile_slot", "mask=tile < num_tiles, other=-1)"))
_KV_ROW_READ = "    row, in_batch = _tile_row(tile, num_tiles, rows_ptr, NV, HV, SORTED_ROWS)\n"
_KV_SLOT_PADDED = "    slot = gl.where(in_batch, slot, num_slots)\n"
_KV_FIRST_WAIT = "    mbarrier.wait(bars.index(0), 0)\n    phase = 0\n"
KV_TILE_VARIANTS["kv_tile_slots_before_wait_checked"] = [
    (_KV_PROLOGUE_WAIT, ""),
    ("    _tile_row,\n    chunk_columns,\n", "    _tile_row,\n    _tile_slot,\n    chunk_columns,\n"),
    ("@gluon.jit\ndef _kv_tile(", _KV_NOW_HELPERS + "@gluon.jit\ndef _kv_tile("),
    (_KV_ROW_READ,
     ("    early_row, early_in_batch = _tile_row(tile, num_tiles, rows_ptr, NV, HV, SORTED_ROWS)\n"
      "    early_slot = gl.where(early_in_batch, _tile_slot(tile, num_tiles, indices_ptr, num_slots, NV, HV, HAS_INDICES),\n"
      "                          num_slots)\n"
      "    _gdc_wait()\n    _gdc_launch_dependents()\n"
      "    _issue_tile(tile, early_slot, early_row, True, state_desc, q_desc, k_desc, tile_smem, q_smem, k_smem, bars, 0,\n"
      "                NV, HV, GROUP, NC, PART, PARTS)\n"
      "    row, in_batch = _tile_row_now(tile, num_tiles, rows_ptr, NV, HV, SORTED_ROWS)\n")),
    (_KV_SLOT_PADDED,
     "    slot = gl.where(in_batch, _tile_slot_now(tile, num_tiles, indices_ptr, num_slots, NV, HV, HAS_INDICES), num_slots)\n"),
    (_KV_FIRST_COPIES, "    hv = tile // NV % HV\n"),
    (_KV_FIRST_WAIT,
     ("    mbarrier.wait(bars.index(0), 0)\n"
      "    stale = (slot != early_slot) | (row != early_row)\n"
      "    if stale:\n"
      "        for j in gl.static_range(1, PARTS):\n"
      "            mbarrier.wait(bars.index(j), 0)\n"
      "        _issue_tile(tile, slot, row, True, state_desc, q_desc, k_desc, tile_smem, q_smem, k_smem, bars, 0,\n"
      "                    NV, HV, GROUP, NC, PART, PARTS)\n"
      "        mbarrier.wait(bars.index(0), 1)\n"
      "    phase = stale.to(gl.int32)\n")),
]


# The tile kernels prefetching into L2 the state of the tile `ahead` tiles per SM later in the grid
# (bulk prefetches, cp.async.bulk.prefetch.L2, by the vk tile's shipped `_prefetch_rows_l2`; 132
# SMs, the H200's, assumed). The reason: a launch loses about 4 us to its end (the last programs'
# slots empty one by one while their loads queue at DRAM; timelines, thirty-seventh session),
# against about 2 for the copy. A program whose state is already in L2 when it starts lives
# shorter, so the launch's last programs should end sooner while the DRAM reads, as many, are
# issued earlier. The read of the later tile's slot is issued after the program's own copies and
# used after its gates. Forms: `rows`, one prefetch a state row (the vk tile's shipped form, its
# GluonTileConfig.prefetch_ahead since the forty-third session); `span`, one a contiguous span (the
# vk tile's rows where the head's rows are dense; a whole kv head in 16 KB pieces, or `_whole` in
# one, from the program of the head's first columns); `lines`, the vk tile's 128-byte lines by
# `prefetch.global.L2`. `_tail`: only the programs whose later tile is among the grid's last
# 2 x ahead x 132; `_evict_last`: the prefetched lines carry the evict-last L2 policy. On the H200
# every kv form lost 0.3-25 points and the two-warp bf16 vk tile 2-8 (results/h200/pf*_83b3794.json,
# ps*_198f16c.json; NOTES.md, forty-third session).
_PREFETCH_ROW = "@p cp.async.bulk.prefetch.L2.global [$1], $4;"
_VK_SOURCE = Path(shipped_vk_tile.__file__).read_text()


def _prefetch_helper(name: str, instruction: str = _PREFETCH_ROW) -> str:
    """The vk tile's ``_prefetch_rows_l2`` (one instruction a thread, up to ``NROWS`` threads),
    renamed ``name``, with ``instruction`` (it may name a 64-bit ``pol`` register) instead."""
    helper = _jit_function_source(shipped_vk_tile, "_prefetch_rows_l2")
    return (helper.replace("def _prefetch_rows_l2(", f"def {name}(").replace(_PREFETCH_ROW, instruction)
            .replace("{ .reg .pred p;", "{ .reg .pred p; .reg .b64 pol;"))


_EVICT_LAST_ROW = ("createpolicy.fractional.L2::evict_last.b64 pol, 1.0; "
                   "@p cp.async.bulk.prefetch.L2.global.L2::cache_hint [$1], $4, pol;")
_ELEM = "(state_desc.dtype.primitive_bitwidth // 8)"


# The vk tile's variants are its shipped prefetch (GluonTileConfig.prefetch_ahead) changed: at
# `ahead` a SM whatever the configuration says, and then only near the grid's end, with another L2
# policy or another instruction. (Measured before the prefetch shipped, as the same code spelled
# out in the variant; its PTX differs from this only in the order of the gates' arithmetic.)
_VK_PREFETCH_DISTANCE = ("PREFETCH_AHEAD=config.prefetch_ahead * sm_count(state.device.index or 0)\n"
                         "        if config.prefetch_ahead and not rank_in_program else 0,")
_VK_PREFETCH_TEST = "        if (ahead < num_tiles) & (ahead_slot < num_slots):\n"


def _prefetch_condition(ahead: int, tail: bool) -> str:
    """The shipped vk prefetch's test of the later tile (the kv variants' too), and with ``tail``
    only where that tile is among the grid's last ``2 x ahead x 132``."""
    tail_term = f" & (ahead >= num_tiles - {2 * ahead * 132})" if tail else ""
    return _VK_PREFETCH_TEST.strip().removeprefix("if ").removesuffix(":") + tail_term
_VK_PREFETCH_ROWS = ", s_sv, BV,\n                              K * (state_desc.dtype.primitive_bitwidth // 8), WARPS)\n"


def _vk_tile_prefetch(ahead: int, tail: bool = False, evict_last: bool = False) -> list[tuple[str, str]]:
    patches = [(_VK_PREFETCH_DISTANCE, f"PREFETCH_AHEAD=0 if rank_in_program else {ahead} * sm_count(state.device.index or 0),")]
    if tail:
        patches.append((_VK_PREFETCH_TEST, _VK_PREFETCH_TEST.replace("):", ") & (ahead >= num_tiles - 2 * PREFETCH_AHEAD):")))
    if evict_last:
        patches.append(("{ .reg .pred p; setp.lt.s32 p, $2, $3; " + _PREFETCH_ROW,
                        "{ .reg .pred p; .reg .b64 pol; setp.lt.s32 p, $2, $3; " + _EVICT_LAST_ROW))
    return patches


def _vk_tile_prefetch_span(ahead: int, lines: bool = False) -> list[tuple[str, str]]:
    """One bulk prefetch of the later tile's rows as a span where the head's rows are dense, or with
    ``lines`` its 128-byte lines by ``prefetch.global.L2``."""
    if lines:
        call = [("@gluon.jit\ndef _decode_vk_tile_kernel(",
                 _prefetch_helper("_prefetch_lines_l2", "@p prefetch.global.L2 [$1];") + "@gluon.jit\ndef _decode_vk_tile_kernel("),
                ("            _prefetch_rows_l2(state_ptr", "            _prefetch_lines_l2(state_ptr"),
                (_VK_PREFETCH_ROWS, f", 128 // {_ELEM}, BV * K * {_ELEM} // 128, 128, WARPS)\n")]
    else:
        call = [(_VK_PREFETCH_ROWS, f", BV * K, 1, BV * K * {_ELEM}, WARPS)\n")]
    return [*_vk_tile_prefetch(ahead), (_VK_PREFETCH_TEST, _VK_PREFETCH_TEST.replace("):", ") & (s_sv == K):")), *call]


# What every kv prefetch variant adds to the kernel: the vk tile's prefetch helper (``helper``'s
# source, or its import), _tile_slot, and the state's pointer and strides from the launcher to the
# kernel (the kernel reads them as state_ptr, s_sb, s_sh, s_sk).
def _kv_state_pointer_patches(helper: str) -> list[tuple[str, str]]:
    return [
        ("@gluon.jit\ndef _kv_tile(", helper + "@gluon.jit\ndef _kv_tile("),
        ("    _tile_row,\n    chunk_columns,\n", "    _tile_row,\n    _tile_slot,\n    chunk_columns,\n"),
        ("    batch_indices_ptr,\n    HV: gl.constexpr", "    batch_indices_ptr, state_ptr, s_sb, s_sh, s_sk,\n    HV: gl.constexpr"),
        ("batch_indices if batch_indices is not None else state,\n",
         ("batch_indices if batch_indices is not None else state,\n"
          "                                        state, state.stride(0), state.stride(1), state.stride(2),\n")),
    ]


_PREFETCH_IMPORT = "from gdn_ops.gluon_decode_vk_tile import _prefetch_rows_l2  # noqa: E402\n\n\n"


def _kv_tile_prefetch(ahead: int, tail: bool = False, evict_last: bool = False, span: str = "",
                      drain: bool = False) -> list[tuple[str, str]]:
    """The kv tile's programs prefetching the state of the tile ``ahead`` a SM further on: its key rows
    (``rows`` form), or with ``span`` (``_prefetch_rows_l2``'s piece elements, pieces and bytes)
    the whole head from the program of its first columns. With ``drain`` (and ``span``), only the
    heads of the whole tiles that the grid's tail cuts into pieces, by whole-tile programs."""
    helper = _prefetch_helper("_prefetch_rows_l2", _EVICT_LAST_ROW) if evict_last else _PREFETCH_IMPORT
    # the kernel's whole_tiles reaches _kv_tile only where the drain's test reads it: a whole tile's
    # program (a piece program's tile is numbered past whole_tiles) asks for a tail head
    passed = "state_ptr, s_sb, s_sh, s_sk, whole_tiles," if drain else "state_ptr, s_sb, s_sh, s_sk,"
    if span:
        condition = f"{_prefetch_condition(ahead, tail)} & (ahead % NV == 0) & (s_sk == V)"
        call = (f"_prefetch_rows_l2(state_ptr + ahead_slot.to(gl.int64) * s_sb + (ahead // NV % HV).to(gl.int64) * s_sh, {span},\n"
                "                          WARPS)\n")
    else:
        condition = _prefetch_condition(ahead, tail)
        call = ("_prefetch_rows_l2(state_ptr + ahead_slot.to(gl.int64) * s_sb + (ahead // NV % HV).to(gl.int64) * s_sh\n"
                f"                          + (ahead % NV) * BV, s_sk, K, BV * {_ELEM}, WARPS)\n")
    return [
        *_kv_state_pointer_patches(helper),
        ("s_A, s_dt, rows_ptr, batch_indices_ptr,\n", f"s_A, s_dt, rows_ptr, batch_indices_ptr, {passed}\n"),
        (("    _issue_tile(tile, slot, row, True, state_desc, q_desc, k_desc, tile_smem, q_smem, k_smem, bars, 0,\n"
          "                NV, HV, GROUP, NC, PART, PARTS)\n\n"),
         ("    _issue_tile(tile, slot, row, True, state_desc, q_desc, k_desc, tile_smem, q_smem, k_smem, bars, 0,\n"
          "                NV, HV, GROUP, NC, PART, PARTS)\n"
          f"    ahead = tile + {ahead * 132}\n"
          # the drain's: past the grid (no index read, no prefetch) but for the tail's heads
          + ("    ahead = gl.where((tile < whole_tiles) & (ahead >= whole_tiles), ahead, num_tiles)\n" if drain else "")
          + "    ahead_slot = _tile_slot(ahead, num_tiles, indices_ptr, num_slots, NV, HV, HAS_INDICES)\n\n")),
        ("    decay = gl.exp(g)\n    mbarrier.wait(bars.index(0), 0)\n",
         ("    decay = gl.exp(g)\n"
          f"    if {condition}:\n"
          f"        {call}"
          "    mbarrier.wait(bars.index(0), 0)\n")),
    ]


for _ahead in (4, 6, 8, 12, 16, 32):
    VK_TILE_VARIANTS[f"vk_tile_prefetch{_ahead}"] = _vk_tile_prefetch(_ahead)
VK_TILE_VARIANTS["vk_tile_prefetch16_tail"] = _vk_tile_prefetch(16, tail=True)
VK_TILE_VARIANTS["vk_tile_prefetch16_evict_last"] = _vk_tile_prefetch(16, evict_last=True)
for _ahead in (3, 6, 12):
    KV_TILE_VARIANTS[f"kv_tile_prefetch{_ahead}"] = _kv_tile_prefetch(_ahead)
KV_TILE_VARIANTS["kv_tile_prefetch6_tail"] = _kv_tile_prefetch(6, tail=True)
KV_TILE_VARIANTS["kv_tile_prefetch6_evict_last"] = _kv_tile_prefetch(6, evict_last=True)
for _ahead in (2, 4, 8):
    VK_TILE_VARIANTS[f"vk_tile_prefetch_span{_ahead}"] = _vk_tile_prefetch_span(_ahead)
for _ahead in (4, 8):
    VK_TILE_VARIANTS[f"vk_tile_prefetch_lines{_ahead}"] = _vk_tile_prefetch_span(_ahead, lines=True)
# The prefetched rows dealt across the warps (row i on warp i % WARPS) instead of all on the first
# warp's lanes. ptxas issues the per-thread bulk prefetch in a loop over a warp's lanes, and in a
# two-warp tile the CTA barrier after it held the other warp until the first had done all the rows
# (25% of the two-warp bf16 tile's stall samples; NOTES.md, forty-fifth session): each warp's loop
# is half as long here. A one-warp tile is unchanged.
VK_TILE_VARIANTS["vk_tile_prefetch_rows_by_warp"] = [
    ("    r = gl.arange(0, 32 * WARPS, layout=lanes)\n",
     "    lane = gl.arange(0, 32 * WARPS, layout=lanes)\n    r = lane % 32 * WARPS + lane // 32\n"),
]
# The one-warp bf16 tile's prefetch moved later in the program. Where it is, its loop waits for
# the later tile's slot (a load issued with the gates): 9.6% of the tile's stall samples sat on that
# loop's branch, waiting on it (ncu/src_t16-1-16-24-8-el-pf8-sort_3adf0c0.csv.gz; NOTES.md,
# forty-fifth session). `_after_state`: once the tile's own state has landed; `_at_end`: after the
# rows are stored, where that load has long returned. Either asks L2 for the later tile about a
# program's lifetime later than now, still 8 x SMs tiles ahead.
# the shipped kernel's prefetch, from its constexpr test to the line before the exponent
_VK_PREFETCH_BLOCK = _VK_SOURCE[_VK_SOURCE.index("    if PREFETCH_AHEAD > 0:  # noqa: SIM102"):
                                _VK_SOURCE.index("    decay = gl.exp(g)\n")]
VK_TILE_VARIANTS["vk_tile_prefetch_after_state"] = [
    (_VK_PREFETCH_BLOCK, ""),
    ("    mbarrier.wait(state_bar, state_phase)\n", "    mbarrier.wait(state_bar, state_phase)\n" + _VK_PREFETCH_BLOCK),
]
VK_TILE_VARIANTS["vk_tile_prefetch_at_end"] = [
    (_VK_PREFETCH_BLOCK, ""),
    ("    mbarrier.invalidate(bar)\n    mbarrier.invalidate(state_bar)\n",
     _VK_PREFETCH_BLOCK + "    mbarrier.invalidate(bar)\n    mbarrier.invalidate(state_bar)\n"),
]
# The vk tile's state loads evict-last (its one 5-d TMA copy a tile, the reload of a changed slot
# aside), as the kv tile's from B*HV 4096 (forty-seventh session): there the kv tile's read lines
# were evicted before its stores met them. The vk tile's rows leave by register stores (evict-last
# from 4096 by the rule, so a spec's ``el``), and it paid 0.6 us for the previous call's dirty lines
# where the kv tile paid 3.3, so less to gain. Compiled through the same PTX rewrite, inside the
# launch; the unread LOAD_EVICTION constexpr keys the binary apart from the shipped one. Measured
# (NOTES.md, forty-eighth session, vlel_*_3d11214.json): level to -0.6 points at TP=1 bf16 B=128,
# TP=4 bf16 B=512 and fp32 B=256; not shipped.
VK_TILE_VARIANTS["vk_tile_loads_evict_last"] = [
    ("STORE_EVICTION: gl.constexpr,", "STORE_EVICTION: gl.constexpr, LOAD_EVICTION: gl.constexpr,"),
    ("        STORE_EVICTION=config.store_eviction,\n",
     "        STORE_EVICTION=config.store_eviction,\n        LOAD_EVICTION=\"evict_last\",\n"),
    ("    _decode_vk_tile_kernel[(num_tiles,)](\n",
     ("    from gdn_ops.ptx_rewrite import ptx_rewrite, tma_state_loads_evict_last\n\n"
      "    with ptx_rewrite(\"_decode_vk_tile_kernel\", tma_state_loads_evict_last):\n"
      "     _decode_vk_tile_kernel[(num_tiles,)](\n")),
]
_KV_HEAD_PIECES = f"16384 // {_ELEM}, K * V * {_ELEM} // 16384, 16384"  # a head in 16 KB bulk prefetches
for _ahead in (1, 2, 3):
    KV_TILE_VARIANTS[f"kv_tile_prefetch_span{_ahead}"] = _kv_tile_prefetch(_ahead, span=_KV_HEAD_PIECES)
KV_TILE_VARIANTS["kv_tile_prefetch_span2_whole"] = _kv_tile_prefetch(2, span=f"K * V, 1, K * V * {_ELEM}")
# The drain's heads only. In the committed graph timelines (bf16 kv B=256, fp32 kv B=32; NOTES.md,
# fifty-sixth session) a launch's last ~4.4 us move ~5.5 MB, 1.3 us of the copy's pace, so the
# drain loses ~3 us a launch at every size; no program starts in its last ~4 us, and the tail's
# pieces that start last still live 3.6-3.8 us (p50) on a machine that is emptying. Here only the
# whole-tile programs whose tile `ahead` SMs on is one the tail cuts into pieces prefetch that
# head (16 KB spans): about 8 MB (tail4x2) asked of L2 2-4 tiles an SM ahead, not the whole
# launch's heads that the span forms above asked for. The tail's 264 whole tiles (tail4x2) are
# numbered from whole_tiles, so from `ahead` = 2 every one is asked for.
for _ahead in (2, 3, 4):
    KV_TILE_VARIANTS[f"kv_tile_drain_prefetch{_ahead}"] = _kv_tile_prefetch(_ahead, span=_KV_HEAD_PIECES, drain=True)
KV_TILE_VARIANTS["kv_tile_drain_prefetch3_evict_last"] = _kv_tile_prefetch(3, evict_last=True, span=_KV_HEAD_PIECES,
                                                                           drain=True)


def _kv_tile_drain_lead(lead: int) -> list[tuple[str, str]]:
    """The tail's heads prefetched (16 KB spans) by the program ``lead`` program ids before each
    head's first piece, whole-tile program or piece, as soon as it has passed its PDL wait."""
    block = (
        "    pid = gl.program_id(0)\n"
        "    if TAIL_SPLIT > 1:\n"
        "        NV_WHOLE: gl.constexpr = V // BV\n"
        f"        first_piece = pid + {lead} - whole_tiles\n"
        "        drained = whole_tiles + first_piece // TAIL_SPLIT\n"
        "        if ((first_piece >= 0) & (drained < num_tiles) & (first_piece % TAIL_SPLIT == 0)\n"
        "                & (drained % NV_WHOLE == 0) & (s_sk == V)):\n"
        "            drained_slot = _tile_slot(drained, num_tiles, indices_ptr, num_slots, NV_WHOLE, HV, HAS_INDICES)\n"
        "            if drained_slot < num_slots:\n"
        "                _prefetch_rows_l2(state_ptr + drained_slot.to(gl.int64) * s_sb + (drained // NV_WHOLE % HV).to(gl.int64) * s_sh,\n"
        f"                                  {_KV_HEAD_PIECES}, WARPS)\n"
    )
    return [*_kv_state_pointer_patches(_PREFETCH_IMPORT), ("    pid = gl.program_id(0)\n", block)]


# The same heads, each asked a constant lead of program ids ahead of its first piece (264 and 528:
# about 4 and 8 us where whole programs start, 1.6 and 3.3 us among the pieces, which start about
# 2.5 times as fast), where the forms above ask from the whole tile 132 x `ahead` before the
# head's, 132 x `ahead` program ids before the tail's first pieces but about 800 more before its
# last (pieces are numbered four to a whole tile): 4-8 us ahead of the first, 7-11 of the last.
for _lead in (264, 528):
    KV_TILE_VARIANTS[f"kv_tile_drain_lead{_lead}"] = _kv_tile_drain_lead(_lead)
# the same with the timeline's records (benchmarks/timeline_kv.py --variant): do the tail's pieces live shorter?
KV_TILE_VARIANTS["kv_tile_drain_prefetch3_timeline"] = (KV_TILE_VARIANTS["kv_tile_timeline"]
                                                        + KV_TILE_VARIANTS["kv_tile_drain_prefetch3"])

ALL_VARIANTS = VARIANTS | TMA_VARIANTS | GLUON_VARIANTS | VK_TILE_VARIANTS | KV_TILE_VARIANTS | SLOT_ORDER_VARIANTS
# The module each family of variants patches.
_PATCHED_MODULES = ((VARIANTS, shipped), (TMA_VARIANTS, shipped_tma), (GLUON_VARIANTS, shipped_gluon),
                    (VK_TILE_VARIANTS, shipped_vk_tile), (KV_TILE_VARIANTS, shipped_kv_tile),
                    (SLOT_ORDER_VARIANTS, shipped_slot_order))
# Variants whose output is not the decode step's: timed without the check against the reference.
CEILING_VARIANTS = {"step_out", "sums_only", "gluon_copy_only", "gluon_dma_only", "vk_tile_rows_unchanged",
                    "vk_tile_register_loads_no_gates", "vk_tile_register_loads_light", "vk_tile_register_loads_bare",
                    "vk_tile_register_loads_stream", "kv_tile_rows_unchanged", "kv_tile_copy_only",
                    "kv_tile_slots_before_wait"}


def is_ceiling(provider_name: str) -> bool:
    """Whether a tuning script's provider times a ceiling variant: ``variant:<name>`` then a spec or
    tile after ``:`` and launch suffixes after ``+`` (``variant:step_out+pdl``,
    ``variant:kv_tile_copy_only:t128:4:8:6:8:sort+order``)."""
    kind, _, rest = provider_name.partition(":")
    return kind == "variant" and re.split(r"[:+]", rest, maxsplit=1)[0] in CEILING_VARIANTS


@functools.cache
def load_variant(name: str) -> ModuleType:
    """The patched module: ``gdn_ops.triton_decode`` for VARIANTS, ``gdn_ops.triton_decode_tma`` for
    TMA_VARIANTS, ``gdn_ops.gluon_decode_kv`` for GLUON_VARIANTS, ``gdn_ops.gluon_decode_vk_tile``
    for VK_TILE_VARIANTS, ``gdn_ops.gluon_decode_kv_tile`` for KV_TILE_VARIANTS."""
    patches = ALL_VARIANTS[name]
    target = next(module for family, module in _PATCHED_MODULES if name in family)
    source = Path(target.__file__).read_text()
    for old, new in patches:
        if old not in source:
            raise ValueError(f"variant {name!r}: pattern not found in {Path(target.__file__).name}: {old!r}")
        source = source.replace(old, new)
    path = Path(tempfile.gettempdir()) / f"gdn_decode_variant_{name}.py"
    # written under a name of this process's own, then renamed: pytest-xdist workers load the same
    # variant at once, and one must never import (or Triton read) a file another is half-way through
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.stem, suffix=".part", delete=False) as part:
        part.write(source)
    os.replace(part.name, path)
    spec = importlib.util.spec_from_file_location(f"gdn_decode_variant_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
