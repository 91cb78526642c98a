/* volume._fused: the fused FCN sampler (kernel.h) as a Python extension module.
 *
 * fcn_keys(...) writes the packed keys of draws [start, stop) of one block; standard(...)
 * the standard numbers of the random stream alone; isas() the instruction sets this CPU
 * runs, best first; merge_counted(...) the linear merge of two counted key sets and
 * sort_rows(...) the stable radix sort of narrow keys (volume.table; internal: buffers of the
 * right sizes are checked, their dtypes are the caller's to get right).
 * The instruction set is chosen at run time (CPUID and the OS's saved
 * vector state, through __builtin_cpu_supports); isa= forces one (tests run each). The GIL
 * is released while a kernel runs. Arrays are passed as Python buffers (numpy arrays), so
 * the build needs no numpy headers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>

#include "kernel_api.h"

#ifndef CHUNK
#define CHUNK 64 /* inputs per chunk of the kernel (kernel.h CHUNK; a first-layer plan is laid out per chunk) */
#endif

#if defined(__x86_64__) || defined(__i386__)
#define X86 1
#else
#define X86 0
#endif

static int has_avx512(void) {
#if X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
#else
    return 0;
#endif
}

static int has_avx2(void) {
#if X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
#else
    return 0;
#endif
}

/* 2: avx512, 1: avx2, 0: generic; -1 for an ISA this CPU cannot run or an unknown name. */
static int pick_isa(const char *name) {
    if (strcmp(name, "auto") == 0) return has_avx512() ? 2 : has_avx2() ? 1 : 0;
    if (strcmp(name, "avx512") == 0) return has_avx512() ? 2 : -1;
    if (strcmp(name, "avx2") == 0) return has_avx2() ? 1 : -1;
    if (strcmp(name, "generic") == 0) return 0;
    return -1;
}

static const char *ISA_NAMES[] = {"generic", "avx2", "avx512"};

static int run_fcn(int isa, const struct fcn_job *job, uint8_t *keys) {
#if X86
    if (isa == 2) return fcn_keys_avx512(job, keys);
    if (isa == 1) return fcn_keys_avx2(job, keys);
#endif
    return fcn_keys_generic(job, keys);
}

static void run_standard(int isa, float *out, int n, int uniform, uint32_t k0, uint32_t k1, int64_t a, int64_t b) {
#if X86
    if (isa == 2) { standard_avx512(out, n, uniform, k0, k1, a, b); return; }
    if (isa == 1) { standard_avx2(out, n, uniform, k0, k1, a, b); return; }
#endif
    standard_generic(out, n, uniform, k0, k1, a, b);
}

static PyObject *py_isas(PyObject *self, PyObject *args) {
    (void)self; (void)args;
    if (has_avx512()) return Py_BuildValue("[sss]", "avx512", "avx2", "generic");
    if (has_avx2()) return Py_BuildValue("[ss]", "avx2", "generic");
    return Py_BuildValue("[s]", "generic");
}

/* Copy a sequence of at most max numbers into out (int or float); -1 with an exception on error. */
static int parse_numbers(PyObject *seq, void *out, int max, int as_float, const char *what) {
    PyObject *fast = PySequence_Fast(seq, what);
    if (!fast) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > max) { Py_DECREF(fast); PyErr_Format(PyExc_ValueError, "%s: at most %d entries", what, max); return -1; }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        if (as_float) ((float *)out)[i] = (float)PyFloat_AsDouble(item);
        else ((int *)out)[i] = (int)PyLong_AsLong(item);
    }
    Py_DECREF(fast);
    return PyErr_Occurred() ? -1 : (int)n;
}

/* Vector width (floats) of each ISA index of pick_isa. */
static const int ISA_VW[] = {4, 8, 16};

/* A C-contiguous buffer of one element type ('f': float32, 'i': int32, 'B': uint8) from obj;
 * -1 with a one-line ValueError naming `name` otherwise (numpy's own error replaced). */
