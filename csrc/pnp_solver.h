// Per-problem procedures of the batched PnP solver (random-sample init, LM, outputs), written once
// for the CPU loop and the CUDA warp-per-problem kernel.
//
// Each procedure is run by `stride` cooperating workers with ids `lane` = 0..stride-1 (one worker on
// the CPU, the 32 lanes of a warp on the GPU). Workers split the points, and `red` completes the
// sums so that every worker holds the totals and takes the same branch.
#pragma once

#include <ATen/core/Tensor.h>

#include "pnp_math.h"

namespace vpog {
namespace pnp {

// Arguments of vpog::pnp_solve, filled once by the op (pnp_solve.cpp) for the CPU loop and the CUDA kernels.
template <typename T>
struct SolveArgs : ProblemArgs<T> {
  const T* pose_init;       // [B, 7] or null
  const int64_t* rs_index;  // [P, B, k] or null (no random-sample init)
  const T* rs_quat;         // [P, B, 4]
  int64_t P, k;
  int num_iter, init_iter;
  bool fast_mode, force_init_solve;
  T z_min;
  // scratch of the random-sample init
  T* rs_center;  // [B, 3] center-based translations
  T* rs_pose;    // [P, B, 7]
  T* rs_cost;    // [P, B]
  // outputs
  T* pose;       // [B, 7]
  T* cost;       // [B]
  T* jtj;        // [B, 6, 6]
  bool* valid;   // [B]
  T* cost_init;  // [B]
};

// CUDA launcher (pnp_solve_cuda.cu): warps over problems; `like` gives the device.
template <typename T>
void solve_cuda(const SolveArgs<T>& a, const at::Tensor& like);

// Sums over points of one problem, optionally through an index map (the random-sample subsets).
template <typename T, class Red>
struct PointEval {
  const T* x3d;
  const T* x2d;
  const T* w2d;
  const int64_t* index;  // null: points 0..n-1
  int64_t n;
  Camera<T> K;
  T delta, z_min;
  int lane, stride;
  Red red;

