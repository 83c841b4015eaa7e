"""benchmarks/profile_decode.py, the launcher Nsight Compute profiles: the decode at a benchmark
point, or with ``--stream`` probe_stream's register stream on the same pool (off a GPU both run in
Triton's interpreter, which checks only that the launches run)."""

from __future__ import annotations

import pytest
import torch
from conftest import TRITON_INTERPRET

needs_interpreter_or_gpu = pytest.mark.skipif(not TRITON_INTERPRET and not torch.cuda.is_available(),
                                              reason="needs Triton's interpreter or a GPU")


@needs_interpreter_or_gpu
@pytest.mark.parametrize(("extra", "launched"), [
    ([], "DecodeConfig(BV=4"),
    (["--stream", "1:c1024"], "reg:w1:c1024"),
    (["--tile", "8:1:sort"], ("DecodeConfig(BV=8, BK=128, num_warps=1, maxnreg=None, from_old_state=True, "
                              "sort_rows=True, operands_first=False, early_tile=False)")),
    (["--variant", "plain_store"], "plain_store DecodeConfig(BV=4"),  # a per-tile variant gets the table's tile
])
def test_profile_launches_the_decode_or_the_stream(capsys, extra, launched):
    from benchmarks.profile_decode import main

    main(["--batch", "1", "--tp", "4", "--state-dtype", "fp32", "--layout", "vk", "--launches", "1", *extra])
    out = capsys.readouterr().out
    assert "tp4 HK=4 HV=8" in out and f"1 launches of {launched}" in out


@needs_interpreter_or_gpu
def test_profile_rotates_launches_through_pools(capsys):
    from benchmarks.profile_decode import main

    main(["--batch", "1", "--tp", "4", "--state-dtype", "bf16", "--layout", "kv", "--launches", "3", "--pools", "2"])
    assert "3 launches of DecodeConfig(BV=" in (out := capsys.readouterr().out) and "over 2 pool(s)" in out


@needs_interpreter_or_gpu
def test_profile_launches_the_split_prototype(capsys):
    from benchmarks.profile_decode import main

    main(["--batch", "1", "--tp", "4", "--state-dtype", "bf16", "--layout", "kv", "--launches", "1",
          "--spec", "s8:1:sort"])
    assert "1 launches of KvSplitConfig(parts=8, num_warps=1, sort_rows=True" in capsys.readouterr().out


def test_pools_must_be_at_least_one(capsys):
    from benchmarks.profile_decode import main

    with pytest.raises(SystemExit):
        main(["--batch", "1", "--state-dtype", "bf16", "--layout", "kv", "--pools", "0"])
    assert "--pools: at least one pool (got 0)" in capsys.readouterr().err


def test_a_tile_variant_needs_its_tile(capsys):
    """A Gluon tile variant is profiled at the tile its spec names; without one the launcher would
    pick another kernel, so the command refuses before launching anything."""
    from benchmarks.profile_decode import main

    with pytest.raises(SystemExit):
        main(["--batch", "1", "--state-dtype", "fp32", "--layout", "kv", "--variant", "kv_tile_four_per_sm"])
    assert "give its tile with --spec" in capsys.readouterr().err
