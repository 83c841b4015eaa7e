"""Decode ops of one step that read the same slots with no order -> one slot order for them all.

An engine's step calls a decode op once per Gated DeltaNet layer, each call with the same slot
indices. Where the launcher takes the rows in slot order (``gdn_ops.triton_slot_order``), a call
given no order ranks the slots itself: a rank kernel per layer, between the previous kernel's end
and the decode's start (0.5-1.1 points of copy bandwidth a call on the H200, NOTES.md, forty-first
session). Given ``initial_state_order`` it launches none, and sorts from smaller grids too. This
rewrite inserts ``gdn_ops.slot_order(indices)`` once, before the first call that reads those
indices, and hands it to every such call, the way the op's documentation asks an engine to.

Only where it saves kernels on the GPU the graph is compiled for: two or more of the calls must
be ones the launcher sorts with no order given (its own table, ``sorts_rows``, for their B * HV,
state dtype and layout), each of which would launch a rank kernel of its own. Where only a given
order would make the calls sort (the launcher's given-order table starts at smaller grids), the
rewrite would add a kernel a step for a gain per call that eight layers did not show (H200, bf16
vk B*HV 1024: level within 0.5 us a step; NOTES.md, forty-sixth session), so it does not. Graphs on
the CPU, on GPUs without a slot-order rule, with a batch size unknown at compile time, or of small
batches are left alone. Calls that already have an order keep it; a ``slot_order`` of the same
indices already in the graph before the calls is used rather than a second one.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch._subclasses.fake_tensor import FakeTensor

from fx_passes.counters import log
from fx_passes.patterns._common import (
    DECODE_OPS,
    Rewrite,
    decode_op_nodes,
    mutation_regions,
    same_region,
    set_decode_kwargs,
    val,
)

SLOT_ORDER_OP = torch.ops.gdn_ops.slot_order.default


def _state(node: torch.fx.Node) -> torch.Tensor | None:
    """The pool a functionalized decode call updates (v2: its base; a view keeps the base's dtype)."""
    if "_all_bases" in node.kwargs:
        return val(node.kwargs["_all_bases"][node.kwargs["_initial_state_source_base_index"]])
    return val(node.kwargs.get("initial_state_source"))


def ranks_its_own_slots(node: torch.fx.Node) -> bool:
    """Whether the launcher, given no order, takes this call's rows in slot order, ranking the
    slots by a kernel of its own: the launcher's table for this GPU, B * HV, the pool's element size
    and layout. False where B or HV is not known at compile time, or off the GPU."""
    from gdn_ops.triton_decode import gpu_name
    from gdn_ops.triton_slot_order import sorts_rows

    q, v, state = val(node.kwargs["q"]), val(node.kwargs["v"]), _state(node)
    if not all(isinstance(t, torch.Tensor) for t in (q, v, state)):
        return False
    B, HV = q.shape[0], v.shape[2]
    if not (isinstance(B, int) and isinstance(HV, int)):
        return False
    return sorts_rows(gpu_name(q.device), node.kwargs["state_layout"], state.element_size(), B * HV, False, HV)


def _existing_order(indices: torch.fx.Node, before: torch.fx.Node, position: dict) -> torch.fx.Node | None:
    """A ``slot_order(indices)`` node that comes before ``before`` in the graph (``position``: each
    node's place), if there is one."""
    return next((user for user in indices.users if user.op == "call_function" and user.target is SLOT_ORDER_OP
                 and user.args == (indices,) and position[user] < position[before]), None)


class SharedSlotOrder(Rewrite):
    name = "slot_order"
    # Per layer of a step whose calls share their indices: the layer's call takes the step's order
    # (one slot_order node for the whole step). transformers' modules keep a state per layer and
    # pass no indices, so none there.
    EXPECTED_MATCHES = 1

    def apply(self, graph: torch.fx.Graph) -> int:
        groups: dict[torch.fx.Node, list[torch.fx.Node]] = defaultdict(list)
        for node in decode_op_nodes(graph, DECODE_OPS):
            indices = node.kwargs.get("initial_state_indices")
            if isinstance(indices, torch.fx.Node) and node.kwargs.get("initial_state_order") is None:
                groups[indices].append(node)
        if not groups:
            return 0
        position = {n: i for i, n in enumerate(graph.nodes)}
        regions = None
        count = 0
        for indices, calls in groups.items():
            ranking = sum(ranks_its_own_slots(call) for call in calls)
            if ranking < 2:
                continue
            calls.sort(key=position.__getitem__)
            regions = regions if regions is not None else mutation_regions(graph)
            if not same_region(regions, calls):  # the order is taken where the first call reads the indices
                log.debug("slot_order: left the calls on %s alone: a mutation lies between them", indices.name)
                continue
            first = calls[0]
            order = _existing_order(indices, first, position)
            if order is None:
                fake = val(indices)
                if not isinstance(fake, FakeTensor):  # e.g. a constant: nothing to trace the order's value from
                    log.debug("slot_order: left the calls on %s alone: no fake value for the indices", indices.name)
                    continue
                with graph.inserting_before(first):
                    order = graph.call_function(SLOT_ORDER_OP, (indices,))
                with fake.fake_mode:
                    order.meta["val"] = SLOT_ORDER_OP(fake)
            for call in calls:
                set_decode_kwargs(call, initial_state_order=order)
            log.info("slot_order: %d decode calls on %s take one slot order (%d would rank the slots themselves)",
                     len(calls), indices.name, ranking)
            count += len(calls)
        return count


REWRITE = SharedSlotOrder()
