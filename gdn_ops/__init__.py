"""gdn-ops: the Gated DeltaNet decode step as torch.library custom ops.

Importing the package registers ``torch.ops.gdn_ops.*``; Triton is imported only when a CUDA
kernel first runs.
"""

from gdn_ops.api import (
    fused_sigmoid_gating_delta_rule_update,
    gdn_gating,
    recurrent_gated_delta_rule_update,
    slot_order,
)
from gdn_ops.reference import (
    delta_rule_step_reference,
    fused_sigmoid_gating_delta_rule_reference,
    gdn_gating_reference,
    recurrent_gated_delta_rule_reference,
)

__all__ = [
    "fused_sigmoid_gating_delta_rule_update",
    "recurrent_gated_delta_rule_update",
    "gdn_gating",
    "slot_order",
    "fused_sigmoid_gating_delta_rule_reference",
    "recurrent_gated_delta_rule_reference",
    "gdn_gating_reference",
    "delta_rule_step_reference",
]
__version__ = "0.1.0"
