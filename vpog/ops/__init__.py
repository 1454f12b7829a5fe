"""Public ops of vpog (docs/conventions.md §9). Each takes `backend="auto" | "reference" | <fast backend>`.

Every op module registers its backends with `vpog._backend` on import; `python -m vpog.info`
lists what "auto" picks on this machine.
"""

from vpog.ops.patch_flow_labels import FlowLabels, patch_flow_labels, patch_flow_labels_reference
from vpog.ops.pnp_cost import adaptive_huber_delta, pnp_cost, pnp_cost_reference
from vpog.ops.pnp_solve import PnPResult, pnp_solve, pnp_solve_reference
from vpog.ops.s2rope_attention import apply_s2rope, s2rope_attention, s2rope_attention_reference

__all__ = [
    "apply_s2rope", "s2rope_attention", "s2rope_attention_reference",
    "FlowLabels", "patch_flow_labels", "patch_flow_labels_reference",
    "adaptive_huber_delta", "pnp_cost", "pnp_cost_reference", "PnPResult", "pnp_solve", "pnp_solve_reference",
]
