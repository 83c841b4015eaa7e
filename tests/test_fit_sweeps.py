"""benchmarks.fit_sweeps: lines through made-up timings of both file kinds, and through a committed sweep."""

import json
from pathlib import Path

import pytest

from benchmarks import fit_sweeps

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "h200"
BW = 4.0e12  # the made-up runs' copy bandwidth, bytes/s


def _us(fixed_us, n_bytes, rate_pct):
    return fixed_us + 1e6 * n_bytes / (rate_pct / 100 * BW)


def _sweep_record(provider, B, us, status="ok"):
    n = B * 2**21
    return {"provider": provider, "status": status, "tp": 1, "B": B, "state_dtype": "bfloat16", "layout": "kv",
            "bytes": n, "p50_us": us, "pct_of_copy_bw": 100 * n / (us * 1e-6) / BW}


def test_a_sweep_line_its_rate_and_what_its_shortfall_needs():
    records = [_sweep_record("gdn_ops", B, _us(6.0, B * 2**21, 101.0)) for B in (64, 128, 256, 512)]
    records += [_sweep_record("copy", B, _us(2.5, B * 2**21, 100.0)) for B in (128, 256, 512)]
    records += [_sweep_record("fla", 128, 1000.0), _sweep_record("fla", 256, 1.0, status="failed")]
    doc = {"header": {"copy_bandwidth_Bps": BW}, "records": records}
    fits = {f.name: f for f in fit_sweeps.fits(doc)}
    assert set(fits) == {"gdn_ops", "copy"}  # fla has one usable batch
    line = fits["gdn_ops"]
    assert line.table == "TP=1 bf16 kv" and line.batches == (128, 256, 512)  # B=64 under --min-batch
    assert line.fixed_us == pytest.approx(6.0) and line.rate_pct == pytest.approx(101.0)
    assert line.worst_residual_us == pytest.approx(0.0, abs=1e-9)
    n = 128 * 2**21
    assert line.fixed_for(n, 95.0) == pytest.approx(1e6 * n / BW * (1 / 0.95 - 1 / 1.01))
    # B=128 reads under 95% with the copy over it; B=256 and 512 meet it
    (text,) = fit_sweeps.shortfalls(doc, list(fits.values()))
    assert text.startswith("TP=1 bf16 kv B=128 gdn_ops: ")
    assert f"needs a fixed cost of {line.fixed_for(n, 95.0):.2f} us (fitted 6.00)" in text


def test_a_point_whose_copy_misses_the_target_gets_no_shortfall():
    records = [_sweep_record("gdn_ops", B, _us(6.0, B * 2**21, 100.0)) for B in (128, 256)]
    records += [_sweep_record("copy", B, _us(6.0, B * 2**21, 100.0)) for B in (128, 256)]
    doc = {"header": {"copy_bandwidth_Bps": BW}, "records": records}
    assert fit_sweeps.shortfalls(doc, fit_sweeps.fits(doc)) == []


def test_a_tuning_run_by_configuration_name():
    def record(B):
        n = B * 2**20
        return {"B": B, "HV": 32, "state": "float32", "layout": "vk", "bytes": n,
                "results": {"default": {"us": _us(3.0, n, 99.0), "pct_of_copy": 0.0},
                            "t8:2:8:20:4": {"us": _us(4.0, n, 98.0)}, "broken": None}}

    doc = {"header": {"copy_bandwidth_Bps": BW}, "records": [record(B) for B in (32, 256, 512)]}
    (line,) = fit_sweeps.fits(doc, min_batch=64, names=["t8:2:8:20:4"])
    assert (line.table, line.batches) == ("HV=32 fp32 vk", (256, 512))
    assert line.fixed_us == pytest.approx(4.0) and line.rate_pct == pytest.approx(98.0)
    assert "exact, 2 points" in line.line()


def test_the_kv_rule_as_a_fixed_cost_and_a_rate(capsys):
    # NOTES.md, fiftieth session: TP=1 bf16 kv under the evict-last loads, B=128-1024
    assert fit_sweeps.main([str(RESULTS / "sweep8_tp1kv_4e66ab7.json"), "--names", "gdn_ops", "copy"]) == 0
    out = capsys.readouterr().out
    assert "TP=1 bf16 kv  fixed  6.36 us  rate 100.9% of copy  B=128-1024 (4)     gdn_ops" in out
    assert "TP=1 bf16 kv  fixed  2.47 us  rate 100.0% of copy  B=128-1024 (4)     copy" in out
    assert "TP=1 bf16 kv B=128 gdn_ops: 92.25% against 95; at its rate (100.9%) that needs a fixed cost of 3.92 us" in out


def test_the_latest_run_with_three_batches_gives_a_tables_line(tmp_path):
    def run(name, fixed, batches, layout="kv"):
        records = [dict(_sweep_record(p, B, _us(fixed, B * 2**21, 100.0)), layout=layout)
                   for p in ("gdn_ops", "copy") for B in batches]
        (tmp_path / f"{name}.json").write_text(json.dumps({"header": {"copy_bandwidth_Bps": BW}, "records": records}))
        return tmp_path / f"{name}.json"

    files = [run("old", 5.0, (128, 256, 512)), run("vk", 3.0, (128, 256, 512), "vk"),
             run("new", 4.0, (128, 256, 512, 1024)), run("two_points", 1.0, (128, 256))]
    latest = fit_sweeps.latest_lines(files)
    assert {table: stem for table, (stem, _) in latest.items()} == {"TP=1 bf16 kv": "new", "TP=1 bf16 vk": "vk"}
    rows = fit_sweeps.lines_table(files).splitlines()[2:]
    assert rows[0].startswith("| TP=1 bf16 vk | `vk` | 128-512 | 3.00 us, 100.0% | - | 3.00 us, 100.0% |")
    assert rows[1].startswith("| TP=1 bf16 kv | `new` | 128-1024 | 4.00 us, 100.0% | - |")


def test_a_runs_table_ends_with_its_lines():
    from benchmarks.run import fit_lines

    doc = json.loads((RESULTS / "sweep8_tp1kv_4e66ab7.json").read_text())
    lines = fit_lines(doc["header"], doc["records"])
    assert lines[1].startswith("a call's time as fixed + bytes / rate over B >= 128")
    assert len(lines) == 2 + 6  # two tables, three names each
    assert any(line.startswith("  TP=1 bf16 kv  fixed  5.79 us  rate 101.1%") for line in lines)
    small = [r for r in doc["records"] if r["B"] < 256]  # B=128 alone: no line
    assert fit_lines(doc["header"], small) == []


def test_a_file_that_is_no_run_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(ValueError, match="copy_bandwidth_Bps"):
        fit_sweeps.fits({"records": []})
    with pytest.raises(ValueError, match="'records'"):
        fit_sweeps.fits({"header": {"copy_bandwidth_Bps": BW}})
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"header": {}}))
    with pytest.raises(SystemExit):
        fit_sweeps.main([str(path)])
    assert f"{path}: expected a benchmarks.run sweep" in capsys.readouterr().err
