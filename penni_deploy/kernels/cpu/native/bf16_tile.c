/* The bf16 GEMM micro-kernel of penni-deploy's x86 dense layers (``compile --precision bf16``).
 *
 * TVM 0.27's LLVM backend cannot emit ``vdpbf16ps``: TIR legalizes every bfloat16 value to float32
 * before code generation, and the intrinsic takes <32 x bfloat> vectors. So the one instruction-level
 * loop lives here, in C, and the TIR kernel (kernels/cpu/gemm.py) keeps everything around it:
 * tasks, threads, panels, weight packing, the epilogue. It is linked into every CPU artifact beside
 * the thread pool, and loaded into the compiling process for in-memory builds (native.py).
 *
 * Operands are pairs of bf16 values packed in 32 bits (element 2k in the low half, 2k+1 in the high
 * half), the layout vdpbf16ps reads: per 32-bit lane it adds a_lo·b_lo + a_hi·b_hi to a float32
 * accumulator, the products exact and the sum rounded to float32.
 *
 *   C[i, j] = sum over p < kpairs of  dot2(A[p·lda + i], B[p·ldb + j])     i < rows <= 8, j < cols <= 48
 *
 * stored at c[i·row_stride + j·col_stride] (col_stride 1: vector stores; else scattered, for the
 * channels orientation, whose tile is transposed in the output).
 *
 * The conv's epilogue is applied to the registers before the store (``flags``): + bias (per row i or
 * per column j: the output channel's axis), + residual (read at c's offsets in its own array), then
 * ReLU: no second pass over the stored tile. The residual's lines (192-byte pieces 12.5 KB apart in
 * ResNet50's 56×56 stage) are prefetched before the K loop, so that they arrive while it runs. Measured on ResNet50 bf16 (znver5, 2 threads): the residual
 * layers of its first stage 0.38 -> 0.20 ms each in the profile, the whole model within noise.
 */
#include <immintrin.h>
#include <stdint.h>

/* Every loop over rows and vectors is unrolled (accumulators must stay in registers), by pragma:
 * export_library compiles this file with plain -O2. */
#define PENNI_TILE_ROWS 8
#define PENNI_TILE_VECTORS 3

/* ``flags`` bits; the values are mirrored in kernels/cpu/bf16.py. */
enum { BF16_RELU = 1, BF16_BIAS_ROWS = 2, BF16_BIAS_COLS = 4, BF16_RESIDUAL = 8 };

/* Prefetch the lines of ``base[i·row_stride + j·col_stride]`` that the tile's store will read. */
__attribute__((always_inline)) static inline void
prefetch_tile(const float* base, int rows, int32_t cols, int32_t row_stride, int32_t col_stride) {
  if (col_stride == 1) {
    for (int i = 0; i < rows; i++)
      for (int32_t j = 0; j < cols; j += 16) __builtin_prefetch(base + (int64_t)i * row_stride + j, 0, 3);
  } else {  /* row_stride 1 here: each column's rows are adjacent floats */
    for (int32_t j = 0; j < cols; j++) __builtin_prefetch(base + (int64_t)j * col_stride, 0, 3);
  }
}

