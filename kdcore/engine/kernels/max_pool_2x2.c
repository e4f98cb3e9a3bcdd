/* 2x2, stride-2 max pooling over contiguous H x W float planes, for kdcore's CPU path.
 *
 * Same numbers as torch's CPU kernel, bit for bit: a window's elements are scanned row by row
 * and a later element wins when it is strictly greater or NaN; the backward pass gives each
 * window's gradient to its winner (as 0 + g, the sum torch's zero-filled scatter computes) and
 * zero to the rest. The winner is kept as one byte per window (0..3, scan order), not torch's
 * int64 flat index: an eighth of the memory traffic.
 *
 * Written with GCC/Clang vector extensions, eight windows at a time, branch-free (the winner is
 * data-dependent: a branch per window mispredicts about half the time). Threads come from the
 * OpenMP runtime the process already has (torch's libgomp, found by its soname), so
 * torch.set_num_threads applies. No torch headers: it builds in a second with any C compiler.
 */
#include <stdint.h>
#include <string.h>

typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));
typedef uint8_t b8 __attribute__((vector_size(8)));

static const i8 EVEN = {0, 2, 4, 6, 8, 10, 12, 14}, ODD = {1, 3, 5, 7, 9, 11, 13, 15};
static const i8 LOW = {0, 8, 1, 9, 2, 10, 3, 11}, HIGH = {4, 12, 5, 13, 6, 14, 7, 15};

static inline f8 load8(const float *p) { f8 v; memcpy(&v, p, sizeof v); return v; }
static inline void store8(float *p, f8 v) { memcpy(p, &v, sizeof v); }
static inline i8 as_int(f8 v) { i8 u; memcpy(&u, &v, sizeof u); return u; }
static inline f8 as_float(i8 u) { f8 v; memcpy(&v, &u, sizeof v); return v; }
static inline i8 later_wins(f8 later, f8 earlier) { return (later > earlier) | (later != later); }
static inline f8 pick(i8 mask, f8 yes, f8 no) { return as_float((mask & as_int(yes)) | (~mask & as_int(no))); }

/* Eight windows whose rows start at top and bot (16 floats each). */
static inline void windows8(const float *top, const float *bot, float *out, uint8_t *code) {
    f8 t0 = load8(top), t1 = load8(top + 8), u0 = load8(bot), u1 = load8(bot + 8);
    f8 a = __builtin_shuffle(t0, t1, EVEN), b = __builtin_shuffle(t0, t1, ODD);
    f8 c = __builtin_shuffle(u0, u1, EVEN), d = __builtin_shuffle(u0, u1, ODD);
    i8 right_top = later_wins(b, a), right_bottom = later_wins(d, c);
    f8 upper = pick(right_top, b, a), lower = pick(right_bottom, d, c);
    i8 bottom = later_wins(lower, upper);
    store8(out, pick(bottom, lower, upper));
    if (code) {  /* masks are -1/0: -right_top is 1 where the right element won */
        i8 k = (bottom & (2 - right_bottom)) | (~bottom & -right_top);
        b8 bytes = __builtin_convertvector(k, b8);
        memcpy(code, &bytes, 8);
    }
}

/* The gradients of eight windows into their rows (16 floats each). */
static inline void scatter8(const float *grad, const uint8_t *code, float *top, float *bot) {
    b8 bytes; memcpy(&bytes, code, 8);
    i8 k = __builtin_convertvector(bytes, i8);
    i8 g = as_int(load8(grad));
    const f8 zero = {0};
    f8 a = zero + as_float(g & (k == 0)), b = zero + as_float(g & (k == 1));
    f8 c = zero + as_float(g & (k == 2)), d = zero + as_float(g & (k == 3));
    store8(top, __builtin_shuffle(a, b, LOW)); store8(top + 8, __builtin_shuffle(a, b, HIGH));
    store8(bot, __builtin_shuffle(c, d, LOW)); store8(bot + 8, __builtin_shuffle(c, d, HIGH));
}

