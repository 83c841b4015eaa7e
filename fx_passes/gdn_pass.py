"""The Inductor post-grad pass that runs the rewrites of :mod:`fx_passes.patterns`."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import pathlib
import threading
from typing import Any

import torch
from torch._inductor import custom_graph_pass as _cgp

from fx_passes import counters
from fx_passes.counters import log

# Inductor passes ``is_inference`` to passes of this kind (recent torch); older releases call
# plain CustomGraphPass objects with the graph alone.
_Base: type = getattr(_cgp, "CustomInferenceAwareGraphPass", _cgp.CustomGraphPass)
_INFERENCE_AWARE = _Base is not _cgp.CustomGraphPass

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent

_setup_lock = threading.Lock()
_active: list | None = None


def _rewrites():
    from fx_passes.patterns import REWRITES

    return REWRITES


def active_rewrites() -> list:
    """Set every rewrite up (once per process, in a fresh FakeTensorMode) and return those available."""
    global _active
    if _active is not None:
        return _active
    with _setup_lock:
        if _active is None:
            from fx_passes.patterns._common import fresh_fake_mode

            ready = []
            with fresh_fake_mode():
                for rewrite in _rewrites():
                    try:
                        ok = rewrite.setup()
                    except Exception as e:  # noqa: BLE001 - a broken pattern must not break compiles
                        log.debug("%s: setup failed (%s: %s); skipped", rewrite.name, type(e).__name__, e)
                        ok = False
                    if ok:
                        ready.append(rewrite)
            _active = ready
    return _active


def _traced_model_files() -> list[pathlib.Path]:
    """Source files of the transformers functions the HF pattern traces, found without importing."""
    try:
        spec = importlib.util.find_spec("transformers")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    from fx_passes.patterns.hf_torch_recurrent_gated_delta_rule import HF_MODULES

    root = pathlib.Path(next(iter(spec.submodule_search_locations)))
    files = []
    for name in HF_MODULES:
        path = root.joinpath(*name.split(".")[1:]).with_suffix(".py")
        if path.is_file():
            files.append(path)
    return files


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


@functools.lru_cache(maxsize=1)
def fingerprint() -> str:
    """Hash of everything a rewrite's output depends on.

    The pass and pattern sources, the torch and gdn-ops versions, and the version and source
    files of the transformers code the HF pattern traces: a change to any of them changes the
    pass's ``uuid()``, so Inductor's FX graph cache never serves code compiled by another pass.
    """
    import gdn_ops

    h = hashlib.sha256()
    for part in (f"torch={torch.__version__}", f"gdn_ops={gdn_ops.__version__}",
                 f"transformers={_version('transformers')}"):
        h.update(part.encode() + b"\0")
    sources = sorted(_PACKAGE_DIR.rglob("*.py"))
    for path in [*sources, *_traced_model_files()]:
        h.update(path.name.encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def _call(p: Any, graph: torch.fx.Graph, is_inference: bool) -> None:
    if _INFERENCE_AWARE and isinstance(p, _Base):
        p(graph, is_inference=is_inference)
    else:
        p(graph)


def sink_input_copies(graph: torch.fx.Graph) -> int:
    """Move ``copy_(graph_input, new_value)`` epilogue nodes to the end of the graph.

    Functionalization writes an input's new value back with one ``copy_`` per mutated input;
    Inductor may schedule views of other results after it. The pattern matcher refuses a
    match whose nodes straddle a mutation, so a write-back of the state can split a decode step
    from its own output. Moving the copy later changes nothing as long as no later node reads
    the input (or a view of it) -- only such copies are moved.
    """
    from fx_passes.patterns._common import node_storage

    aten = torch.ops.aten
    output = next(iter(reversed(graph.nodes)))
    order = {n: i for i, n in enumerate(graph.nodes)}
    # The last node (in the original order) that reads or produces each storage: one pass over the
    # graph, so the pass stays linear in its size.
    last_touch: dict[Any, int] = {}
    for n, i in order.items():
        if n is output:
            continue
        for a in (*n.all_input_nodes, n):
            storage = node_storage(a)
            if storage is not None:
                last_touch[storage] = i
    moved = 0
    for node in list(graph.find_nodes(op="call_function", target=aten.copy_.default)):
        dst = node.args[0]
        if not (isinstance(dst, torch.fx.Node) and dst.op == "placeholder") or node.next is output:
            continue
        storage = node_storage(dst)
        if storage is None or last_touch.get(storage, -1) > order[node]:
            continue  # no storage to reason about, or a later node reads or writes it
        output.prepend(node)
        moved += 1
    return moved


# Each round removes PyTorch code from the graph, so rounds end; the bound only guards against a
# rewrite that matched its own output.
_MAX_ROUNDS = 4


def run_rewrites(graph: torch.fx.Graph) -> dict[str, int]:
    """Apply every available rewrite to ``graph`` in order; return the matches of each."""
    counts = {r.name: 0 for r in _rewrites()}
    rewrites = active_rewrites()
    if not rewrites:
        return counts
    from torch._inductor import pattern_matcher as pm

    # Functionalization can leave dead views of a matched value; they would count as users.
    graph.eliminate_dead_code()
    if sink_input_copies(graph):
        pm.compute_mutation_region_ids(graph)
    # One rewrite can expose another's pattern to a rewrite that ran before it (a q/k norm in front of
    # repeated key heads meets the op only once the repeat is gone): rounds until one matches nothing.
    for _ in range(_MAX_ROUNDS):
        matched = 0
        for rewrite in rewrites:
            n = rewrite.apply(graph)
            if n:
                counts[rewrite.name] += n
                matched += n
                # The pattern matcher inserts a replacement before the match's first output, which
                # may precede inputs that Inductor's locality reordering placed later.
                pm.stable_topological_sort(graph)
        if not matched:
            break
    if any(counts.values()):
        graph.eliminate_dead_code()
        graph.lint()
        log.debug("rewrote graph: %s", counts)
    return counts


class GDNFusionPass(_Base):
    """Post-grad pass: find unfused Gated DeltaNet decode code and call the fused kernel instead.

    ``previous`` is the pass (or list of passes) that held ``post_grad_custom_post_pass`` before;
    it runs first, on every graph, exactly as it would have without this pass. The rewrites only
    touch inference graphs (the decode ops are inference-only); a training graph goes through
    untouched.
    """

    def __init__(self, previous: Any = None) -> None:
        self.previous = previous

    def previous_passes(self) -> tuple:
        p = self.previous
        if p is None:
            return ()
        return tuple(p) if isinstance(p, (list, tuple)) else (p,)

    def __call__(self, graph: torch.fx.Graph, is_inference: bool = True) -> None:
        for p in self.previous_passes():
            _call(p, graph, is_inference)
        if not is_inference:
            counters.record({r.name: 0 for r in _rewrites()})
            return
        counters.record(run_rewrites(graph))
        from fx_passes.reinplace_guard import guard_reinplacing

        guard_reinplacing(graph)

    def uuid(self) -> Any:
        parts = [fingerprint()]
        for p in self.previous_passes():
            # A chained pass without a uuid makes the chain uncacheable, as it would be alone.
            uid = p.uuid() if isinstance(p, _cgp.CustomGraphPass) else None
            if uid is None:
                return None
            parts.append(repr(uid))
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    def __repr__(self) -> str:
        return f"GDNFusionPass(previous={self.previous!r})"
