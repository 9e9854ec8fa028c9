// Lets one header serve plain C++ and CUDA: layouts and small helpers are written once.
#pragma once

#if defined(__CUDACC__)
#define TQKV_HD __host__ __device__ __forceinline__
#else
#define TQKV_HD inline
#endif
