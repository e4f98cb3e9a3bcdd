/* 2x2, stride-2 max pooling over contiguous H x W float planes, for kdcore's CPU path.
 *
 * Same numbers as torch's CPU kernel, bit for bit: a window's elements are scanned row by row
 * and a later element wins when it is strictly greater or NaN; the backward pass gives each
 * window's gradient to its winner (as 0 + g, the sum torch's zero-filled scatter computes) and
 * zero to the rest. The winner is kept as one byte per window (0..3, scan order), not torch's
 * int64 flat index: an eighth of the memory traffic.
 *
 * Written with GCC/Clang vector extensions, eight (or four) windows at a time, branch-free (the winner is
 * data-dependent: a branch per window mispredicts about half the time). Built by GCC, threads
 * come from the OpenMP runtime the process already has (torch's libgomp, found by its soname),
 * so torch.set_num_threads applies; built by Clang (whose OpenMP is another runtime) or a
 * compiler without OpenMP, it runs on one thread. No torch headers: it builds in a second.
 */
#include <stdint.h>
#include <string.h>

/* Lane shuffles: Clang and GCC 12+ take the indices as arguments, older GCC as a vector. */
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define SHUFFLE(mask_type, a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE(mask_type, a, b, ...) __builtin_shuffle(a, b, (mask_type){__VA_ARGS__})
#endif
#define EVEN8(a, b) SHUFFLE(i8, a, b, 0, 2, 4, 6, 8, 10, 12, 14)
#define ODD8(a, b) SHUFFLE(i8, a, b, 1, 3, 5, 7, 9, 11, 13, 15)
#define LOW8(a, b) SHUFFLE(i8, a, b, 0, 8, 1, 9, 2, 10, 3, 11)
#define HIGH8(a, b) SHUFFLE(i8, a, b, 4, 12, 5, 13, 6, 14, 7, 15)
#define EVEN4(a, b) SHUFFLE(i4, a, b, 0, 2, 4, 6)
#define ODD4(a, b) SHUFFLE(i4, a, b, 1, 3, 5, 7)
#define LOW4(a, b) SHUFFLE(i4, a, b, 0, 4, 1, 5)
#define HIGH4(a, b) SHUFFLE(i4, a, b, 2, 6, 3, 7)

/* Vectors of N windows: N = 8 (AVX-sized) for the bulk of a row, 4 for short rows. */
#define VECTORS(N)                                                                                \
    typedef float f##N __attribute__((vector_size(4 * N)));                                     \
    typedef int32_t i##N __attribute__((vector_size(4 * N)));                                   \
    typedef uint8_t b##N __attribute__((vector_size(N)));                                       \
    static inline f##N load##N(const float *p) { f##N v; memcpy(&v, p, sizeof v); return v; }   \
    static inline void store##N(float *p, f##N v) { memcpy(p, &v, sizeof v); }                  \
    static inline i##N int##N(f##N v) { i##N u; memcpy(&u, &v, sizeof u); return u; }          \
    static inline f##N float##N(i##N u) { f##N v; memcpy(&v, &u, sizeof v); return v; }        \
    /* -1 where `later` takes the window from `earlier`: strictly greater, or NaN */            \
    static inline i##N later_wins##N(f##N later, f##N earlier) {                                \
        return (later > earlier) | (later != later);                                           \
    }                                                                                           \
    static inline f##N pick##N(i##N mask, f##N yes, f##N no) {                                  \
        return float##N((mask & int##N(yes)) | (~mask & int##N(no)));                           \
    }                                                                                           \
    /* N windows whose rows start at top and bot (2N floats each) */                            \
    static inline void windows##N(const float *top, const float *bot, float *out,              \
                                  uint8_t *code) {                                              \
        f##N t0 = load##N(top), t1 = load##N(top + N), u0 = load##N(bot), u1 = load##N(bot + N); \
        f##N a = EVEN##N(t0, t1), b = ODD##N(t0, t1);                                            \
        f##N c = EVEN##N(u0, u1), d = ODD##N(u0, u1);                                            \
        i##N right_top = later_wins##N(b, a), right_bottom = later_wins##N(d, c);              \
        f##N upper = pick##N(right_top, b, a), lower = pick##N(right_bottom, d, c);            \
        i##N bottom = later_wins##N(lower, upper);                                             \
        store##N(out, pick##N(bottom, lower, upper));                                          \
        if (code) { /* masks are -1/0: -right_top is 1 where the right element won */           \
            i##N k = (bottom & (2 - right_bottom)) | (~bottom & -right_top);                  \
            b##N bytes = __builtin_convertvector(k, b##N);                                     \
            memcpy(code, &bytes, N);                                                           \
        }                                                                                       \
    }                                                                                           \
    /* the gradients of N windows into their rows (2N floats each) */                          \
    static inline void scatter##N(const float *grad, const uint8_t *code, float *top,          \
                                  float *bot) {                                                 \
        b##N bytes; memcpy(&bytes, code, N);                                                    \
        i##N k = __builtin_convertvector(bytes, i##N);                                         \
        i##N g = int##N(load##N(grad));                                                         \
        const f##N zero = {0};                                                                  \
        f##N a = zero + float##N(g & (k == 0)), b = zero + float##N(g & (k == 1));             \
        f##N c = zero + float##N(g & (k == 2)), d = zero + float##N(g & (k == 3));             \
        store##N(top, LOW##N(a, b));                                                            \
        store##N(top + N, HIGH##N(a, b));                                                       \
        store##N(bot, LOW##N(c, d));                                                            \
        store##N(bot + N, HIGH##N(c, d));                                                       \
    }

