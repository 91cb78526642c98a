/* What module.c passes to the per-instruction-set kernels (kernel.h). */
#ifndef VOLUME_KERNEL_API_H
#define VOLUME_KERNEL_API_H
#include <stdint.h>

#define MAX_LAYERS 64

struct fcn_job {
    int n_layers;              /* dense layers, the last one is the output layer */
    int dims[MAX_LAYERS + 1];  /* input dimension, then each layer's width */
    float scale[MAX_LAYERS];   /* weight scale sigma_w / sqrt(fan_in) per layer; 0: leave unscaled */
    float sigma_b;             /* bias scale (used where scale[l] != 0) */
    int biased;                /* biases are drawn (sigma_b > 0) */
    int uniform;               /* uniform prior (else Gaussian) */
    int argmax;                /* argmax output (else threshold z > 0 on unit 0) */
    int bits_per_label;
    int key_bytes;
    int m, mp;                 /* inputs, and inputs padded to a multiple of 16 */
    const float *xt;           /* (dims[0], mp) inputs, transposed, 64-byte aligned */
    uint32_t key0, key1;       /* Philox key of the block */
    int64_t start, stop;       /* draws of the block */
    /* Optional first-layer plan (volume/fused.py first_layer_plan; NULL: the dense product).
     * With it, xt's columns are the inputs permuted, pos[m] is input m's column, plan the
     * int32 program of each chunk of CHUNK columns in turn, px its lane vectors (n, VW). */
    const int32_t *pos;
    const int32_t *plan;
    const float *px;           /* 64-byte aligned */
    /* Leave out the last hidden layer's FMAs with units of its input (the layer before, or
     * the inputs themselves) that are zero on a whole vector (kernel.h layer_out_sparse;
     * finite weights: the same keys either way). */
    int skip_zeros;
    int64_t *skipped;          /* if not NULL: set to the (unit, vector) pairs left out, all draws */
};

#define DECLARE_KERNELS(sfx)                                                                   \
    int fcn_keys_##sfx(const struct fcn_job *job, uint8_t *keys);                              \
    void standard_##sfx(float *out, int n_params, int uniform, uint32_t key0, uint32_t key1,  \
                        int64_t start, int64_t stop);

DECLARE_KERNELS(avx512)
DECLARE_KERNELS(avx2)
DECLARE_KERNELS(generic)
#endif
