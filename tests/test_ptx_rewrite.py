"""The PTX rewrite that gives TMA stores an L2 policy (gdn_ops/ptx_rewrite.py): what it does to
PTX, and that its compile hook is there only inside its block, for its kernel only, beside any
hook already installed. (That it reaches the compiled kv tile: test_gluon_decode_kv_tile.py.)"""

from __future__ import annotations

import pytest
import triton.knobs

from gdn_ops.ptx_rewrite import (
    ptx_rewrite,
    tma_state_loads_and_stores_evict_last,
    tma_state_loads_evict_last,
    tma_stores_evict_last,
)

_STORE = "cp.async.bulk.tensor.5d.global.shared::cta.bulk_group [%rd1, {%r1, %r1, %r1, %r1, %r1}], [%r2]"


def _kernel_ptx(name: str) -> str:
    return (f".entry {name}(\n\t.param .u64 p\n)\n{{\n\t.reg .b32 %r<3>;\n$L__begin:\n\tmov.u32 %r1, 0;\n"
            f"\t@%p1 {_STORE};\n\t{_STORE};\n}}")


def test_each_tma_store_is_hinted_with_one_policy_made_after_the_declarations():
    lines = tma_stores_evict_last(_kernel_ptx("k")).split("\n")
    policy = "\tcreatepolicy.fractional.L2::evict_last.b64 %gdn_l2_evict_last, 1.0;"
    assert lines.index(policy) == lines.index("\tmov.u32 %r1, 0;") - 1 > lines.index("\t.reg .b32 %r<3>;")
    assert lines.count(policy) == 1 and "\t.reg .b64 %gdn_l2_evict_last;" in lines
    hinted = [line for line in lines if "bulk_group" in line]
    assert len(hinted) == 2
    assert all(line.endswith("bulk_group.L2::cache_hint [%rd1, {%r1, %r1, %r1, %r1, %r1}], [%r2], %gdn_l2_evict_last;")
               for line in hinted)


def _state_load(destination: str) -> str:
    return (f"cp.async.bulk.tensor.5d.shared::{destination}.global.mbarrier::complete_tx::bytes [%r3], "
            "[%rd2, {%r1, %r1, %r1, %r1, %r1}], [%r4]")


_QK_LOAD = "cp.async.bulk.tensor.3d.shared::cta.global.mbarrier::complete_tx::bytes [%r5], [%rd3, {%r1, %r1, %r1}], [%r4]"


@pytest.mark.parametrize("destination", ["cluster", "cta"])  # as Triton 3.6 and 3.7 write it
def test_the_state_loads_and_the_stores_share_one_policy(destination):
    """The state's loads (the 5-d ones) take the policy, q's and k's (3-d) do not; with the stores
    hinted too, the policy is made once."""
    ptx = _kernel_ptx("k").replace(f"\t{_STORE};\n}}", f"\t{_STORE};\n\t@%p2 {_state_load(destination)};\n\t{_QK_LOAD};\n}}")
    loads = tma_state_loads_evict_last(ptx)
    assert f"{_state_load(destination).replace('::bytes ', '::bytes.L2::cache_hint ')}, %gdn_l2_evict_last;" in loads
    assert f"\t{_QK_LOAD};" in loads and loads.count("bulk_group [") == 2  # the stores as they were
    both = tma_state_loads_and_stores_evict_last(ptx)
    assert both.count(".L2::cache_hint") == 3 and both.count("createpolicy") == 1
    assert both.count(".reg .b64 %gdn_l2_evict_last;") == 1


def test_ptx_without_a_state_load_is_refused():
    with pytest.raises(ValueError, match="no 5-d TMA load"):
        tma_state_loads_evict_last(_kernel_ptx("k"))


def test_ptx_without_a_tma_store_is_refused():
    with pytest.raises(ValueError, match="no TMA store"):
        tma_stores_evict_last(".entry k()\n{\n\tret;\n}")


def _run_stages(hook) -> dict[str, str]:
    """The PTX each of two kernels leaves the ``ptx`` stage with under ``hook`` (a stand-in
    backend's stages: the stage returns the kernel's PTX)."""
    out = {}
    for name in ("mine", "other"):
        stages = {"ptx": lambda src, metadata, name=name: _kernel_ptx(name)}
        hook(None, stages, None, None, 90)
        out[name] = stages["ptx"](None, {})
    return out


def test_the_hook_is_installed_only_inside_the_block_and_rewrites_only_its_kernel(monkeypatch):
    monkeypatch.setattr(triton.knobs.runtime, "add_stages_inspection_hook", None)
    with ptx_rewrite("mine", tma_stores_evict_last):
        hook = triton.knobs.runtime.add_stages_inspection_hook
        ptx = _run_stages(hook)
        key, digest = hook()  # Triton 3.7 asks for a cache key without arguments
    assert triton.knobs.runtime.add_stages_inspection_hook is None
    assert "L2::cache_hint" in ptx["mine"] and ptx["other"] == _kernel_ptx("other")
    assert key.endswith(digest) and len(digest) == 16


def test_a_hook_already_installed_still_runs_and_is_restored(monkeypatch):
    seen = []

    def previous(*args):
        if not args:
            return "previous-key", "previous-hash"
        seen.append(args[-1])

    monkeypatch.setattr(triton.knobs.runtime, "add_stages_inspection_hook", previous)
    with pytest.raises(RuntimeError, match="raised inside"), ptx_rewrite("mine", tma_stores_evict_last):
        hook = triton.knobs.runtime.add_stages_inspection_hook
        _run_stages(hook)
        key, digest = hook()
        raise RuntimeError("raised inside")
    assert seen == [90, 90]
    assert key.startswith("previous-key") and digest.startswith("previous-hash")
    assert triton.knobs.runtime.add_stages_inspection_hook is previous
