"""The README's demo command runs, checks itself against the reference and reports success."""

from __future__ import annotations

from gdn_ops import demo


def test_demo_passes_its_reference_check(capsys):
    assert demo.main(["--batch", "3", "--heads", "2,4", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "-> OK" in out and "us per call" in out