static void rows_forward(const float *x, float *out, uint8_t *code, int64_t first, int64_t last,
                         int64_t H, int64_t W) {
    const int64_t Ho = H / 2, Wo = W / 2, full = Wo / 8 * 8;
    for (int64_t r = first; r < last; ++r) {
        const float *top = x + (r / Ho) * H * W + 2 * (r % Ho) * W, *bot = top + W;
        float *o = out + r * Wo;
        uint8_t *k = code ? code + r * Wo : 0;
        int64_t j = 0;
        for (; j < full; j += 8) windows8(top + 2 * j, bot + 2 * j, o + j, k ? k + j : 0);
        if (j < Wo) {  /* the last < 8 windows, through a padded copy */
            float pt[16] = {0}, pb[16] = {0}, po[8];
            uint8_t pk[8];
            memcpy(pt, top + 2 * j, sizeof(float) * 2 * (Wo - j));
            memcpy(pb, bot + 2 * j, sizeof(float) * 2 * (Wo - j));
            windows8(pt, pb, po, k ? pk : 0);
            memcpy(o + j, po, sizeof(float) * (Wo - j));
            if (k) memcpy(k + j, pk, Wo - j);
        }
    }
}

static void planes_backward(const float *grad, const uint8_t *code, float *gin, int64_t first,
                            int64_t last, int64_t H, int64_t W) {
    const int64_t Ho = H / 2, Wo = W / 2, full = Wo / 8 * 8;
    for (int64_t p = first; p < last; ++p) {
        float *plane = gin + p * H * W;
        if ((H | W) & 1) memset(plane, 0, sizeof(float) * H * W);  /* rows/columns no window covers */
        for (int64_t i = 0; i < Ho; ++i) {
            float *top = plane + 2 * i * W, *bot = top + W;
            const float *g = grad + (p * Ho + i) * Wo;
            const uint8_t *k = code + (p * Ho + i) * Wo;
            int64_t j = 0;
            for (; j < full; j += 8) scatter8(g + j, k + j, top + 2 * j, bot + 2 * j);
            if (j < Wo) {
                float pg[8] = {0}, pt[16], pb[16];
                uint8_t pk[8] = {0};
                memcpy(pg, g + j, sizeof(float) * (Wo - j));
                memcpy(pk, k + j, Wo - j);
                scatter8(pg, pk, pt, pb);
                memcpy(top + 2 * j, pt, sizeof(float) * 2 * (Wo - j));
                memcpy(bot + 2 * j, pb, sizeof(float) * 2 * (Wo - j));
            }
        }
    }
}

/* Weak: built without OpenMP (a compiler that lacks it) the pragmas vanish and these are NULL. */
int omp_get_thread_num(void) __attribute__((weak));
int omp_get_num_threads(void) __attribute__((weak));

static void share(int64_t n, int64_t *first, int64_t *last) {
    int64_t t = omp_get_thread_num ? omp_get_thread_num() : 0;
    int64_t nt = omp_get_num_threads ? omp_get_num_threads() : 1;
    int64_t per = n / nt, extra = n % nt;
    *first = t * per + (t < extra ? t : extra);
    *last = *first + per + (t < extra);
}

/* out: planes x H/2 x W/2; code: the same, one byte each, or NULL (inference). */
void kdcore_max_pool_2x2_forward(const float *x, float *out, uint8_t *code, int64_t planes,
                                 int64_t H, int64_t W) {
    #pragma omp parallel
    {
        int64_t first, last;
        share(planes * (H / 2), &first, &last);
        rows_forward(x, out, code, first, last, H, W);
    }
}

/* gin: planes x H x W, every element written. */
void kdcore_max_pool_2x2_backward(const float *grad, const uint8_t *code, float *gin,
                                  int64_t planes, int64_t H, int64_t W) {
    #pragma omp parallel
    {
        int64_t first, last;
        share(planes, &first, &last);
        planes_backward(grad, code, gin, first, last, H, W);
    }
}
