/* volume._fused: the fused FCN sampler (kernel.h) as a Python extension module.
 *
 * fcn_keys(...) writes the packed keys of draws [start, stop) of one block; standard(...)
 * the standard numbers of the random stream alone; isas() the instruction sets this CPU
 * runs, best first; merge_counted(...) the linear merge of two counted key sets (volume.table).
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

/* fcn_keys(keys, xt, dims, scales, sigma_b, biased, uniform, argmax, bits_per_label, m, key0, key1,
 *          start, stop, isa[, pos, plan, px]): keys (stop - start, key_bytes) uint8, writable; xt
 *          (dims[0], mp) float32 with mp = m rounded up to a multiple of 16; optionally a first-layer
 *          plan for the vector width of isa (volume/fused.py first_layer_plan): pos (m,) int32,
 *          plan int32, px (n, vector width) float32, xt's columns permuted by pos. */
static PyObject *py_fcn_keys(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer keys, xt, pos = {0}, plan = {0}, px = {0};
    PyObject *dims, *scales;
    struct fcn_job job;
    memset(&job, 0, sizeof job);
    unsigned int k0, k1;
    long long start, stop;
    const char *isa_name;
    if (!PyArg_ParseTuple(args, "w*y*OOfiiiiiIILLs|y*y*y*", &keys, &xt, &dims, &scales, &job.sigma_b, &job.biased,
                          &job.uniform, &job.argmax, &job.bits_per_label, &job.m, &k0, &k1, &start, &stop,
                          &isa_name, &pos, &plan, &px))
        return NULL;
    PyObject *result = NULL;
    float *xt_aligned = NULL, *px_aligned = NULL;
    int nd = parse_numbers(dims, job.dims, MAX_LAYERS + 1, 0, "dims");
    if (nd < 0) goto done;
    job.n_layers = nd - 1;
    if (job.n_layers < 1) { PyErr_SetString(PyExc_ValueError, "dims: give the input dimension and >= 1 layer width"); goto done; }
    if (parse_numbers(scales, job.scale, MAX_LAYERS, 1, "scales") != job.n_layers) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "scales: one per layer");
        goto done;
    }
    int isa = pick_isa(isa_name);
    if (isa < 0) { PyErr_Format(PyExc_ValueError, "isa %s is unknown or not supported by this CPU", isa_name); goto done; }
    job.mp = (job.m + 15) / 16 * 16;
    job.key_bytes = (job.m * job.bits_per_label + 7) / 8;
    job.key0 = k0; job.key1 = k1; job.start = start; job.stop = stop;
    if (stop < start || job.m < 1 || xt.len != (Py_ssize_t)job.dims[0] * job.mp * 4 ||
        keys.len != (Py_ssize_t)(stop - start) * job.key_bytes) {
        PyErr_SetString(PyExc_ValueError, "fcn_keys: buffer sizes do not match dims, m and [start, stop)");
        goto done;
    }
    xt_aligned = aligned_alloc(64, ((size_t)xt.len + 63) / 64 * 64);
    if (!xt_aligned) { PyErr_NoMemory(); goto done; }
    memcpy(xt_aligned, xt.buf, (size_t)xt.len);
    job.xt = xt_aligned;
    if (plan.buf && plan.len > 0) {
        if (pos.len != (Py_ssize_t)job.m * 4 || plan.len % 4 || px.len == 0) {
            PyErr_SetString(PyExc_ValueError, "fcn_keys: pos must have m int32 entries, plan int32 and px non-empty");
            goto done;
        }
        px_aligned = aligned_alloc(64, ((size_t)px.len + 63) / 64 * 64);
        if (!px_aligned) { PyErr_NoMemory(); goto done; }
        memcpy(px_aligned, px.buf, (size_t)px.len);
        job.pos = (const int32_t *)pos.buf;
        job.plan = (const int32_t *)plan.buf;
        job.px = px_aligned;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = run_fcn(isa, &job, (uint8_t *)keys.buf);
    Py_END_ALLOW_THREADS
    if (rc != 0) { PyErr_NoMemory(); goto done; }
    result = PyUnicode_FromString(ISA_NAMES[isa]);
done:
    free(xt_aligned);
    free(px_aligned);
    PyBuffer_Release(&keys);
    PyBuffer_Release(&xt);
    if (pos.buf) PyBuffer_Release(&pos);
    if (plan.buf) PyBuffer_Release(&plan);
    if (px.buf) PyBuffer_Release(&px);
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
    {"fcn_keys", py_fcn_keys, METH_VARARGS, "Packed keys of draws [start, stop) of an FCN block."},
    {"standard", py_standard, METH_VARARGS, "Standard numbers of draws [start, stop) of the random stream."},
    {"merge_counted", py_merge_counted, METH_VARARGS, "Linear merge of two sorted unique key sets with counts."},
    {"isas", py_isas, METH_NOARGS, "Instruction sets this CPU runs, best first."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_fused", "The fused FCN sampler kernel.", -1, METHODS};

PyMODINIT_FUNC PyInit__fused(void) {
    PyObject *m = PyModule_Create(&MODULE);
    /* fcn_keys takes a first-layer plan (volume/fused.py checks this, so that a wrapper newer
     * than the built extension, as on a cluster node with an older install, stays dense) */
    if (m && PyModule_AddIntConstant(m, "FIRST_LAYER_PLAN", 1) < 0) { Py_DECREF(m); return NULL; }
    return m;
}
