// Proposal math of the AMIS sampler (vpog::pnp_amis), shared by the CPU loop and the CUDA kernel.
// Semantics: vpog/pnp/amis.py and vpog/pnp/distributions.py (the PyTorch reference).
//
// A proposal is a Student-t (nu = 3) over the translation and an angular central Gaussian over the
// unit quaternion, each given by a lower-triangular scale matrix.
#pragma once

#include <ATen/core/Tensor.h>

#include "pnp_math.h"

namespace vpog {
namespace pnp {

constexpr int kMaxRounds = 8;
constexpr double kStudentDf = 3.0;
// 3/2 log(nu) + 3/2 log(pi) + lgamma(nu/2) - lgamma((nu+3)/2) for nu = 3
constexpr double kStudentConst = 2.5510838435810745;
constexpr double kLogAcgArea = 2.9826069522587457;  // log(2 pi^2)
constexpr double kAcgSampleEps = 1e-6;

// Arguments of vpog::pnp_amis, filled once by the op (pnp_amis.cpp) for the CPU loop and the CUDA kernel.
template <typename T>
struct AmisArgs : ProblemArgs<T> {
  const T* pose_opt;  // [B, 7]
  const T* jtj;       // [B, 6, 6]
  const T* normal_t;  // [R, S, B, 3]
  const T* chi2;      // [R, S, B]
  const T* normal_r;  // [R, S, B, 4]
  int64_t R, S;
  T z_min;
  int acg_mle_iter;
  T dispersion, eps;
  T* samples;  // [R S, B, 7]
  T* cost;     // [R S, B]
  T* log_q;    // [R S, B]
};

// CUDA launcher (pnp_amis_cuda.cu), one block per problem; `like` gives the device for the scratch.
template <typename T>
void amis_cuda(const AmisArgs<T>& a, const at::Tensor& like);

template <typename T>
struct Proposal {
  T loc[3];
  T lt[9];   // translation scale, row-major lower triangular
  T lr[16];  // rotation scale, row-major lower triangular
  T lt_logdet, lr_logdet;  // sum of log diag
};

// Partial pivoting on column c of the D rows of m (row-major, LD entries a row): swaps the row r >= c
// with the largest |m[r][c]| (the first of equals) into row c. Returns whether two rows were swapped.
template <typename T, int D, int LD>
VPOG_HD bool pivot_rows(T* m, int c) {
  int piv = c;
  T best = m[c * LD + c] < T(0) ? -m[c * LD + c] : m[c * LD + c];
  for (int r = c + 1; r < D; ++r) {
    const T v = m[r * LD + c] < T(0) ? -m[r * LD + c] : m[r * LD + c];
    if (v > best) {
      best = v;
      piv = r;
    }
  }
  if (piv == c) return false;
  for (int j = 0; j < LD; ++j) {
    const T tmp = m[c * LD + j];
    m[c * LD + j] = m[piv * LD + j];
    m[piv * LD + j] = tmp;
  }
  return true;
}

// Inverse of a general D x D matrix by Gauss-Jordan elimination with partial pivoting
// (torch.linalg.inv_ex: a singular matrix gives inf/NaN, no error).
template <typename T, int D>
VPOG_HD void general_inverse(const T* A, T* inv) {
  T m[D * 2 * D];
  for (int i = 0; i < D; ++i) {
    for (int j = 0; j < D; ++j) {
      m[i * 2 * D + j] = A[i * D + j];
      m[i * 2 * D + D + j] = i == j ? T(1) : T(0);
    }
  }
  for (int c = 0; c < D; ++c) {
    pivot_rows<T, D, 2 * D>(m, c);
    const T p = m[c * 2 * D + c];
    for (int j = 0; j < 2 * D; ++j) m[c * 2 * D + j] /= p;
    for (int r = 0; r < D; ++r) {
      if (r == c) continue;
      const T f = m[r * 2 * D + c];
      for (int j = 0; j < 2 * D; ++j) m[r * 2 * D + j] -= f * m[c * 2 * D + j];
    }
  }
  for (int i = 0; i < D; ++i)
    for (int j = 0; j < D; ++j) inv[i * D + j] = m[i * 2 * D + D + j];
}

// Determinant by elimination with partial pivoting.
template <typename T, int D>
VPOG_HD T determinant(const T* A) {
  T m[D * D];
  for (int i = 0; i < D * D; ++i) m[i] = A[i];
  T det = T(1);
  for (int c = 0; c < D; ++c) {
    if (pivot_rows<T, D, D>(m, c)) det = -det;
    const T p = m[c * D + c];
    det *= p;
    if (p == T(0)) return det;
    for (int r = c + 1; r < D; ++r) {
      const T f = m[r * D + c] / p;
      for (int j = c; j < D; ++j) m[r * D + j] -= f * m[c * D + j];
    }
  }
  return det;
}

// Cholesky factor of A, or the identity where A is not positive definite (EPro-PnP's cholesky_wrapper).
template <typename T, int D>
VPOG_HD void cholesky_or_identity(const T* A, T* L) {
  if (!cholesky<T, D>(A, L)) {
    for (int i = 0; i < D * D; ++i) L[i] = (i % (D + 1) == 0) ? T(1) : T(0);
  }
}

template <typename T, int D>
VPOG_HD T tril_logdet(const T* L) {
  T s = T(0);
  for (int i = 0; i < D; ++i) s += vlog(L[i * D + i]);
  return s;
}

// Rotation scale from a rotation covariance: chol(C + det(C)^(1/4) dispersion I).
template <typename T>
VPOG_HD void dispersed_tril(const T* C, T dispersion, T* L) {
  const T det = determinant<T, 4>(C);
  const T root = vsqrt(vsqrt(det));
  T A[16];
  for (int i = 0; i < 16; ++i) A[i] = C[i];
  for (int d = 0; d < 4; ++d) A[d * 5] += root * dispersion;
  cholesky_or_identity<T, 4>(A, L);
}

template <typename T>
VPOG_HD void finish_proposal(Proposal<T>& p) {
  p.lt_logdet = tril_logdet<T, 3>(p.lt);
  p.lr_logdet = tril_logdet<T, 4>(p.lr);
}

// EPro-PnP's initial_fit from the solution pose [7] and jtj [36] (J^T J + eps I).
template <typename T>
VPOG_HD void initial_proposal(const T* pose, const T* jtj, T dispersion, Proposal<T>& p) {
  T cov[36];
  general_inverse<T, 6>(jtj, cov);
  T ctt[9], crr[9];
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) {
      ctt[i * 3 + j] = cov[i * 6 + j];
      crr[i * 3 + j] = cov[(3 + i) * 6 + 3 + j];
    }
  }
  for (int d = 0; d < 3; ++d) p.loc[d] = pose[d];
  cholesky_or_identity<T, 3>(ctt, p.lt);
  T irr[9];
  general_inverse<T, 3>(crr, irr);
  T Tm[12];  // 4x3 quaternion tangent map at the solution
  quaternion_tangent(pose + 3, Tm);
  T TI[12];  // T @ irr
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 3; ++c) TI[r * 3 + c] = Tm[r * 3] * irr[c] + Tm[r * 3 + 1] * irr[3 + c] + Tm[r * 3 + 2] * irr[6 + c];
  T A[16];
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 4; ++c)
      A[r * 4 + c] = TI[r * 3] * Tm[c * 3] + TI[r * 3 + 1] * Tm[c * 3 + 1] + TI[r * 3 + 2] * Tm[c * 3 + 2] +
                     (r == c ? T(1) : T(0));
  T C[16];
  general_inverse<T, 4>(A, C);
  const T tr = C[0] + C[5] + C[10] + C[15];
  for (int m = 0; m < 16; ++m) C[m] /= tr;
  dispersed_tril(C, dispersion, p.lr);
  finish_proposal(p);
}

