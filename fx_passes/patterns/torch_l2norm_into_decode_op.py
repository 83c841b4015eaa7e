"""q/k L2 normalisation written in PyTorch in front of a decode op -> ``use_qk_l2norm_in_kernel=True``.

Matches, on both the ``q`` and the ``k`` input of either decode op called with
``use_qk_l2norm_in_kernel=False``::

    x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)      # FLA / transformers ``l2norm``
    x / torch.sqrt((x * x).sum(-1, keepdim=True) + eps)
    (the same with x.pow(2), x ** 2 or x.square(), the product in either order, and the last
    dim of the 4-D q/k written 3)

optionally computed in fp32 and cast back (``f(x.float()).to(x.dtype)``). It folds only when
``eps`` equals the kernel's :data:`gdn_ops.reference.L2NORM_EPS` exactly and both q and k match:
the kernel computes ``x / sqrt(sum(x*x) + 1e-6)`` in fp32 on the raw input.

``F.normalize`` (``x / max(||x||, eps)``) is a different function (it differs for small
vectors whatever eps is) and is left alone, as are norms over another dim, other eps values,
norms computed in fp64, and norms separated from the op by a mutation. A normalised value that
something else also reads stays in the graph for that reader.
"""

from __future__ import annotations

import itertools

import torch
from torch._inductor import pattern_matcher as pm

from fx_passes.counters import log
from fx_passes.patterns._common import (
    Rewrite,
    decode_op_nodes,
    mutation_regions,
    same_region,
    same_shape,
    set_decode_kwargs,
    shares_written_storage,
    strip_casts,
    strip_upcast,
    val,
)
from gdn_ops.reference import L2NORM_EPS

# eps the search functions are traced with (a power of two, exact in any float type), read back
# from each match and compared with L2NORM_EPS.
_TRACE_EPS = 2.0**-15


def _l2norm_search(divide: bool, square_with_pow: bool, norm_first: bool, dim: int):
    def l2norm_search(x):
        # the pattern matcher takes operands in the order written, and the dim as written (-1 or
        # 3 for the op's 4-D q and k): each spelling is a pattern
        sq = x.pow(2) if square_with_pow else x * x
        ss = sq.sum(dim, keepdim=True) + _TRACE_EPS
        if divide:
            return x / torch.sqrt(ss)
        return torch.rsqrt(ss) * x if norm_first else x * torch.rsqrt(ss)

    return l2norm_search


class TorchL2NormIntoDecodeOp(Rewrite):
    name = "qk_l2norm"
    # The decode step it is written for normalises q and k once per layer: one fold per op call.
    EXPECTED_MATCHES = 1

    def __init__(self) -> None:
        self.patterns: list[pm.PatternExpr] = []

    def setup(self) -> bool:
        from fx_passes.trace import sub_pattern

        # Casts are not part of the patterns: the op's input is followed back through casts
        # among fp32/bf16/fp16 before matching, and an upcast in front of the norm is stripped.
        x = torch.randn(2, 1, 2, 8)
        for divide, use_pow, norm_first, dim in itertools.product((False, True), (False, True), (False, True), (-1, 3)):
            if divide and norm_first:
                continue  # a quotient has one order
            search = _l2norm_search(divide, use_pow, norm_first, dim)
            self.patterns.append(sub_pattern(search, (x,), scalar_workaround={"eps": _TRACE_EPS})[0])
        return True

    def _match(self, op_input):
        """``(x, matched nodes)`` when ``op_input`` is a matching L2 norm of x, else the reason."""
        node = strip_casts(op_input)
        for pattern in self.patterns:
            m = pattern.match(node)
            if not pm.is_match(m):
                continue
            eps, x = m.kwargs["eps"], strip_upcast(m.kwargs["x"])
            if eps != L2NORM_EPS:
                return f"eps {eps!r} != kernel eps {L2NORM_EPS!r}"
            xv, nv = val(x), val(op_input)
            if not (isinstance(xv, torch.Tensor) and isinstance(nv, torch.Tensor)):
                return "missing tensor metadata"
            if xv.dtype != nv.dtype or not same_shape(xv, nv):
                return f"norm input {xv.dtype}{list(xv.shape)} differs from its output {nv.dtype}{list(nv.shape)}"
            return x, m.nodes
        return None

    def apply(self, graph: torch.fx.Graph) -> int:
        count = 0
        regions = None
        for node in decode_op_nodes(graph):
            if node.kwargs.get("use_qk_l2norm_in_kernel") is not False:
                continue
            found = [self._match(node.kwargs[name]) for name in ("q", "k")]
            if any(f is None for f in found):
                continue
            why = next((f for f in found if isinstance(f, str)), None)
            if why is None:
                why = shares_written_storage(node, {"q": found[0][0], "k": found[1][0]})
            if why is None:
                regions = regions if regions is not None else mutation_regions(graph)
                if not same_region(regions, [node, *found[0][1], *found[1][1]]):
                    why = "a mutation lies between the norm and the op"
            if why is not None:
                log.debug("qk_l2norm: left %s alone: %s", node.name, why)
                continue
            set_decode_kwargs(node, q=found[0][0], k=found[1][0], use_qk_l2norm_in_kernel=True)
            log.info("qk_l2norm: folded the q/k L2 norm into %s (use_qk_l2norm_in_kernel=True)", node.name)
            count += 1
        return count


REWRITE = TorchL2NormIntoDecodeOp()
