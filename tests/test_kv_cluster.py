"""The cluster kv prototype (benchmarks/kv_cluster.py): its specs and checks on the CPU, its inline
PTX assembled for sm_90 on the CPU, and its decode step against the float64 reference (guarded
pool and output, padding rows) on the GPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from decode_case import DecodeCase, build, check
from sm90_compile import assert_no_spills, ptxas_report, run_in_child
from tile_kernel_checks import model_case

from benchmarks.kv_cluster import (
    KvClusterConfig,
    cluster_reason,
    launch_decode_kv_cluster,
)
from benchmarks.tune_tma import parse_spec


def test_cluster_specs_parse():
    assert parse_spec("c2:128:4:8:8") == KvClusterConfig(2, 128, 4, 8, 8)
    assert parse_spec("c4:128:2:8:12:8:p2:sort") == KvClusterConfig(4, 128, 2, 8, 12, 8, parts=2, sort_rows=True)
    assert parse_spec("c8:64:2:8:16:4") == KvClusterConfig(8, 64, 2, 8, 16, vec=4)
    assert parse_spec("c2:128:4:8:8:skipsums:sort") == KvClusterConfig(2, 128, 4, 8, 8, sort_rows=True, skip="sums")
    assert parse_spec("c2:128:4:8:8:p2:scatter:skipsums") == KvClusterConfig(2, 128, 4, 8, 8, parts=2, skip="sums",
                                                                            exchange="scatter")
    assert parse_spec("c8:128:2:8:16:scatter:sort") == KvClusterConfig(8, 128, 2, 8, 16, sort_rows=True,
                                                                       exchange="scatter")
    for bad in ("c2:128:4:8", "c2:x:4:8:8", "c2:128:4:8:8:4:4", "c2:128:4:8:8:px", "c2:128:4:8:8:skipall",
                "c2:128:4:8:8:skiplaunch", "c2:128:4:8:8:sort:sort"):
        with pytest.raises(ValueError, match="expected cCTAS"):
            parse_spec(bad)


@pytest.mark.parametrize(("K", "V", "itemsize", "config", "expected"), [
    (128, 128, 2, KvClusterConfig(2, 128, 4, 8, 8), None),
    (128, 128, 4, KvClusterConfig(4, 64, 4, 8, 8, vec=4), None),
    (128, 128, 2, KvClusterConfig(3, 128, 4, 8, 8), "ctas=3"),
    (128, 128, 2, KvClusterConfig(16, 128, 4, 8, 8), "ctas=16"),
    (128, 96, 2, KvClusterConfig(2, 128, 4, 8, 8), "BV=128 dividing V=96"),
    (128, 128, 2, KvClusterConfig(8, 128, 4, 32, 8), "rows=32"),  # more rows a step than a program has
    (128, 128, 2, KvClusterConfig(2, 128, 4, 2, 8), "rows=2"),  # less than a swizzle block
    (128, 128, 2, KvClusterConfig(2, 128, 4, 8, 8, parts=3), "parts=3"),
    (128, 128, 2, KvClusterConfig(2, 128, 4, 8, 8, skip="exchange"), "skip='exchange'"),
    (128, 128, 2, KvClusterConfig(2, 128, 4, 8, 8, exchange="ring"), "exchange='ring'"),
])
def test_cluster_reason(K, V, itemsize, config, expected):
    reason = cluster_reason(K, V, itemsize, config)
    assert reason is None if expected is None else expected in reason


def _run_cluster(config: KvClusterConfig):
    def run(inp):
        c = inp.case
        launch_decode_kv_cluster(
            inp.q, inp.k, inp.v, inp.a, inp.b, inp.A_log, inp.dt_bias, inp.pool.view, inp.indices, inp.out.view,
            scale=c.K**-0.5, use_qk_l2norm_in_kernel=c.l2norm, state_layout="kv", softplus_beta=1.0,
            softplus_threshold=20.0, config=config, pdl=None)
        return inp.out.view
    return run


def test_the_cluster_launcher_refuses_what_it_cannot_tile():
    inp = build(DecodeCase(B=2, T=1, HK=2, group=2, K=128, V=96, state_layout="kv", out_given=True), "cpu")
    with pytest.raises(ValueError, match="launch_decode_kv_cluster: ctas=2 in"):
        _run_cluster(KvClusterConfig(2, 128, 4, 8, 8))(inp)


def compiled(config: KvClusterConfig, state: str = "bf16"):
    """The prototype compiled for sm_90 from a launch recorded on the CPU: ``(shared bytes, PTX)``."""
    from unittest import mock

    from sm90_compile import compile_launch_sm90

    import benchmarks.kv_cluster as kc

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[state]
    inp = build(DecodeCase(B=3, T=1, HK=16, group=2, K=128, V=128, state_layout="kv", state_dtype=dtype,
                           padding_rows=(1,), out_given=True, pool_guard=64), "cpu")
    calls = []
    with mock.patch.object(kc, "_cluster_launch", lambda *launch: calls.append(launch)):
        _run_cluster(config)(inp)
    (kernel, grid, ctas, slots_bytes, args, kwargs), = calls
    vector = 2 * config.BV * 4  # a program's partial sums
    region = 16 + (config.ctas + 1) * vector if config.exchange == "all" else 16 + 3 * vector + vector // config.ctas
    assert (grid, ctas, slots_bytes) == (3 * 32 * (128 // config.BV), config.ctas, region)
    compiled = compile_launch_sm90(kernel, args, kwargs)
    return compiled.metadata.shared, compiled.asm["ptx"]


@pytest.mark.parametrize(("config", "state"), [(KvClusterConfig(2, 128, 4, 8, 8), "bf16"),
                                               (KvClusterConfig(4, 64, 4, 8, 8, vec=4), "fp32"),
                                               (KvClusterConfig(8, 128, 2, 8, 16, exchange="scatter"), "bf16")])
def test_the_exchange_assembles_for_sm90(config, state):
    """ptxas takes the inline PTX; one cluster barrier a thread, arrived on before and waited on
    after the sums, before every bulk copy to a peer; every pull after the exchange's mbarrier wait;
    shared memory holds the rows, q, k and their shares (the exchange slots are added at launch)."""
    import re

    stdout = run_in_child("test_kv_cluster", f"'\\n'.join(map(str, t.compiled(t.{config!r}, {state!r})))")
    shared, ptx = stdout.split("\n", 1)
    K, KC, itemsize = 128, 128 // config.ctas, {"bf16": 2, "fp32": 4}[state]
    buffers = KC * config.BV * itemsize + 2 * (K + KC) * 2 + 8 * config.parts
    assert buffers <= int(shared) <= buffers + 256  # and a little scratch of Triton's reductions
    lines = ptx.splitlines()
    pushes = [i for i, line in enumerate(lines) if "cp.async.bulk.shared::cluster.shared::cta" in line]
    pulls = [i for i, line in enumerate(lines) if re.search(r"ld\.shared\.b32 .*%addr", line)]
    arrive, = [i for i, line in enumerate(lines) if "barrier.cluster.arrive.relaxed" in line]
    ready, = [i for i, line in enumerate(lines) if "barrier.cluster.wait" in line]
    arrived = [i for i, line in enumerate(lines) if "mbarrier.try_wait.parity" in line and "%done" in line]
    first_sum = next(i for i, line in enumerate(lines) if "fma.rn.f32" in line)
    assert pushes and pulls and arrive < first_sum < ready < min(pushes) < arrived[0] < min(pulls)
    rounds = 1 if config.exchange == "all" else 2
    assert len(pushes) == rounds * config.ctas and len(arrived) == rounds  # one bulk copy a peer a round
    assert_no_spills(ptxas_report(ptx))


CLUSTER_CONFIGS = {
    "bf16_2": ("bf16", KvClusterConfig(2, 128, 4, 8, 8)),
    "bf16_4_sorted_parts": ("bf16", KvClusterConfig(4, 128, 2, 8, 12, parts=2, sort_rows=True)),
    "bf16_8": ("bf16", KvClusterConfig(8, 128, 2, 8, 16)),
    "fp32_2_half": ("fp32", KvClusterConfig(2, 64, 4, 8, 8, vec=4, sort_rows=True)),
    "fp32_4": ("fp32", KvClusterConfig(4, 128, 4, 8, 8, vec=4)),
    "bf16_8_scatter": ("bf16", KvClusterConfig(8, 128, 1, 8, 24, exchange="scatter", sort_rows=True)),
    "bf16_2_scatter": ("bf16", KvClusterConfig(2, 128, 2, 8, 12, exchange="scatter")),
    "fp32_4_scatter": ("fp32", KvClusterConfig(4, 128, 4, 8, 8, vec=4, exchange="scatter")),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CLUSTER_CONFIGS))
def test_the_cluster_step_matches_the_reference(name):
    """Qwen3-Next's head shape with more clusters than fit on the GPU at once, padding rows at the
    start, middle and end, NaN guards around pool and output: every live row against the float64
    reference, every padded row and spare slot untouched (``decode_case.check``); twice, as a CUDA
    graph replays it."""
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("thread-block clusters need sm_90")
    state, config = CLUSTER_CONFIGS[name]
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[state]
    for seed in (0, 1):
        case = dataclasses.replace(model_case((16, 32), "kv", {}, seed), state_dtype=dtype)
        check(build(case, "cuda"), _run_cluster(config))


@pytest.mark.gpu
def test_cluster_occupancy_asks_the_driver():
    """``benchmarks/cluster_occupancy``: with a cluster of one every SM holds a CTA of 1 KB; a
    cluster never lets more CTAs reside than shared memory alone would; libcuda asked directly
    gives Triton's answer."""
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("thread-block clusters need sm_90")
    from benchmarks.cluster_occupancy import (
        max_active_clusters,
        max_active_clusters_with_policy,
    )

    props = torch.cuda.get_device_properties(0)
    assert max_active_clusters(1024, 1) >= props.multi_processor_count
    for cluster in (2, 4):
        by_shared = props.shared_memory_per_multiprocessor // (12 * 1024 + 1024) * props.multi_processor_count
        clusters = max_active_clusters(12 * 1024, cluster)
        assert 0 < clusters * cluster <= by_shared
        # libcuda asked directly (the structures built by hand) agrees with Triton's utility
        assert max_active_clusters_with_policy(12 * 1024, cluster, None) == clusters
        assert 0 < max_active_clusters_with_policy(12 * 1024, cluster, "spread") * cluster <= by_shared


