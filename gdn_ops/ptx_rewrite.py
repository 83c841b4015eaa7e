"""A kernel's PTX rewritten before ptxas, for what Gluon cannot say: an L2 policy on TMA copies.

Gluon's TMA copies (``tma.async_copy_global_to_shared``, ``tma.async_copy_shared_to_global``,
Triton 3.6 and 3.7) take no cache hint, but the PTX instructions under them do (``.L2::cache_hint``
with a 64-bit policy made by ``createpolicy``). The kv tile kernel loads its state evict-last from
the B*HV where that pays (``gluon_decode_kv_tile.TileRule.loads_evict_last``; NOTES.md,
forty-seventh session) and can store its rows so (``store_eviction``; twenty-eighth session), so
its launcher compiles those specialisations inside :func:`ptx_rewrite`.

The rewrite is installed as Triton's compile-stage hook only while the block runs (so no other
kernel compiled elsewhere sees it), chained to any hook already there, and touches only the PTX
whose entry is the named kernel. The kernel must tell the hinted binary apart from the plain one
by a constexpr of its own: Triton 3.6 keys its caches without the hook (3.7 adds the hook's key).
Triton's knobs are process-wide, so a compile on another thread during the block could see the
hook; it would rewrite only this kernel's PTX, and a cache hint does not change what is computed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import re
import sys
from collections.abc import Callable, Iterator

_TMA_STORE = re.compile(r"(cp\.async\.bulk\.tensor\.\dd\.global\.shared::cta\.bulk_group) (\[[^;]*\]);")
# a tile kernel's state copies, its only 5-d TMA loads (the kv tile's q and k are 3-d, the vk
# tile's 4-d); Triton 3.6 writes the destination shared::cluster, 3.7 shared::cta
_TMA_STATE_LOAD = re.compile(
    r"(cp\.async\.bulk\.tensor\.5d\.shared::\w+\.global\.mbarrier::complete_tx::bytes) (\[[^;]*\]);")


def _hinted(ptx: str, pattern: re.Pattern, what: str, level: str = "evict_last") -> str:
    """``ptx`` (one kernel) with each ``pattern`` instruction carrying an L2 policy of this
    ``level`` (``evict_last``; the benchmark's variants try others), held in ``%gdn_l2_<level>`` and
    made once, unless already made, at the kernel's first instruction after its declarations and
    any policies made before."""
    policy = f"%gdn_l2_{level}"
    ptx, count = pattern.subn(rf"\1.L2::cache_hint \2, {policy};", ptx)
    if not count:
        raise ValueError(f"no {what} in the PTX")
    if f".reg .b64 {policy};" in ptx:
        return ptx
    body = ptx.index("{", ptx.index(".entry"))
    lines = ptx[body + 1:].split("\n")
    first = next(i for i, line in enumerate(lines)
                 if line.strip() and not line.strip().startswith((".", "//", "$", "createpolicy")))
    lines[first:first] = [f"\t.reg .b64 {policy};", f"\tcreatepolicy.fractional.L2::{level}.b64 {policy}, 1.0;"]
    return ptx[:body + 1] + "\n".join(lines)


def tma_stores_evict_last(ptx: str) -> str:
    """``ptx`` (one kernel) with every TMA store carrying an evict-last L2 policy. Raises
    ``ValueError`` where the PTX has no TMA store to hint (a Triton whose PTX this does not
    recognise)."""
    return _hinted(ptx, _TMA_STORE, "TMA store (cp.async.bulk.tensor...bulk_group)")


def tma_state_loads_evict_last(ptx: str) -> str:
    """``ptx`` (a tile kernel: its state's TMA loads are its only 5-d ones, in the kv and the vk
    tile) with those loads carrying an evict-last L2 policy: a tile's lines then stay in L2 until
    its program stores them back. Raises ``ValueError`` where the PTX has no such load."""
    return _hinted(ptx, _TMA_STATE_LOAD, "5-d TMA load (cp.async.bulk.tensor.5d...mbarrier)")


def tma_state_loads_and_stores_evict_last(ptx: str) -> str:
    """Both of the above: the state's TMA loads and every TMA store evict-last."""
    return tma_stores_evict_last(tma_state_loads_evict_last(ptx))


@functools.cache
def _digest(kernel: str, rewrite: Callable[[str], str]) -> str:
    """A short hash of ``kernel``, ``rewrite``'s source and this module's (whose helpers the
    rewrites share), cached: read on every launch."""
    sources = inspect.getsource(rewrite) + inspect.getsource(sys.modules[__name__])
    return hashlib.sha256((kernel + sources).encode()).hexdigest()[:16]


@contextlib.contextmanager
def ptx_rewrite(kernel: str, rewrite: Callable[[str], str]) -> Iterator[None]:
    """While the block runs, Triton compiles the kernel whose PTX entry is ``kernel`` with its PTX
    passed through ``rewrite`` before ptxas; any compile-stage hook already installed still runs,
    and is restored afterwards. (Triton 3.7 also asks the hook, without arguments, for a key to
    cache compiles under: here a hash of the kernel name and the rewrite's source.)"""
    import triton.knobs

    previous = triton.knobs.runtime.add_stages_inspection_hook
    digest = _digest(kernel, rewrite)

    def hook(*args):
        if not args:
            key, value = previous() if previous is not None else ("", "")
            return f"{key}-ptx-rewrite-{digest}", f"{value}{digest}"
        backend, stages, options, language, capability = args
        if previous is not None:
            previous(backend, stages, options, language, capability)
        make_ptx = stages["ptx"]
        stages["ptx"] = lambda src, metadata: (
            rewrite(ptx) if f".entry {kernel}(" in (ptx := make_ptx(src, metadata)) else ptx)

    triton.knobs.runtime.add_stages_inspection_hook = hook
    try:
        yield
    finally:
        triton.knobs.runtime.add_stages_inspection_hook = previous
