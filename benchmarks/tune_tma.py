"""Tune the persistent TMA kernel (gdn_ops/triton_decode_tma.py) beside the per-tile kernel.

    python -m benchmarks.tune_tma --batches 32 128 512 1024 --specs 64:4:3:4 32:2:3:8

Each spec is ``BV:warps:stages:programs_per_sm[:prefetch_gates]`` (prefetch_gates 0 or 1, default 1),
``gBV:warps:buffers:programs_per_sm[:vec]`` for the persistent Gluon kernel (gdn_ops/gluon_decode_kv.py),
or ``tBV:warps:rows:programs_per_sm[:vec][:pPARTS][:tailSxT][:el][:lel][:sort|rank|snap]`` for the Gluon kernel of
one program per tile (gdn_ops/gluon_decode_kv_tile.py, or gluon_decode_vk_tile.py on a vk pool;
``pPARTS``: the kv tile's state in that many TMA copies; ``tailSxT``: the kv tile grid's last T whole
tiles per SM cut S ways; ``el``: the tile's rows stored evict-last in L2; ``lel``: the kv tile's state loaded
evict-last in L2; ``sort``: the rows in
slot order; ``rank``: in slot order, the vk tile's programs ranking them without the rank kernel;
``snap``: in slot order ranked in one program from one read of the slots, each tile checking its slot), or ``sPARTS:warps[:dDEPTH][:rMAXNREG][:hHEADS][:wait[:pollload|once][:skipX][:ringN]][:sort]`` for the split-K kv prototype
(benchmarks/kv_split.py: PARTS programs a head, the last rewriting it DEPTH parts at a time, under a
register cap; with ``wait`` each waits for the head's partials, polling by atomics or with ``pollload``
by volatile loads, and writes its own rows, with ``hHEADS`` over HEADS consecutive heads a program, the
next head's rows requested before each wait, and with ``once`` the head's last program adding the partials
for the others; ``skipwait``, ``skipfence``, ``skipexchange``, ``skipread`` and ``skipstore`` are its
ceilings, ``KvSplitConfig.skip``, and with ``ringN`` the heads share N heads' scratch rows), or ``cCTAS:BV:warps:rows:programs_per_sm[:vec][:pPARTS][:skipsums][:scatter][:sort]``
for the cluster kv prototype (benchmarks/kv_cluster.py: CTAS programs of one cluster a tile of BV
columns, each K / CTAS key rows, exchanging their partial sums in distributed shared memory, all to
all or with ``scatter`` by a reduce-scatter and an all-gather; ``skipsums`` is its ceiling without
the exchange, timed unchecked).
Every configuration is
checked against the float64 reference first, then all are timed interleaved in CUDA graphs with
cold L2 (the method of ``tune_decode``), each graph checked again on a replay, every call (one that
fails has its reason in the JSON in place of a time); ``per_tile`` is the per-tile kernel with its table's tile, ``default`` whatever
``launch_decode`` picks by itself (``default_no_pdl``: without PDL; ``--sort-default``'s ``default:sort``:
what it would pick if its rule sorted the rows at that shape); ``--variants`` adds patched
copies of the kernels (``TMA_VARIANTS`` at each Triton spec, ``GLUON_VARIANTS`` at each persistent
Gluon spec, ``VK_TILE_VARIANTS`` / ``KV_TILE_VARIANTS`` at each tile spec on a vk / kv pool, in
``benchmarks/variants.py``); a ``CEILING_VARIANTS`` entry is not a decode step and is timed without
the check (listed under ``unchecked`` in the JSON).
Writes ``<out>/<tag>.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from unittest import mock

import torch

from benchmarks.kv_cluster import KvClusterConfig, launch_decode_kv_cluster
from benchmarks.kv_split import KvSplitConfig, launch_decode_kv_split
from benchmarks.providers import (
    Provider,
    launcher_provider,
    make_problem,
    reference,
)
from benchmarks.timing import copy_bandwidth
from benchmarks.tune_decode import (
    add_grid_arguments,
    add_timing_arguments,
    check_then_time,
    dtype_name,
    timing_options,
    tuning_grid,
)
from benchmarks.tuning_results import write_results
from benchmarks.variants import (
    ALL_VARIANTS,
    GLUON_VARIANTS,
    KV_TILE_LOAD_POLICY_VARIANTS,
    KV_TILE_STORE_POLICY_VARIANTS,
    KV_TILE_VARIANTS,
    SLOT_ORDER_VARIANTS,
    TMA_VARIANTS,
    VK_TILE_VARIANTS,
    load_variant,
)
from gdn_ops.gluon_decode_kv import GluonKVConfig
from gdn_ops.gluon_decode_kv_tile import GluonTileConfig
from gdn_ops.reference import L2NORM_EPS
from gdn_ops.triton_decode import decode_config, default_pdl, gpu_name
from gdn_ops.triton_decode_tma import PersistentConfig


def parse_spec(spec: str) -> PersistentConfig | GluonKVConfig | GluonTileConfig | KvSplitConfig | KvClusterConfig:
    """``BV:warps:stages:programs_per_sm[:prefetch_gates]`` (Triton), ``gBV:warps:buffers:programs_per_sm[:vec]``
    (persistent Gluon), ``tBV:warps:rows:programs_per_sm[:vec][:pPARTS][:tailSxT][:el][:lel][:pfAHEAD][:sort|rank|snap]`` (Gluon,
    one program per tile), ``sPARTS:warps[:dDEPTH][:rMAXNREG][:hHEADS][:wait[:pollload|once][:skipX][:ringN]][:sort]`` (the split-K kv prototype,
    ``benchmarks/kv_split.py``) or ``cCTAS:BV:warps:rows:programs_per_sm[:vec][:pPARTS][:skipsums][:scatter]
    [:sort]`` (the cluster kv prototype, ``benchmarks/kv_cluster.py``)."""
    if spec[:1] == "c":
        fields, words = spec[1:].split(":"), []
        while fields and fields[-1] in ("sort", "skipsums", "scatter"):
            words.append(fields.pop())
        parts = fields.pop()[1:] if len(fields) > 5 and fields[-1][:1] == "p" else "1"
        if len(fields) not in (5, 6) or not all(f.isdigit() for f in (*fields, parts)) or len(set(words)) < len(words):
            raise ValueError(f"spec {spec!r}: expected cCTAS:BV:warps:rows:programs_per_sm[:vec][:pPARTS]"
                             "[:skipsums][:scatter][:sort] for the cluster prototype")
        return KvClusterConfig(*map(int, fields), parts=int(parts), sort_rows="sort" in words,
                               skip="sums" if "skipsums" in words else "",
                               exchange="scatter" if "scatter" in words else "all")
    if spec[:1] == "s":
        fields, words, ring = spec[1:].split(":"), [], "0"
        skips = ("skipwait", "skipfence", "skipexchange", "skipread", "skipstore")
        while fields and (fields[-1] in ("sort", "wait", "pollload", "once", *skips) and fields[-1] not in words
                          or len(fields) > 2 and fields[-1][:4] == "ring" and ring == "0"):
            field = fields.pop()
            if field[:4] == "ring":
                ring = field[4:]
            else:
                words.append(field)
        heads = fields.pop()[1:] if len(fields) > 2 and fields[-1][:1] == "h" else "1"
        maxnreg = fields.pop()[1:] if len(fields) > 2 and fields[-1][:1] == "r" else "0"
        depth = fields.pop()[1:] if len(fields) > 2 and fields[-1][:1] == "d" else "1"
        if (len(fields) != 2 or not all(f.isdigit() for f in (*fields, depth, maxnreg, heads, ring))
                or ring != "0" and "wait" not in words
                or ({"pollload", "once", *skips} & set(words) or heads != "1") and "wait" not in words
                or len(set(skips) & set(words)) > 1 or "once" in words and {"pollload", *skips} & set(words)):
            raise ValueError(f"spec {spec!r}: expected BV:warps:... (sPARTS:warps[:dDEPTH][:rMAXNREG][:hHEADS]"
                             "[:wait[:pollload|once][:skipwait|skipfence|skipexchange|skipread|skipstore][:ringN]]"
                             "[:sort] for the split-K prototype, hHEADS, once and ringN with wait, once without "
                             "pollload or a skip)")
        return KvSplitConfig(int(fields[0]), int(fields[1]), sort_rows="sort" in words, depth=int(depth),
                             maxnreg=int(maxnreg), wait="wait" in words, poll_load="pollload" in words,
                             skip=next((w[4:] for w in words if w in skips), ""), heads=int(heads),
                             sum_once="once" in words, ring=int(ring))
    kind = spec[0] if spec[:1] in ("g", "t") else ""
    fields = spec[len(kind):].split(":")
    options = {}
    while kind == "t" and fields and not fields[-1].isdigit():
        word = fields.pop()
        name = (word if word in ("sort", "rank", "snap", "el", "lel") else "tail" if word.startswith("tail")
                else "pf" if word.startswith("pf") else word[:1])
        options[name] = word[len(name):]
    tail = options.get("tail", "1x0").split("x")
    if (len(fields) not in (4, 5) or not all(f.isdigit() for f in fields)
            or not set(options) <= {"sort", "rank", "snap", "p", "tail", "el", "lel", "pf"}
            or not options.get("p", "1").isdigit() or not options.get("pf", "0").isdigit()
            or len(tail) != 2 or not all(t.isdigit() for t in tail)):
        raise ValueError(f"spec {spec!r}: expected BV:warps:stages:programs_per_sm[:prefetch_gates], "
                         "gBV:warps:buffers:programs_per_sm[:vec] or "
                         "tBV:warps:rows:programs_per_sm[:vec][:pPARTS][:tailSxT][:el][:lel][:pfAHEAD][:sort|rank|snap], in integers")
    values = list(map(int, fields))
    if kind == "g":
        return GluonKVConfig(*values)
    if kind == "t":
        return GluonTileConfig(*values, sort_rows=bool({"sort", "rank", "snap"} & set(options)),
                               rank_in_program="rank" in options, snapshot_order="snap" in options, parts=int(options.get("p", 1)),
                               tail_split=int(tail[0]), tail_per_sm=int(tail[1]),
                               store_eviction="evict_last" if "el" in options else "",
                               load_eviction="evict_last" if "lel" in options else "",
                               prefetch_ahead=int(options.get("pf", 0)))
    return PersistentConfig(*values[:4], *(bool(v) for v in values[4:]))


def variants_of(config: PersistentConfig | GluonKVConfig | GluonTileConfig | KvSplitConfig | KvClusterConfig,
                layout: str) -> dict:
    """The variants (benchmarks/variants.py) that patch the kernel ``config`` runs on a ``layout`` pool
    (none for the split-K and cluster prototypes)."""
    if isinstance(config, (KvSplitConfig, KvClusterConfig)):
        return {}
    if isinstance(config, GluonTileConfig):
        # the rank kernel's variants where the tile sorts its rows
        ranks = SLOT_ORDER_VARIANTS if config.sort_rows else {}
        if layout == "vk":
            return VK_TILE_VARIANTS | ranks
        # a variant of the kv tile's PTX rewrite of one copy's L2 policy acts only at the
        # (load_eviction, store_eviction) whose rewrite it replaces; elsewhere it would time the
        # spec under its name
        acting = {("", "evict_last"): KV_TILE_STORE_POLICY_VARIANTS,
                  ("evict_last", ""): KV_TILE_LOAD_POLICY_VARIANTS}.get((config.load_eviction, config.store_eviction), set())
        void = (KV_TILE_STORE_POLICY_VARIANTS | KV_TILE_LOAD_POLICY_VARIANTS) - acting
        return {name: patches for name, patches in KV_TILE_VARIANTS.items() if name not in void} | ranks
    return GLUON_VARIANTS if isinstance(config, GluonKVConfig) else TMA_VARIANTS


def prototype_launch(config):
    """The launcher of a benchmark prototype's ``config`` (split-K or cluster kv), ``None`` for the
    shipped kernels' configurations (``launch_decode`` takes those)."""
    if isinstance(config, KvSplitConfig):
        return launch_decode_kv_split
    return launch_decode_kv_cluster if isinstance(config, KvClusterConfig) else None