static int get_array(PyObject *obj, Py_buffer *view, char kind, int writable, const char *name) {
    static const char *TYPES[] = {"float32", "int32", "uint8"};
    const char *type = TYPES[kind == 'f' ? 0 : kind == 'i' ? 1 : 2];
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0) {
        PyErr_Clear();
        view->obj = NULL;
        PyErr_Format(PyExc_ValueError, "fcn_keys: %s must be a C-contiguous%s %s array", name,
                     writable ? " writable" : "", type);
        return -1;
    }
    const char *f = view->format ? view->format : "B";
    const int little = *(const unsigned char *)&(uint16_t){1};
    if (*f == '@' || *f == '=' || (*f == '<' && little) || ((*f == '>' || *f == '!') && !little)) f++;
    int ok = f[0] && !f[1];
    if (ok && kind == 'f') ok = f[0] == 'f' && view->itemsize == 4;
    else if (ok && kind == 'i') ok = (f[0] == 'i' || f[0] == 'l') && view->itemsize == 4;
    else if (ok) ok = (f[0] == 'B' || f[0] == 'b' || f[0] == 'c') && view->itemsize == 1;
    if (!ok) {
        PyErr_Format(PyExc_ValueError, "fcn_keys: %s must be a %s array, not format '%s' (%zd-byte items)", name, type,
                     view->format ? view->format : "B", view->itemsize);
        PyBuffer_Release(view);
        view->obj = NULL;
        return -1;
    }
    return 0;
}

/* The kernel reads whole vectors (up to 64 bytes) of xt and px with aligned loads: a buffer
 * that is already 64-byte aligned (volume/fused.py allocates them so, once per sampler) is
 * used in place; any other is copied to an aligned one, freed by the caller (*copy). */
static const float *aligned_floats(const Py_buffer *b, float **copy) {
    *copy = NULL;
    if (((uintptr_t)b->buf & 63) == 0) return (const float *)b->buf;
    *copy = aligned_alloc(64, ((size_t)b->len + 63) / 64 * 64);
    if (!*copy) return (const float *)PyErr_NoMemory();
    memcpy(*copy, b->buf, (size_t)b->len);
    return *copy;
}

/* Check a first-layer plan exactly as kernel.h's first_layer_planned/plan_rows walk it, so
 * that no plan can make the kernel read or write out of bounds: per chunk of CHUNK columns
 * (mp / CHUNK of them, the last one shorter), n_groups >= 0; per group n_pre >= 0 pairs (k, j),
 * n_vec >= 0, per vector c, n_suf >= 0 and n_suf pairs (k, j); every k < K, every j < n_px,
 * every c < the chunk's vectors and each of them computed exactly once (else the layer would
 * read a column nobody wrote), and the plan consumed exactly. pos must be a permutation of
 * 0 .. m-1 (the keys read column pos[i] of m). 0, or -1 with a one-line ValueError. */
