// Launchers of the PnP ops (solver, cost, Monte Carlo proposals). The .cpp files check inputs and
// call the CPU implementation or, for CUDA tensors, these CUDA launchers (pnp_*_cuda.cu).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace vpog {
namespace pnp {

// Common checks: [B, N, 3|2|2] points, [B, 3, 3] K, [B] delta, one floating dtype and device.
void check_problem_tensors(const at::Tensor& x3d, const at::Tensor& x2d, const at::Tensor& w2d,
                           const at::Tensor& K, const at::Tensor& delta);
// pose must be [P, B, 7] of x3d's dtype and device.
void check_pose_tensor(const char* name, const at::Tensor& pose, const at::Tensor& x3d);

#ifdef VPOG_WITH_CUDA
void solve_cuda(const at::Tensor& x3d, const at::Tensor& x2d, const at::Tensor& w2d, const at::Tensor& K,
                const at::Tensor& delta, const at::Tensor* pose_init, const at::Tensor* rs_index,
                const at::Tensor* rs_quat, int64_t num_iter, int64_t init_iter, bool fast_mode,
                bool force_init_solve, double z_min, at::Tensor& rs_center, at::Tensor& rs_pose,
                at::Tensor& rs_cost, at::Tensor& pose, at::Tensor& cost, at::Tensor& jtj, at::Tensor& valid,
                at::Tensor& cost_init);

void cost_fwd_cuda(const at::Tensor& pose, const at::Tensor& x3d, const at::Tensor& x2d, const at::Tensor& w2d,
                   const at::Tensor& K, const at::Tensor& delta, double z_min, at::Tensor& cost);

void cost_bwd_cuda(const at::Tensor& grad_cost, const at::Tensor& pose, const at::Tensor& x3d,
                   const at::Tensor& x2d, const at::Tensor& w2d, const at::Tensor& K, const at::Tensor& delta,
                   double z_min, at::Tensor& grad_x3d, at::Tensor& grad_x2d, at::Tensor& grad_w2d,
                   at::Tensor& grad_delta_partial);
#endif

}  // namespace pnp
}  // namespace vpog