def variant_launch(name: str):
    """``launch_decode``'s signature over a patched copy of a TMA kernel (benchmarks/variants.py:
    TMA_VARIANTS patch the Triton kernel, GLUON_VARIANTS the persistent Gluon one, VK_TILE_VARIANTS
    and KV_TILE_VARIANTS the Gluon tile kernels); the variant decides which state layout it serves.
    A tile variant runs inside the shipped ``launch_decode`` (its launcher and checks swapped in), so it
    checks, sorts and takes a given slot order as the shipped kernel does; a SLOT_ORDER_VARIANTS
    one is the shipped decode with the patched rank kernel swapped in."""
    import gdn_ops.triton_decode as shipped

    module = load_variant(name)
    gluon = name in GLUON_VARIANTS
    tile_launcher = ("launch_decode_vk_tile" if name in VK_TILE_VARIANTS
                     else "launch_decode_kv_tile" if name in KV_TILE_VARIANTS else None)

    def launch(q, k, v, a, b, A_log, dt_bias, state, indices, out, *, scale, use_qk_l2norm_in_kernel,
               state_layout, softplus_beta, softplus_threshold, config, pdl, order=None):
        if name in SLOT_ORDER_VARIANTS:
            with mock.patch.object(shipped, "slot_order", module.slot_order), \
                    mock.patch.object(shipped, "snapshot_slot_order", module.snapshot_slot_order):
                return shipped.launch_decode(
                    q, k, v, a, b, A_log, dt_bias, state, indices, out, scale=scale,
                    use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, state_layout=state_layout,
                    softplus_beta=softplus_beta, softplus_threshold=softplus_threshold,
                    config=GluonTileConfig(*config), pdl=pdl, order=order)
        if tile_launcher:
            # the variant's own checks too, so that a variant may widen what its kernel takes
            reason = "vk_tile_reason" if name in VK_TILE_VARIANTS else "tile_reason"
            with mock.patch.object(shipped, tile_launcher, getattr(module, tile_launcher)), \
                    mock.patch.object(shipped, reason, getattr(module, reason, getattr(shipped, reason))):
                return shipped.launch_decode(
                    q, k, v, a, b, A_log, dt_bias, state, indices, out, scale=scale,
                    use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, state_layout=state_layout,
                    softplus_beta=softplus_beta, softplus_threshold=softplus_threshold,
                    config=GluonTileConfig(*config), pdl=pdl, order=order)
        pdl = default_pdl(state.device) if pdl is None else pdl
        kernel = module.launch_decode_kv_gluon if gluon else module.launch_decode_kv_tma
        config = (module.GluonKVConfig if gluon else module.PersistentConfig)(*config)
        return kernel(q, k, v, a, b, A_log, dt_bias, state, indices, out, scale=scale,
                      use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, softplus_beta=softplus_beta,
                      softplus_threshold=softplus_threshold, config=config, pdl=pdl, l2_eps=L2NORM_EPS)

    return launch