static int check_plan(const int32_t *plan, Py_ssize_t n, const int32_t *pos, int m, int mp, int vw, int K,
                      Py_ssize_t n_px) {
    Py_ssize_t i = 0;
    char *seen = calloc((size_t)m, 1);
    if (!seen) { PyErr_NoMemory(); return -1; }
    for (int q = 0; q < m; q++) {
        if (pos[q] < 0 || pos[q] >= m || seen[pos[q]]) {
            free(seen);
            PyErr_Format(PyExc_ValueError, "fcn_keys: pos must be a permutation of 0..m-1 (m = %d): entry %d is %d%s",
                         m, q, (int)pos[q], pos[q] >= 0 && pos[q] < m ? ", repeated" : "");
            return -1;
        }
        seen[pos[q]] = 1;
    }
    free(seen);
#define BAD(...) do { PyErr_Format(PyExc_ValueError, "fcn_keys: invalid first-layer plan: " __VA_ARGS__); return -1; } while (0)
#define NEED(cnt, what) do { if ((cnt) > n - i) BAD("%s at entry %zd runs past its end (%zd entries)", what, i, n); } while (0)
#define PAIRS(cnt, what)                                                                                   \
    do {                                                                                                   \
        if ((cnt) < 0) BAD("negative %s count %d at entry %zd", what, (int)(cnt), i - 1);                  \
        NEED(2 * (Py_ssize_t)(cnt), what);                                                                 \
        for (Py_ssize_t e = i + 2 * (Py_ssize_t)(cnt); i < e; i += 2) {                                   \
            if (plan[i] < 0 || plan[i] >= K) BAD("coordinate k = %d at entry %zd, not in 0..%d", (int)plan[i], i, K - 1); \
            if (plan[i + 1] < 0 || plan[i + 1] >= n_px)                                                    \
                BAD("vector j = %d at entry %zd, not in 0..%zd (px rows)", (int)plan[i + 1], i + 1, n_px - 1); \
        }                                                                                                  \
    } while (0)
    for (int c0 = 0; c0 < mp; c0 += CHUNK) {
        const int nv = (mp - c0 < CHUNK ? mp - c0 : CHUNK) / vw;
        uint64_t done = 0;
        NEED(1, "the chunk's group count");
        const int32_t ng = plan[i++];
        if (ng < 0) BAD("negative group count %d at entry %zd", (int)ng, i - 1);
        for (int32_t g = 0; g < ng; g++) {
            NEED(1, "a group's prefix count");
            const int32_t npre = plan[i++];
            PAIRS(npre, "prefix");
            NEED(1, "a group's vector count");
            const int32_t nvec = plan[i++];
            if (nvec < 0) BAD("negative vector count %d at entry %zd", (int)nvec, i - 1);
            for (int32_t v = 0; v < nvec; v++) {
                NEED(2, "a vector's index and suffix count");
                const int32_t c = plan[i], ns = plan[i + 1];
                if (c < 0 || c >= nv) BAD("vector index c = %d at entry %zd, not in 0..%d", (int)c, i, nv - 1);
                if (done >> c & 1) BAD("vector %d of the chunk at column %d computed twice (entry %zd)", (int)c, c0, i);
                done |= (uint64_t)1 << c;
                i += 2;
                PAIRS(ns, "suffix");
            }
        }
        if (done != ((uint64_t)1 << nv) - 1) BAD("a vector of the chunk at column %d is never computed", c0);
    }
    if (i != n) BAD("%zd entries left over after the last chunk (plan laid out for another vector width or input count?)", n - i);
#undef PAIRS
#undef NEED
#undef BAD
    return 0;
}

/* fcn_keys(keys, xt, dims, scales, sigma_b, biased, uniform, argmax, bits_per_label, m, key0, key1,
 *          start, stop, isa[, pos, plan, px][, skip_zeros=True]) -> (isa, pairs left out): keys
 *          (stop - start, key_bytes) uint8, writable; xt
 *          (dims[0], mp) float32 with mp = m rounded up to a multiple of 16; optionally a first-layer
 *          plan for the vector width of isa (volume/fused.py first_layer_plan): pos (m,) int32,
 *          plan int32, px (n, vector width) float32, xt's columns permuted by pos. xt and px are
 *          used in place where 64-byte aligned (else copied per call); everything is checked
 *          before the kernel runs (the plan walked as the kernel walks it, on private copies of
 *          plan and pos that the kernel then follows): bad arguments give a ValueError, never an
 *          out-of-bounds access. pos, plan and px may be None (no plan). skip_zeros (default
 *          true; volume/fused.py passes its choice): leave out the last hidden layer's FMAs with
 *          units of its input that are zero on a whole vector of inputs (kernel.h
 *          layer_out_sparse; the same keys for finite weights); pairs left out counts them over
 *          all draws. */
