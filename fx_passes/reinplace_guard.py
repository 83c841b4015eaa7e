"""Give a decode op a private copy of its state where Inductor's reinplacing would lose a value.

In a post-grad graph a decode op is ``auto_functionalized_v2``: it takes the pool (and ``out``) as
bases and returns their new values. Inductor's reinplacing then runs the op on a base's own
memory when nothing reads the base after the op. For a graph input (the cache's state buffer,
which functionalization writes back with a ``copy_`` at the end of the graph) it checks the
input's later readers, but not those of the op's *result*, which after reinplacing lives in the
input's memory. So when the result is still read once the input has been overwritten by that
``copy_`` (returned from the graph, or copied into another input) with a later step's value,
the reader sees the later value. PyTorch 2.13 does this with any mutating custom op
(pytorch/pytorch#198031 and the issues it cites): for instance two decode steps in one compiled
function with ``state.clone()`` between them return the second step's state as the first's.

``guard_reinplacing`` finds the decode ops whose result (or a view of it) is read at or after the
first ``copy_`` into the graph input their base comes from, and hands each such op a clone of its
base: Inductor then reinplaces into the clone, and the input keeps only the final ``copy_``. One
decode step per graph, the form the rewrites produce for model code, needs no copy and gets none.
"""

from __future__ import annotations

import operator
from typing import Any

import torch

from fx_passes.counters import log
from fx_passes.patterns._common import decode_op_nodes, node_storage

_AUTO_FUNCTIONALIZED_V2 = torch.ops.higher_order.auto_functionalized_v2


def _new_values(node: torch.fx.Node) -> dict[int, torch.fx.Node]:
    """``{base index: getitem node}`` of a decode op's new base values."""
    bases = node.kwargs["_all_bases"]
    first = len(node.meta["val"]) - len(bases)  # the op's own returns come first
    return {user.args[1] - first: user for user in node.users
            if user.target is operator.getitem and user.args[1] >= first}


def guard_reinplacing(graph: torch.fx.Graph) -> int:
    """Clone the bases of the decode ops whose results a write-back of their input would overwrite
    while still needed; return how many clones were inserted."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    by_storage: dict[Any, list[torch.fx.Node]] = {}
    for n in graph.nodes:
        storage = node_storage(n)
        if storage is not None:
            by_storage.setdefault(storage, []).append(n)
    # the first write-back into each graph input
    first_copy: dict[torch.fx.Node, torch.fx.Node] = {}
    for n in graph.find_nodes(op="call_function", target=torch.ops.aten.copy_.default):  # in graph order
        dst = n.args[0]
        if isinstance(dst, torch.fx.Node) and dst.op in ("placeholder", "get_attr"):
            first_copy.setdefault(dst, n)
    # the graph input each decode op's base comes from, through earlier decode ops' results (a clone
    # inserted below is not in ``order``: it reads before the op, never late)
    root: dict[torch.fx.Node, torch.fx.Node] = {}
    inserted = 0
    # only auto_functionalized_v2 calls carry their bases, the form Inductor reinplaces
    for op in decode_op_nodes(graph):
        if op.target is not _AUTO_FUNCTIONALIZED_V2 or "val" not in op.meta:
            continue
        bases = list(op.kwargs["_all_bases"])
        changed = False
        for i, new in _new_values(op).items():
            base = bases[i]
            origin = root[new] = root.get(base, base)
            write_back = first_copy.get(origin)
            storage = node_storage(new)
            if write_back is None or storage is None:
                continue
            late = [user for view in by_storage.get(storage, [new]) for user in view.users
                    if order.get(user, -1) >= order[write_back] and not (user is write_back and view is new)]
            if not late:
                continue
            with graph.inserting_before(op):
                copy = graph.call_function(torch.ops.aten.clone.default, (base,))
            copy.meta["val"] = base.meta["val"].clone()
            bases[i] = root[new] = copy
            changed = True
            inserted += 1
            log.info("reinplace guard: %s gets a copy of %s (its result %s is read at %s, after %s writes %s back)",
                     op.name, base.name, new.name, late[0].name, write_back.name, origin.name)
        if changed:
            op.kwargs = {**op.kwargs, "_all_bases": bases}
    return inserted
