// vpog::pnp_solve: EPro-PnP's LM / Gauss-Newton solver with random-sample init, batched.
// Input checks, the CPU implementation (threads over problems) and the dispatch registrations.
// Semantics: vpog/ops/pnp_solve.py (module docstring), the reference being pnp_solve_reference.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "pnp.h"
#include "pnp_solver.h"

namespace vpog {
namespace pnp {

void check_problem_tensors(const at::Tensor& x3d, const at::Tensor& x2d, const at::Tensor& w2d,
                           const at::Tensor& K, const at::Tensor& delta) {
  TORCH_CHECK_VALUE(x3d.dim() == 3 && x3d.size(2) == 3, "x3d must have shape [B, N, 3], got ", x3d.sizes());
  const int64_t B = x3d.size(0), N = x3d.size(1);
  TORCH_CHECK_VALUE(x2d.dim() == 3 && x2d.size(0) == B && x2d.size(1) == N && x2d.size(2) == 2,
                    "x2d must have shape [B, N, 2] = [", B, ", ", N, ", 2], got ", x2d.sizes());
  TORCH_CHECK_VALUE(w2d.dim() == 3 && w2d.size(0) == B && w2d.size(1) == N && w2d.size(2) == 2,
                    "w2d must have shape [B, N, 2] = [", B, ", ", N, ", 2], got ", w2d.sizes());
  TORCH_CHECK_VALUE(K.dim() == 3 && K.size(0) == B && K.size(1) == 3 && K.size(2) == 3,
                    "K must have shape [B, 3, 3] = [", B, ", 3, 3], got ", K.sizes());
  TORCH_CHECK_VALUE(delta.dim() == 1 && delta.size(0) == B, "delta must have shape [B] = [", B, "], got ",
                    delta.sizes());
  const auto dtype = x3d.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kDouble, "x3d must be float32 or float64, got ", dtype);
  const std::pair<const char*, const at::Tensor*> others[] = {{"x2d", &x2d}, {"w2d", &w2d}, {"K", &K}, {"delta", &delta}};
  for (const auto& item : others) {
    TORCH_CHECK_VALUE(item.second->scalar_type() == dtype, item.first, " must have dtype ", dtype, " like x3d, got ",
                      item.second->scalar_type());
    TORCH_CHECK_VALUE(item.second->device() == x3d.device(), item.first, " must be on ", x3d.device(),
                      " like x3d, got ", item.second->device());
  }
}

void check_pose_tensor(const char* name, const at::Tensor& pose, const at::Tensor& x3d) {
  TORCH_CHECK_VALUE(pose.dim() == 3 && pose.size(1) == x3d.size(0) && pose.size(2) == 7, name,
                    " must have shape [P, B, 7] with B = ", x3d.size(0), ", got ", pose.sizes());
  TORCH_CHECK_VALUE(pose.scalar_type() == x3d.scalar_type(), name, " must have dtype ", x3d.scalar_type(),
                    " like x3d, got ", pose.scalar_type());
  TORCH_CHECK_VALUE(pose.device() == x3d.device(), name, " must be on ", x3d.device(), " like x3d, got ",
                    pose.device());
}

namespace {

template <typename T>
void solve_cpu(const SolveArgs<T>& a) {
  const SerialReduce red;
  if (a.rs_index) {
    at::parallel_for(0, a.B, cpu_grain(2 * a.N), [&](int64_t lo, int64_t hi) {
      for (int64_t b = lo; b < hi; ++b) center_translation(a, b, 0, 1, red, a.rs_center + b * 3);
    });
    if (!a.pose_init || a.force_init_solve) {
      at::parallel_for(0, a.P * a.B, cpu_grain(a.k * (a.init_iter + 1) + a.N), [&](int64_t lo, int64_t hi) {
        for (int64_t pb = lo; pb < hi; ++pb) rs_proposal(a, pb / a.B, pb % a.B, 0, 1, red);
      });
    }
  }
  at::parallel_for(0, a.B, cpu_grain(a.N * (a.num_iter + 3)), [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) solve_problem(a, b, 0, 1, red);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> pnp_solve_op(
    const at::Tensor& x3d_in, const at::Tensor& x2d_in, const at::Tensor& w2d_in, const at::Tensor& K_in,
    const at::Tensor& delta_in, const c10::optional<at::Tensor>& pose_init_in,
    const c10::optional<at::Tensor>& init_index_in, const c10::optional<at::Tensor>& init_quat_in,
    int64_t num_iter, int64_t init_iter, bool fast_mode, bool force_init_solve, double z_min) {
  check_problem_tensors(x3d_in, x2d_in, w2d_in, K_in, delta_in);
  TORCH_CHECK_VALUE(num_iter >= 0, "num_iter must be >= 0, got ", num_iter);
  TORCH_CHECK_VALUE(init_iter >= 0, "init_iter must be >= 0, got ", init_iter);
  const int64_t B = x3d_in.size(0), N = x3d_in.size(1);
  const auto x3d = x3d_in.contiguous(), x2d = x2d_in.contiguous(), w2d = w2d_in.contiguous();
  const auto K = K_in.contiguous(), delta = delta_in.contiguous();
  at::Tensor pose_init, index, quat;
  if (pose_init_in.has_value()) {
    pose_init = pose_init_in->contiguous();
    TORCH_CHECK_VALUE(pose_init.dim() == 2 && pose_init.size(0) == B && pose_init.size(1) == 7,
                      "pose_init must have shape [B, 7] = [", B, ", 7], got ", pose_init.sizes());
    TORCH_CHECK_VALUE(pose_init.scalar_type() == x3d.scalar_type() && pose_init.device() == x3d.device(),
                      "pose_init must have x3d's dtype and device");
  }
  const bool need_rs = !pose_init.defined() || force_init_solve;
  if (need_rs) {
    TORCH_CHECK_VALUE(init_index_in.has_value() && init_quat_in.has_value(),
                      "init_index and init_quat are required without pose_init or with force_init_solve");
  }
  int64_t P = 0, k = 0;
  if (need_rs && N > 0) {
    index = init_index_in->contiguous();
    quat = init_quat_in->contiguous();
    TORCH_CHECK_VALUE(index.dim() == 3 && index.size(1) == B && index.size(0) >= 1 && index.size(2) >= 1,
                      "init_index must have shape [P, B, k] with B = ", B, ", P, k >= 1, got ", index.sizes());
    P = index.size(0);
    k = index.size(2);
    TORCH_CHECK_VALUE(index.scalar_type() == at::kLong && index.device() == x3d.device(),
                      "init_index must be int64 on x3d's device");
    TORCH_CHECK_VALUE(quat.dim() == 3 && quat.size(0) == P && quat.size(1) == B && quat.size(2) == 4,
                      "init_quat must have shape [P, B, 4] = [", P, ", ", B, ", 4], got ", quat.sizes());
    TORCH_CHECK_VALUE(quat.scalar_type() == x3d.scalar_type() && quat.device() == x3d.device(),
                      "init_quat must have x3d's dtype and device");
    // out-of-range indices would read outside the problem: clamp them (no device sync)
    index = index.clamp(0, N - 1);
  }
  auto opts = x3d.options();
  auto pose = at::empty({B, 7}, opts);
  auto cost = at::empty({B}, opts);
  auto jtj = at::empty({B, 6, 6}, opts);
  auto valid = at::empty({B}, opts.dtype(at::kBool));
  auto cost_init = at::empty({B}, opts);
  auto rs_center = at::empty({index.defined() ? B : 0, 3}, opts);
  auto rs_pose = at::empty({P, B, 7}, opts);
  auto rs_cost = at::empty({P, B}, opts);
  if (B == 0) return {pose, cost, jtj, valid, cost_init};
  if (N == 0) {
    pose.zero_();
    pose.select(1, 3).fill_(1);
    cost.zero_();
    cost_init.zero_();
    jtj.copy_(at::eye(6, opts).mul(kLmEps).expand({B, 6, 6}));
    valid.zero_();
    return {pose, cost, jtj, valid, cost_init};
  }
  AT_DISPATCH_FLOATING_TYPES(x3d.scalar_type(), "pnp_solve", [&] {
    SolveArgs<scalar_t> a;
    set_problem_args(a, x3d, x2d, w2d, K, delta);
    a.pose_init = pose_init.defined() ? pose_init.data_ptr<scalar_t>() : nullptr;
    a.rs_index = index.defined() ? index.data_ptr<int64_t>() : nullptr;
    a.rs_quat = quat.defined() ? quat.data_ptr<scalar_t>() : nullptr;
    a.P = P;
    a.k = k;
    a.num_iter = static_cast<int>(num_iter);
    a.init_iter = static_cast<int>(init_iter);
    a.fast_mode = fast_mode;
    a.force_init_solve = force_init_solve;
    a.z_min = static_cast<scalar_t>(z_min);
    a.rs_center = rs_center.data_ptr<scalar_t>();
    a.rs_pose = rs_pose.data_ptr<scalar_t>();
    a.rs_cost = rs_cost.data_ptr<scalar_t>();
    a.pose = pose.data_ptr<scalar_t>();
    a.cost = cost.data_ptr<scalar_t>();
    a.jtj = jtj.data_ptr<scalar_t>();
    a.valid = valid.data_ptr<bool>();
    a.cost_init = cost_init.data_ptr<scalar_t>();
    if (x3d.is_cuda()) {
#ifdef VPOG_WITH_CUDA
      solve_cuda(a, x3d);
#else
      TORCH_CHECK(false, "vpog._C was built without CUDA");
#endif
    } else {
      solve_cpu(a);
    }
  });
  return {pose, cost, jtj, valid, cost_init};
}

}  // namespace
}  // namespace pnp
}  // namespace vpog

TORCH_LIBRARY_FRAGMENT(vpog, m) {
  m.def(
      "pnp_solve(Tensor x3d, Tensor x2d, Tensor w2d, Tensor K, Tensor delta, Tensor? pose_init, "
      "Tensor? init_index, Tensor? init_quat, int num_iter, int init_iter, bool fast_mode, "
      "bool force_init_solve, float z_min) -> (Tensor pose, Tensor cost, Tensor jtj, Tensor valid, "
      "Tensor cost_init)");
}

TORCH_LIBRARY_IMPL(vpog, CPU, m) { m.impl("pnp_solve", &vpog::pnp::pnp_solve_op); }

#ifdef VPOG_WITH_CUDA
TORCH_LIBRARY_IMPL(vpog, CUDA, m) { m.impl("pnp_solve", &vpog::pnp::pnp_solve_op); }
#endif
