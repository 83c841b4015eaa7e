"""What the rewrites share: the op handles, graph queries, and the base class of a rewrite."""

from __future__ import annotations

import abc
import contextlib
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch._higher_order_ops.auto_functionalize import (
    auto_functionalized,
    auto_functionalized_v2,
)
from torch._inductor import pattern_matcher as pm
from torch.fx.experimental.symbolic_shapes import statically_known_true

import gdn_ops  # noqa: F401  (registers torch.ops.gdn_ops.*)
from gdn_ops import _validate

RECURRENT_OP = torch.ops.gdn_ops.recurrent_gated_delta_rule_update.default
FUSED_OP = torch.ops.gdn_ops.fused_sigmoid_gating_delta_rule_update.default
GATING_OP = torch.ops.gdn_ops.gdn_gating.default
DECODE_OPS = (RECURRENT_OP, FUSED_OP)

# In a post-grad graph a mutating custom op is wrapped in one of these (v2 is the default since
# torch 2.6; the replacement of the Hugging Face pattern writes v1, which reinplacing handles too).
FUNCTIONALIZED = (auto_functionalized, auto_functionalized_v2)

_CAST = torch.ops.prims.convert_element_type.default


class Rewrite(abc.ABC):
    """One family of graph rewrites. Subclasses live one per module in :mod:`fx_passes.patterns`."""

    #: counter key and log name
    name: str
    #: matches this rewrite makes per Gated DeltaNet layer of the decode step it is written for
    EXPECTED_MATCHES: int = 1

    def setup(self) -> bool:
        """Trace and register the patterns; runs once, under a fresh FakeTensorMode.

        Returns False when the rewrite is unavailable (it is then skipped, with a debug log).
        """
        return True

    @abc.abstractmethod
    def apply(self, graph: torch.fx.Graph) -> int:
        """Rewrite every match in ``graph``; return how many were rewritten."""


def val(node: Any) -> Any:
    """The fake value of a node (``meta["val"]``), or the constant itself."""
    if isinstance(node, torch.fx.Node):
        return node.meta.get("val")
    return node


def node_storage(node: Any) -> Any:
    """The storage a node's (fake) tensor value lives in, to tell aliases apart; None without one."""
    from torch.multiprocessing.reductions import StorageWeakRef

    v = val(node) if isinstance(node, torch.fx.Node) else None
    if isinstance(v, torch.Tensor):
        try:
            return StorageWeakRef(v.untyped_storage())
        except Exception:  # noqa: BLE001 - e.g. tensors without storage
            return None
    return None


def shares_written_storage(node: torch.fx.Node, inputs: dict[str, Any]) -> str | None:
    """Why the decode call ``node`` cannot be handed ``inputs`` (name -> node) to read: one of them
    lives in the storage of a tensor the call writes (its pool or out, or with v2 their bases).
    The op refuses inputs that overlap what it writes; the values a rewrite replaces were fresh,
    the ones it moves into the op may not be (a, b or raw q, k in the workspace that out is part of)."""
    written = [node.kwargs.get(name) for name in ("initial_state_source", "out")]
    written += list(node.kwargs.get("_all_bases") or [])
    storages = [s for s in (node_storage(w) for w in written) if s is not None]
    for name, x in inputs.items():
        storage = node_storage(x)
        if storage is not None and storage in storages:
            return f"'{name}' shares a storage with a tensor the op writes"
    return None


def decode_op_nodes(graph: torch.fx.Graph, ops: Iterable[Any] = DECODE_OPS) -> list[torch.fx.Node]:
    """The functionalized calls of the given decode ops: the ``auto_functionalized`` calls, then the
    ``auto_functionalized_v2`` ones, each in graph order."""
    ops = tuple(ops)
    return [
        n
        for target in FUNCTIONALIZED
        for n in graph.find_nodes(op="call_function", target=target)
        if n.args and n.args[0] in ops
    ]


def _is_cast(node: Any, sources: tuple, targets: tuple) -> bool:
    return (
        isinstance(node, torch.fx.Node)
        and node.op == "call_function"
        and node.target is _CAST
        and isinstance(val(node.args[0]), torch.Tensor)
        and val(node.args[0]).dtype in sources
        and node.args[1] in targets
    )