static PyObject *py_fcn_keys(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    Py_buffer keys = {0}, xt = {0}, pos = {0}, plan = {0}, px = {0};
    PyObject *keys_o, *xt_o, *dims, *scales, *pos_o = NULL, *plan_o = NULL, *px_o = NULL;
    struct fcn_job job;
    memset(&job, 0, sizeof job);
    unsigned int k0, k1;
    long long start, stop;
    const char *isa_name;
    static char *kwlist[] = {"keys", "xt", "dims", "scales", "sigma_b", "biased", "uniform", "argmax",
                             "bits_per_label", "m", "key0", "key1", "start", "stop", "isa", "pos", "plan", "px",
                             "skip_zeros", NULL};
    int64_t skipped = 0;
    job.skip_zeros = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOfiiiiiIILLs|OOOp", kwlist, &keys_o, &xt_o, &dims, &scales,
                                     &job.sigma_b, &job.biased, &job.uniform, &job.argmax, &job.bits_per_label,
                                     &job.m, &k0, &k1, &start, &stop, &isa_name, &pos_o, &plan_o, &px_o,
                                     &job.skip_zeros))
        return NULL;
    if (pos_o == Py_None) pos_o = NULL;
    if (plan_o == Py_None) plan_o = NULL;
    if (px_o == Py_None) px_o = NULL;
    job.skipped = &skipped;
    PyObject *result = NULL;
    float *xt_copy = NULL, *px_copy = NULL;
    int32_t *plan_copy = NULL, *pos_copy = NULL;
    if (get_array(keys_o, &keys, 'B', 1, "keys") < 0 || get_array(xt_o, &xt, 'f', 0, "xt") < 0) goto done;
    int nd = parse_numbers(dims, job.dims, MAX_LAYERS + 1, 0, "dims");
    if (nd < 0) goto done;
    job.n_layers = nd - 1;
    if (job.n_layers < 1) { PyErr_SetString(PyExc_ValueError, "dims: give the input dimension and >= 1 layer width"); goto done; }
    if (parse_numbers(scales, job.scale, MAX_LAYERS, 1, "scales") != job.n_layers) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "scales: one per layer");
        goto done;
    }
    long long n_params = 0;
    for (int l = 0; l <= job.n_layers; l++) {
        if (job.dims[l] < 1 || job.dims[l] > (1 << 24)) {
            PyErr_Format(PyExc_ValueError, "dims: entry %d is %d, not in 1..2^24", l, job.dims[l]);
            goto done;
        }
        if (l) n_params += (long long)job.dims[l] * (job.dims[l - 1] + 1);
    }
    if (n_params > (1 << 28)) {
        PyErr_Format(PyExc_ValueError, "dims: %lld parameters per draw, more than the kernel's 2^28", n_params);
        goto done;
    }
    const int units = job.dims[job.n_layers];
    if (job.bits_per_label < 1 || job.bits_per_label > 8 || (job.argmax && units > (1 << job.bits_per_label))) {
        PyErr_Format(PyExc_ValueError, "bits_per_label: %d does not hold the labels of %d output units (1..8 bits)",
                     job.bits_per_label, units);
        goto done;
    }
    int isa = pick_isa(isa_name);
    if (isa < 0) { PyErr_Format(PyExc_ValueError, "isa %s is unknown or not supported by this CPU", isa_name); goto done; }
    if (job.m < 1 || job.m > (1 << 26)) { PyErr_Format(PyExc_ValueError, "m: %d inputs, not in 1..2^26", job.m); goto done; }
    job.mp = (job.m + 15) / 16 * 16;
    job.key_bytes = (job.m * job.bits_per_label + 7) / 8;
    job.key0 = k0; job.key1 = k1; job.start = start; job.stop = stop;
    if (stop < start || xt.len != (Py_ssize_t)job.dims[0] * job.mp * 4 || keys.len % job.key_bytes ||
        keys.len / job.key_bytes != stop - start) {
        PyErr_SetString(PyExc_ValueError, "fcn_keys: buffer sizes do not match dims, m and [start, stop)");
        goto done;
    }
    if (pos_o || plan_o || px_o) {
        const int vw = ISA_VW[isa];
        if (!pos_o || !plan_o || !px_o) {
            PyErr_SetString(PyExc_ValueError, "fcn_keys: a first-layer plan needs all of pos, plan and px");
            goto done;
        }
        if (get_array(pos_o, &pos, 'i', 0, "pos") < 0 || get_array(plan_o, &plan, 'i', 0, "plan") < 0 ||
            get_array(px_o, &px, 'f', 0, "px") < 0)
            goto done;
        if (pos.len != (Py_ssize_t)job.m * 4 || px.len == 0 || px.len % (vw * 4)) {
            PyErr_Format(PyExc_ValueError, "fcn_keys: pos must have m = %d entries and px whole rows of %d floats "
                         "(the vector width of isa %s)", job.m, vw, ISA_NAMES[isa]);
            goto done;
        }
        /* the kernel follows private copies of the checked plan and pos: another thread cannot
         * change them between the check and the kernel (the GIL is released while it runs) */
        plan_copy = malloc((size_t)plan.len + 4);
        pos_copy = malloc((size_t)pos.len);
        if (!plan_copy || !pos_copy) { PyErr_NoMemory(); goto done; }
        memcpy(plan_copy, plan.buf, (size_t)plan.len);
        memcpy(pos_copy, pos.buf, (size_t)pos.len);
        if (check_plan(plan_copy, plan.len / 4, pos_copy, job.m, job.mp, vw, job.dims[0], px.len / (vw * 4)) < 0)
            goto done;
        if (!(job.px = aligned_floats(&px, &px_copy))) goto done;
        job.pos = pos_copy;
        job.plan = plan_copy;
    }
    if (!(job.xt = aligned_floats(&xt, &xt_copy))) goto done;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = run_fcn(isa, &job, (uint8_t *)keys.buf);
    Py_END_ALLOW_THREADS
    if (rc != 0) { PyErr_NoMemory(); goto done; }
    result = Py_BuildValue("(sL)", ISA_NAMES[isa], (long long)skipped);
