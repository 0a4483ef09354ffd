/* This host's instruction peaks and the bf16 GEMM micro-kernel's rate, one core (the numbers in
 * benchmarks/cpu/bf16/resnet50-random95-epilogue-znver5.txt):
 *
 *   cc -O2 benchmarks/bf16_tile_peak.c -o /tmp/peak && /tmp/peak
 *
 * 1. vdpbf16ps and 512-bit FMA peaks: 24 independent accumulators, so throughput, not latency, binds.
 * 2. penni_bf16_tile (8 x 48 tile, no epilogue) over Cout = 256 for K pairs 32..1024, operands
 *    resident in L1/L2: what the micro-kernel reaches when memory is not in the way. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "../penni_deploy/kernels/cpu/native/bf16_tile.c"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

__attribute__((target("avx512f,avx512bf16"))) static void instruction_peaks(void) {
  const long n = 50000000;
  __m512 acc[24];
  for (int i = 0; i < 24; i++) acc[i] = _mm512_setzero_ps();
  __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80), b = (__m512bh)_mm512_set1_epi32(0x3f803f81);
  double t = now();
  for (long k = 0; k < n; k++) {
#pragma GCC unroll 24
    for (int i = 0; i < 24; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
    __asm__ volatile("" : "+v"(a));  /* keeps the loop from being folded */
  }
  double dt = now() - t;
  float sink = 0;
  for (int i = 0; i < 24; i++) sink += acc[i][0];
  printf("vdpbf16ps: %.1f GMAC/s per core\n", n * 24.0 * 32 / dt / 1e9);
  __m512 x = _mm512_set1_ps(1.0001f), y = _mm512_set1_ps(0.9999f);
  for (int i = 0; i < 24; i++) acc[i] = _mm512_setzero_ps();
  t = now();
  for (long k = 0; k < n; k++) {
#pragma GCC unroll 24
    for (int i = 0; i < 24; i++) acc[i] = _mm512_fmadd_ps(x, y, acc[i]);
    __asm__ volatile("" : "+v"(x));
  }
  dt = now() - t;
  for (int i = 0; i < 24; i++) sink += acc[i][0];
  printf("vfmadd (512-bit fp32): %.1f GMAC/s per core (sink %g)\n", n * 24.0 * 16 / dt / 1e9, sink);
}

static void tile_rate(int kpairs, int cout) {
  const int cols = 48, reps = 1000;
  uint32_t* w = aligned_alloc(64, (size_t)cout * kpairs * 4);
  uint32_t* p = aligned_alloc(64, (size_t)kpairs * cols * 4);
  float* c = aligned_alloc(64, (size_t)cout * cols * 4);
  for (size_t i = 0; i < (size_t)cout * kpairs; i++) w[i] = 0x3f803f80u;
  for (size_t i = 0; i < (size_t)kpairs * cols; i++) p[i] = 0x3f803f80u;
  double best = 1e30;
  for (int r = 0; r < 5; r++) {
    double t = now();
    for (int n = 0; n < reps; n++)
      for (int ob = 0; ob < cout / 8; ob++)
        penni_bf16_tile(w + (size_t)ob * kpairs * 8, 8, p, cols, kpairs, 8, cols, c + ob * 8 * cols, cols, 1, c, c, 0);
    double dt = now() - t;
    if (dt < best) best = dt;
  }
  printf("penni_bf16_tile, K pairs %4d, Cout %d (panel %3zu KB): %.1f GMAC/s per core\n", kpairs, cout,
         (size_t)kpairs * cols * 4 / 1024, (double)reps * cout * cols * kpairs * 2 / best / 1e9);
  free(w), free(p), free(c);
}

int main(void) {
  instruction_peaks();
  for (int kpairs = 32; kpairs <= 1024; kpairs *= 2) tile_rate(kpairs, 256);
  return 0;
}