def sorting_default_provider(step_order: bool) -> Provider:
    """``default:sort`` (``+order`` given the step's slot order): what ``launch_decode`` would pick by
    itself if ``triton_slot_order.sorts_rows`` said yes at this shape, the rows then in slot order
    (through the rank kernel unless given the order). Tells whether a sort threshold should move."""
    import gdn_ops.triton_decode as shipped

    name = "default:sort" + ("+order" if step_order else "")

    def make(cfg, pool, indices, inputs):
        with mock.patch.object(shipped, "sorts_rows", lambda *args, **kwargs: True):
            config = shipped.default_config(inputs["q"], inputs["k"], inputs["v"], pool, cfg.layout)
        if not hasattr(config, "sort_rows"):
            raise ValueError(f"{name}: the default configuration {config} cannot sort its rows")
        config = config._replace(sort_rows=True)  # decode_config is cached: its answer may predate the patch
        return launcher_provider(name, config=config, step_order=step_order).make(cfg, pool, indices, inputs)

    return Provider(name, make)


def spec_variant_providers(spec: str, config, variants: list[str], layout: str, step_order: bool) -> list:
    """A provider for each of ``variants`` that patches the kernel ``config`` runs on a ``layout``
    pool (:func:`variants_of`), at ``config``, named ``variant:<name>:<spec>`` (``+order`` given
    the step's slot order)."""
    suffix = "+order" if step_order else ""
    return [launcher_provider(f"variant:{v}:{spec}{suffix}", variant_launch(v), config, step_order=step_order)
            for v in variants if v in variants_of(config, layout)]


