// Per-problem math of EPro-PnP's solver and cost, shared by the C++ CPU and CUDA paths.
//
// Everything here is __host__ __device__ and works on one problem (or one point of it), so the
// CPU loops and the CUDA kernels run the same arithmetic; they differ only in how sums over
// points are reduced (sequentially on the CPU, by warp or block reductions on the GPU).
// Semantics: docs/conventions.md §6 and the docstrings of vpog/ops/pnp_solve.py and vpog/ops/pnp_cost.py.
// PyTorch twin: vpog/ops/pnp_math.py, whose functions name the routine here they mirror.
//
// References: EPro-PnP (tjiiv-cprg/EPro-PnP) epropnp/levenberg_marquardt.py, camera.py, cost_fun.py.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define VPOG_HD __host__ __device__ __forceinline__
#define VPOG_HD_TEMPLATE _Pragma("nv_exec_check_disable")
#else
#define VPOG_HD inline
#define VPOG_HD_TEMPLATE
#endif

namespace vpog {
namespace pnp {

// EPro-PnP's LMSolver constants.
constexpr double kMinLmDiagonal = 1e-6;
constexpr double kMaxLmDiagonal = 1e32;
constexpr double kMinRelativeDecrease = 1e-3;
constexpr double kInitialRadius = 30.0;
constexpr double kMaxRadius = 1e16;
constexpr double kLmEps = 1e-5;
constexpr double kIrlsEps = 1e-10;
constexpr double kCenterEps = 1e-6;
constexpr int kMinValidPoints = 4;
// Accumulator layout of the normal equations: 21 packed upper-triangular J^T J entries, 6 J^T r, cost.
constexpr int kJtj = 0;
constexpr int kGrad = 21;
constexpr int kCost = 27;
constexpr int kAcc = 28;
// CPU: split loops over problems into chunks of at least this many point evaluations, so that tiny
// batches do not pay for waking the thread pool.
constexpr int64_t kCpuGrainPoints = 32768;

inline int64_t cpu_grain(int64_t points_per_item) {
  const int64_t per = points_per_item > 0 ? points_per_item : 1;
  return kCpuGrainPoints / per > 1 ? kCpuGrainPoints / per : 1;
}

// ---------------------------------------------------------------------------------------------
// Scalar helpers with one spelling on host and device.

// `device` in CUDA device code, `host` everywhere else.
#ifdef __CUDA_ARCH__
#define VPOG_DEVICE_OR_HOST(device, host) (device)
#else
#define VPOG_DEVICE_OR_HOST(device, host) (host)
#endif

VPOG_HD float vsqrt(float x) { return VPOG_DEVICE_OR_HOST(::sqrtf(x), std::sqrt(x)); }
VPOG_HD double vsqrt(double x) { return VPOG_DEVICE_OR_HOST(::sqrt(x), std::sqrt(x)); }
VPOG_HD float vlog(float x) { return VPOG_DEVICE_OR_HOST(::logf(x), std::log(x)); }
VPOG_HD double vlog(double x) { return VPOG_DEVICE_OR_HOST(::log(x), std::log(x)); }
VPOG_HD float vexp(float x) { return VPOG_DEVICE_OR_HOST(::expf(x), std::exp(x)); }
VPOG_HD double vexp(double x) { return VPOG_DEVICE_OR_HOST(::exp(x), std::exp(x)); }
VPOG_HD float vlog1p(float x) { return VPOG_DEVICE_OR_HOST(::log1pf(x), std::log1p(x)); }
VPOG_HD double vlog1p(double x) { return VPOG_DEVICE_OR_HOST(::log1p(x), std::log1p(x)); }
template <typename T>
VPOG_HD bool vfinite(T x) {
  // x - x is 0 for finite x and NaN for inf or NaN; written without isfinite so that it also
  // holds under fast-math flags.
  return (x - x) == (x - x) && x == x;
}
// torch.clamp semantics: NaN stays NaN.
template <typename T>
VPOG_HD T clamp_min(T x, T lo) { return x < lo ? lo : x; }
template <typename T>
VPOG_HD T clamp_max(T x, T hi) { return x > hi ? hi : x; }
// torch.max semantics: NaN wins.
template <typename T>
VPOG_HD T nan_max(T a, T b) {
  return (a != a || a > b) ? a : b;  // a NaN b falls through to b
}

VPOG_HD int packed_index(int i, int j) {  // i <= j < 6, row-major upper triangle
  return i * 6 - (i * (i - 1)) / 2 + (j - i);
}

// ---------------------------------------------------------------------------------------------
// Problems, camera and pose

// B problems of N correspondences (contiguous), the common head of the ops' arguments (SolveArgs,
// AmisArgs); filled from tensors by set_problem_args (pnp.h).
template <typename T>
struct ProblemArgs {
  const T* x3d;    // [B, N, 3] model points, object frame, metres
  const T* x2d;    // [B, N, 2] pixels
  const T* w2d;    // [B, N, 2] weights
  const T* K;      // [B, 3, 3] intrinsics
  const T* delta;  // [B] Huber thresholds
  int64_t B, N;
};

template <typename T>
struct Camera {
  T k[9];  // row-major intrinsics
};

template <typename T>
VPOG_HD Camera<T> load_camera(const T* K) {
  Camera<T> c;
  for (int i = 0; i < 9; ++i) c.k[i] = K[i];
  return c;
}

template <typename T>
struct Rigid {
  T r[9];  // row-major rotation
  T t[3];
};

// Normalised quaternion (w, x, y, z) of q [4]; a zero (or non-finite-norm-zero) quaternion gives the identity.
template <typename T>
VPOG_HD void normalize_quat(const T* q, T* out) {
  T n = vsqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  if (n > T(0)) {
    for (int i = 0; i < 4; ++i) out[i] = q[i] / n;
  } else if (n == T(0)) {
    out[0] = T(1);
    out[1] = out[2] = out[3] = T(0);
  } else {  // NaN
    for (int i = 0; i < 4; ++i) out[i] = q[i] / n;
  }
}

// Rotation of pose [7] ([t, q], q normalised here) as EPro-PnP's quaternion_to_rot_mat:
// R = 2 (w [v]x + v v^T) + (w^2 - v.v) I.
template <typename T>
VPOG_HD Rigid<T> make_rigid(const T* pose) {
  T q[4];
  normalize_quat(pose + 3, q);
  const T w = q[0], x = q[1], y = q[2], z = q[3];
  const T ww = w * w - (x * x + y * y + z * z);
  Rigid<T> P;
  P.r[0] = ww + 2 * x * x;
  P.r[1] = 2 * (x * y - w * z);
  P.r[2] = 2 * (x * z + w * y);
  P.r[3] = 2 * (x * y + w * z);
  P.r[4] = ww + 2 * y * y;
  P.r[5] = 2 * (y * z - w * x);
  P.r[6] = 2 * (x * z - w * y);
  P.r[7] = 2 * (y * z + w * x);
  P.r[8] = ww + 2 * z * z;
  P.t[0] = pose[0];
  P.t[1] = pose[1];
  P.t[2] = pose[2];
  return P;
}

// Projection of one model point: xr = R x, h = K (xr + t), z = max(h_z, z_min), uv = h_xy / z.
template <typename T>
struct Projection {
  T u, v, z;
  T hx, hy, hz;  // unclamped homogeneous image point
  T xr[3];
  bool clamped;  // h_z <= z_min: EPro-PnP zeroes the Jacobian (LM mode) and the clamp blocks gradients
};

template <typename T>
VPOG_HD Projection<T> project(const Camera<T>& K, const Rigid<T>& P, const T* x, T z_min) {
  Projection<T> p;
  const T* r = P.r;
  p.xr[0] = r[0] * x[0] + r[1] * x[1] + r[2] * x[2];
  p.xr[1] = r[3] * x[0] + r[4] * x[1] + r[5] * x[2];
  p.xr[2] = r[6] * x[0] + r[7] * x[1] + r[8] * x[2];
  const T X0 = p.xr[0] + P.t[0], X1 = p.xr[1] + P.t[1], X2 = p.xr[2] + P.t[2];
  const T* k = K.k;
  p.hx = k[0] * X0 + k[1] * X1 + k[2] * X2;
  p.hy = k[3] * X0 + k[4] * X1 + k[5] * X2;
  p.hz = k[6] * X0 + k[7] * X1 + k[8] * X2;
  p.clamped = p.hz <= z_min;
  p.z = p.clamped ? z_min : p.hz;
  p.u = p.hx / p.z;
  p.v = p.hy / p.z;
  return p;
}

// rho / 2 of the Huber kernel.
template <typename T>
VPOG_HD T huber_half_rho(T s, T delta) {
  return s <= delta ? T(0.5) * s * s : delta * s - T(0.5) * delta * delta;
}

// Cost of one point at a projection.
template <typename T>
VPOG_HD T point_cost(const Projection<T>& p, const T* x2, const T* w2, T delta) {
  const T r0 = (p.u - x2[0]) * w2[0];
  const T r1 = (p.v - x2[1]) * w2[1];
  return huber_half_rho(vsqrt(r0 * r0 + r1 * r1), delta);
}

// Adds one point's IRLS-weighted J^T J, J^T r and cost to acc[kAcc].
template <typename T>
VPOG_HD void accumulate_point(const Camera<T>& K, const Rigid<T>& P, const T* x3, const T* x2, const T* w2,
                              T delta, T z_min, bool clip, T* acc) {
  const Projection<T> p = project(K, P, x3, z_min);
  const T* k = K.k;
  T j[2][6];
  j[0][0] = k[0] / p.z;
  j[0][1] = k[1] / p.z;
  j[0][2] = (k[2] - p.u) / p.z;
  j[1][0] = k[3] / p.z;
  j[1][1] = k[4] / p.z;
  j[1][2] = (k[5] - p.v) / p.z;
  const T a0 = 2 * p.xr[0], a1 = 2 * p.xr[1], a2 = 2 * p.xr[2];
  for (int row = 0; row < 2; ++row) {  // J_t @ [a]x
    const T* jt = j[row];
    j[row][3] = jt[1] * a2 - jt[2] * a1;
    j[row][4] = jt[2] * a0 - jt[0] * a2;
    j[row][5] = jt[0] * a1 - jt[1] * a0;
  }
  if (clip && p.clamped) {
    for (int c = 0; c < 6; ++c) j[0][c] = j[1][c] = T(0);
  }
  const T r0 = (p.u - x2[0]) * w2[0];
  const T r1 = (p.v - x2[1]) * w2[1];
  const T s = vsqrt(r0 * r0 + r1 * r1);
  acc[kCost] += huber_half_rho(s, delta);
  const T rho = vsqrt(clamp_max(delta / clamp_min(s, T(kIrlsEps)), T(1)));
  const T e0 = r0 * rho, e1 = r1 * rho;
  const T s0 = w2[0] * rho, s1 = w2[1] * rho;
  T J0[6], J1[6];
  for (int c = 0; c < 6; ++c) {
    J0[c] = j[0][c] * s0;
    J1[c] = j[1][c] * s1;
  }
  int idx = 0;
  for (int a = 0; a < 6; ++a) {
    for (int b = a; b < 6; ++b) acc[kJtj + idx++] += J0[a] * J0[b] + J1[a] * J1[b];
    acc[kGrad + a] += J0[a] * e0 + J1[a] * e1;
  }
}

// Backward of point_cost: adds g * d(cost)/d(x3, x2, w2) to gx3 [3], gx2 [2], gw2 [2] and returns
// g * d(cost)/d(delta). As autograd through the reference: the depth clamp passes the gradient where
// h_z >= z_min, |e| has a zero gradient at 0.
template <typename T>
VPOG_HD T point_cost_backward(const Camera<T>& K, const Rigid<T>& P, const T* x3, const T* x2, const T* w2, T delta,
                              T z_min, T g, T* gx3, T* gx2, T* gw2) {
  const Projection<T> p = project(K, P, x3, z_min);
  const T d0 = p.u - x2[0], d1 = p.v - x2[1];
  const T r0 = d0 * w2[0], r1 = d1 * w2[1];
  const T s = vsqrt(r0 * r0 + r1 * r1);
  T gr0, gr1, gdelta = T(0);
  if (s <= delta) {
    gr0 = g * r0;
    gr1 = g * r1;
  } else {
    const T f = s > T(0) ? g * delta / s : T(0);
    gr0 = f * r0;
    gr1 = f * r1;
    gdelta = g * (s - delta);
  }
  gw2[0] += gr0 * d0;
  gw2[1] += gr1 * d1;
  const T gu = gr0 * w2[0], gv = gr1 * w2[1];
  gx2[0] -= gu;
  gx2[1] -= gv;
  const T ghx = gu / p.z, ghy = gv / p.z;
  const T ghz = p.hz >= z_min ? -(gu * p.u + gv * p.v) / p.z : T(0);
  const T* k = K.k;
  const T gX0 = k[0] * ghx + k[3] * ghy + k[6] * ghz;
  const T gX1 = k[1] * ghx + k[4] * ghy + k[7] * ghz;
  const T gX2 = k[2] * ghx + k[5] * ghy + k[8] * ghz;
  const T* r = P.r;
  gx3[0] += r[0] * gX0 + r[3] * gX1 + r[6] * gX2;
  gx3[1] += r[1] * gX0 + r[4] * gX1 + r[7] * gX2;
  gx3[2] += r[2] * gX0 + r[5] * gX1 + r[8] * gX2;
  return gdelta;
}

// ---------------------------------------------------------------------------------------------
// Small dense linear algebra

// Cholesky of an SPD 6x6 matrix given packed (upper) -> L (row-major 6x6 lower). False if not PD.
template <typename T, int D>
VPOG_HD bool cholesky(const T* A, T* L) {  // A and L are row-major D x D
  for (int i = 0; i < D * D; ++i) L[i] = T(0);
  for (int j = 0; j < D; ++j) {
    T d = A[j * D + j];
    for (int k = 0; k < j; ++k) d -= L[j * D + k] * L[j * D + k];
    if (!(d > T(0)) || !vfinite(d)) return false;
    const T ljj = vsqrt(d);
    L[j * D + j] = ljj;
    for (int i = j + 1; i < D; ++i) {
      T s = A[i * D + j];
      for (int k = 0; k < j; ++k) s -= L[i * D + k] * L[j * D + k];
      L[i * D + j] = s / ljj;
    }
  }
  return true;
}

// Solves L L^T x = b in place (b -> x).
template <typename T, int D>
VPOG_HD void cholesky_solve(const T* L, T* b) {
  for (int i = 0; i < D; ++i) {
    T s = b[i];
    for (int k = 0; k < i; ++k) s -= L[i * D + k] * b[k];
    b[i] = s / L[i * D + i];
  }
  for (int i = D - 1; i >= 0; --i) {
    T s = b[i];
    for (int k = i + 1; k < D; ++k) s -= L[k * D + i] * b[k];
    b[i] = s / L[i * D + i];
  }
}

// Inverse of an SPD matrix through its Cholesky factor. False if not PD.
template <typename T, int D>
VPOG_HD bool spd_inverse(const T* A, T* Ainv) {
  T L[D * D];
  if (!cholesky<T, D>(A, L)) return false;
  for (int c = 0; c < D; ++c) {
    T e[D];
    for (int i = 0; i < D; ++i) e[i] = i == c ? T(1) : T(0);
    cholesky_solve<T, D>(L, e);
    for (int i = 0; i < D; ++i) Ainv[i * D + c] = e[i];
  }
  return true;
}

// Unpacks acc's J^T J into a full row-major 6x6, adding `diag_add` (per-entry) on the diagonal.
template <typename T>
VPOG_HD void unpack_jtj(const T* acc, const T* diag_add, T* A) {
  for (int a = 0; a < 6; ++a) {
    for (int b = a; b < 6; ++b) {
      const T v = acc[kJtj + packed_index(a, b)];
      A[a * 6 + b] = v;
      A[b * 6 + a] = v;
    }
    A[a * 6 + a] += diag_add[a];
  }
}

// step = -A^-1 g; a zero step when A cannot be factorised.
template <typename T>
VPOG_HD void newton_step(const T* A, const T* g, T* step) {
  T L[36];
  if (!cholesky<T, 6>(A, L)) {
    for (int i = 0; i < 6; ++i) step[i] = T(0);
    return;
  }
  for (int i = 0; i < 6; ++i) step[i] = g[i];
  cholesky_solve<T, 6>(L, step);
  for (int i = 0; i < 6; ++i) step[i] = -step[i];
  for (int i = 0; i < 6; ++i) {
    if (!vfinite(step[i])) {
      for (int c = 0; c < 6; ++c) step[c] = T(0);
      return;
    }
  }
}

// EPro-PnP's 4x3 quaternion tangent map T(q) (row-major) of q = (w, i, j, k): a rotation step dtheta
// moves q by T(q) dtheta.
template <typename T>
VPOG_HD void quaternion_tangent(const T* q, T* tm) {
  const T w = q[0], i = q[1], j = q[2], k = q[3];
  const T rows[12] = {i, j, k, -w, -k, j, k, -w, -i, -j, i, -w};
  for (int e = 0; e < 12; ++e) tm[e] = rows[e];
}

// pose (+) step: [t + dt, normalize(q + T(q) dtheta)] (F.normalize: divide by max(|q|, 1e-12)).
template <typename T>
VPOG_HD void pose_add(const T* pose, const T* step, T* out) {
  for (int d = 0; d < 3; ++d) out[d] = pose[d] + step[d];
  T tm[12];
  quaternion_tangent(pose + 3, tm);
  T q[4];
  for (int r = 0; r < 4; ++r) q[r] = pose[3 + r] + (tm[r * 3] * step[3] + tm[r * 3 + 1] * step[4] + tm[r * 3 + 2] * step[5]);
  T n = vsqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  n = clamp_min(n, T(1e-12));
  for (int m = 0; m < 4; ++m) out[3 + m] = q[m] / n;
}

// ---------------------------------------------------------------------------------------------
// Levenberg-Marquardt driver over an evaluator.
//
// `eval(pose, clip, acc)` must fill acc[kAcc] with the sums over all points of the problem
// (every caller of the driver gets the complete sums, e.g. every lane of a warp). The driver's
// control flow depends only on those sums, so all lanes of a warp stay in step.
// On return: pose updated, acc holds the sums at the returned pose (LM) or at the last evaluated
// pose (Gauss-Newton), as EPro-PnP's outputs.
VPOG_HD_TEMPLATE
template <typename T, class Eval>
VPOG_HD void lm_solve(T* pose, int num_iter, bool fast_mode, const Eval& eval, T* acc) {
  T acc_new[kAcc];
  T pose_new[7];
  T A[36];
  T damp[6];
  T step[6];
  if (fast_mode) {
    eval(pose, false, acc);
    for (int it = 0; it < num_iter; ++it) {
      if (it > 0) eval(pose, false, acc);
      for (int c = 0; c < 6; ++c) damp[c] = T(kLmEps);
      unpack_jtj(acc, damp, A);
      newton_step(A, acc + kGrad, step);
      pose_add(pose, step, pose_new);
      for (int c = 0; c < 7; ++c) pose[c] = pose_new[c];
    }
    return;
  }
  eval(pose, true, acc);
  T radius = T(kInitialRadius);
  T decrease = T(2);
  for (int it = 0; it < num_iter; ++it) {
    for (int c = 0; c < 6; ++c) {
      const T d = acc[kJtj + packed_index(c, c)];
      damp[c] = clamp_max(clamp_min(d, T(kMinLmDiagonal)), T(kMaxLmDiagonal)) / radius + T(kLmEps);
    }
    unpack_jtj(acc, damp, A);
    newton_step(A, acc + kGrad, step);
    pose_add(pose, step, pose_new);
    eval(pose_new, true, acc_new);
    // model cost change -(step . (J^T J step / 2 + g)) with the undamped J^T J
    T model = T(0);
    for (int a = 0; a < 6; ++a) {
      T js = T(0);
      for (int b = 0; b < 6; ++b) js += acc[kJtj + (a <= b ? packed_index(a, b) : packed_index(b, a))] * step[b];
      model += step[a] * (js / T(2) + acc[kGrad + a]);
    }
    model = -model;
    const T rel = (acc[kCost] - acc_new[kCost]) / model;
    const bool success = rel >= T(kMinRelativeDecrease) && model > T(0);
    if (success) {
      for (int c = 0; c < 7; ++c) pose[c] = pose_new[c];
      for (int c = 0; c < kAcc; ++c) acc[c] = acc_new[c];
      const T x = T(2) * rel - T(1);
      radius /= clamp_min(T(1) - x * x * x, T(1.0 / 3.0));
    }
    radius = clamp_max(clamp_min(radius, T(kLmEps)), T(kMaxRadius));
    if (success) {
      decrease = T(2);
    } else {
      radius /= decrease;
      decrease *= T(2);
    }
  }
}

// J^T J + eps I of acc, full row-major 6x6.
template <typename T>
VPOG_HD void jtj_with_eps(const T* acc, T* out) {
  T d[6];
  for (int c = 0; c < 6; ++c) d[c] = T(kLmEps);
  unpack_jtj(acc, d, out);
}

template <typename T>
VPOG_HD void identity_pose(T* pose) {
  pose[0] = pose[1] = pose[2] = T(0);
  pose[3] = T(1);
  pose[4] = pose[5] = pose[6] = T(0);
}

// Copies pose_init with its quaternion normalised (zero -> identity rotation).
template <typename T>
VPOG_HD void normalized_pose(const T* in, T* out) {
  out[0] = in[0];
  out[1] = in[1];
  out[2] = in[2];
  T n = vsqrt(in[3] * in[3] + in[4] * in[4] + in[5] * in[5] + in[6] * in[6]);
  if (n == T(0)) {
    out[3] = T(1);
    out[4] = out[5] = out[6] = T(0);
    return;
  }
  n = clamp_min(n, T(1e-12));
  for (int m = 0; m < 4; ++m) out[3 + m] = in[3 + m] / n;
}

// Inverse of a general 3x3 (row-major) by the adjugate.
template <typename T>
VPOG_HD void inverse3(const T* m, T* inv) {
  const T c00 = m[4] * m[8] - m[5] * m[7];
  const T c01 = m[5] * m[6] - m[3] * m[8];
  const T c02 = m[3] * m[7] - m[4] * m[6];
  const T det = m[0] * c00 + m[1] * c01 + m[2] * c02;
  inv[0] = c00 / det;
  inv[1] = (m[2] * m[7] - m[1] * m[8]) / det;
  inv[2] = (m[1] * m[5] - m[2] * m[4]) / det;
  inv[3] = c01 / det;
  inv[4] = (m[0] * m[8] - m[2] * m[6]) / det;
  inv[5] = (m[2] * m[3] - m[0] * m[5]) / det;
  inv[6] = c02 / det;
  inv[7] = (m[1] * m[6] - m[0] * m[7]) / det;
  inv[8] = (m[0] * m[4] - m[1] * m[3]) / det;
}

// Normalised-camera coordinates of pixel x2 for the center-based init: (K^-1 [u, v, 1])_xy / max(z, eps).
template <typename T>
VPOG_HD void normalized_pixel(const T* Kinv, const T* x2, T* out) {
  const T a = Kinv[0] * x2[0] + Kinv[1] * x2[1] + Kinv[2];
  const T b = Kinv[3] * x2[0] + Kinv[4] * x2[1] + Kinv[5];
  const T c = Kinv[6] * x2[0] + Kinv[7] * x2[1] + Kinv[8];
  const T z = clamp_min(c, T(kCenterEps));
  out[0] = a / z;
  out[1] = b / z;
}

}  // namespace pnp
}  // namespace vpog
