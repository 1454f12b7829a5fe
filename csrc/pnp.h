// Host side shared by the PnP ops (solver, cost, Monte Carlo proposals): the input checks, the
// arguments' common head, and the CUDA launchers of the cost (those of the solver and the sampler sit
// next to their argument structs, pnp_solver.h and pnp_amis.h). The .cpp files check inputs and call
// the CPU implementation or, for CUDA tensors, the CUDA launchers (pnp_*_cuda.cu).
#pragma once

#include <ATen/core/Tensor.h>

#include "pnp_math.h"

namespace vpog {
namespace pnp {

// Common checks: [B, N, 3|2|2] points, [B, 3, 3] K, [B] delta, one floating dtype and device.
void check_problem_tensors(const at::Tensor& x3d, const at::Tensor& x2d, const at::Tensor& w2d,
                           const at::Tensor& K, const at::Tensor& delta);
// pose must be [P, B, 7] of x3d's dtype and device.
void check_pose_tensor(const char* name, const at::Tensor& pose, const at::Tensor& x3d);

// Points the common head of an op's arguments (SolveArgs, AmisArgs) at contiguous tensors of dtype T
// that passed check_problem_tensors.
template <typename T>
void set_problem_args(ProblemArgs<T>& a, const at::Tensor& x3d, const at::Tensor& x2d, const at::Tensor& w2d,
                      const at::Tensor& K, const at::Tensor& delta) {
  a.x3d = x3d.data_ptr<T>();
  a.x2d = x2d.data_ptr<T>();
  a.w2d = w2d.data_ptr<T>();
  a.K = K.data_ptr<T>();
  a.delta = delta.data_ptr<T>();
  a.B = x3d.size(0);
  a.N = x3d.size(1);
}

#ifdef VPOG_WITH_CUDA
void cost_fwd_cuda(const at::Tensor& pose, const at::Tensor& x3d, const at::Tensor& x2d, const at::Tensor& w2d,
                   const at::Tensor& K, const at::Tensor& delta, double z_min, at::Tensor& cost);

void cost_bwd_cuda(const at::Tensor& grad_cost, const at::Tensor& pose, const at::Tensor& x3d,
                   const at::Tensor& x2d, const at::Tensor& w2d, const at::Tensor& K, const at::Tensor& delta,
                   double z_min, at::Tensor& grad_x3d, at::Tensor& grad_x2d, at::Tensor& grad_w2d,
                   at::Tensor& grad_delta_partial);
#endif

}  // namespace pnp
}  // namespace vpog