VECTORS(8)
VECTORS(4)

/* One row of Wo windows. A remainder is covered by one more vector that ends at the row's
 * end and overlaps windows already done (they are written again with the same values); rows
 * of fewer than 4 windows go through a padded copy. */
static inline void row_forward(const float *top, const float *bot, float *o, uint8_t *k, int64_t Wo) {
    if (Wo >= 8) {
        for (int64_t j = 0; j + 8 <= Wo; j += 8) windows8(top + 2 * j, bot + 2 * j, o + j, k ? k + j : 0);
        if (Wo % 8) windows8(top + 2 * (Wo - 8), bot + 2 * (Wo - 8), o + Wo - 8, k ? k + Wo - 8 : 0);
    } else if (Wo >= 4) {
        windows4(top, bot, o, k);
        if (Wo > 4) windows4(top + 2 * (Wo - 4), bot + 2 * (Wo - 4), o + Wo - 4, k ? k + Wo - 4 : 0);
    } else if (Wo > 0) {
        float pt[8] = {0}, pb[8] = {0}, po[4];
        uint8_t pk[4];
        memcpy(pt, top, sizeof(float) * 2 * Wo);
        memcpy(pb, bot, sizeof(float) * 2 * Wo);
        windows4(pt, pb, po, k ? pk : 0);
        memcpy(o, po, sizeof(float) * Wo);
        if (k) memcpy(k, pk, Wo);
    }
}

static inline void row_backward(const float *g, const uint8_t *k, float *top, float *bot, int64_t Wo) {
    if (Wo >= 8) {
        for (int64_t j = 0; j + 8 <= Wo; j += 8) scatter8(g + j, k + j, top + 2 * j, bot + 2 * j);
        if (Wo % 8) scatter8(g + Wo - 8, k + Wo - 8, top + 2 * (Wo - 8), bot + 2 * (Wo - 8));
    } else if (Wo >= 4) {
        scatter4(g, k, top, bot);
        if (Wo > 4) scatter4(g + Wo - 4, k + Wo - 4, top + 2 * (Wo - 4), bot + 2 * (Wo - 4));
    } else if (Wo > 0) {
        float pg[4] = {0}, pt[8], pb[8];
        uint8_t pk[4] = {0};
        memcpy(pg, g, sizeof(float) * Wo);
        memcpy(pk, k, Wo);
        scatter4(pg, pk, pt, pb);
        memcpy(top, pt, sizeof(float) * 2 * Wo);
        memcpy(bot, pb, sizeof(float) * 2 * Wo);
    }
}

static void rows_forward(const float *x, float *out, uint8_t *code, int64_t first, int64_t last,
                         int64_t H, int64_t W) {
    const int64_t Ho = H / 2, Wo = W / 2;
    for (int64_t r = first; r < last; ++r) {
        const float *top = x + (r / Ho) * H * W + 2 * (r % Ho) * W;
        row_forward(top, top + W, out + r * Wo, code ? code + r * Wo : 0, Wo);
    }
}

static void planes_backward(const float *grad, const uint8_t *code, float *gin, int64_t first,
                            int64_t last, int64_t H, int64_t W) {
    const int64_t Ho = H / 2, Wo = W / 2;
    for (int64_t p = first; p < last; ++p) {
        float *plane = gin + p * H * W;
        if ((H | W) & 1) memset(plane, 0, sizeof(float) * H * W);  /* rows/columns no window covers */
        for (int64_t i = 0; i < Ho; ++i) {
            float *top = plane + 2 * i * W;
            row_backward(grad + (p * Ho + i) * Wo, code + (p * Ho + i) * Wo, top, top + W, Wo);
        }
    }
}

/* Weak: built without OpenMP (Clang, or a compiler that lacks it) the pragmas vanish and these
 * are NULL. */
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
