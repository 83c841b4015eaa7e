"""Tracing helpers that turn a plain function into the graph shape Inductor's post-grad passes see.

A search function written in PyTorch has to be traced the way Inductor lowered the user's code,
or its pattern never lines up with the graph:

* decompositions: :func:`torch._inductor.pattern_matcher.fwd_only` applies Inductor's table;
* in-place writes (``out[:, :, i] = x``) become ``select_scatter`` in a compiled graph, so a
  function that mutates is retraced under ``torch.func.functionalize``;
* ``view`` becomes ``reshape`` before post-grad passes run, and views of constant tensors are
  folded into one constant (Inductor's joint-graph constant folding);
* dead nodes (functionalization leaves some) would make intermediate nodes look multiply used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch._inductor.config as inductor_config
from torch._inductor import pattern_matcher as pm

aten = torch.ops.aten

# The types fx_to_pattern treats as "any value" in a coarse pattern. Floats and dtypes stay exact
# in the small sub-patterns of this package (eps, casts); values we must read back are captured
# through ``scalar_workaround`` instead.
_IGNORED_TYPES = (torch.device,)


def _has_mutation(gm: torch.fx.GraphModule) -> bool:
    for node in gm.graph.nodes:
        if (node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
                and node.target._schema.is_mutable):
            return True
    return False


def _fold_uniform_values(gm: torch.fx.GraphModule) -> None:
    """Inductor's joint-graph pass that turns views of ``full`` into one ``full`` of the result.

    ``torch.zeros_like`` of a permuted tensor traces as ``permute(full(...))``; the user's graph
    reaches post-grad passes with that folded into a ``full`` of the final shape.
    """
    if not inductor_config.joint_graph_constant_folding:
        return
    try:
        from torch._inductor.fx_passes.joint_graph import constant_fold_uniform_value
    except ImportError:  # pragma: no cover - moved in some release
        return
    constant_fold_uniform_value(gm)


def _normalize(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    _fold_uniform_values(gm)
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is aten.view.default:
            node.target = aten.reshape.default
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def trace(fn: Callable[..., Any], args: Sequence[Any], **kwargs: Any) -> torch.fx.GraphModule:
    """``trace_fn`` for :func:`torch._inductor.pattern_matcher.register_replacement`.

    Accepts and forwards ``**kwargs`` (torch >= 2.14 passes ``get_decomp_fn``). Functions that
    mutate a tensor are retraced functionalized; functions that call a higher-order op such as
    ``auto_functionalized`` (replacements) are traced as they are.
    """
    fwd_kwargs = {k: v for k, v in kwargs.items() if k == "get_decomp_fn"}
    gm = pm.fwd_only(fn, args, **fwd_kwargs)
    if _has_mutation(gm):
        gm = pm.fwd_only(torch.func.functionalize(fn, remove="mutations"), args, **fwd_kwargs)
    return _normalize(gm)


def _allow_extra_users(pattern: pm.PatternExpr) -> None:
    """Let every interior node of ``pattern`` have users outside it.

    The rewrites built on these sub-patterns never delete what they matched (dead code
    elimination does, once nothing reads it), so a value that something else also reads is
    still safe to recompute inside the fused op.
    """
    seen: set[int] = set()
    stack = [pattern]
    while stack:
        p = stack.pop()
        if id(p) in seen:
            continue
        seen.add(id(p))
        if isinstance(p, pm._TargetExpr):
            p.users = pm.MULTIPLE
        if isinstance(p, pm._TargetArgsExpr):
            children = getattr(p, "flat_args_kwargs", ((*p.args, *p.kwargs.values()), None))[0]
            stack.extend(x for x in children if isinstance(x, pm.PatternExpr))


def sub_pattern(
    fn: Callable[..., Any],
    example_args: Sequence[torch.Tensor],
    *,
    scalar_workaround: dict[str, float] | None = None,
) -> tuple[pm.PatternExpr, str]:
    """Trace ``fn`` into an exact single-output pattern (shapes aside) that tolerates extra users.

    Ints, floats and dtypes are kept exact (a cast to ``float32``, ``sum(dim=[-1], keepdim=True)``,
    an eps); a constant listed in ``scalar_workaround`` (name -> the value that ``fn`` bakes in) is
    captured as a keyword instead, so the match reports the value the user's graph holds. ``fn``
    takes tensors only; the match names them by ``fn``'s parameter names.
    Returns the pattern and a printable key for de-duplicating variants that trace alike.
    """
    scalar_workaround = scalar_workaround or {}
    argnames = list(fn.__code__.co_varnames[: fn.__code__.co_argcount])
    gm = trace(fn, example_args)
    pattern = pm.fx_to_pattern(
        gm,
        ignore_types=_IGNORED_TYPES,
        argnames=argnames,
        scalar_workaround=scalar_workaround,
    )
    _allow_extra_users(pattern)
    return pattern, pm.PatternPrettyPrinter.run(pattern)