// One sample: t = loc + L_t (n_t / sqrt(chi2 / nu)), q = L_r n_r / |L_r n_r| (identity if tiny).
template <typename T>
VPOG_HD void draw_sample(const Proposal<T>& p, const T* nt, T chi2, const T* nr, T* pose) {
  const T f = T(1) / vsqrt(chi2 / T(kStudentDf));
  const T y[3] = {nt[0] * f, nt[1] * f, nt[2] * f};
  for (int r = 0; r < 3; ++r) pose[r] = p.loc[r] + (p.lt[r * 3] * y[0] + p.lt[r * 3 + 1] * y[1] + p.lt[r * 3 + 2] * y[2]);
  T g[4];
  for (int r = 0; r < 4; ++r)
    g[r] = p.lr[r * 4] * nr[0] + p.lr[r * 4 + 1] * nr[1] + p.lr[r * 4 + 2] * nr[2] + p.lr[r * 4 + 3] * nr[3];
  const T n = vsqrt(g[0] * g[0] + g[1] * g[1] + g[2] * g[2] + g[3] * g[3]);
  if (n < T(kAcgSampleEps)) {
    pose[3] = T(1);
    pose[4] = pose[5] = pose[6] = T(0);
  } else {
    for (int r = 0; r < 4; ++r) pose[3 + r] = g[r] / n;
  }
}

