// CUDA kernel of vpog::pnp_amis: one block per problem runs every AMIS round: threads draw and
// score the samples (the problem's points streamed through shared memory), evaluate the mixture
// densities of their samples, and the block reduces the weighted moments of the proposal refits.
// No host synchronisation; the proposals live in shared memory.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "pnp_amis.h"
#include "pnp_cuda_utils.h"

namespace vpog {
namespace pnp {
namespace {

constexpr int kThreads = 128;
constexpr int kTile = 128;

template <typename T>
__global__ void __launch_bounds__(kThreads) amis_kernel(AmisArgs<T> a, T* lp_all, T* lw_all) {
  __shared__ Proposal<T> props[kMaxRounds];
  __shared__ T pts[kTile * 7];
  __shared__ T buf[(kThreads / 32) * 11];
  const int64_t b = blockIdx.x, B = a.B, S = a.S, R = a.R, N = a.N;
  const int tid = threadIdx.x;
  T* lp = lp_all + b * R * S * R;
  T* lw = lw_all + b * R * S;
  if (tid == 0) initial_proposal(a.pose_opt + b * 7, a.jtj + b * 36, a.dispersion, props[0]);
  __syncthreads();
  const Camera<T> K = load_camera(a.K + b * 9);
  const T delta = a.delta[b];
  for (int64_t i = 0; i < R; ++i) {
    // draw and score the samples of round i
    for (int64_t s0 = 0; s0 < S; s0 += kThreads) {
      const int64_t s = s0 + tid, m = i * S + s, nb = m * B + b;
      const bool active = s < S;
      T pose[7];
      Rigid<T> Rg;
      if (active) {
        draw_sample(props[i], a.normal_t + nb * 3, a.chi2[nb], a.normal_r + nb * 4, pose);
        for (int e = 0; e < 7; ++e) a.samples[nb * 7 + e] = pose[e];
        Rg = make_rigid(pose);
      }
      T c = T(0);
      for (int64_t n0 = 0; n0 < N; n0 += kTile) {
        const int cnt = static_cast<int>(min(static_cast<int64_t>(kTile), N - n0));
        __syncthreads();
        for (int j = tid; j < cnt * 7; j += kThreads) {
          const int q = j / 7, e = j % 7;
          const int64_t n = b * N + n0 + q;
          pts[j] = e < 3 ? a.x3d[n * 3 + e] : (e < 5 ? a.x2d[n * 2 + e - 3] : a.w2d[n * 2 + e - 5]);
        }
        __syncthreads();
        if (active) {
          for (int q = 0; q < cnt; ++q) {
            const T* pt = pts + q * 7;
            c += point_cost(project(K, Rg, pt, a.z_min), pt + 3, pt + 5, delta);
          }
        }
      }
      if (active) a.cost[nb] = c;
    }
    __syncthreads();  // samples and costs of round i are visible to the whole block
    const int64_t M = (i + 1) * S;
    for (int64_t m = tid; m < M; m += kThreads) mixture_step(a, props, i, m, b, lp + m * R, lw);
    if (i == R - 1) break;
    // refit the proposal to the (i + 1) S samples with softmax weights
    T mean[3], cov[6], C[16];
    refit_moments(a.samples + b * 7, B * 7, lw, M, a.acg_mle_iter, a.eps, tid, kThreads, BlockReduce<T>{buf}, mean,
                  cov, C);
    if (tid == 0) proposal_from_moments(mean, cov, C, a.dispersion, props[i + 1]);
    __syncthreads();
  }
}

}  // namespace

template <typename T>
void amis_cuda(const AmisArgs<T>& a, const at::Tensor& like) {
  const at::cuda::OptionalCUDAGuard guard(like.device());
  auto lp = at::empty({a.B * a.R * a.S * a.R}, like.options());
  auto lw = at::empty({a.B * a.R * a.S}, like.options());
  amis_kernel<T><<<static_cast<unsigned>(a.B), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      a, lp.template data_ptr<T>(), lw.template data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template void amis_cuda<float>(const AmisArgs<float>&, const at::Tensor&);
template void amis_cuda<double>(const AmisArgs<double>&, const at::Tensor&);

}  // namespace pnp
}  // namespace vpog
