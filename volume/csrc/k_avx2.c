/* kernel.h for AVX2 + FMA (8 floats per vector); x86-64 only. */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma,bmi2")
#include <immintrin.h>
#define VW 8
#define KERNEL_NAME(x) x##_avx2
#include "kernel.h"
#endif