done:
    free(xt_copy);
    free(px_copy);
    free(plan_copy);
    free(pos_copy);
    if (keys.obj) PyBuffer_Release(&keys);
    if (xt.obj) PyBuffer_Release(&xt);
    if (pos.obj) PyBuffer_Release(&pos);
    if (plan.obj) PyBuffer_Release(&plan);
    if (px.obj) PyBuffer_Release(&px);
    return result;
}

/* standard(out, n_params, uniform, key0, key1, start, stop, isa): out (stop - start, n_params) float32. */
static PyObject *py_standard(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer out;
    int n, uniform;
    unsigned int k0, k1;
    long long start, stop;
    const char *isa_name;
    if (!PyArg_ParseTuple(args, "w*iiIILLs", &out, &n, &uniform, &k0, &k1, &start, &stop, &isa_name)) return NULL;
    int isa = pick_isa(isa_name);
    if (isa < 0 || stop < start || n < 1 || out.len != (Py_ssize_t)(stop - start) * n * 4) {
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "standard: unknown isa, or the buffer size does not match");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    run_standard(isa, (float *)out.buf, n, uniform, k0, k1, start, stop);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&out);
    return PyUnicode_FromString(ISA_NAMES[isa]);
}

/* A key's 8 bytes as a number that orders as the bytes do (memcmp order). */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define BE64(x) (x)
#else
#define BE64(x) __builtin_bswap64(x)
#endif

/* Byte-wise order of two kb-byte keys (as memcmp), 8 bytes at a time where kb allows. */
static inline int key_cmp(const uint8_t *a, const uint8_t *b, int kb) {
    int i = 0;
    for (; i + 8 <= kb; i += 8) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y) {
            x = BE64(x);
            y = BE64(y);
            return x < y ? -1 : 1;
        }
    }
    return i < kb ? memcmp(a + i, b + i, (size_t)(kb - i)) : 0;
}

/* The merge of merge_counted below; KB > 0: a key width known at compile time (whole 8-byte
 * words compared and copied inline), 0: any width kb. Returns the rows written. */
#define MERGE_BODY(KB)                                                                               \
    {                                                                                                \
        const Py_ssize_t w = (KB) ? (KB) : kb;                                                      \
        Py_ssize_t i = 0, j = 0, n = 0;                                                             \
        while (i < na && j < nb) {                                                                  \
            int c = key_cmp(a + i * w, b + j * w, (int)w);                                          \
            const uint8_t *src = c <= 0 ? a + i * w : b + j * w;                                    \
            uint64_t cnt = c < 0 ? ac[i] : c > 0 ? bc[j] : ac[i] + bc[j];                           \
            memcpy(o + n * w, src, (size_t)w);                                                      \
            occ[n++] = cnt;                                                                         \
            i += c <= 0;                                                                            \
            j += c >= 0;                                                                            \
        }                                                                                           \
        memcpy(o + n * w, a + i * w, (size_t)(na - i) * w);                                         \
        memcpy(occ + n, ac + i, (size_t)(na - i) * 8);                                              \
        n += na - i;                                                                                \
        memcpy(o + n * w, b + j * w, (size_t)(nb - j) * w);                                         \
        memcpy(occ + n, bc + j, (size_t)(nb - j) * 8);                                              \
        return n + nb - j;                                                                          \
    }

