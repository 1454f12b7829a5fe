// CUDA kernels of vpog::pnp_solve: one problem per warp, every LM iteration inside one launch;
// J^T J, J^T r and the cost are reduced across the warp's lanes and the 6x6 system is solved in
// registers by every lane (see pnp_solver.h). The small problems of the random-sample init run one
// per thread.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

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

template <typename T>
void solve_cuda(const SolveArgs<T>& a, const at::Tensor& like) {
  const at::cuda::OptionalCUDAGuard guard(like.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int threads = kWarpsPerBlock * 32;
  if (a.rs_index) {
    center_kernel<T><<<blocks_for(a.B), threads, 0, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    proposal_kernel<T><<<(a.P * a.B + 127) / 128, 128, 0, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  solve_kernel<T><<<blocks_for(a.B), threads, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template void solve_cuda<float>(const SolveArgs<float>&, const at::Tensor&);
template void solve_cuda<double>(const SolveArgs<double>&, const at::Tensor&);

}  // namespace pnp
}  // namespace vpog