  VPOG_HD_TEMPLATE
  VPOG_HD void operator()(const T* pose, bool clip, T* acc) const {
    for (int c = 0; c < kAcc; ++c) acc[c] = T(0);
    const Rigid<T> P = make_rigid(pose);
    for (int64_t i = lane; i < n; i += stride) {
      const int64_t j = index ? index[i] : i;
      accumulate_point(K, P, x3d + 3 * j, x2d + 2 * j, w2d + 2 * j, delta, z_min, clip, acc);
    }
    red.sum(acc, kAcc);
  }
};

// Cost of pose over all points of a problem.
VPOG_HD_TEMPLATE
template <typename T, class Red>
VPOG_HD T problem_cost(const T* x3d, const T* x2d, const T* w2d, int64_t n, const Camera<T>& K, T delta, T z_min,
                       const T* pose, int lane, int stride, const Red& red) {
  const Rigid<T> P = make_rigid(pose);
  T c = T(0);
  for (int64_t i = lane; i < n; i += stride) {
    const Projection<T> p = project(K, P, x3d + 3 * i, z_min);
    c += point_cost(p, x2d + 2 * i, w2d + 2 * i, delta);
  }
  red.sum(&c, 1);
  return c;
}

// EPro-PnP's center-based translation of problem b -> t[3].
VPOG_HD_TEMPLATE
template <typename T, class Red>
VPOG_HD void center_translation(const SolveArgs<T>& a, int64_t b, int lane, int stride, const Red& red, T* t) {
  const T* x3 = a.x3d + b * a.N * 3;
  const T* x2 = a.x2d + b * a.N * 2;
  T Kinv[9];
  inverse3(a.K + b * 9, Kinv);
  T s[5] = {T(0), T(0), T(0), T(0), T(0)};  // sums of x2dc (2) and x3d (3)
  for (int64_t i = lane; i < a.N; i += stride) {
    T c[2];
    normalized_pixel(Kinv, x2 + 2 * i, c);
    s[0] += c[0];
    s[1] += c[1];
    for (int d = 0; d < 3; ++d) s[2 + d] += x3[3 * i + d];
  }
  red.sum(s, 5);
  const T n = T(a.N);
  T mean[5];
  for (int d = 0; d < 5; ++d) mean[d] = s[d] / n;
  T v[5] = {T(0), T(0), T(0), T(0), T(0)};
  for (int64_t i = lane; i < a.N; i += stride) {
    T c[2];
    normalized_pixel(Kinv, x2 + 2 * i, c);
    for (int d = 0; d < 2; ++d) v[d] += (c[d] - mean[d]) * (c[d] - mean[d]);
    for (int d = 0; d < 3; ++d) v[2 + d] += (x3[3 * i + d] - mean[2 + d]) * (x3[3 * i + d] - mean[2 + d]);
  }
  red.sum(v, 5);
  const T var2 = v[0] / (n - 1) + v[1] / (n - 1);
  const T var3 = v[2] / (n - 1) + v[3] / (n - 1) + v[4] / (n - 1);
  const T scale = vsqrt(T(2) / T(3)) * vsqrt(var3) / clamp_min(vsqrt(var2), T(kCenterEps));
  t[0] = mean[0] * scale;
  t[1] = mean[1] * scale;
  t[2] = scale;
}

// Proposal p of problem b of the random-sample init: LM on its subset, then the cost on all points.
VPOG_HD_TEMPLATE
template <typename T, class Red>
VPOG_HD void rs_proposal(const SolveArgs<T>& a, int64_t p, int64_t b, int lane, int stride, const Red& red) {
  const int64_t pb = p * a.B + b;
  T pose[7];
  for (int d = 0; d < 3; ++d) pose[d] = a.rs_center[b * 3 + d];
  for (int d = 0; d < 4; ++d) pose[3 + d] = a.rs_quat[pb * 4 + d];
  PointEval<T, Red> ev{a.x3d + b * a.N * 3, a.x2d + b * a.N * 2, a.w2d + b * a.N * 2, a.rs_index + pb * a.k, a.k,
                       load_camera(a.K + b * 9), a.delta[b], a.z_min, lane, stride, red};
  T acc[kAcc];
  lm_solve(pose, a.init_iter, a.fast_mode, ev, acc);
  const T c = problem_cost(ev.x3d, ev.x2d, ev.w2d, a.N, ev.K, ev.delta, a.z_min, pose, lane, stride, red);
  if (lane == 0) {
    for (int d = 0; d < 7; ++d) a.rs_pose[pb * 7 + d] = pose[d];
    a.rs_cost[pb] = c;
  }
}

// Whether any input of problem b is NaN or inf.
VPOG_HD_TEMPLATE
template <typename T, class Red>
VPOG_HD bool problem_bad(const SolveArgs<T>& a, int64_t b, int lane, int stride, const Red& red) {
  bool ok = true;
  const T* x3 = a.x3d + b * a.N * 3;
  const T* x2 = a.x2d + b * a.N * 2;
  const T* w2 = a.w2d + b * a.N * 2;
  for (int64_t i = lane; i < a.N; i += stride) {
    for (int d = 0; d < 3; ++d) ok = ok && vfinite(x3[3 * i + d]);
    for (int d = 0; d < 2; ++d) ok = ok && vfinite(x2[2 * i + d]) && vfinite(w2[2 * i + d]);
  }
  for (int d = 0; d < 9; ++d) ok = ok && vfinite(a.K[b * 9 + d]);
  ok = ok && vfinite(a.delta[b]);
  if (a.pose_init) {
    for (int d = 0; d < 7; ++d) ok = ok && vfinite(a.pose_init[b * 7 + d]);
  }
  return red.any(!ok);
}

// The solve of problem b: start pose, LM iterations, outputs.
VPOG_HD_TEMPLATE
template <typename T, class Red>
VPOG_HD void solve_problem(const SolveArgs<T>& a, int64_t b, int lane, int stride, const Red& red) {
  if (problem_bad(a, b, lane, stride, red)) {
    if (lane == 0) {
      identity_pose(a.pose + b * 7);
      a.cost[b] = T(0);
      a.cost_init[b] = T(0);
      for (int i = 0; i < 36; ++i) a.jtj[b * 36 + i] = (i % 7 == 0) ? T(kLmEps) : T(0);
      a.valid[b] = false;
    }
    return;
  }
  PointEval<T, Red> ev{a.x3d + b * a.N * 3, a.x2d + b * a.N * 2, a.w2d + b * a.N * 2, nullptr, a.N,
                       load_camera(a.K + b * 9), a.delta[b], a.z_min, lane, stride, red};
  T pose[7];
  T cost_init = T(0);
  if (a.pose_init) {
    normalized_pose(a.pose_init + b * 7, pose);
    cost_init = problem_cost(ev.x3d, ev.x2d, ev.w2d, a.N, ev.K, ev.delta, a.z_min, pose, lane, stride, red);
  }
  if (a.rs_index && (!a.pose_init || a.force_init_solve)) {
    // torch.min over proposals: the first minimum, a NaN wins.
    int64_t best = 0;
    T best_cost = a.rs_cost[b];
    for (int64_t p = 1; p < a.P && best_cost == best_cost; ++p) {
      const T c = a.rs_cost[p * a.B + b];
      if (c < best_cost || c != c) {
        best_cost = c;
        best = p;
      }
    }
    if (!(a.pose_init && cost_init < best_cost)) {
      for (int d = 0; d < 7; ++d) pose[d] = a.rs_pose[(best * a.B + b) * 7 + d];
    }
  }
  T acc[kAcc];
  lm_solve(pose, a.num_iter, a.fast_mode, ev, acc);
  T jtj[36];
  jtj_with_eps(acc, jtj);
  // validity: >= 4 positively weighted points in front of the camera, finite outputs
  const Rigid<T> P = make_rigid(pose);
  T count = T(0);
  for (int64_t i = lane; i < a.N; i += stride) {
    const T* w = ev.w2d + 2 * i;
    if ((w[0] > T(0) || w[1] > T(0)) && !project(ev.K, P, ev.x3d + 3 * i, a.z_min).clamped) count += T(1);
  }
  red.sum(&count, 1);
  bool finite = vfinite(acc[kCost]);
  for (int d = 0; d < 7; ++d) finite = finite && vfinite(pose[d]);
  for (int i = 0; i < 36; ++i) finite = finite && vfinite(jtj[i]);
  if (lane == 0) {
    for (int d = 0; d < 7; ++d) a.pose[b * 7 + d] = pose[d];
    for (int i = 0; i < 36; ++i) a.jtj[b * 36 + i] = jtj[i];
    a.cost[b] = acc[kCost];
    a.cost_init[b] = cost_init;
    a.valid[b] = finite && count >= T(kMinValidPoints);
  }
}

// The reducer of a single worker (CPU): its partial sums, maxima and flags are the totals.
struct SerialReduce {
  template <typename T>
  VPOG_HD void sum(T*, int) const {}
  template <typename T>
  VPOG_HD T max(T x) const { return x; }
  VPOG_HD bool any(bool x) const { return x; }
};

}  // namespace pnp
}  // namespace vpog
