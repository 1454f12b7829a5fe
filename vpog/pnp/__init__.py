"""EPro-PnP's Monte Carlo pose loss for VPOG (docs/conventions.md §6): the loss module with derivative
regularisation. Its three ops sit side by side in `vpog.ops`: the solver `pnp_solve`, the cost `pnp_cost` and the
AMIS sampler `pnp_amis` (proposal distributions in `pnp_distributions`), all three on the reference math of
`vpog.ops.pnp_math` (the twin of `csrc/pnp_math.h`).
"""

from vpog.pnp.loss import MonteCarloPoseLoss, PoseLossConfig, PoseLossOutput

__all__ = ["MonteCarloPoseLoss", "PoseLossConfig", "PoseLossOutput"]
