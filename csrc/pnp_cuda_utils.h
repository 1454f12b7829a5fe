// CUDA reductions of the PnP kernels: warp sums whose result is bitwise identical in every lane
// (the solver's lanes must take the same branches) and block sums / maxima over small vectors.
#pragma once

#ifdef __CUDACC__

#include <cuda_runtime.h>

#include "pnp_math.h"

namespace vpog {
namespace pnp {

constexpr unsigned kFullMask = 0xffffffffu;

// The reducer of a warp: lanes split the points, sums are completed across the 32 lanes.
struct WarpReduce {
  template <typename T>
  __device__ __forceinline__ void sum(T* v, int n) const {
    for (int i = 0; i < n; ++i) {
      T x = v[i];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(kFullMask, x, off);
      v[i] = __shfl_sync(kFullMask, x, 0);  // the same bits in every lane
    }
  }
  __device__ __forceinline__ bool any(bool x) const { return __any_sync(kFullMask, x) != 0; }
};

// Sums v[0..n-1] over the block (blockDim.x a multiple of 32, at most 32 warps); every thread gets the
// totals. buf: shared memory of at least (blockDim.x / 32) * n elements. Call from all threads.
template <typename T>
__device__ void block_sum(T* v, int n, T* buf) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int i = 0; i < n; ++i) {
    T x = v[i];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(kFullMask, x, off);
    if (lane == 0) buf[warp * n + i] = x;
  }
  __syncthreads();
  for (int i = 0; i < n; ++i) {
    T x = buf[i];
    for (int w = 1; w < warps; ++w) x += buf[w * n + i];
    v[i] = x;
  }
  __syncthreads();
}

template <typename T>
__device__ T block_max(T x, T* buf) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x = nan_max(x, __shfl_xor_sync(kFullMask, x, off));
  if (lane == 0) buf[warp] = x;
  __syncthreads();
  T m = buf[0];
  for (int w = 1; w < warps; ++w) m = nan_max(m, buf[w]);
  __syncthreads();
  return m;
}

// The reducer of a block (the interface of SerialReduce and WarpReduce): threads split the items, sums
// and NaN-propagating maxima are completed across the block. buf: shared memory of at least
// (blockDim.x / 32) * n elements for sums of n values. Call from all threads.
template <typename T>
struct BlockReduce {
  T* buf;
  __device__ __forceinline__ void sum(T* v, int n) const { block_sum(v, n, buf); }
  __device__ __forceinline__ T max(T x) const { return block_max(x, buf); }
};

}  // namespace pnp
}  // namespace vpog

#endif  // __CUDACC__
