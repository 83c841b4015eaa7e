"""benchmarks/neighbour_gemm.py: a decode call followed by its own GEMM leaves the decode's result
as the decode alone does, and the GEMM is the one asked for (off a GPU the decode runs in Triton's
interpreter)."""

from __future__ import annotations

import pytest
import torch
from conftest import TRITON_INTERPRET

needs_interpreter_or_gpu = pytest.mark.skipif(not TRITON_INTERPRET and not torch.cuda.is_available(),
                                              reason="needs Triton's interpreter or a GPU")


@needs_interpreter_or_gpu
@pytest.mark.parametrize("layout", ["vk", "kv"])
def test_each_call_is_the_decode_then_its_own_gemm(monkeypatch, layout):
    from benchmarks.neighbour_gemm import with_gemm
    from benchmarks.providers import Config, launcher_provider, make_problem

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = Config(tp=1, HK=2, HV=4, K=16, V=32, B=3, state_dtype=torch.float32, layout=layout)
    problem = make_problem(cfg, device)
    pool = problem.pool.clone()
    decode = launcher_provider("default")
    expected_out = decode.make(cfg, pool, problem.indices, problem.inputs)().clone()

    products = []
    real_mm = torch.mm

    def mm(a, b, *, out):
        products.append((a.clone(), b.clone()))
        return real_mm(a, b, out=out)

    monkeypatch.setattr(torch, "mm", mm)
    step = with_gemm(decode, 8, 40).make(cfg, problem.pool, problem.indices, problem.inputs)
    assert torch.equal(step(), expected_out)
    assert torch.equal(problem.pool, pool)
    [(x, w)] = products
    assert x.shape == (3, 8) and w.shape == (8, 40) and x.dtype == w.dtype == cfg.act_dtype
    assert with_gemm(decode, 8, 40).name == "default+gemm"


def test_the_decodes_are_the_default_each_spec_and_its_variants():
    from benchmarks.neighbour_gemm import decode_providers

    names = [p.name for p in decode_providers(["t16:1:16:24:8:sort", "64:4:3:4"],
                                              ["vk_tile_cs_store", "kv_tile_row_stores"], "vk", True)]
    assert names == ["default+order", "t16:1:16:24:8:sort+order",
                     "variant:vk_tile_cs_store:t16:1:16:24:8:sort+order", "64:4:3:4+order"]
    no_pdl = decode_providers([], [], "kv", False, without_pdl=True)
    assert [p.name for p in no_pdl] == ["default", "default+no_pdl"]


@needs_interpreter_or_gpu
def test_the_decode_without_pdl_is_launched_without_it(monkeypatch):
    import gdn_ops.triton_decode as launcher
    from benchmarks.neighbour_gemm import decode_providers
    from benchmarks.providers import Config, make_problem

    cfg = Config(tp=1, HK=2, HV=4, K=16, V=32, B=3, state_dtype=torch.float32, layout="kv")
    problem = make_problem(cfg, "cuda" if torch.cuda.is_available() else "cpu")
    asked = []
    real = launcher.launch_decode
    monkeypatch.setattr(launcher, "launch_decode", lambda *args, pdl=None, **kwargs: asked.append(pdl) or real(
        *args, pdl=pdl if torch.cuda.is_available() else False, **kwargs))
    for provider in decode_providers([], [], "kv", False, without_pdl=True):
        provider.make(cfg, problem.pool, problem.indices, problem.inputs)()
    assert asked == [None, False]


def test_the_gemm_shape_is_two_positive_integers():
    import argparse

    from benchmarks.neighbour_gemm import gemm_shape

    assert gemm_shape("2048:12288") == (2048, 12288)
    for bad, why in (("2048", "two integers"), ("2048:x", "two integers"), ("0:16", "both positive")):
        with pytest.raises(argparse.ArgumentTypeError, match=f"--gemm expects K:N, {why}"):
            gemm_shape(bad)


def test_a_decode_after_a_gemm_is_the_pair_less_the_gemm_alone():
    from benchmarks.neighbour_gemm import GEMM_ONLY, decode_after_gemm

    times = {"default": 60.0, "default+gemm": 80.0, GEMM_ONLY: 15.0, "x": 1.0, "x+gemm": 15.0}
    got = decode_after_gemm(times, ["default", "x"], nbytes=260_000_000, copy_bw=4.0e12)
    assert got["default"] == pytest.approx([65.0, 100.0])  # 260 MB in 65 us at 4 TB/s
    assert got["x"][0] == 0.0 and got["x"][1] != got["x"][1]  # no time left: no percentage
