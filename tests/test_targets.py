"""The targets report: its verdicts on made-up sweeps, and the README's tables against the committed sweeps."""

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks import targets

README = Path(__file__).resolve().parent.parent / "README.md"


def _rec(provider, B, pct, us=10.0, tp=1, dtype="bfloat16", layout="vk", status="ok"):
    return {"provider": provider, "status": status, "tp": tp, "B": B, "state_dtype": dtype, "layout": layout,
            "pct_of_copy_bw": pct, "p50_us": us}


def _sweep(records, commit="abc1234", argv=("--tp", "1", "--out", "/tmp/r", "--tag", "t")):
    return {"header": {"gpu": "NVIDIA H200", "torch": "2.11.0", "triton": "3.6.0", "gdn_ops_commit": commit,
                       "date_utc": "2026-12-04T00:00:00+00:00", "copy_bandwidth_Bps": 4.28e12, "argv": list(argv)},
            "records": records}


def _point(B, pct, given=None, copy=None, us=10.0, us_given=None):
    timed = {"gdn_ops": (us, pct)}
    if given is not None:
        timed["gdn_ops_step_order"] = (us if us_given is None else us_given, given)
    if copy is not None:
        timed["copy"] = (us, copy)
    return targets.Point(1, "bfloat16", "vk", B, "s", timed)


@pytest.mark.parametrize("card", sorted(targets.CARD_BLOCKS))
def test_the_readme_carries_what_the_committed_sweeps_say(capsys, card):
    assert targets.main(["--card", card, "--check", str(README)]) == 0, capsys.readouterr().out


@pytest.mark.parametrize("point, status", [
    (_point(128, 95.0, 95.0, 97.0), "met"),
    (_point(128, 95.0, None, 97.0), "met"),
    (_point(128, 94.99, 95.1, 97.0), "met given the order"),
    (_point(128, 94.0, 94.5, 97.0), "open"),
    (_point(128, 94.0, 94.5, 94.9), "out of reach"),
    (_point(8, 81.0, 79.0, 78.0), "met without the order"),
    (_point(32, 89.9, 89.9, None), "open"),
    (_point(64, 50.0, 50.0, 99.0), "no target"),
    (_point(1, 30.0, None, 90.0, us=3.0), "met"),
    (_point(1, 30.0, 30.0, 90.0, us=3.1, us_given=2.9), "met given the order"),
    (_point(1, 30.0, 30.0, 10.0, us=3.1, us_given=3.2), "open"),  # a us target has no copy verdict
])
def test_status(point, status):
    assert point.status == status


@given(pct=st.floats(0, 120), copy=st.floats(0, 120), B=st.sampled_from(sorted(targets.TARGET_PCT)))
def test_out_of_reach_only_where_the_copy_falls_under_the_target(pct, copy, B):
    p = _point(B, pct, None, copy)
    target = targets.TARGET_PCT[B]
    assert (p.status == "out of reach") == (pct < target and copy < target)
    assert (p.status == "met") == (pct >= target)
    cell = targets._cell(p)
    assert cell.endswith("†") == (p.status == "out of reach")
    assert cell.startswith("**") == (pct >= target)


def test_a_later_sweep_replaces_a_point_with_its_own_copy(tmp_path):
    old = _sweep([_rec("gdn_ops", 128, 90.0), _rec("copy", 128, 99.0), _rec("gdn_ops", 256, 96.0),
                  _rec("copy", 256, 99.0), _rec("sglang", 256, 0.0, us=20.0)], commit="1111111")
    new = _sweep([_rec("gdn_ops", 128, 94.0, us=9.0), _rec("copy", 128, 93.0),
                  _rec("gdn_ops_step_order", 128, 96.0), _rec("fla", 128, 20.0, status="failed")],
                 commit="2222222", argv=("--tp", "1", "--batches", "128", "--time-budget-s", "9"))
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    (tmp_path / "sources.txt").write_text("# oldest first\nold.json\n\nnew.json  # B=128 again\n")
    points, headers = targets.merge(targets.read_sources(tmp_path / "sources.txt"))
    p128, p256 = points[(1, "bfloat16", "vk", 128)], points[(1, "bfloat16", "vk", 256)]
    assert (p128.source, p128.pct, p128.pct_given_order, p128.copy_pct) == ("new", 94.0, 96.0, 93.0)
    assert p128.status == "met given the order"
    assert (p256.source, p256.copy_pct, p256.sglang_us) == ("old", 99.0, 20.0)
    text = targets.report(points, headers)
    assert "| 128 | - | 94.00 / **96.00** | - | - |" in text
    assert "| 256 | - | **96.00** | - | - |" in text
    assert "`new` (`--tp 1 --batches 128`): TP=1 bf16 vk B=128 (gdn_ops 2222222" in text
    assert "`old` (`--tp 1`): TP=1 bf16 vk B=256 (gdn_ops 1111111" in text
    assert "slower than gdn_ops at 1 of 1 points (2.00x-2.00x)" in text


