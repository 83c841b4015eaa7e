"""The per-tile Triton decode kernel compiled for sm_90 without a GPU, specialised as a launch on
contiguous Qwen3-Next operands specialises it: every state store is one 16-byte vector and nothing
spills. Its register count is what caps the programs resident per SM (NOTES.md, tenth session)."""

from __future__ import annotations

import re

import pytest
import torch
from sm90_compile import (
    assert_no_spills,
    compile_launch_sm90,
    ptxas_report,
    run_in_child,
)

from gdn_ops.triton_decode import decode_config

# (layout, state dtype, B at TP=1): the H200 tables' tiles at the batch sizes they serve (fp32 vk
# at B=128 with its rows in slot order)
CASES = [("vk", "float32", 1), ("vk", "float32", 8), ("vk", "float32", 32), ("vk", "float32", 128),
         ("vk", "bfloat16", 1), ("vk", "bfloat16", 32),
         ("vk", "bfloat16", 128), ("kv", "float32", 1), ("kv", "float32", 8), ("kv", "float32", 32),
         ("kv", "bfloat16", 1), ("kv", "bfloat16", 8), ("kv", "bfloat16", 32)]


def recorded_launch(layout: str, state_dtype: torch.dtype, act_dtype: torch.dtype, B: int, slot_pad: int = 0,
                    **options):
    """The config and the arguments ``launch_decode`` passes the per-tile kernel (the H200's tile
    for this B, with ``options`` of :class:`DecodeConfig` replaced) on a TP=1 case on CPU, its
    operands contiguous but for pool slots ``slot_pad`` elements further apart than dense, the
    kernel (and the slot-order kernel before it, for a tile that sorts) replaced by a recorder."""
    import gdn_ops.triton_decode as launcher
    from benchmarks.sass_of_launch import record_decode_launch

    config = launcher.decode_config(B * 32, 128, 128, state_dtype, layout, "NVIDIA H200", act_dtype.itemsize)
    config = config._replace(**options)
    args, kwargs = record_decode_launch(launcher, layout, state_dtype, act_dtype, B, (16, 32), config, slot_pad)
    return launcher._decode_kernel, config, args, kwargs


def compiled(layout: str, state: str, act: str, B: int, slot_pad: int = 0, **options) -> str:
    """``"<registers> <16-byte state stores> <other state stores>"`` then the
    ``ptxas -v`` report, of the kernel compiled for sm_90 as Triton specialises that launch
    (``sm90_compile.compile_launch_sm90``)."""
    kernel, _, args, kwargs = recorded_launch(layout, getattr(torch, state), getattr(torch, act), B, slot_pad,
                                              **options)
    ptx = compile_launch_sm90(kernel, list(args), kwargs).asm["ptx"]
    report = ptxas_report(ptx)
    registers = re.search(r"Used (\d+) registers", report).group(1)
    # the state is the only thing stored with the streaming hint (.cs)
    vector_stores = len(re.findall(r"st\.global\.cs\.v4\.", ptx))
    other_stores = len(re.findall(r"st\.global\.cs\.(?!v4\.)", ptx))
    return f"{registers} {vector_stores} {other_stores}\n{report}"


@pytest.mark.parametrize("act", ["bfloat16", "float32"])
@pytest.mark.parametrize(("layout", "state", "B"), CASES)
def test_per_tile_kernel_stores_its_state_in_16_byte_vectors_without_spills(layout, state, B, act):
    stdout = run_in_child("test_decode_kernel_sm90", f"t.compiled({layout!r}, {state!r}, {act!r}, {B})")
    counts, report = stdout.split("\n", 1)
    _, vector_stores, other_stores = map(int, counts.split())
    config = decode_config(B * 32, 128, 128, getattr(torch, state), layout, "NVIDIA H200", getattr(torch, act).itemsize)
    tile_bytes = config.BV * config.BK * getattr(torch, state).itemsize
    vectors = tile_bytes // (16 * 32 * config.num_warps)
    assert (vector_stores, other_stores) == (vectors, 0)
    assert_no_spills(report)


@pytest.mark.parametrize(("layout", "state", "slot_pad", "vector_bytes"),
                         [("vk", "float32", 4, 16), ("vk", "bfloat16", 8, 16), ("kv", "float32", 4, 16),
                          ("kv", "bfloat16", 8, 16), ("vk", "float32", 1, 4)])
