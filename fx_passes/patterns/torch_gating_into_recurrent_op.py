"""Gating written in PyTorch, feeding ``recurrent_gated_delta_rule_update`` -> the fused op.

Matches, in front of the unfused op's ``g`` and ``beta`` inputs::

    g    = -A_log.float().exp() * F.softplus(a.float() + dt_bias[.float()], beta=sb, threshold=st)
    beta = b.sigmoid()            # or b.float().sigmoid()

with or without each ``.float()`` (the parameters may already be fp32, or everything may run in
one dtype), the sum and the product in either order, the minus sign on the rate or on the
product, softplus with default or explicit ``beta`` and
``threshold``, and fp32/bf16/fp16 casts after ``g``/``beta``. ``g, beta`` from :func:`gdn_ops.gdn_gating` match
too. The call becomes ``fused_sigmoid_gating_delta_rule_update(A_log, a, dt_bias, sb, st, ...)``.

The fused kernel computes the gates in fp32. Where the matched code rounded ``g`` or ``beta`` to
bf16/fp16 the compiled result is the more accurate one (a bf16 ``beta`` is a known source of
drift); everything else about the call is unchanged.

If ``g`` or ``beta`` (or any value in between) has another user, the PyTorch gating stays in the
graph for that user and the op is still swapped: the kernel recomputes the same gates. Nothing
matches when an input has a dtype or shape the fused op refuses (e.g. fp64 ``a``), when ``A_log``
or ``dt_bias`` is not a unit-stride ``[HV]`` vector, or when a mutation lies between the gating
and the call.
"""

from __future__ import annotations

import itertools
import operator

import torch
import torch.nn.functional as F
from torch._inductor import pattern_matcher as pm

from fx_passes.counters import log
from fx_passes.patterns._common import (
    FUSED_OP,
    GATING_OP,
    RECURRENT_OP,
    Rewrite,
    decode_op_nodes,
    finite,
    head_param_ok,
    is_activation,
    mutation_regions,
    same_region,
    same_shape,
    shares_written_storage,
    strip_casts,
    strip_upcast,
    swap_decode_op,
    val,
)

# Values the search functions are traced with and read back from a match (scalar_workaround).
# Softplus with beta == 1 traces without the scaling, so beta != 1 is a second family.
_TRACE_SOFTPLUS_BETA = 2.5
_TRACE_SOFTPLUS_THRESHOLD = 17.25
_DEFAULT_SOFTPLUS_THRESHOLD = 20


def _g_search(scaled_softplus: bool, decay_first: bool, bias_first: bool, sign_outside: bool):
    # Only an all-default softplus decomposes without scaling; an explicit beta=1 traces a
    # multiply and divide by 1 that Inductor's joint-graph passes remove from the user's graph.
    # So the unscaled family is traced with the defaults (threshold 20, read back by value).
    softplus_kwargs = {}
    if scaled_softplus:
        softplus_kwargs = {"beta": _TRACE_SOFTPLUS_BETA, "threshold": _TRACE_SOFTPLUS_THRESHOLD}

    def g_search(A_log, a, dt_bias):
        # the pattern matcher takes operands in the order written: each order is a pattern
        sp = F.softplus(dt_bias.float() + a.float() if bias_first else a.float() + dt_bias.float(),
                        **softplus_kwargs)
        rate = A_log.float().exp()
        if sign_outside:
            return -(rate * sp if decay_first else sp * rate)
        return -rate * sp if decay_first else sp * -rate

    return g_search


def beta_search(b):
    return b.float().sigmoid()