static Py_ssize_t merge_any(const uint8_t *a, const uint64_t *ac, Py_ssize_t na, const uint8_t *b, const uint64_t *bc,
                            Py_ssize_t nb, uint8_t *o, uint64_t *occ, int kb) MERGE_BODY(0)
static Py_ssize_t merge_8(const uint8_t *a, const uint64_t *ac, Py_ssize_t na, const uint8_t *b, const uint64_t *bc,
                          Py_ssize_t nb, uint8_t *o, uint64_t *occ, int kb) MERGE_BODY(8)
/* 16-byte keys without a branch on the (unpredictable) comparison: both keys as two big-endian
 * words, the order as flags, the row to copy chosen by a conditional move. */
static Py_ssize_t merge_16(const uint8_t *a, const uint64_t *ac, Py_ssize_t na, const uint8_t *b, const uint64_t *bc,
                           Py_ssize_t nb, uint8_t *o, uint64_t *occ, int kb) {
    (void)kb;
    Py_ssize_t i = 0, j = 0, n = 0;
    while (i < na && j < nb) {
        uint64_t x[2], y[2];
        memcpy(x, a + i * 16, 16);
        memcpy(y, b + j * 16, 16);
        uint64_t xh = BE64(x[0]), xl = BE64(x[1]);
        uint64_t yh = BE64(y[0]), yl = BE64(y[1]);
        int lt = (xh < yh) | ((xh == yh) & (xl < yl)), gt = (xh > yh) | ((xh == yh) & (xl > yl));
        const uint64_t *src = gt ? y : x;
        memcpy(o + n * 16, src, 16);
        uint64_t ca_ = ac[i], cb_ = bc[j];
        occ[n++] = (gt ? 0 : ca_) + (lt ? 0 : cb_);
        i += !gt;
        j += !lt;
    }
    memcpy(o + n * 16, a + i * 16, (size_t)(na - i) * 16);
    memcpy(occ + n, ac + i, (size_t)(na - i) * 8);
    n += na - i;
    memcpy(o + n * 16, b + j * 16, (size_t)(nb - j) * 16);
    memcpy(occ + n, bc + j, (size_t)(nb - j) * 8);
    return n + nb - j;
}
static Py_ssize_t merge_32(const uint8_t *a, const uint64_t *ac, Py_ssize_t na, const uint8_t *b, const uint64_t *bc,
                           Py_ssize_t nb, uint8_t *o, uint64_t *occ, int kb) MERGE_BODY(32)

/* sort_rows(order, keys, kb): order (n,) int64 := the permutation that sorts the n rows of kb
 * bytes of keys byte-wise ascending, stably: a least-significant-digit radix sort by byte,
 * kb counting passes over the row indices, each reading its byte of every row from a copy in
 * row order (in L1); a byte that is the same in every row is skipped. table.count_keys uses
 * it for keys up to WORD_SORT_MAX_BYTES: 4,096 boolean7 keys of 16 bytes in ~0.15 ms, against
 * ~0.28 ms for numpy's lexsort of their two big-endian uint64 words. */
static void radix_sort_rows(const uint8_t *keys, Py_ssize_t n, int kb, int64_t *order, int64_t *tmp, uint8_t *col) {
    for (Py_ssize_t i = 0; i < n; i++) order[i] = i;
    for (int b = kb - 1; b >= 0; b--) {
        Py_ssize_t count[257] = {0};
        for (Py_ssize_t i = 0; i < n; i++) {
            col[i] = keys[(size_t)i * kb + b];
            count[col[i] + 1]++;
        }
        int same = 0;
        for (int v = 1; v <= 256; v++) same |= count[v] == n;
        if (same) continue;
        for (int v = 1; v <= 256; v++) count[v] += count[v - 1];
        for (Py_ssize_t i = 0; i < n; i++) {
            const int64_t r = order[i];
            tmp[count[col[r]]++] = r;
        }
        memcpy(order, tmp, (size_t)n * sizeof(int64_t));
    }
}