def main() -> None:
    ap = argparse.ArgumentParser()
    add_grid_arguments(ap, batches=[32, 128, 512, 1024], dtypes=["bfloat16"], layouts=["kv"])
    ap.add_argument("--specs", nargs="*", default=["64:4:3:4"], metavar="BV:WARPS:STAGES:PROGRAMS_PER_SM[:PREFETCH_GATES]")
    ap.add_argument("--variants", nargs="*", default=[], help="TMA_VARIANTS / GLUON_VARIANTS of benchmarks/variants.py, at each spec of their kernel")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--tag", default="tune_tma")
    ap.add_argument("--mem-budget-gb", type=float, default=40.0, help="pools of one point (shared by all configurations)")
    ap.add_argument("--step-order", action="store_true",
                    help="also time the default and each sorting spec given the step's slot order (initial_state_order)")
    ap.add_argument("--sort-default", action="store_true",
                    help="also time the default configuration as the rule would pick it sorting its rows (default:sort)")
    add_timing_arguments(ap)
    ap.add_argument("--without-pdl", action="store_true",
                    help="also time each spec launched without programmatic dependent launch (name+no_pdl)")
    args = ap.parse_args()
    # a spec's kernel takes only its own family's variants (the rest are passed over); a name of no
    # family is a typo, and would otherwise time nothing without a word
    unknown = sorted(set(args.variants) - set(ALL_VARIANTS))
    if unknown:
        ap.error(f"argument --variants: not in benchmarks/variants.py: {', '.join(unknown)}")
    bw = copy_bandwidth()
    records = []
    for cfg in tuning_grid(args):
        state, layout, B, HK, HV = dtype_name(cfg.state_dtype), cfg.layout, cfg.B, cfg.HK, cfg.HV
        problem = make_problem(cfg, "cuda")
        ref = reference(cfg, problem)
        per_tile = decode_config(B * HV, cfg.K, cfg.V, cfg.state_dtype, layout, gpu_name(torch.device("cuda")),
                                 cfg.act_dtype.itemsize)
        unchecked: set[str] = set()  # names of the prototypes' ceilings (not decode steps)
        providers = [launcher_provider("per_tile", config=per_tile), launcher_provider("default"),
                     launcher_provider("default_no_pdl", pdl=False)]
        if args.step_order:
            providers.append(launcher_provider("default+order", step_order=True))
        if args.sort_default:
            providers += [sorting_default_provider(order) for order in [False] + [True] * args.step_order]
        for spec in args.specs:
            config = parse_spec(spec)
            given = [False] + ([True] if args.step_order and getattr(config, "sort_rows", False) else [])
            for step_order in given:
                suffix = "+order" if step_order else ""
                launch = prototype_launch(config)
                providers.append(launcher_provider(spec + suffix, launch, config=config, step_order=step_order))
                if getattr(config, "skip", ""):  # a prototype's ceiling
                    unchecked.update({spec + suffix, spec + suffix + "+no_pdl"})
                if args.without_pdl:
                    providers.append(launcher_provider(spec + suffix + "+no_pdl", launch, config=config,
                                                       step_order=step_order, pdl=False))
                providers += spec_variant_providers(spec, config, args.variants, layout, step_order)
        row = {"B": B, "HK": HK, "HV": HV, "state": state, "act": args.act_dtype, "layout": layout, "bytes": cfg.bytes_per_call(),
               "slot_pad": cfg.slot_pad, "per_tile": list(per_tile), "results": {}}
        _, ceilings, times, failed = check_then_time(cfg, providers, problem, ref, args, unchecked)
        row["unchecked"] = [p.name for p in ceilings]  # ceilings: timed, not decode steps
        row["results"].update({name: {"error": message} for name, message in failed.items()})
        for name, us in times.items():
            row["results"][name] = {"us": us, "pct_of_copy": 100 * cfg.bytes_per_call() / (us * 1e-6) / bw}
        summary = "  ".join(f"{n} {r['us']:.1f} us ({r['pct_of_copy']:.1f}%)" if "us" in r else f"{n} {r['error']}"
                            for n, r in row["results"].items())
        print(f"{state:8s} {layout} B={B:5d}  {summary}", flush=True)
        records.append(row)
    write_results(args.out, args.tag, records, bw, **timing_options(args))


if __name__ == "__main__":
    main()
