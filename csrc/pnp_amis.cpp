// vpog::pnp_amis: the AMIS pose sampler of EPro-PnP's Monte Carlo loss (proposals, sampling, costs,
// mixture log densities, refits), all rounds of a problem in one pass.
// Input checks, the CPU implementation (threads over problems) and the dispatch registrations.
// Semantics: vpog/pnp/amis.py, the reference being amis_reference.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "pnp.h"
#include "pnp_amis.h"
#include "pnp_solver.h"

namespace vpog {
namespace pnp {
namespace {

template <typename T>
void amis_cpu(const AmisArgs<T>& a) {
  const int64_t R = a.R, S = a.S, B = a.B;
  const SerialReduce red;
  at::parallel_for(0, B, cpu_grain(R * S * (a.N + R)), [&](int64_t lo, int64_t hi) {
    std::vector<T> lp(static_cast<size_t>(R * S * R)), lw(static_cast<size_t>(R * S));
    for (int64_t b = lo; b < hi; ++b) {
      Proposal<T> props[kMaxRounds];
      initial_proposal(a.pose_opt + b * 7, a.jtj + b * 36, a.dispersion, props[0]);
      const Camera<T> K = load_camera(a.K + b * 9);
      const T* x3 = a.x3d + b * a.N * 3;
      const T* x2 = a.x2d + b * a.N * 2;
      const T* w2 = a.w2d + b * a.N * 2;
      auto sample = [&](int64_t m) { return a.samples + (m * B + b) * 7; };
      for (int64_t i = 0; i < R; ++i) {
        for (int64_t s = 0; s < S; ++s) {
          const int64_t m = i * S + s, nb = m * B + b;
          draw_sample(props[i], a.normal_t + nb * 3, a.chi2[nb], a.normal_r + nb * 4, sample(m));
          a.cost[nb] = problem_cost(x3, x2, w2, a.N, K, a.delta[b], a.z_min, sample(m), 0, 1, red);
        }
        for (int64_t m = 0; m < (i + 1) * S; ++m) mixture_step(a, props, i, m, b, &lp[m * R], lw.data());
        if (i == R - 1) break;
        // refit to the (i + 1) S samples so far with softmax weights
        T mean[3], cov[6], C[16];
        refit_moments(a.samples + b * 7, B * 7, lw.data(), (i + 1) * S, a.acg_mle_iter, a.eps, 0, 1, red, mean, cov, C);
        proposal_from_moments(mean, cov, C, a.dispersion, props[i + 1]);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pnp_amis_op(
    const at::Tensor& x3d_in, const at::Tensor& x2d_in, const at::Tensor& w2d_in, const at::Tensor& K_in,
    const at::Tensor& delta_in, const at::Tensor& pose_opt_in, const at::Tensor& jtj_in,
    const at::Tensor& normal_t_in, const at::Tensor& chi2_in, const at::Tensor& normal_r_in, double z_min,
    int64_t acg_mle_iter, double acg_dispersion, double eps) {
  check_problem_tensors(x3d_in, x2d_in, w2d_in, K_in, delta_in);
  const int64_t B = x3d_in.size(0);
  const auto opts = x3d_in.options();
  auto same = [&](const char* name, const at::Tensor& t) {
    TORCH_CHECK_VALUE(t.scalar_type() == x3d_in.scalar_type() && t.device() == x3d_in.device(), name,
                      " must have x3d's dtype ", x3d_in.scalar_type(), " and device ", x3d_in.device());
  };
  TORCH_CHECK_VALUE(pose_opt_in.dim() == 2 && pose_opt_in.size(0) == B && pose_opt_in.size(1) == 7,
                    "pose_opt must have shape [B, 7] = [", B, ", 7], got ", pose_opt_in.sizes());
  TORCH_CHECK_VALUE(jtj_in.dim() == 3 && jtj_in.size(0) == B && jtj_in.size(1) == 6 && jtj_in.size(2) == 6,
                    "jtj must have shape [B, 6, 6] = [", B, ", 6, 6], got ", jtj_in.sizes());
  TORCH_CHECK_VALUE(chi2_in.dim() == 3 && chi2_in.size(2) == B && chi2_in.size(0) >= 1 && chi2_in.size(1) >= 1,
                    "chi2 must have shape [R, S, B] with B = ", B, ", R, S >= 1, got ", chi2_in.sizes());
  const int64_t R = chi2_in.size(0), S = chi2_in.size(1);
  TORCH_CHECK_VALUE(R <= kMaxRounds, "at most ", kMaxRounds, " AMIS rounds are supported, got ", R);
  TORCH_CHECK_VALUE(normal_t_in.sizes() == at::IntArrayRef({R, S, B, 3}), "normal_t must have shape [", R, ", ", S,
                    ", ", B, ", 3], got ", normal_t_in.sizes());
  TORCH_CHECK_VALUE(normal_r_in.sizes() == at::IntArrayRef({R, S, B, 4}), "normal_r must have shape [", R, ", ", S,
                    ", ", B, ", 4], got ", normal_r_in.sizes());
  TORCH_CHECK_VALUE(acg_mle_iter >= 0, "acg_mle_iter must be >= 0, got ", acg_mle_iter);
  same("pose_opt", pose_opt_in);
  same("jtj", jtj_in);
  same("normal_t", normal_t_in);
  same("chi2", chi2_in);
  same("normal_r", normal_r_in);
  auto samples = at::empty({R * S, B, 7}, opts);
  auto cost = at::empty({R * S, B}, opts);
  auto log_q = at::empty({R * S, B}, opts);
  if (B == 0) return {samples, cost, log_q};
  const auto x3d = x3d_in.contiguous(), x2d = x2d_in.contiguous(), w2d = w2d_in.contiguous();
  const auto K = K_in.contiguous(), delta = delta_in.contiguous(), pose_opt = pose_opt_in.contiguous();
  const auto jtj = jtj_in.contiguous(), normal_t = normal_t_in.contiguous(), chi2 = chi2_in.contiguous();
  const auto normal_r = normal_r_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x3d.scalar_type(), "pnp_amis", [&] {
    AmisArgs<scalar_t> a;
    set_problem_args(a, x3d, x2d, w2d, K, delta);
    a.pose_opt = pose_opt.data_ptr<scalar_t>();
    a.jtj = jtj.data_ptr<scalar_t>();
    a.normal_t = normal_t.data_ptr<scalar_t>();
    a.chi2 = chi2.data_ptr<scalar_t>();
    a.normal_r = normal_r.data_ptr<scalar_t>();
    a.R = R;
    a.S = S;
    a.z_min = static_cast<scalar_t>(z_min);
    a.acg_mle_iter = static_cast<int>(acg_mle_iter);
    a.dispersion = static_cast<scalar_t>(acg_dispersion);
    a.eps = static_cast<scalar_t>(eps);
    a.samples = samples.data_ptr<scalar_t>();
    a.cost = cost.data_ptr<scalar_t>();
    a.log_q = log_q.data_ptr<scalar_t>();
    if (x3d.is_cuda()) {
#ifdef VPOG_WITH_CUDA
      amis_cuda(a, x3d);
#else
      TORCH_CHECK(false, "vpog._C was built without CUDA");
#endif
    } else {
      amis_cpu(a);
    }
  });
  return {samples, cost, log_q};
}

}  // namespace
}  // namespace pnp
}  // namespace vpog

TORCH_LIBRARY_FRAGMENT(vpog, m) {
  m.def(
      "pnp_amis(Tensor x3d, Tensor x2d, Tensor w2d, Tensor K, Tensor delta, Tensor pose_opt, Tensor jtj, "
      "Tensor normal_t, Tensor chi2, Tensor normal_r, float z_min, int acg_mle_iter, float acg_dispersion, "
      "float eps) -> (Tensor samples, Tensor cost, Tensor log_q)");
}

TORCH_LIBRARY_IMPL(vpog, CPU, m) { m.impl("pnp_amis", &vpog::pnp::pnp_amis_op); }

#ifdef VPOG_WITH_CUDA
TORCH_LIBRARY_IMPL(vpog, CUDA, m) { m.impl("pnp_amis", &vpog::pnp::pnp_amis_op); }
#endif