def strip_casts(node: Any) -> Any:
    """Follow casts among fp32/bf16/fp16 back to the value before them.

    Used on the value an op reads: the fused kernel computes in fp32 from the uncast value, which
    is at least as accurate as rounding first. Casts from or to fp64 are kept (and then match
    nothing): the kernel would not compute in fp64.
    """
    while _is_cast(node, _validate.ACTIVATION_DTYPES, _validate.ACTIVATION_DTYPES):
        node = node.args[0]
    return node


def strip_upcast(node: Any) -> Any:
    """``x`` for ``x.float()`` with x bf16/fp16 (an exact cast the kernel does itself), else ``node``."""
    if _is_cast(node, (torch.bfloat16, torch.float16), (torch.float32,)):
        return node.args[0]
    return node


@contextlib.contextmanager
def fresh_fake_mode():
    """Trace patterns outside Inductor's own fake mode and tracing context, as its passes do."""
    from torch._dynamo.utils import counters as torch_counters
    from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily

    saved = torch_counters["inductor"].copy()
    try:
        with torch._guards.tracing(None), unset_fake_temporarily(), FakeTensorMode(), torch.no_grad():
            yield
    finally:
        # tracing bumps Inductor's view counters; those are not the user's
        torch_counters["inductor"] = saved


def mutation_regions(graph: torch.fx.Graph) -> dict[torch.fx.Node, int]:
    """Number the stretches of the graph between mutating ops.

    Moving a read of a tensor from one node to a later one is only safe when no mutation sits
    in between; both nodes must then be in the same region.
    """
    region, out = 0, {}
    for node in graph.nodes:
        if pm.is_mutation_op(node):
            region += 1
        out[node] = region
    return out


def same_region(regions: dict[torch.fx.Node, int], nodes: Iterable[torch.fx.Node]) -> bool:
    return len({regions.get(n, -1) for n in nodes}) == 1


def known_equal(a: Any, b: Any) -> bool:
    """True only when ``a == b`` holds for every value of the symbols involved (no guard added)."""
    return bool(statically_known_true(a == b))


def same_shape(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dim() == b.dim() and all(known_equal(x, y) for x, y in zip(a.shape, b.shape))


def is_activation(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype in _validate.ACTIVATION_DTYPES


def head_param_ok(t: Any, hv: Any, device: torch.device) -> bool:
    """``A_log``/``dt_bias`` as the fused kernel reads them: ``[HV]`` with unit stride."""
    return (
        is_activation(t)
        and t.dim() == 1
        and known_equal(t.shape[0], hv)
        and (known_equal(t.stride(0), 1) or known_equal(t.shape[0], 1))
        and t.device == device
    )


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def set_decode_kwargs(node: torch.fx.Node, **changes: Any) -> None:
    """Change arguments of a functionalized decode-op call, and with them the eager-mode values
    Inductor keeps beside them (``meta["eager_input_vals"]``). Inductor holds a custom op's inputs
    to those values' strides and traces the call's decomposition from them, so a stale entry
    would copy a new input into the old one's layout, or bring the old argument back."""
    node.kwargs = {**node.kwargs, **changes}
    eager = node.meta.get("eager_input_vals")
    if eager is not None:
        args, kwargs = eager
        node.meta["eager_input_vals"] = (args, {**kwargs, **{name: val(v) for name, v in changes.items()}})


def swap_decode_op(node: torch.fx.Node, op: Any, kwargs: dict[str, Any]) -> torch.fx.Node:
    """Replace a functionalized decode-op call by one of ``op`` with ``kwargs``, same wrapper.

    Both decode ops mutate ``initial_state_source`` and ``out`` and return nothing, so the
    wrapper's outputs (and with v2 its ``_all_bases`` bookkeeping) carry over unchanged.
    """
    graph = node.graph
    with graph.inserting_before(node):
        new = graph.call_function(node.target, (op,), kwargs)
    for key, value in node.meta.items():
        if key != "eager_input_vals":
            new.meta[key] = value
    node.replace_all_uses_with(new)
    graph.erase_node(node)
    return new
