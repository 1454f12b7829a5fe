"""EPro-PnP's Monte Carlo pose loss for VPOG (docs/conventions.md §6): proposal distributions, the AMIS sampler
and the loss module with derivative regularisation. The solver and the cost are the ops
`vpog.ops.pnp_solve` and `vpog.ops.pnp_cost`; the AMIS sampler is the third op (`vpog.pnp.amis`); all
three take their reference math from `vpog.ops.pnp_math` (the twin of `csrc/pnp_math.h`).
"""

from vpog.pnp.loss import MonteCarloPoseLoss, PoseLossConfig, PoseLossOutput

__all__ = ["MonteCarloPoseLoss", "PoseLossConfig", "PoseLossOutput"]
