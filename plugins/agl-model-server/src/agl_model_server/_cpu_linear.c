/* The static path's CPU projection for decode steps: y = x @ w.T in float32, for a few rows of x.
 *
 * A decode step multiplies every weight matrix by a handful of rows, so it is bound by reading the weights from
 * memory. Each thread takes a contiguous range of the weight's rows, two at a time, and runs them against up to
 * six rows of x held in AVX2 registers (12 accumulators); a software prefetch keeps the next 8 KiB of each weight
 * row on its way. Built by agl_model_server._cpu_kernel with -O3 -mavx2 -mfma -fopenmp; see that module. */
#include <immintrin.h>

#define OUT_TILE 2
#define ROW_TILE 6
#define PREFETCH_FLOATS 2048

static inline float sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Outputs o0 .. o0 + n_out - 1 of rows r0 .. r0 + n_rows - 1. Inlined with constant n_out and n_rows, so the
 * accumulators stay in registers. */
static inline __attribute__((always_inline)) void tile(const float *x, const float *w, float *y, long in, long out,
                                                        long o0, long r0, int n_out, int n_rows) {
    __m256 acc[OUT_TILE][ROW_TILE];
    for (int j = 0; j < n_out; j++)
        for (int r = 0; r < n_rows; r++) acc[j][r] = _mm256_setzero_ps();
    const float *xs = x + r0 * in, *ws = w + o0 * in;
    const long vector_end = in & ~7L;
    for (long i = 0; i < vector_end; i += 8) {
        __m256 wv[OUT_TILE];
        for (int j = 0; j < n_out; j++) {
            _mm_prefetch((const char *)(ws + j * in + i + PREFETCH_FLOATS), _MM_HINT_T0);
            wv[j] = _mm256_loadu_ps(ws + j * in + i);
        }
        for (int r = 0; r < n_rows; r++) {
            __m256 xv = _mm256_loadu_ps(xs + r * in + i);
            for (int j = 0; j < n_out; j++) acc[j][r] = _mm256_fmadd_ps(wv[j], xv, acc[j][r]);
        }
    }
    for (int j = 0; j < n_out; j++)
        for (int r = 0; r < n_rows; r++) {
            float total = sum8(acc[j][r]);
            for (long i = vector_end; i < in; i++) total += ws[j * in + i] * xs[r * in + i];
            y[(r0 + r) * out + o0 + j] = total;
        }
}

#define TILE_CASE(n_out, n_rows) \
    case n_rows:                 \
        tile(x, w, y, in, out, o, r0, n_out, n_rows); \
        break;

/* Every row tile of outputs o .. o + n_out - 1. */
#define ALL_ROWS(n_out)                                                       \
    for (long r0 = 0; r0 < rows; r0 += ROW_TILE) {                           \
        switch (rows - r0 < ROW_TILE ? rows - r0 : ROW_TILE) {               \
            TILE_CASE(n_out, 6) TILE_CASE(n_out, 5) TILE_CASE(n_out, 4)     \
            TILE_CASE(n_out, 3) TILE_CASE(n_out, 2) TILE_CASE(n_out, 1)     \
        }                                                                     \
    }

/* x: [rows, in], w: [out, in], y: [rows, out]; all contiguous float32. */
void agl_linear_f32(const float *x, const float *w, float *y, long rows, long in, long out, int threads) {
    const long pairs = out / OUT_TILE;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long p = 0; p < pairs; p++) {
        const long o = p * OUT_TILE;
        ALL_ROWS(2)
    }
    for (long o = pairs * OUT_TILE; o < out; o++) {
        ALL_ROWS(1)
    }
}
