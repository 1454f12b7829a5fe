// CUDA kernels of vpog::pnp_cost_fwd / pnp_cost_bwd.
// Forward: a block per (problem, 128 poses), a thread per pose, the problem's points streamed
// through shared memory. Backward: a block per (problem, 128 points), a thread per point, the poses
// (as rotation + translation) and their upstream gradients streamed through shared memory; the
// gradient to delta is reduced per block and summed over blocks by the caller. Problems map to
// blockIdx.y; beyond gridDim.y's limit (65535) a block loops over b, b + gridDim.y, ...
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "pnp.h"
#include "pnp_cuda_utils.h"
#include "pnp_math.h"

namespace vpog {
namespace pnp {
namespace {

constexpr int kPointTile = 128;
constexpr int kPoseTile = 64;
constexpr int kBwdThreads = 128;

template <typename T>
__global__ void __launch_bounds__(128) cost_fwd_kernel(const T* pose, const T* x3d, const T* x2d, const T* w2d,
                                                       const T* Kp, const T* delta, T z_min, int64_t P, int64_t B,
                                                       int64_t N, T* cost) {
  __shared__ T pts[kPointTile * 7];
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = p < P;
  // problems b = blockIdx.y, + gridDim.y, ... (gridDim.y is at most 65535); uniform over the block
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    Rigid<T> R;
    if (active) R = make_rigid(pose + (p * B + b) * 7);
    const Camera<T> K = load_camera(Kp + b * 9);
    const T d = delta[b];
    T c = T(0);
    for (int64_t n0 = 0; n0 < N; n0 += kPointTile) {
      const int cnt = static_cast<int>(min(static_cast<int64_t>(kPointTile), N - n0));
      __syncthreads();  // the previous tile (or problem) is consumed
      for (int i = threadIdx.x; i < cnt * 7; i += blockDim.x) {
        const int j = i / 7, e = i % 7;
        const int64_t n = b * N + n0 + j;
        pts[i] = e < 3 ? x3d[n * 3 + e] : (e < 5 ? x2d[n * 2 + e - 3] : w2d[n * 2 + e - 5]);
      }
      __syncthreads();
      if (active) {
        for (int j = 0; j < cnt; ++j) {
          const T* q = pts + j * 7;
          c += point_cost(project(K, R, q, z_min), q + 3, q + 5, d);
        }
      }
    }
    if (active) cost[p * B + b] = c;
  }
}

template <typename T>
__global__ void __launch_bounds__(kBwdThreads) cost_bwd_kernel(const T* grad, const T* pose, const T* x3d,
                                                               const T* x2d, const T* w2d, const T* Kp,
                                                               const T* delta, T z_min, int64_t P, int64_t B,
                                                               int64_t N, T* gx3d, T* gx2d, T* gw2d, T* partial) {
  __shared__ T rig[kPoseTile * 12];
  __shared__ T gs[kPoseTile];
  __shared__ T buf[kBwdThreads / 32];
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = n < N;
  // problems b = blockIdx.y, + gridDim.y, ... (gridDim.y is at most 65535); uniform over the block
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const int64_t i = b * N + (active ? n : 0);
    T x3[3], x2[2], w2[2];
    for (int e = 0; e < 3; ++e) x3[e] = x3d[i * 3 + e];
    for (int e = 0; e < 2; ++e) {
      x2[e] = x2d[i * 2 + e];
      w2[e] = w2d[i * 2 + e];
    }
    const Camera<T> K = load_camera(Kp + b * 9);
    const T d = delta[b];
    T g3[3] = {T(0), T(0), T(0)}, g2[2] = {T(0), T(0)}, gw[2] = {T(0), T(0)};
    T gd = T(0);
    for (int64_t p0 = 0; p0 < P; p0 += kPoseTile) {
      const int cnt = static_cast<int>(min(static_cast<int64_t>(kPoseTile), P - p0));
      __syncthreads();  // the previous tile is consumed
      for (int j = threadIdx.x; j < cnt; j += blockDim.x) {
        const Rigid<T> r = make_rigid(pose + ((p0 + j) * B + b) * 7);
        for (int e = 0; e < 9; ++e) rig[j * 12 + e] = r.r[e];
        for (int e = 0; e < 3; ++e) rig[j * 12 + 9 + e] = r.t[e];
        gs[j] = grad[(p0 + j) * B + b];
      }
      __syncthreads();
      if (active) {
        for (int j = 0; j < cnt; ++j) {
          const T g = gs[j];
          if (g == T(0)) continue;  // skipped samples contribute nothing, even where they are not finite
          Rigid<T> r;
          for (int e = 0; e < 9; ++e) r.r[e] = rig[j * 12 + e];
          for (int e = 0; e < 3; ++e) r.t[e] = rig[j * 12 + 9 + e];
          gd += point_cost_backward(K, r, x3, x2, w2, d, z_min, g, g3, g2, gw);
        }
      }
    }
    if (active) {
      for (int e = 0; e < 3; ++e) gx3d[i * 3 + e] = g3[e];
      for (int e = 0; e < 2; ++e) {
        gx2d[i * 2 + e] = g2[e];
        gw2d[i * 2 + e] = gw[e];
      }
    }
    block_sum(&gd, 1, buf);  // every thread of the block, also the inactive ones (ends with a barrier)
    if (threadIdx.x == 0) partial[b * gridDim.x + blockIdx.x] = gd;
  }
}

// gridDim.y of B problems: at most 65535, the kernels loop over the rest.
unsigned grid_y(int64_t B) { return static_cast<unsigned>(B < 65535 ? B : 65535); }

}  // namespace

