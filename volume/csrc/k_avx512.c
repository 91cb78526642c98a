/* kernel.h for AVX-512 (16 floats per vector); x86-64 only. */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,bmi2")
#include <immintrin.h>
#define VW 16
#define KERNEL_NAME(x) x##_avx512
#include "kernel.h"
#endif
