"""EPro-PnP's Monte Carlo pose loss for VPOG (SPEC §6): proposal distributions, the AMIS sampler
and the loss module with derivative regularisation. The solver and the cost are the ops
`vpog.ops.pnp_solve` and `vpog.ops.pnp_cost`.
"""

from vpog.pnp.loss import MonteCarloPoseLoss, PoseLossConfig, PoseLossOutput

__all__ = ["MonteCarloPoseLoss", "PoseLossConfig", "PoseLossOutput"]