def test_a_sweep_on_another_gpus_tuning_tables_says_so(tmp_path):
    own, other = _sweep([_rec("gdn_ops", 128, 94.0)]), _sweep([_rec("gdn_ops", 128, 95.0)], commit="2222222")
    own["header"]["tuning_gpu"] = "NVIDIA H200"
    other["header"].update(gpu="NVIDIA H100 80GB HBM3", tuning_gpu="H200")
    assert targets.tuning_note(own["header"]) == targets.tuning_note(_sweep([])["header"]) == ""
    (tmp_path / "other.json").write_text(json.dumps(other))
    line = targets.sources_lines(*targets.merge([tmp_path / "other.json"]))
    assert line.endswith("NVIDIA H100 80GB HBM3, torch 2.11.0, Triton 3.6.0, 2026-12-04, "
                         "tuning tables of 'H200' (GDN_OPS_TUNING_GPU))")


@given(us=st.floats(1.0, 1e4), pct=st.floats(1.0, 101.0), bw=st.floats(1e12, 1e13))
def test_a_projection_to_the_same_card_changes_nothing(us, pct, bw):
    q = targets.projected(_point(128, pct, copy=pct, us=us), bw, bw)
    assert q.us == pytest.approx(us) and q.pct == pytest.approx(pct) and q.copy_pct == pytest.approx(pct)


def test_a_projection_keeps_the_time_beyond_the_copys_rate():
    # 10 us at 50% of a 4 TB/s copy: 5 us of bytes, 5 beyond; at 2 TB/s the bytes take 10 us
    q = targets.projected(_point(128, 50.0, copy=100.0, us=10.0), 4e12, 2e12)
    assert q.us == pytest.approx(15.0) and q.pct == pytest.approx(100 * 10 / 15)
    assert q.timed["copy"] == pytest.approx((20.0, 100.0))


def test_a_projection_needs_bandwidths_above_zero(capsys):
    with pytest.raises(ValueError, match=r"copy bandwidths above zero \(got copy_bw=4000000000000.0, to_copy_bw=0.0\)"):
        targets.projected(_point(128, 50.0), 4e12, 0.0)
    with pytest.raises(SystemExit):
        targets.main(["--project", "0"])
    assert "--project: a copy bandwidth in TB/s above zero (got 0)" in capsys.readouterr().err


