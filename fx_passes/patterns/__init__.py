"""The rewrites, one module each, named after the graph they match; listed in the order they run
(in rounds, until a round matches nothing: a later rewrite can expose an earlier one's pattern).

1. :mod:`.hf_torch_recurrent_gated_delta_rule` turns transformers' plain-PyTorch decode step into
   the unfused op (its gating stays PyTorch, for rewrite 3 to take).
2. :mod:`.torch_l2norm_into_decode_op` folds a PyTorch q/k L2 norm into either op.
3. :mod:`.torch_gating_into_recurrent_op` folds PyTorch gating into the fused op.
4. :mod:`.repeated_key_heads_into_decode_op` hands either op q and k's own key heads where PyTorch
   repeated them to the value heads.
5. :mod:`.shared_slot_order` computes one slot order for the decode calls that share their slot
   indices, where each would otherwise rank the slots itself (last: the rewrites before it replace
   op calls).
"""

from __future__ import annotations

from fx_passes.patterns import (
    hf_torch_recurrent_gated_delta_rule,
    repeated_key_heads_into_decode_op,
    shared_slot_order,
    torch_gating_into_recurrent_op,
    torch_l2norm_into_decode_op,
)
from fx_passes.patterns._common import Rewrite

REWRITES: tuple[Rewrite, ...] = (
    hf_torch_recurrent_gated_delta_rule.REWRITE,
    torch_l2norm_into_decode_op.REWRITE,
    torch_gating_into_recurrent_op.REWRITE,
    repeated_key_heads_into_decode_op.REWRITE,
    shared_slot_order.REWRITE,
)

__all__ = ["REWRITES", "Rewrite"]