def test_page_strided_pool_still_stores_16_byte_vectors(layout, state, slot_pad, vector_bytes):
    """Slots ``slot_pad`` elements further apart than dense: 16 bytes (a stride Triton does not
    mark divisible, not being a multiple of 16 elements) stores as the dense pool does; one odd
    element stays one element a store, as it must."""
    stdout = run_in_child("test_decode_kernel_sm90", f"t.compiled({layout!r}, {state!r}, 'bfloat16', 32, {slot_pad})")
    _, vector_stores, other_stores = map(int, stdout.split("\n", 1)[0].split())
    config = decode_config(32 * 32, 128, 128, getattr(torch, state), layout, "NVIDIA H200", 2)
    stores = config.BV * config.BK * getattr(torch, state).itemsize // (vector_bytes * 32 * config.num_warps)
    assert (vector_stores, other_stores) == ((stores, 0) if vector_bytes == 16 else (0, stores))


def early_tile_loads(state: str, BV: int) -> str:
    """The launch's EARLY_TILE, then the global loads after the PDL wait, in PTX order, as
    ``volatile``/``plain`` and the vector width (``v4``, ``v2`` or ``1``), one a line, then the ptxas
    report: the per-tile kernel with the early tile (``operands_first``, ``early_tile``, ``BV`` rows
    on one warp) at TP=1 B=1 kv under PDL, compiled for sm_90."""
    kernel, _, args, kwargs = recorded_launch("kv", getattr(torch, state), torch.bfloat16, 1, BV=BV, num_warps=1,
                                              operands_first=True, early_tile=True)
    ptx = compile_launch_sm90(kernel, list(args), kwargs).asm["ptx"]
    after_wait = ptx[ptx.index("griddepcontrol.wait"):]
    loads = [("volatile" if volatile else "plain") + " " + (width or "1")
             for volatile, width in re.findall(r"ld(\.volatile)?\.global(?:\.\w+)*?\.(v[24])?\.?[bsu]\d+", after_wait)]
    return "\n".join([str(kwargs["EARLY_TILE"]), *loads, "--", ptxas_report(ptx)])


@pytest.mark.parametrize(("state", "BV"), [("float32", 16), ("bfloat16", 16), ("float32", 32)])
def test_early_tile_asks_for_every_load_before_the_slot_comes_back(state, BV):
    """The early tile as the H100's rule launches it: after the PDL wait, the operands, the tile at
    the slot read before the wait and then the slot's own read are all volatile loads, which ptxas
    keeps in program order, so none waits behind the slot; the tile at the later slot is a plain
    load of the same vectors (taken only on a mismatch); nothing spills."""
    stdout = run_in_child("test_decode_kernel_sm90", f"t.early_tile_loads({state!r}, {BV})")
    head, report = stdout.split("\n--\n", 1)
    launched, *loads = head.split("\n")
    vectors = BV * 128 * getattr(torch, state).itemsize // (16 * 32)
    volatile = [load for load in loads if load.startswith("volatile")]
    assert launched == "True"
    # q, k, v, the two gates, A_log and dt_bias; then the tile; the slot last
    assert volatile[-vectors - 1:] == ["volatile v4"] * vectors + ["volatile 1"]
    assert loads[:len(volatile)] == volatile
    assert loads[len(volatile):] == ["plain v4"] * vectors
    assert_no_spills(report)


@pytest.mark.parametrize(("state", "BV"), [("fp32", 16), ("bf16", 32)])
def test_early_tile_sass_asks_for_the_tile_before_the_slot_comes_back(state, BV):
    """The same in the machine code (``benchmarks/sass_of_launch.py``): after the PDL wait
    (ACQBULK) every global load up to the slot's is a strong (volatile) one, the tile's vectors
    last before the slot, so none waits behind the slot; the tile at a changed slot is plain loads
    after them. Without the early tile, no load is strong."""
    expression = "'\\n'.join(t.main(['--tile', '{}:1:of{}', '--state', '" + state + "']))"
    early, plain = (run_in_child("benchmarks.sass_of_launch", expression.format(BV, et)).splitlines()
                    for et in (":et", ""))
    loads = [line for line in early[early.index("ACQBULK ;"):] if re.search(r"\bLDG\.", line)]
    strong = next(i for i, line in enumerate(loads) if "STRONG.SYS" not in line)
    vectors = BV * 128 * {"fp32": 4, "bf16": 2}[state] // (16 * 32)
    assert all("STRONG.SYS" in line for line in loads[:strong])
    assert all("LDG.E.128.STRONG.SYS" in line for line in loads[strong - 1 - vectors:strong - 1])
    assert ".128" not in loads[strong - 1]  # the slot
    assert all(re.search(r"LDG\.E\.128 ", line) for line in loads[strong:strong + vectors])
    assert not any("STRONG.SYS" in line for line in plain)


def test_sass_of_launch_names_a_tree_that_is_not_a_checkout(tmp_path):
    from benchmarks.sass_of_launch import main

    with pytest.raises(SystemExit, match="--tree .*expected a gdn-ops checkout"):
        main(["--tree", str(tmp_path)])