def test_project_prints_each_targeted_points_verdict_there(capsys):
    assert targets.main(["--project", "3.0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("on a card copying at 3.00 TB/s")
    points, _ = targets.merge(targets.read_sources(targets.card_sources(targets.DEFAULT_CARD)))
    assert len(out) - 1 == sum(p.status != "no target" for p in points.values())


def _with_no_pdl(point, us, pct):
    return targets.Point(point.tp, point.dtype, point.layout, point.B, point.source,
                         {**point.timed, "gdn_ops_no_pdl": (us, pct)})


@pytest.mark.parametrize("point, no_pdl, needs_pdl", [
    (_point(128, 95.5, 96.0, 97.0), (11.0, 94.0), True),
    (_point(128, 95.5, 96.0, 97.0), (10.5, 95.1), False),
    (_point(128, 94.5, 95.5, 97.0), (11.0, 93.0), False),  # met given the order only: not comparable
    (_point(1, 30.0, None, 90.0, us=2.8), (3.4, 25.0), True),
    (_point(1, 30.0, None, 90.0, us=2.8), (2.9, 29.0), False),
    (_point(128, 94.0, 94.5, 94.9), (11.0, 93.0), False),  # out of reach
])
def test_a_verdict_met_only_with_pdl_between_calls_is_told(point, no_pdl, needs_pdl):
    p = _with_no_pdl(point, *no_pdl)
    assert p.met_only_with_pdl is needs_pdl
    assert (targets._named(p, p.figure_no_pdl) in targets.pdl_lines({(1, "bfloat16", "vk", p.B): p})) is needs_pdl


def test_pdl_lines_name_the_out_of_reach_points_above_their_copy_and_are_empty_without_the_column():
    above = _with_no_pdl(_point(8, 79.0, None, 78.0), 12.0, 74.0)
    under = _with_no_pdl(_point(32, 70.0, None, 80.0), 12.0, 68.0)
    text = targets.pdl_lines({(1, "bfloat16", "vk", 8): above, (1, "bfloat16", "vk", 32): under})
    assert text.startswith("Met only with PDL between consecutive decode calls") and ": none." in text
    assert text.endswith("(under it without): TP=1 bf16 vk B=8.")
    assert targets.pdl_lines({(1, "bfloat16", "vk", 8): _point(8, 79.0, None, 78.0)}) == ""


def test_sglang_faster_somewhere_is_named():
    fast = targets.Point(4, "float32", "vk", 512, "s", {"gdn_ops": (10.0, 90.0), "sglang": (9.5, 94.7)})
    assert targets.sglang_line({(4, "float32", "vk", 512): fast}).endswith("; faster at TP=4 fp32 vk B=512.")


@pytest.mark.parametrize(("sglang_us", "verdict"), [(10.08, "level"), (9.95, "level"), (10.11, "slower"), (9.89, "faster")])
def test_sglang_within_one_percent_is_level_not_slower(sglang_us, verdict):
    """Medians 0.08% apart (the H100's TP=1 fp32 vk B=1024) are no win for either."""
    point = targets.Point(1, "float32", "vk", 1024, "s", {"gdn_ops": (10.0, 98.0), "sglang": (sglang_us, 97.0)})
    line = targets.sglang_line({(1, "float32", "vk", 1024): point})
    assert line.startswith(f"SGLang is slower than gdn_ops at {int(verdict == 'slower')} of 1 points")
    assert ("level (within 1%) at TP=1 fp32 vk B=1024" in line) == (verdict == "level")
    assert ("faster at TP=1 fp32 vk B=1024" in line) == (verdict == "faster")


def test_a_later_run_where_gdn_ops_failed_replaces_the_point(tmp_path):
    """An earlier run's verdict must not stand where the latest run's gdn_ops failed its check."""
    old = _sweep([_rec("gdn_ops", 128, 96.0), _rec("copy", 128, 98.0), _rec("sglang", 128, 80.0, us=20.0)])
    new = _sweep([{**_rec("gdn_ops", 128, None, us=None, status="failed"), "note": "correctness check failed"},
                  _rec("copy", 128, 98.0)], commit="def5678")
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    points, _ = targets.merge([tmp_path / "old.json", tmp_path / "new.json"])
    point = points[(1, "bfloat16", "vk", 128)]
    assert (point.source, point.status, point.failed) == ("new", "failed", "correctness check failed")
    assert targets.sglang_line(points) == "SGLang: not in these sweeps."
    assert "| 128 | - | failed | - | - |" in targets.table(points, 1)


def test_two_sources_of_one_file_name_are_refused(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "sweep.json").write_text(json.dumps(_sweep([_rec("gdn_ops", 128, 96.0)])))
    with pytest.raises(ValueError, match="same file name"):
        targets.merge([tmp_path / "a" / "sweep.json", tmp_path / "b" / "sweep.json"])


def test_a_readme_without_a_block_and_an_empty_sources_file_are_errors(tmp_path):
    with pytest.raises(ValueError, match="targets:begin"):
        targets.readme_block("# no tables here\n")
    with pytest.raises(ValueError, match="tables:begin"):
        targets.readme_block("<!-- targets:begin -->\n<!-- targets:end -->\n", "tables")
    (tmp_path / "sources.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="names no sweep file"):
        targets.read_sources(tmp_path / "sources.txt")


def test_update_fills_the_blocks_and_check_then_passes_until_a_figure_changes(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- targets:begin -->\nold\n<!-- targets:end -->\ntext\n"
                      "<!-- tables:begin --><!-- tables:end -->\n<!-- fits:begin --><!-- fits:end -->\n")
    assert targets.main(["--check", str(readme)]) == 1
    assert targets.main(["--update", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n<!-- targets:begin -->\n| B (TP=1) | fp32 vk | bf16 vk | fp32 kv | bf16 kv |")
    assert "\ntext\n<!-- tables:begin -->\nTP=1, fp32 state, vk layout (" in text
    assert "<!-- fits:begin -->\n| table | run | B | gdn_ops | given the order | copy |" in text
    assert "old" not in text
    assert targets.main(["--check", str(readme)]) == 0
    start, end = targets.readme_block(text, "tables")
    row = text.index("| 128 |", start)
    readme.write_text(text[:row] + text[row:end].replace("%", "", 1) + text[end:])
    assert targets.main(["--check", str(readme)]) == 1
    assert "--update" in capsys.readouterr().out


def test_another_cards_blocks_carry_its_name_and_leave_the_h200s_alone(tmp_path, capsys):
    h200_blocks = "<!-- targets:begin -->\nH200\n<!-- targets:end -->\n<!-- fits:begin -->\nH200\n<!-- fits:end -->\n"
    readme = tmp_path / "README.md"
    readme.write_text(h200_blocks + "<!-- targets-h100:begin -->\n<!-- targets-h100:end -->\n"
                      "<!-- fits-h100:begin -->\n<!-- fits-h100:end -->\n")
    assert targets.main(["--card", "h100", "--check", str(readme)]) == 1
    assert "--card h100 --update" in capsys.readouterr().out
    assert targets.main(["--card", "h100", "--update", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(h200_blocks)
    start, end = targets.readme_block(text, "targets-h100")
    assert "NVIDIA H100 80GB HBM3" in text[start:end]
    assert targets.main(["--card", "h100", "--check", str(readme)]) == 0
    with pytest.raises(ValueError, match="tables:begin"):
        targets.main(["--check", str(readme)])  # the H200's blocks include its tables


def test_the_tables_name_every_provider_the_benchmark_times():
    from benchmarks import providers

    assert tuple(targets.PROVIDER_HEADINGS) == providers.PROVIDER_NAMES


def test_the_plot_draws_every_table_in_the_targets_order(monkeypatch, tmp_path):
    from benchmarks import run

    drawn = {}
    monkeypatch.setattr(run, "plot", lambda path, head, records, title=None: drawn.update(records=records, title=title))
    files = [tmp_path / "a.json", tmp_path / "b.json"]
    files[0].write_text(json.dumps(_sweep([_rec("gdn_ops", 128, 90.0, layout="kv"), _rec("copy", 128, 97.0, layout="kv"),
                                           _rec("gdn_ops", 32, 80.0, tp=4)])))
    later = _sweep([_rec("gdn_ops", 8, 70.0, dtype="float32"), _rec("sglang", 8, 60.0, dtype="float32")], commit="def5678")
    later["header"].update(copy_bandwidth_Bps=4.25e12, date_utc="2026-12-05T00:00:00+00:00")
    files[1].write_text(json.dumps(later))
    points, headers = targets.merge(files)
    assert targets.plot_points(tmp_path / "p.png", points, headers) is None
    panels = [(r["tp"], r["state_dtype"], r["layout"], r["B"], r["provider"], r["pct_of_copy_bw"]) for r in drawn["records"]]
    assert panels == [(1, "float32", "vk", 8, "gdn_ops", 70.0), (1, "float32", "vk", 8, "sglang", 60.0),
                      (1, "bfloat16", "kv", 128, "gdn_ops", 90.0), (1, "bfloat16", "kv", 128, "copy", 97.0),
                      (4, "bfloat16", "vk", 32, "gdn_ops", 80.0)]
    assert drawn["title"].endswith("copy 4.250-4.280 TB/s; 2 runs of 2026-12-04 to 2026-12-05")
    assert targets.plot_points(tmp_path / "p.png", {}, {}).startswith("nothing to plot")


@pytest.mark.parametrize("sources", sorted((README.parent / "benchmarks" / "results").glob("*/targets_sources.txt")),
                         ids=lambda p: p.parent.name)
def test_each_cards_sources_give_every_targeted_point(sources):
    """Each card's sources file names committed sweeps that between them hold every targeted point."""
    points, _ = targets.merge(targets.read_sources(sources))
    wanted = {(tp, dtype, layout, B) for tp in (1, 4) for dtype, layout in targets.COLUMNS
              for B in (1, *targets.TARGET_PCT)}
    assert not wanted - set(points), sorted(wanted - set(points))
