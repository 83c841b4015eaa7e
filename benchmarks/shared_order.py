"""A compiled decode step of several layers that share their slots, with and without one slot order.

An engine's step calls the decode op once per Gated DeltaNet layer with the same slot indices.
Given no ``initial_state_order``, each call where the launcher sorts its rows ranks the slots
itself (a rank kernel a layer); the pass's ``slot_order`` rewrite (``fx_passes/patterns/
shared_slot_order.py``) computes the order once a step and hands it to every call. This times one
step of ``--layers`` fused decode calls (each layer its own pool and inputs, the slots shared), each
variant captured in one CUDA graph and replayed in interleaved rounds (``benchmarks.timing``):

- ``compiled``: ``torch.compile`` with the pass (the rewrite on);
- ``compiled_no_shared_order``: the same with the rewrite kept from applying (a rank kernel a layer);
- ``eager_order``: eager calls given one ``gdn_ops.slot_order`` of the slots (what an engine does);
- ``eager``: eager calls given no order.

Every layer's pool is its own, so a step's pools together are far past the L2 (a layer meets its
state cold, as in a model). The compiled step's outputs are checked against eager first.

    python -m benchmarks.shared_order [--tp 1] [--batch 128] [--layers 8] [--state-dtype bf16] [--layout vk]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
from pathlib import Path
from unittest import mock

import torch
import torch._inductor.config as inductor_config
import triton

import fx_passes
import gdn_ops
from benchmarks.providers import Config, make_problem
from benchmarks.run import DTYPES, GEOMETRY, HEAD_DIM
from benchmarks.timing import capture_graph, time_graphs_interleaved
from fx_passes.patterns import shared_slot_order


def layer_inputs(layers: int, cfg: Config, seed: int, device: str = "cuda") -> dict:
    """One step's inputs: each layer a problem of its own (``benchmarks.providers.make_problem``:
    inputs and a pool of B slots), every layer addressing its pool through the first one's shuffled
    slots."""
    torch.manual_seed(seed)
    problems = [make_problem(cfg, device) for _ in range(layers)]
    return {"layers": [{**p.inputs, "pool": p.pool} for p in problems], "idx": problems[0].indices}


def make_step(layout: str):
    def step(layers: list[dict], idx: torch.Tensor, order: torch.Tensor | None = None) -> list[torch.Tensor]:
        return [gdn_ops.fused_sigmoid_gating_delta_rule_update(
            x["A_log"], x["a"], x["dt_bias"], 1.0, 20.0, x["q"], x["k"], x["v"], x["b"], x["pool"], idx,
            use_qk_l2norm_in_kernel=True, state_layout=layout, initial_state_order=order) for x in layers]
    return step


def compiled_step_graph(layout: str, inputs: dict, shared_order: bool, expected: list, expected_pools: list):
    """The step compiled with the pass (the rewrite kept from applying where ``shared_order`` is
    False), checked against the eager step from the same pools, then captured in a CUDA graph at
    once: dynamo keys its cache by the step's code, which both variants share. Returns the graph and
    the pass's counts (``fx_passes.last_counts``)."""
    torch._dynamo.reset()
    fx_passes.reset_counts()
    compiled = torch.compile(make_step(layout), options=fx_passes.inductor_options())
    keep_off = mock.patch.object(shared_slot_order, "ranks_its_own_slots", lambda node: False)
    # no FX graph cache: a hit would serve the other variant's code without running the pass
    with keep_off if not shared_order else contextlib.nullcontext(), torch.no_grad(), \
            inductor_config.patch(force_disable_caches=True):
        out = compiled(inputs["layers"], inputs["idx"])
        counts = fx_passes.last_counts()
        assert counts, "the pass did not run"
        for got, want in zip(out, expected):
            torch.testing.assert_close(got.float(), want.float(), atol=3e-2, rtol=3e-2)
        for x, want in zip(inputs["layers"], expected_pools):
            torch.testing.assert_close(x["pool"].float(), want.float(), atol=3e-2, rtol=3e-2)
        graph = capture_graph([lambda: compiled(inputs["layers"], inputs["idx"])])
    return graph, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tp", type=int, default=1, choices=sorted(GEOMETRY))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--state-dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--layout", default="vk", choices=("vk", "kv"))
    parser.add_argument("--replays", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default=None)
    args = parser.parse_args()

    HK, HV = GEOMETRY[args.tp]
    cfg = Config(args.tp, HK, HV, HEAD_DIM, HEAD_DIM, args.batch, DTYPES[args.state_dtype], args.layout)
    inputs = layer_inputs(args.layers, cfg, args.seed)
    step = make_step(args.layout)
    pristine = [x["pool"].clone() for x in inputs["layers"]]

    def reset_pools():
        for x, p in zip(inputs["layers"], pristine):
            x["pool"].copy_(p)

    # each compiled variant's first step against the eager step, from the same pools
    with torch.no_grad():
        expected = step(inputs["layers"], inputs["idx"])
    expected_pools = [x["pool"].clone() for x in inputs["layers"]]
    graphs, counts = {}, {}
    for name, shared in (("compiled", True), ("compiled_no_shared_order", False)):
        reset_pools()
        graph, counts[name] = compiled_step_graph(args.layout, inputs, shared, expected, expected_pools)
        graphs[name] = (graph, 1)
        print(f"{name}: rewrite counts {counts[name]}")
    with torch.no_grad():
        graphs["eager_order"] = (capture_graph([lambda: step(inputs["layers"], inputs["idx"],
                                                            gdn_ops.slot_order(inputs["idx"]))]), 1)
        graphs["eager"] = (capture_graph([lambda: step(inputs["layers"], inputs["idx"])]), 1)
    timings = time_graphs_interleaved(graphs, replays=args.replays, seed=args.seed)

    label = f"tp{args.tp} HK={HK} HV={HV} B={args.batch} {args.state_dtype} {args.layout} layers={args.layers}"
    print(label)
    for name, t in timings.items():
        print(f"  {name:26s} {t.p50_us:8.1f} us a step (p20 {t.p20_us:.1f}, p80 {t.p80_us:.1f}), "
              f"{t.p50_us / args.layers:6.2f} us a layer")
    record = {
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gdn_ops_commit": os.environ.get("GDN_OPS_COMMIT", ""), "label": label, "args": vars(args),
        "counts": counts,
        "step_us": {name: {"p20": t.p20_us, "p50": t.p50_us, "p80": t.p80_us, "samples": t.samples_us}
                    for name, t in timings.items()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or f"shared_order_tp{args.tp}_{args.state_dtype}_{args.layout}_{args.batch}"
    (out / f"{tag}.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {out / f'{tag}.json'}")


if __name__ == "__main__":
    main()
