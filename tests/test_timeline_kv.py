"""benchmarks/timeline_kv.py's reading of program records (started, waited, ended, SM), on records
made up here; the records themselves come from the GPU (the kv_tile_timeline and vk_tile_timeline
variants)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from benchmarks.timeline_kv import (
    launch_shape,
    program_shares,
    running_slots,
    slot_turnovers,
)


def test_running_counts_programs_between_their_wait_and_their_end():
    records = np.array([[0, 100, 300, 0], [0, 200, 400, 1]])
    assert running_slots(records, np.array([50, 100, 250, 300, 350, 400])).tolist() == [0, 1, 2, 1, 1, 0]


def test_a_launch_that_fills_late_and_drains_early_reads_so():
    # two slots: one program runs 0-10 us, the other 2-8 us; the previous launch ended at -1 us
    records = np.array([[-5_000, 0, 10_000, 0], [-5_000, 2_000, 8_000, 0]])
    shape = launch_shape(records, previous_end=-1_000, slots=2, ideal_us=9.0)
    assert shape["span_us"] == 10.0 and shape["gap_us"] == 1.0 and shape["waiting_before_first_run_us"] == 5.0
    assert shape["fill_us"] == 2.0 and shape["drain_us"] == pytest.approx(2.0, abs=0.06)
    assert shape["slots"] == pytest.approx(0.8, abs=0.01)
    assert (shape["programs"], shape["sms"]) == (2, 1)


def test_the_drain_is_charged_what_it_takes_beyond_its_share_of_the_bytes():
    # two slots and an ideal call of 10 us: one program runs 0-10 us, the other 0-6 us, so the
    # drain runs from 6 us to the end; the first program's share is spread evenly over its run
    records = np.array([[0, 0, 10_000, 0], [0, 0, 6_000, 1]])
    even = launch_shape(records, None, slots=2, ideal_us=10.0)
    assert even["drain_us"] == pytest.approx(4.0, abs=0.06)
    assert even["drain_moved_us"] == pytest.approx(0.5 * 0.4 * 10.0, abs=0.1)  # half the bytes, 40% of its run (50 ns steps)
    assert even["drain_lost_us"] == pytest.approx(2.0, abs=0.1)
    # a whole tile on the long program and a quarter piece on the short one: the drain moves more
    weighted = launch_shape(records, None, slots=2, ideal_us=10.0, shares=np.array([0.8, 0.2]))
    assert weighted["drain_moved_us"] == pytest.approx(0.8 * 0.4 * 10.0, abs=0.1)
    assert launch_shape(records, None, slots=2, ideal_us=0.0)["drain_moved_us"] is None  # no ideal, no share


def test_a_tiles_share_follows_the_grid_split_into_its_tail():
    from gdn_ops.gluon_decode_kv_tile import GluonTileConfig, split_grid

    config = GluonTileConfig(BV=128, num_warps=4, rows=8, programs_per_sm=6, vec=8, tail_split=4, tail_per_sm=2)
    for num_tiles in (3, 10):  # a grid all pieces, and 6 whole tiles then 4 cut in 16 pieces, on 2 SMs
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("gdn_ops.gluon_decode_kv_tile.sm_count", lambda index: 2)
            whole, grid = split_grid(config, num_tiles, 0)
        shares = program_shares(config, grid, sms=2)
        assert shares[:whole] == pytest.approx(np.full(whole, 1 / num_tiles))
        assert shares[whole:] == pytest.approx(np.full(grid - whole, 1 / num_tiles / 4))
    plain = program_shares(config._replace(tail_split=1), 5, sms=2)
    assert plain == pytest.approx(np.full(5, 0.2))


def test_turnovers_pair_each_sms_ends_with_its_later_starts():
    # SM 0: two first-wave programs end at 10 and 12 us, the next two start 0.5 and 0.3 us later;
    # SM 1: one program, no successor
    records = np.array([[0, 0, 10_000, 0], [0, 0, 12_000, 0], [10_500, 10_500, 20_000, 0],
                        [12_300, 12_300, 22_000, 0], [0, 0, 9_000, 1]])
    assert sorted(slot_turnovers(records).tolist()) == [300, 500]


@pytest.mark.parametrize("suffix", [".json.gz", ".json"])
def test_a_saved_run_is_read_back_without_a_gpu(tmp_path, capsys, suffix):
    from benchmarks.timeline_kv import main

    # one launch on two SMs of a 3-per-SM tile: 6 slots, two programs running from 0 to 10 us
    saved = {"spec": "t128:4:8:3:8", "records": [[[0, 0, 10_000, 0], [0, 0, 10_000, 1]]]}
    path = tmp_path / f"timeline{suffix}"
    with (gzip.open if suffix.endswith(".gz") else open)(path, "wt") as f:
        json.dump(saved, f)
    main(["--read", str(path)])
    out = capsys.readouterr().out
    assert "timeline launch 0: span_us 10.00" in out and "slots 0.33" in out and "sms 2" in out


def test_launching_needs_a_batch_and_a_spec(capsys):
    from benchmarks.timeline_kv import main

    with pytest.raises(SystemExit):
        main(["--batch", "512"])
    assert "--batch and --spec are needed" in capsys.readouterr().err


def test_a_pairs_records_split_into_its_first_tile_its_switch_and_its_second():
    # started, waited, ended, SM, first tile done, second started: a pair (10 + 0.5 + 11 us) and a
    # tail piece (its wait recorded twice), on one SM of 2 slots
    records = np.array([[0, 0, 21_500, 0, 10_000, 10_500], [0, 0, 4_000, 0, 0, 0]])
    shape = launch_shape(records, None, 2, 0.0)
    assert shape["first_tile_us"][0] == 10.0 and shape["switch_us"][0] == 0.5 and shape["second_tile_us"][0] == 11.0


def test_an_older_saved_run_gets_its_ideal_from_its_shape(tmp_path, capsys):
    """A JSON from before the script saved ``ideal_us``: the bytes of its shape at ``--copy-tbps``."""
    from benchmarks.timeline_kv import call_bytes, main

    saved = {"spec": "t128:4:8:3:8", "tp": 1, "B": 4, "state_dtype": "bf16",
             "records": [[[0, 0, 10_000, 0], [0, 0, 10_000, 1]]]}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(saved))
    main(["--read", str(path), "--copy-tbps", "2.0"])
    ideal = call_bytes(1, 4, "bf16", "kv_tile_timeline") / 2.0e6
    assert ideal > 0 and f"ideal_us {ideal:.2f}" in capsys.readouterr().out