__attribute__((target("avx512f,avx512bf16"), always_inline)) static inline void
tile_rows(int rows_const, const uint32_t* a, int32_t lda, const uint32_t* b, int32_t ldb, int32_t kpairs,
          int32_t cols, float* c, int32_t row_stride, int32_t col_stride, const float* bias,
          const float* residual, int32_t flags) {
  /* rows_const is a literal at every call site, so each instance is fully unrolled over rows. */
  __m512 acc[PENNI_TILE_ROWS][PENNI_TILE_VECTORS];
  const int vectors = (cols + 15) / 16;
  __mmask16 last = (__mmask16)(cols % 16 == 0 ? 0xFFFF : (1u << (cols % 16)) - 1);
  if (flags & BF16_RESIDUAL) prefetch_tile(residual, rows_const, cols, row_stride, col_stride);
#pragma GCC unroll 8
  for (int i = 0; i < rows_const; i++)
#pragma GCC unroll 3
    for (int v = 0; v < PENNI_TILE_VECTORS; v++) acc[i][v] = _mm512_setzero_ps();
  if (cols == 16 * PENNI_TILE_VECTORS) {  /* the full tile: no masks */
    for (int32_t p = 0; p < kpairs; p++) {
      const uint32_t* bp = b + (int64_t)p * ldb;
      __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp), b1 = (__m512bh)_mm512_loadu_si512(bp + 16),
               b2 = (__m512bh)_mm512_loadu_si512(bp + 32);
      const uint32_t* ap = a + (int64_t)p * lda;
#pragma GCC unroll 8
      for (int i = 0; i < rows_const; i++) {
        __m512bh ai = (__m512bh)_mm512_set1_epi32((int)ap[i]);
        acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
        acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
        acc[i][2] = _mm512_dpbf16_ps(acc[i][2], ai, b2);
      }
    }
  } else {
    for (int32_t p = 0; p < kpairs; p++) {
      const uint32_t* bp = b + (int64_t)p * ldb;
      __m512bh bv[PENNI_TILE_VECTORS];
#pragma GCC unroll 3
      for (int v = 0; v < PENNI_TILE_VECTORS; v++)
        bv[v] = (__m512bh)(v < vectors ? _mm512_maskz_loadu_epi32(v == vectors - 1 ? last : 0xFFFF, bp + 16 * v)
                                       : _mm512_setzero_si512());
      const uint32_t* ap = a + (int64_t)p * lda;
#pragma GCC unroll 8
      for (int i = 0; i < rows_const; i++) {
        __m512bh ai = (__m512bh)_mm512_set1_epi32((int)ap[i]);
#pragma GCC unroll 3
        for (int v = 0; v < PENNI_TILE_VECTORS; v++)
          if (v < vectors) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], ai, bv[v]);
      }
    }
  }
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i offsets = _mm512_mullo_epi32(lane, _mm512_set1_epi32(col_stride));
  const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 8
  for (int i = 0; i < rows_const; i++) {
    for (int v = 0; v < vectors; v++) {
      __mmask16 m = v == vectors - 1 ? last : 0xFFFF;
      const int64_t at = (int64_t)i * row_stride + (int64_t)16 * v * col_stride;
      __m512 value = acc[i][v];
      if (flags & BF16_BIAS_ROWS) value = _mm512_add_ps(value, _mm512_set1_ps(bias[i]));
      if (flags & BF16_BIAS_COLS) value = _mm512_add_ps(value, _mm512_maskz_loadu_ps(m, bias + 16 * v));
      if (flags & BF16_RESIDUAL)
        value = _mm512_add_ps(value, col_stride == 1 ? _mm512_maskz_loadu_ps(m, residual + at)
                                                     : _mm512_mask_i32gather_ps(zero, m, offsets, residual + at, 4));
      if (flags & BF16_RELU) value = _mm512_max_ps(value, zero);
      if (col_stride == 1)
        _mm512_mask_storeu_ps(c + at, m, value);
      else
        _mm512_mask_i32scatter_ps(c + at, m, offsets, value, 4);
    }
  }
}

#ifdef __cplusplus
extern "C"  /* export_library compiles addons as C++ */
#endif
__attribute__((target("avx512f,avx512bf16"))) int32_t
penni_bf16_tile(const uint32_t* a, int32_t lda, const uint32_t* b, int32_t ldb, int32_t kpairs, int32_t rows,
                int32_t cols, float* c, int32_t row_stride, int32_t col_stride, const float* bias,
                const float* residual, int32_t flags) {
  if ((flags & BF16_BIAS_ROWS) && (flags & BF16_BIAS_COLS)) return -1;
  if (rows < 1 || rows > PENNI_TILE_ROWS || cols < 1 || cols > 16 * PENNI_TILE_VECTORS) return -1;
  switch (rows) {
    case 8: tile_rows(8, a, lda, b, ldb, kpairs, cols, c, row_stride, col_stride, bias, residual, flags); break;
    case 7: tile_rows(7, a, lda, b, ldb, kpairs, cols, c, row_stride, col_stride, bias, residual, flags); break;
    case 6: tile_rows(6, a, lda, b, ldb, kpairs, cols, c, row_stride, col_stride, bias, residual, flags); break;
    case 5: tile_rows(5, a, lda, b, ldb, kpairs, cols, c, row_stride, col_stride, bias, residual, flags); break;
    case 4: tile_rows(4, a, lda, b, ldb, kpairs, cols, c, row_stride, col_stride, bias, residual, flags); break;
    case 3: tile_rows(3, a, lda, b, ldb, kpairs, cols, c, row_stride, col_stride, bias, residual, flags); break;
    case 2: tile_rows(2, a, lda, b, ldb, kpairs, cols, c, row_stride, col_stride, bias, residual, flags); break;
    default: tile_rows(1, a, lda, b, ldb, kpairs, cols, c, row_stride, col_stride, bias, residual, flags); break;
  }
  return 0;
}
