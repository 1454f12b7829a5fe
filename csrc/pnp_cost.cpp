// vpog::pnp_cost_fwd / pnp_cost_bwd: EPro-PnP's robust reprojection cost of B problems at P poses
// each, and its gradient to x3d, x2d, w2d and delta, without [P, B, N] intermediates.
// Input checks, the CPU implementation and the dispatch registrations.
// Semantics: vpog/ops/pnp_cost.py, the reference being pnp_cost_reference.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "pnp.h"
#include "pnp_math.h"

namespace vpog {
namespace pnp {
namespace {

constexpr int64_t kCpuPointChunk = 64;

template <typename T>
void cost_fwd_cpu(const T* pose, const T* x3d, const T* x2d, const T* w2d, const T* Kp, const T* delta, T z_min,
                  int64_t P, int64_t B, int64_t N, T* cost) {
  at::parallel_for(0, P * B, cpu_grain(N), [&](int64_t lo, int64_t hi) {
    for (int64_t pb = lo; pb < hi; ++pb) {
      const int64_t b = pb % B;
      const Rigid<T> R = make_rigid(pose + pb * 7);
      const Camera<T> K = load_camera(Kp + b * 9);
      const T* x3 = x3d + b * N * 3;
      const T* x2 = x2d + b * N * 2;
      const T* w2 = w2d + b * N * 2;
      T c = T(0);
      for (int64_t n = 0; n < N; ++n) c += point_cost(project(K, R, x3 + 3 * n, z_min), x2 + 2 * n, w2 + 2 * n, delta[b]);
      cost[pb] = c;
    }
  });
}

template <typename T>
void cost_bwd_cpu(const T* grad_cost, const T* pose, const T* x3d, const T* x2d, const T* w2d, const T* Kp,
                  const T* delta, T z_min, int64_t P, int64_t B, int64_t N, T* gx3d, T* gx2d, T* gw2d,
                  T* gdelta_partial, int64_t chunks) {
  std::vector<Rigid<T>> rigid(static_cast<size_t>(P * B));
  at::parallel_for(0, P * B, 1024, [&](int64_t lo, int64_t hi) {
    for (int64_t pb = lo; pb < hi; ++pb) rigid[pb] = make_rigid(pose + pb * 7);
  });
  at::parallel_for(0, B * chunks, cpu_grain(kCpuPointChunk * P), [&](int64_t lo, int64_t hi) {
    for (int64_t bc = lo; bc < hi; ++bc) {
      const int64_t b = bc / chunks, chunk = bc % chunks;
      const Camera<T> K = load_camera(Kp + b * 9);
      T gd = T(0);
      const int64_t n_end = std::min(N, (chunk + 1) * kCpuPointChunk);
      for (int64_t n = chunk * kCpuPointChunk; n < n_end; ++n) {
        const int64_t i = b * N + n;
        T g3[3] = {T(0), T(0), T(0)}, g2[2] = {T(0), T(0)}, gw[2] = {T(0), T(0)};
        for (int64_t p = 0; p < P; ++p) {
          const T g = grad_cost[p * B + b];
          if (g == T(0)) continue;  // skipped samples contribute nothing, even where they are not finite
          gd += point_cost_backward(K, rigid[p * B + b], x3d + 3 * i, x2d + 2 * i, w2d + 2 * i, delta[b], z_min, g, g3,
                                    g2, gw);
        }
        for (int d = 0; d < 3; ++d) gx3d[3 * i + d] = g3[d];
        for (int d = 0; d < 2; ++d) {
          gx2d[2 * i + d] = g2[d];
          gw2d[2 * i + d] = gw[d];
        }
      }
      gdelta_partial[bc] = gd;
    }
  });
}

void check_cost_inputs(const at::Tensor& pose, const at::Tensor& x3d, const at::Tensor& x2d, const at::Tensor& w2d,
                       const at::Tensor& K, const at::Tensor& delta) {
  check_problem_tensors(x3d, x2d, w2d, K, delta);
  check_pose_tensor("pose", pose, x3d);
}

at::Tensor pnp_cost_fwd_op(const at::Tensor& pose_in, const at::Tensor& x3d_in, const at::Tensor& x2d_in,
                           const at::Tensor& w2d_in, const at::Tensor& K_in, const at::Tensor& delta_in,
                           double z_min) {
  check_cost_inputs(pose_in, x3d_in, x2d_in, w2d_in, K_in, delta_in);
  const auto pose = pose_in.contiguous(), x3d = x3d_in.contiguous(), x2d = x2d_in.contiguous();
  const auto w2d = w2d_in.contiguous(), K = K_in.contiguous(), delta = delta_in.contiguous();
  const int64_t P = pose.size(0), B = x3d.size(0), N = x3d.size(1);
  auto cost = at::zeros({P, B}, x3d.options());
  if (P == 0 || B == 0 || N == 0) return cost;
  if (x3d.is_cuda()) {
#ifdef VPOG_WITH_CUDA
    cost_fwd_cuda(pose, x3d, x2d, w2d, K, delta, z_min, cost);
    return cost;
#else
    TORCH_CHECK(false, "vpog._C was built without CUDA");
#endif
  }
  AT_DISPATCH_FLOATING_TYPES(x3d.scalar_type(), "pnp_cost_fwd_cpu", [&] {
    cost_fwd_cpu<scalar_t>(pose.data_ptr<scalar_t>(), x3d.data_ptr<scalar_t>(), x2d.data_ptr<scalar_t>(),
                           w2d.data_ptr<scalar_t>(), K.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(),
                           static_cast<scalar_t>(z_min), P, B, N, cost.data_ptr<scalar_t>());
  });
  return cost;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pnp_cost_bwd_op(
    const at::Tensor& grad_in, const at::Tensor& pose_in, const at::Tensor& x3d_in, const at::Tensor& x2d_in,
    const at::Tensor& w2d_in, const at::Tensor& K_in, const at::Tensor& delta_in, double z_min) {
  check_cost_inputs(pose_in, x3d_in, x2d_in, w2d_in, K_in, delta_in);
  const int64_t P = pose_in.size(0), B = x3d_in.size(0), N = x3d_in.size(1);
  TORCH_CHECK_VALUE(grad_in.dim() == 2 && grad_in.size(0) == P && grad_in.size(1) == B,
                    "grad_cost must have shape [P, B] = [", P, ", ", B, "], got ", grad_in.sizes());
  TORCH_CHECK_VALUE(grad_in.scalar_type() == x3d_in.scalar_type() && grad_in.device() == x3d_in.device(),
                    "grad_cost must have x3d's dtype and device");
  const auto grad = grad_in.contiguous(), pose = pose_in.contiguous(), x3d = x3d_in.contiguous();
  const auto x2d = x2d_in.contiguous(), w2d = w2d_in.contiguous(), K = K_in.contiguous();
  const auto delta = delta_in.contiguous();
  auto gx3d = at::zeros_like(x3d), gx2d = at::zeros_like(x2d), gw2d = at::zeros_like(w2d);
  if (P == 0 || B == 0 || N == 0) return {gx3d, gx2d, gw2d, at::zeros_like(delta)};
  if (x3d.is_cuda()) {
#ifdef VPOG_WITH_CUDA
    at::Tensor partial;
    cost_bwd_cuda(grad, pose, x3d, x2d, w2d, K, delta, z_min, gx3d, gx2d, gw2d, partial);
    return {gx3d, gx2d, gw2d, partial.sum(1)};
#else
    TORCH_CHECK(false, "vpog._C was built without CUDA");
#endif
  }
  const int64_t chunks = (N + kCpuPointChunk - 1) / kCpuPointChunk;
  auto partial = at::empty({B, chunks}, x3d.options());
  AT_DISPATCH_FLOATING_TYPES(x3d.scalar_type(), "pnp_cost_bwd_cpu", [&] {
    cost_bwd_cpu<scalar_t>(grad.data_ptr<scalar_t>(), pose.data_ptr<scalar_t>(), x3d.data_ptr<scalar_t>(),
                           x2d.data_ptr<scalar_t>(), w2d.data_ptr<scalar_t>(), K.data_ptr<scalar_t>(),
                           delta.data_ptr<scalar_t>(), static_cast<scalar_t>(z_min), P, B, N,
                           gx3d.data_ptr<scalar_t>(), gx2d.data_ptr<scalar_t>(), gw2d.data_ptr<scalar_t>(),
                           partial.data_ptr<scalar_t>(), chunks);
  });
  return {gx3d, gx2d, gw2d, partial.sum(1)};
}

}  // namespace
}  // namespace pnp
}  // namespace vpog

TORCH_LIBRARY_FRAGMENT(vpog, m) {
  m.def("pnp_cost_fwd(Tensor pose, Tensor x3d, Tensor x2d, Tensor w2d, Tensor K, Tensor delta, float z_min) -> Tensor");
  m.def(
      "pnp_cost_bwd(Tensor grad_cost, Tensor pose, Tensor x3d, Tensor x2d, Tensor w2d, Tensor K, Tensor delta, "
      "float z_min) -> (Tensor grad_x3d, Tensor grad_x2d, Tensor grad_w2d, Tensor grad_delta)");
}

TORCH_LIBRARY_IMPL(vpog, CPU, m) {
  m.impl("pnp_cost_fwd", &vpog::pnp::pnp_cost_fwd_op);
  m.impl("pnp_cost_bwd", &vpog::pnp::pnp_cost_bwd_op);
}

#ifdef VPOG_WITH_CUDA
TORCH_LIBRARY_IMPL(vpog, CUDA, m) {
  m.impl("pnp_cost_fwd", &vpog::pnp::pnp_cost_fwd_op);
  m.impl("pnp_cost_bwd", &vpog::pnp::pnp_cost_bwd_op);
}
#endif
