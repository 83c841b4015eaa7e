"""Every kernel experiment in benchmarks/variants.py still applies to the current kernel sources
(a variant whose pattern no longer matches would otherwise fail only on the GPU machine)."""

from __future__ import annotations

import pytest

from benchmarks.variants import ALL_VARIANTS, TMA_VARIANTS, VARIANTS, load_variant


@pytest.mark.parametrize("name", sorted(ALL_VARIANTS))
def test_variant_patches_the_current_source(name):
    module = load_variant(name)
    launcher = ("launch_decode" if name in VARIANTS else "launch_decode_kv_tma" if name in TMA_VARIANTS
                else "launch_decode_kv_gluon")
    assert callable(getattr(module, launcher))
