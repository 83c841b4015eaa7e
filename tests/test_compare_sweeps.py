"""benchmarks.compare_sweeps: the changes it reports, on made-up sweeps and on two committed ones."""

from pathlib import Path

from benchmarks import compare_sweeps

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "h200"


def _sweep(commit, bw, figures):
    records = [{"provider": name, "status": status, "tp": 1, "B": B, "state_dtype": "bfloat16", "layout": "kv",
                "p50_us": us, "pct_of_copy_bw": pct}
               for name, B, us, pct, status in figures]
    return {"header": {"gdn_ops_commit": commit, "copy_bandwidth_Bps": bw}, "records": records}


def test_changes_of_shared_points_only_with_their_median():
    old = _sweep("aaaaaaa0", 4.25e12, [("gdn_ops", 32, 20.0, 80.0, "ok"), ("gdn_ops", 128, 70.0, 90.0, "ok"),
                                       ("copy", 128, 66.0, 95.0, "ok"), ("gdn_ops", 512, 260.0, 97.0, "ok")])
    new = _sweep("bbbbbbb1", 4.28e12, [("gdn_ops", 32, 19.0, 84.0, "ok"), ("gdn_ops", 128, 69.0, 91.5, "ok"),
                                       ("copy", 128, 66.0, 95.0, "failed"), ("gdn_ops", 1024, 500.0, 99.0, "ok")])
    lines = compare_sweeps.compare(old, new, ["gdn_ops", "copy"], min_batch=64)
    assert lines[0].startswith("gdn_ops aaaaaaa (copy 4.250 TB/s) -> bbbbbbb (copy 4.280 TB/s)")
    assert lines[1:] == ["TP=1 bf16 kv B=128   gdn_ops               90.00 ->  91.50  +1.50      -1.00 us",
                         "1 figures: median +1.50 points, +1.50..+1.50"]
    assert compare_sweeps.compare(old, new, ["sglang"])[1:] == ["no point and provider in both sweeps"]


def test_the_evict_last_loads_as_the_forty_eighth_session_read_them(capsys):
    # NOTES.md, forty-eighth session, call 1: TP=1 bf16 kv B=128 91.11 / 92.03 -> 92.25 / 93.06
    assert compare_sweeps.main([str(RESULTS / "sweep8_tp1_783fd6b.json"), str(RESULTS / "sweep8_tp1kv_4e66ab7.json"),
                                "--min-batch", "128"]) == 0
    out = capsys.readouterr().out
    assert "TP=1 bf16 kv B=128   gdn_ops               91.11 ->  92.25  +1.14" in out
    assert "TP=1 bf16 kv B=128   gdn_ops_step_order    92.03 ->  93.06  +1.02" in out
    assert "B=64 " not in out and " vk " not in out  # the batch filter; vk is in the old sweep only
    assert out.rstrip().endswith("16 figures: median +2.33 points, +1.02..+3.27")
