/* The f32 FMA ceiling of one core: twelve independent AVX2 FMA chains (enough to cover the
 * FMA latency on two pipes), 400 M iterations. Used in docs/BENCHMARKS.md to state how close
 * the encoders' matrix products run to the machine's peak.
 *
 *   gcc -O2 -mavx2 -mfma scripts/bench/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak
 *   (/tmp/fma_peak & /tmp/fma_peak; wait)      # both cores at once
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define INIT(i) __m256 a##i = _mm256_set1_ps(i * 0.001f);
#define STEP(i) a##i = _mm256_fmadd_ps(a##i, b, c);

int main(void) {
    INIT(0) INIT(1) INIT(2) INIT(3) INIT(4) INIT(5) INIT(6) INIT(7) INIT(8) INIT(9) INIT(10) INIT(11)
    __m256 b = _mm256_set1_ps(0.9999f), c = _mm256_set1_ps(0.0001f);
    long n = 400000000;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long k = 0; k < n; k++) {
        STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7) STEP(8) STEP(9) STEP(10) STEP(11)
        __asm__ volatile("" : : "x"(a0));
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    __m256 o = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)), _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    o = _mm256_add_ps(o, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float out[8];
    _mm256_storeu_ps(out, o);
    printf("%.1f GFLOPS on one core (checksum %f)\n", n * 12.0 * 16 / s / 1e9, out[0]);
    return 0;
}