def test_prototype_launchers_are_found_by_config():
    """``tune_tma`` and ``profile_decode`` launch a prototype's spec with its own launcher, and the
    shipped kernels' specs through ``launch_decode``."""
    from benchmarks.kv_split import launch_decode_kv_split
    from benchmarks.tune_tma import prototype_launch

    assert prototype_launch(parse_spec("c2:128:4:8:8")) is launch_decode_kv_cluster
    assert prototype_launch(parse_spec("s8:1:sort")) is launch_decode_kv_split
    assert prototype_launch(parse_spec("t128:4:8:6:8")) is None


def test_the_cluster_launcher_takes_kv_pools_only():
    inp = build(DecodeCase(B=2, T=1, HK=2, group=2, K=128, V=128, state_layout="kv", out_given=True), "cpu")
    with pytest.raises(ValueError, match="launch_decode_kv_cluster: a kv pool"):
        launch_decode_kv_cluster(
            inp.q, inp.k, inp.v, inp.a, inp.b, inp.A_log, inp.dt_bias, inp.pool.view, inp.indices, inp.out.view,
            scale=0.125, use_qk_l2norm_in_kernel=True, state_layout="vk", softplus_beta=1.0, softplus_threshold=20.0,
            config=KvClusterConfig(2, 128, 4, 8, 8), pdl=False)


def test_the_occupancy_query_names_a_wrong_policy():
    from benchmarks.cluster_occupancy import max_active_clusters_with_policy

    with pytest.raises(ValueError, match="policy must be None or one of"):
        max_active_clusters_with_policy(1024, 2, "nearest")