static PyObject *py_sort_rows(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer out, keys;
    int kb;
    if (!PyArg_ParseTuple(args, "w*y*i", &out, &keys, &kb)) return NULL;
    const Py_ssize_t n = kb > 0 ? keys.len / kb : 0;
    const int bad = kb < 1 || keys.len != n * kb || out.len != n * 8;
    int64_t *tmp = bad ? NULL : malloc((size_t)(n ? n : 1) * sizeof(int64_t));
    uint8_t *col = bad ? NULL : malloc((size_t)(n ? n : 1));
    const int ok = !bad && tmp && col;
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        radix_sort_rows(keys.buf, n, kb, out.buf, tmp, col);
        Py_END_ALLOW_THREADS
    }
    free(col);
    free(tmp);
    PyBuffer_Release(&out);
    PyBuffer_Release(&keys);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "sort_rows: order must hold one int64 per row of kb bytes");
        return NULL;
    }
    if (!ok) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* merge_counted(out_keys, out_counts, keys_a, counts_a, keys_b, counts_b, kb) -> n: the union of
 * two sorted unique key sets (rows of kb bytes) with summed counts, written to the first n rows
 * of the outputs (room for |a| + |b| rows): one linear merge. */
static PyObject *py_merge_counted(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer ok, oc, ka, ca, kb_, cb;
    int kb;
    if (!PyArg_ParseTuple(args, "w*w*y*y*y*y*i", &ok, &oc, &ka, &ca, &kb_, &cb, &kb)) return NULL;
    Py_ssize_t na = kb > 0 ? ka.len / kb : 0, nb = kb > 0 ? kb_.len / kb : 0, n = 0;
    int bad = kb < 1 || ka.len != na * kb || kb_.len != nb * kb || ca.len != na * 8 || cb.len != nb * 8 ||
              ok.len < (na + nb) * kb || oc.len < (na + nb) * 8;
    if (!bad) {
        const uint8_t *a = ka.buf, *b = kb_.buf;
        const uint64_t *ac = ca.buf, *bc = cb.buf;
        Py_BEGIN_ALLOW_THREADS
        if (kb == 16) n = merge_16(a, ac, na, b, bc, nb, ok.buf, oc.buf, kb);
        else if (kb == 8) n = merge_8(a, ac, na, b, bc, nb, ok.buf, oc.buf, kb);
        else if (kb == 32) n = merge_32(a, ac, na, b, bc, nb, ok.buf, oc.buf, kb);
        else n = merge_any(a, ac, na, b, bc, nb, ok.buf, oc.buf, kb);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&ok); PyBuffer_Release(&oc); PyBuffer_Release(&ka);
    PyBuffer_Release(&ca); PyBuffer_Release(&kb_); PyBuffer_Release(&cb);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "merge_counted: buffer sizes do not match the key width");
        return NULL;
    }
    return PyLong_FromSsize_t(n);
}

static PyMethodDef METHODS[] = {
    {"fcn_keys", (PyCFunction)(void (*)(void))py_fcn_keys, METH_VARARGS | METH_KEYWORDS,
     "Packed keys of draws [start, stop) of an FCN block; returns (isa, pairs left out)."},
    {"standard", py_standard, METH_VARARGS, "Standard numbers of draws [start, stop) of the random stream."},
    {"merge_counted", py_merge_counted, METH_VARARGS, "Linear merge of two sorted unique key sets with counts."},
    {"sort_rows", py_sort_rows, METH_VARARGS, "Stable byte-wise sort of rows of kb bytes (radix)."},
    {"isas", py_isas, METH_NOARGS, "Instruction sets this CPU runs, best first."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_fused", "The fused FCN sampler kernel.", -1, METHODS};

PyMODINIT_FUNC PyInit__fused(void) {
    PyObject *m = PyModule_Create(&MODULE);
    /* fcn_keys takes a first-layer plan (volume/fused.py checks this, so that a wrapper newer
     * than the built extension, as on a cluster node with an older install, stays dense) */
    if (m && (PyModule_AddIntConstant(m, "FIRST_LAYER_PLAN", 1) < 0 || PyModule_AddIntConstant(m, "CHUNK", CHUNK) < 0 ||
              PyModule_AddIntConstant(m, "SKIP_ZEROS", 1) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
