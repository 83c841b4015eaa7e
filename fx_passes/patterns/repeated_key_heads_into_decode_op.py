"""Key heads repeated in PyTorch in front of a decode op -> the op's own head grouping.

Matches, on both the ``q`` and the ``k`` input of either decode op, q and k repeated from HK key
heads to HK * G heads the way ``x.repeat_interleave(G, dim=2)`` (or ``x[:, :, :, None].expand(...)
.reshape(...)``) reaches a post-grad graph::

    reshape(clone(expand(unsqueeze(x, 3), [B, T, HK, G, K])), [B, T, HK * G, K])   (clone optional)

and passes ``x`` itself. The op reads value head ``h`` against key head ``h // (HV / HK)``, which is
the head an interleaved repeat puts at ``h``, so the step is the same and the repeated copies of q
and k are neither written nor read. transformers 5.17 repeats the key heads this way in the
Qwen3-Next module, before the recurrence that :mod:`.hf_torch_recurrent_gated_delta_rule`
rewrites; 5.24 leaves them to the recurrence.

Folds only when q and k are both repeated, by the same G, from tensors of the same shape and with
no mutation between the repeat and the op. A tiled repeat (``x.repeat(1, 1, G, 1)``, head ``h`` from
key head ``h % HK``) is a different grouping and is left alone, as is a repeat behind a cast. A
repeated tensor that something else also reads stays in the graph for that reader.
"""

from __future__ import annotations

import torch

from fx_passes.counters import log
from fx_passes.patterns._common import (
    Rewrite,
    decode_op_nodes,
    known_equal,
    mutation_regions,
    same_region,
    same_shape,
    set_decode_kwargs,
    shares_written_storage,
    val,
)

aten = torch.ops.aten
_RESHAPES = (aten.reshape.default, aten.view.default, aten._unsafe_view.default)


def _call(node, targets) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target in targets


def _repeated_heads(op_input):
    """``(x, G, matched nodes)`` when ``op_input`` is ``x``'s heads repeated G times interleaved,
    else None."""
    reshape = op_input
    if not _call(reshape, _RESHAPES):
        return None
    expand = reshape.args[0]
    clone = None
    if _call(expand, (aten.clone.default,)):
        clone, expand = expand, expand.args[0]
    if not _call(expand, (aten.expand.default,)):
        return None
    unsqueeze = expand.args[0]
    if not _call(unsqueeze, (aten.unsqueeze.default,)):
        return None
    x = unsqueeze.args[0]
    xv, ev, rv = val(x), val(expand), val(reshape)
    if not all(isinstance(t, torch.Tensor) for t in (xv, ev, rv)) or (xv.dim(), ev.dim(), rv.dim()) != (4, 5, 4):
        return None
    if unsqueeze.args[1] not in (3, -2):  # a new axis after the heads: each head repeated in place
        return None
    B, T, HK, K = xv.shape
    G = ev.shape[3]  # symbolic under dynamic=True (HV // HK of symbolic head counts)
    if not all(known_equal(a, b) for a, b in zip(ev.shape, (B, T, HK, G, K))):
        return None
    if not all(known_equal(a, b) for a, b in zip(rv.shape, (B, T, HK * G, K))):
        return None
    return x, G, [n for n in (unsqueeze, expand, clone, reshape) if n is not None]


class RepeatedKeyHeadsIntoDecodeOp(Rewrite):
    name = "key_heads"
    # Where the model repeats the key heads in PyTorch, once per op call (transformers 5.17's
    # Qwen3-Next layer); the release the pass is written against repeats none (0 there).
    EXPECTED_MATCHES = 1

    def apply(self, graph: torch.fx.Graph) -> int:
        count = 0
        regions = None
        for node in decode_op_nodes(graph):
            found = [_repeated_heads(node.kwargs[name]) for name in ("q", "k")]
            if any(f is None for f in found):
                continue
            (xq, gq, q_nodes), (xk, gk, k_nodes) = found
            if not (known_equal(gq, gk) and same_shape(val(xq), val(xk))):
                log.debug("key_heads: left %s alone: q and k are repeated differently", node.name)
                continue
            why = shares_written_storage(node, {"q": xq, "k": xk})
            if why is not None:
                log.debug("key_heads: left %s alone: %s", node.name, why)
                continue
            regions = regions if regions is not None else mutation_regions(graph)
            if not same_region(regions, [node, *q_nodes, *k_nodes]):
                log.debug("key_heads: left %s alone: a mutation lies between the repeat and the op", node.name)
                continue
            set_decode_kwargs(node, q=xq, k=xk)
            log.info("key_heads: %s reads q and k's %s key heads, not their %s-fold repeat", node.name,
                     val(xq).shape[2], gq)
            count += 1
        return count


REWRITE = RepeatedKeyHeadsIntoDecodeOp()