void cost_fwd_cuda(const at::Tensor& pose, const at::Tensor& x3d, const at::Tensor& x2d, const at::Tensor& w2d,
                   const at::Tensor& K, const at::Tensor& delta, double z_min, at::Tensor& cost) {
  const at::cuda::OptionalCUDAGuard guard(x3d.device());
  const int64_t P = pose.size(0), B = x3d.size(0), N = x3d.size(1);
  const int threads = P >= 128 ? 128 : static_cast<int>((P + 31) / 32 * 32);
  const dim3 grid(static_cast<unsigned>((P + threads - 1) / threads), grid_y(B));
  AT_DISPATCH_FLOATING_TYPES(x3d.scalar_type(), "pnp_cost_fwd_cuda", [&] {
    cost_fwd_kernel<scalar_t><<<grid, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        pose.data_ptr<scalar_t>(), x3d.data_ptr<scalar_t>(), x2d.data_ptr<scalar_t>(), w2d.data_ptr<scalar_t>(),
        K.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), static_cast<scalar_t>(z_min), P, B, N,
        cost.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void cost_bwd_cuda(const at::Tensor& grad_cost, const at::Tensor& pose, const at::Tensor& x3d,
                   const at::Tensor& x2d, const at::Tensor& w2d, const at::Tensor& K, const at::Tensor& delta,
                   double z_min, at::Tensor& grad_x3d, at::Tensor& grad_x2d, at::Tensor& grad_w2d,
                   at::Tensor& grad_delta_partial) {
  const at::cuda::OptionalCUDAGuard guard(x3d.device());
  const int64_t P = pose.size(0), B = x3d.size(0), N = x3d.size(1);
  const int64_t blocks = (N + kBwdThreads - 1) / kBwdThreads;
  grad_delta_partial = at::empty({B, blocks}, x3d.options());
  const dim3 grid(static_cast<unsigned>(blocks), grid_y(B));
  AT_DISPATCH_FLOATING_TYPES(x3d.scalar_type(), "pnp_cost_bwd_cuda", [&] {
    cost_bwd_kernel<scalar_t><<<grid, kBwdThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        grad_cost.data_ptr<scalar_t>(), pose.data_ptr<scalar_t>(), x3d.data_ptr<scalar_t>(),
        x2d.data_ptr<scalar_t>(), w2d.data_ptr<scalar_t>(), K.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(),
        static_cast<scalar_t>(z_min), P, B, N, grad_x3d.data_ptr<scalar_t>(), grad_x2d.data_ptr<scalar_t>(),
        grad_w2d.data_ptr<scalar_t>(), grad_delta_partial.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace pnp
}  // namespace vpog
