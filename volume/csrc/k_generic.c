/* kernel.h in portable C (GCC vector extensions, 4 floats per vector): any CPU. */
#define VW 4
#define KERNEL_NAME(x) x##_generic
#include "kernel.h"
