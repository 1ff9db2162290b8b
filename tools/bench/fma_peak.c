/* The machine's f32 FMA peak, for reading the benchmark's GFLOP/s figures.
 *
 *     gcc -O2 -pthread tools/bench/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak
 *
 * Ten independent FMA chains per thread (enough to cover the FMA latency on two pipes), 256-bit (AVX2) and
 * 512-bit (AVX-512, where the CPU has it) vectors, one thread and two threads. */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>

#define N 100000000L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define BODY(T, S, F)                                                                                    \
    T a0 = S(0), a1 = S(1), a2 = S(2), a3 = S(3), a4 = S(4), a5 = S(5), a6 = S(6), a7 = S(7), a8 = S(8),  \
      a9 = S(9), b = S(1.0000001f), c = S(1e-7f);                                                        \
    for (long k = 0; k < N; k++) {                                                                       \
        a0 = F(a0, b, c); a1 = F(a1, b, c); a2 = F(a2, b, c); a3 = F(a3, b, c); a4 = F(a4, b, c);        \
        a5 = F(a5, b, c); a6 = F(a6, b, c); a7 = F(a7, b, c); a8 = F(a8, b, c); a9 = F(a9, b, c);        \
    }                                                                                                    \
    a0 = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9;                                                \
    return a0[0];

__attribute__((target("avx2,fma"))) static float f256(void) { BODY(__m256, _mm256_set1_ps, _mm256_fmadd_ps) }
__attribute__((target("avx512f"))) static float f512(void) { BODY(__m512, _mm512_set1_ps, _mm512_fmadd_ps) }

static volatile float sink;
static void *t256(void *x) { (void)x; sink = f256(); return 0; }
static void *t512(void *x) { (void)x; sink = f512(); return 0; }

static void run(const char *name, void *(*f)(void *), int threads, double flops_per_thread) {
    pthread_t t[2];
    double s = now();
    for (int i = 0; i < threads; i++) pthread_create(&t[i], 0, f, 0);
    for (int i = 0; i < threads; i++) pthread_join(t[i], 0);
    printf("%-8s %d thread(s): %6.1f GFLOP/s\n", name, threads, threads * flops_per_thread / (now() - s) / 1e9);
}

int main(void) {
    run("AVX2", t256, 1, N * 10 * 16.0);
    run("AVX2", t256, 2, N * 10 * 16.0);
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        run("AVX-512", t512, 1, N * 10 * 32.0);
        run("AVX-512", t512, 2, N * 10 * 32.0);
    }
    return 0;
}
