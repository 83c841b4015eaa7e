"""The rewrites, one module each, named after the graph they match; listed in the order they run.

1. :mod:`.hf_torch_recurrent_gated_delta_rule` turns transformers' plain-PyTorch decode step into
   the unfused op (its gating stays PyTorch, for rewrite 3 to take).
2. :mod:`.torch_l2norm_into_decode_op` folds a PyTorch q/k L2 norm into either op.
3. :mod:`.torch_gating_into_recurrent_op` folds PyTorch gating into the fused op.
"""

from __future__ import annotations

from fx_passes.patterns import (
    hf_torch_recurrent_gated_delta_rule,
    torch_gating_into_recurrent_op,
    torch_l2norm_into_decode_op,
)
from fx_passes.patterns._common import Rewrite

REWRITES: tuple[Rewrite, ...] = (
    hf_torch_recurrent_gated_delta_rule.REWRITE,
    torch_l2norm_into_decode_op.REWRITE,
    torch_gating_into_recurrent_op.REWRITE,
)

__all__ = ["REWRITES", "Rewrite"]