// Forward substitution L y = x for lower-triangular L.
template <typename T, int D>
VPOG_HD void tril_solve(const T* L, const T* x, T* y) {
  for (int i = 0; i < D; ++i) {
    T s = x[i];
    for (int k = 0; k < i; ++k) s -= L[i * D + k] * y[k];
    y[i] = s / L[i * D + i];
  }
}

// log p(pose) under the proposal (Student-t translation + ACG rotation).
template <typename T>
VPOG_HD T proposal_log_prob(const Proposal<T>& p, const T* pose) {
  const T d[3] = {pose[0] - p.loc[0], pose[1] - p.loc[1], pose[2] - p.loc[2]};
  T y[3];
  tril_solve<T, 3>(p.lt, d, y);
  const T m = y[0] * y[0] + y[1] * y[1] + y[2] * y[2];
  const T lp_t = T(-0.5) * T(kStudentDf + 3.0) * vlog1p(m / T(kStudentDf)) - (p.lt_logdet + T(kStudentConst));
  T z[4];
  tril_solve<T, 4>(p.lr, pose + 3, z);
  const T M = z[0] * z[0] + z[1] * z[1] + z[2] * z[2] + z[3] * z[3];
  const T lp_r = vlog(M) * T(-2) - p.lr_logdet - T(kLogAcgArea);
  return lp_t + lp_r;
}

// torch.logsumexp of x[0..n-1] (NaN propagates; all -inf gives -inf; +inf gives +inf).
template <typename T>
VPOG_HD T logsumexp(const T* x, int n) {
  T m = x[0];
  for (int j = 1; j < n; ++j) {
    if (x[j] != x[j]) return x[j];
    if (x[j] > m) m = x[j];
  }
  if (m != m || !vfinite(m)) return m;
  T s = T(0);
  for (int j = 0; j < n; ++j) s += vexp(x[j] - m);
  return m + vlog(s);
}

// AMIS round i for sample m < (i + 1) S of problem b: completes its row lp_row[0..i] of log densities
// (under proposal i; a sample of round i also under proposals 0..i-1, the older rows are kept from the
// earlier rounds) and the mixture log density log q = logsumexp_j lp_row[j] - log(i + 1); stores log q
// (last round) or the log weight -cost - log q into lw[m].
template <typename T>
VPOG_HD void mixture_step(const AmisArgs<T>& a, const Proposal<T>* props, int64_t i, int64_t m, int64_t b, T* lp_row,
                          T* lw) {
  const T* smp = a.samples + (m * a.B + b) * 7;
  lp_row[i] = proposal_log_prob(props[i], smp);
  if (m >= i * a.S) {
    for (int64_t j = 0; j < i; ++j) lp_row[j] = proposal_log_prob(props[j], smp);
  }
  const T log_q = logsumexp(lp_row, static_cast<int>(i + 1)) - vlog(T(i + 1));
  if (i == a.R - 1) {
    a.log_q[m * a.B + b] = log_q;
  } else {
    lw[m] = -a.cost[m * a.B + b] - log_q;
  }
}

// Per-sample terms of the ACG step: a = w / max(q^T inv q, eps); adds a and a q q^T to acc[11].
template <typename T>
VPOG_HD void acg_accumulate(const T* q, const T* inv, T w, T eps, T* acc) {
  T iq[4];
  for (int r = 0; r < 4; ++r) iq[r] = inv[r * 4] * q[0] + inv[r * 4 + 1] * q[1] + inv[r * 4 + 2] * q[2] + inv[r * 4 + 3] * q[3];
  const T M = q[0] * iq[0] + q[1] * iq[1] + q[2] * iq[2] + q[3] * iq[3];
  const T a = w / clamp_min(M, eps);
  acc[0] += a;
  int idx = 1;
  for (int r = 0; r < 4; ++r)
    for (int c = r; c < 4; ++c) acc[idx++] += a * q[r] * q[c];
}