class TorchGatingIntoRecurrentOp(Rewrite):
    name = "gating"
    EXPECTED_MATCHES = 1

    def __init__(self) -> None:
        self.g_patterns: list[tuple[pm.PatternExpr, bool]] = []
        self.beta_patterns: list[pm.PatternExpr] = []

    def setup(self) -> bool:
        from fx_passes.trace import sub_pattern

        # Traced on fp32 inputs, where every ".float()" vanishes: the patterns hold no casts and
        # match gating computed in any dtype. Upcasts in front of the inputs are stripped from
        # the match afterwards (the kernel upcasts itself).
        HV = 4
        A_log, a, dt_bias, b = torch.randn(HV), torch.randn(2, 1, HV), torch.randn(HV), torch.randn(2, 1, HV)
        for scaled, *order in itertools.product((False, True), repeat=4):
            scalars = {"softplus_threshold": _TRACE_SOFTPLUS_THRESHOLD if scaled else _DEFAULT_SOFTPLUS_THRESHOLD}
            if scaled:
                scalars["softplus_beta"] = _TRACE_SOFTPLUS_BETA
            pattern, _ = sub_pattern(_g_search(scaled, *order), (A_log, a, dt_bias), scalar_workaround=scalars)
            self.g_patterns.append((pattern, scaled))
        self.beta_patterns.append(sub_pattern(beta_search, (b,))[0])
        return True

    # -- matching ------------------------------------------------------------------------------

    def _match_g(self, node):
        node = strip_casts(node)
        for pattern, scaled in self.g_patterns:
            m = pattern.match(node)
            if pm.is_match(m):
                kw = m.kwargs
                softplus_beta = kw["softplus_beta"] if scaled else 1.0
                A_log, a, dt_bias = (strip_upcast(kw[n]) for n in ("A_log", "a", "dt_bias"))
                a_v, g_v = val(a), val(node)
                if isinstance(a_v, torch.Tensor) and isinstance(g_v, torch.Tensor) and a_v.dim() != g_v.dim():
                    continue  # the sum's other order, read with a and dt_bias swapped: its own pattern follows
                return A_log, a, dt_bias, softplus_beta, kw["softplus_threshold"], m.nodes
        return None

    def _match_beta(self, node):
        node = strip_casts(node)
        for pattern in self.beta_patterns:
            m = pattern.match(node)
            if pm.is_match(m):
                return strip_upcast(m.kwargs["b"]), m.nodes
        return None

    def _match_gating_op(self, g, beta):
        """``g, beta = gdn_ops.gdn_gating(...)`` feeding the op directly."""
        if not (isinstance(g, torch.fx.Node) and isinstance(beta, torch.fx.Node)):
            return None
        if g.target is not operator.getitem or beta.target is not operator.getitem:
            return None
        src = g.args[0]
        if src is not beta.args[0] or g.args[1] != 0 or beta.args[1] != 1:
            return None
        if not (isinstance(src, torch.fx.Node) and src.target is GATING_OP):
            return None
        A_log, a, dt_bias, b, softplus_beta, softplus_threshold = src.args
        return A_log, a, dt_bias, b, softplus_beta, softplus_threshold, [src, g, beta]

    def _find(self, node):
        g, beta = node.kwargs["g"], node.kwargs["beta"]
        found = self._match_gating_op(g, beta)
        if found is not None:
            return found
        mg = self._match_g(g)
        if mg is None:
            return None
        mb = self._match_beta(beta)
        if mb is None:
            return None
        A_log, a, dt_bias, softplus_beta, softplus_threshold, g_nodes = mg
        b, b_nodes = mb
        return A_log, a, dt_bias, b, softplus_beta, softplus_threshold, g_nodes + b_nodes

    @staticmethod
    def _supported(node, A_log, a, dt_bias, b, softplus_beta, softplus_threshold) -> str | None:
        """Why the fused op cannot take these inputs (None when it can)."""
        q, g, beta = val(node.kwargs["q"]), val(node.kwargs["g"]), val(node.kwargs["beta"])
        a_v, b_v, A_v, dt_v = val(a), val(b), val(A_log), val(dt_bias)
        if not all(isinstance(t, torch.Tensor) for t in (q, g, beta, a_v, b_v, A_v, dt_v)):
            return "missing tensor metadata"
        for name, t, like in (("a", a_v, g), ("b", b_v, beta)):
            if not (is_activation(t) and same_shape(t, like) and t.device == q.device):
                return f"{name} {t.dtype}{list(t.shape)} is not an activation tensor shaped like the gates"
        hv = g.shape[-1]
        for name, t in (("A_log", A_v), ("dt_bias", dt_v)):
            if not head_param_ok(t, hv, q.device):
                return f"{name} {t.dtype}{list(t.shape)} stride {t.stride()} is not a unit-stride [HV] vector"
        if not (finite(softplus_beta) and softplus_beta > 0 and finite(softplus_threshold)):
            return f"softplus beta={softplus_beta!r} threshold={softplus_threshold!r}"
        return shares_written_storage(node, {"a": a, "b": b, "A_log": A_log, "dt_bias": dt_bias})

    # -- rewriting -----------------------------------------------------------------------------

    def apply(self, graph: torch.fx.Graph) -> int:
        count = 0
        regions = None
        for node in decode_op_nodes(graph, (RECURRENT_OP,)):
            found = self._find(node)
            if found is None:
                continue
            A_log, a, dt_bias, b, softplus_beta, softplus_threshold, matched = found
            why = self._supported(node, A_log, a, dt_bias, b, softplus_beta, softplus_threshold)
            if why is None:
                regions = regions if regions is not None else mutation_regions(graph)
                if not same_region(regions, [node, *matched]):
                    why = "a mutation lies between the gating and the op"
            if why is not None:
                log.debug("gating: left %s unfused: %s", node.name, why)
                continue
            kwargs = {
                "A_log": A_log,
                "a": a,
                "dt_bias": dt_bias,
                "softplus_beta": float(softplus_beta),
                "softplus_threshold": float(softplus_threshold),
            }
            kwargs.update((k, v) for k, v in node.kwargs.items() if k not in ("g", "beta"))
            kwargs["b"] = b
            old_name = node.name
            region = regions.get(node) if regions is not None else None
            new = swap_decode_op(node, FUSED_OP, kwargs)
            if regions is not None:
                regions[new] = region
            log.info(
                "gating: %s -> fused_sigmoid_gating_delta_rule_update (%s, softplus beta=%s threshold=%s)",
                old_name, new.name, float(softplus_beta), float(softplus_threshold),
            )
            count += 1
        return count


REWRITE = TorchGatingIntoRecurrentOp()
