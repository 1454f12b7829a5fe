// CUDA kernels of vpog::pnp_solve: one problem per warp, every LM iteration inside one launch;
// J^T J, J^T r and the cost are reduced across the warp's lanes and the 6x6 system is solved in
// registers by every lane (see pnp_solver.h). The small problems of the random-sample init run one
// per thread.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "pnp.h"
#include "pnp_cuda_utils.h"
#include "pnp_solver.h"

namespace vpog {
namespace pnp {
namespace {

constexpr int kWarpsPerBlock = 4;

template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) center_kernel(SolveArgs<T> a) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (b >= a.B) return;
  const int lane = threadIdx.x & 31;
  T t[3];
  center_translation(a, b, lane, 32, WarpReduce(), t);
  if (lane == 0) {
    for (int d = 0; d < 3; ++d) a.rs_center[b * 3 + d] = t[d];
  }
}

// A proposal of the random-sample init is a problem of k (8-16) points: one per thread, so that a warp
// runs 32 of them side by side instead of idling 24 lanes and serialising on the 6x6 solves. Threads
// of a warp share the problem b (t = b P + p), so their passes over all N points read the same data.
template <typename T>
__global__ void __launch_bounds__(128) proposal_kernel(SolveArgs<T> a) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= a.P * a.B) return;
  rs_proposal(a, t % a.P, t / a.P, 0, 1, SerialReduce());
}

template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) solve_kernel(SolveArgs<T> a) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (b >= a.B) return;
  solve_problem(a, b, threadIdx.x & 31, 32, WarpReduce());
}

int64_t blocks_for(int64_t warps) { return (warps + kWarpsPerBlock - 1) / kWarpsPerBlock; }

}  // namespace

void solve_cuda(const at::Tensor& x3d, const at::Tensor& x2d, const at::Tensor& w2d, const at::Tensor& K,
                const at::Tensor& delta, const at::Tensor* pose_init, const at::Tensor* rs_index,
                const at::Tensor* rs_quat, int64_t num_iter, int64_t init_iter, bool fast_mode,
                bool force_init_solve, double z_min, at::Tensor& rs_center, at::Tensor& rs_pose,
                at::Tensor& rs_cost, at::Tensor& pose, at::Tensor& cost, at::Tensor& jtj, at::Tensor& valid,
                at::Tensor& cost_init) {
  const at::cuda::OptionalCUDAGuard guard(x3d.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x3d.scalar_type(), "pnp_solve_cuda", [&] {
    SolveArgs<scalar_t> a;
    a.x3d = x3d.data_ptr<scalar_t>();
    a.x2d = x2d.data_ptr<scalar_t>();
    a.w2d = w2d.data_ptr<scalar_t>();
    a.K = K.data_ptr<scalar_t>();
    a.delta = delta.data_ptr<scalar_t>();
    a.pose_init = pose_init ? pose_init->data_ptr<scalar_t>() : nullptr;
    a.rs_index = rs_index ? rs_index->data_ptr<int64_t>() : nullptr;
    a.rs_quat = rs_quat ? rs_quat->data_ptr<scalar_t>() : nullptr;
    a.B = x3d.size(0);
    a.N = x3d.size(1);
    a.P = rs_index ? rs_index->size(0) : 0;
    a.k = rs_index ? rs_index->size(2) : 0;
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
    const int threads = kWarpsPerBlock * 32;
    if (a.rs_index) {
      center_kernel<scalar_t><<<blocks_for(a.B), threads, 0, stream>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      proposal_kernel<scalar_t><<<(a.P * a.B + 127) / 128, 128, 0, stream>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    solve_kernel<scalar_t><<<blocks_for(a.B), threads, 0, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace pnp
}  // namespace vpog