// ACG fixed-point step from sums: sa = sum a_k, saqq = sum a_k q_k q_k^T (10, packed upper) ->
// C = saqq / sa + eps I.
template <typename T>
VPOG_HD void acg_matrix(T sa, const T* saqq, T eps, T* C) {
  int idx = 0;
  for (int r = 0; r < 4; ++r) {
    for (int c = r; c < 4; ++c) {
      const T v = saqq[idx++] / sa;
      C[r * 4 + c] = v;
      C[c * 4 + r] = v;
    }
    C[r * 4 + r] += eps;
  }
}

// The moments of EPro-PnP's estimate_params (the proposal refit between AMIS rounds) over samples
// m = 0..M-1 (pose m at samples + m * sample_stride) with weights softmax(lw): the weighted mean [3] and
// covariance cov [6] (packed xx xy xz yy yz zz) of the translations, and C [16], `acg_mle_iter`
// fixed-point steps of the ACG maximum likelihood from C = I. Workers lane = 0..stride-1 split the
// samples and `red` completes the sums and maxima (SerialReduce on the CPU, BlockReduce on the GPU), so
// every worker ends with the same moments.
VPOG_HD_TEMPLATE
template <typename T, class Red>
VPOG_HD void refit_moments(const T* samples, int64_t sample_stride, const T* lw, int64_t M, int acg_mle_iter, T eps,
                           int lane, int stride, const Red& red, T* mean, T* cov, T* C) {
  T mx = T(-INFINITY);
  for (int64_t m = lane; m < M; m += stride) mx = nan_max(mx, lw[m]);
  mx = red.max(mx);
  T z = T(0);
  for (int64_t m = lane; m < M; m += stride) z += vexp(lw[m] - mx);
  red.sum(&z, 1);
  for (int d = 0; d < 3; ++d) mean[d] = T(0);
  for (int64_t m = lane; m < M; m += stride) {
    const T w = vexp(lw[m] - mx) / z;
    const T* t = samples + m * sample_stride;
    for (int d = 0; d < 3; ++d) mean[d] += w * t[d];
  }
  red.sum(mean, 3);
  for (int e = 0; e < 6; ++e) cov[e] = T(0);
  for (int64_t m = lane; m < M; m += stride) {
    const T w = vexp(lw[m] - mx) / z;
    const T* t = samples + m * sample_stride;
    const T d[3] = {t[0] - mean[0], t[1] - mean[1], t[2] - mean[2]};
    cov[0] += w * d[0] * d[0];
    cov[1] += w * d[0] * d[1];
    cov[2] += w * d[0] * d[2];
    cov[3] += w * d[1] * d[1];
    cov[4] += w * d[1] * d[2];
    cov[5] += w * d[2] * d[2];
  }
  red.sum(cov, 6);
  for (int e = 0; e < 16; ++e) C[e] = (e % 5 == 0) ? T(1) : T(0);
  for (int it = 0; it < acg_mle_iter; ++it) {
    T inv[16];
    general_inverse<T, 4>(C, inv);
    T acc[11] = {};
    for (int64_t m = lane; m < M; m += stride) {
      acg_accumulate(samples + m * sample_stride + 3, inv, vexp(lw[m] - mx) / z, eps, acc);
    }
    red.sum(acc, 11);
    acg_matrix(acc[0], acc + 1, eps, C);
  }
}

// The refitted proposal from the moments of refit_moments: location mean, translation scale chol(cov)
// and rotation scale dispersed_tril(C) (a factorisation that fails gives the identity).
template <typename T>
VPOG_HD void proposal_from_moments(const T* mean, const T* cov, const T* C, T dispersion, Proposal<T>& p) {
  for (int d = 0; d < 3; ++d) p.loc[d] = mean[d];
  const T ct[9] = {cov[0], cov[1], cov[2], cov[1], cov[3], cov[4], cov[2], cov[4], cov[5]};
  cholesky_or_identity<T, 3>(ct, p.lt);
  dispersed_tril(C, dispersion, p.lr);
  finish_proposal(p);
}

}  // namespace pnp
}  // namespace vpog
