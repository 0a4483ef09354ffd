/* The int8 conv of penni-deploy's x86 builds (``compile --precision int8``): one tile of output rows.
 *
 * ``vpdpbusd`` multiplies four unsigned bytes by four signed bytes and adds the four products to a
 * 32-bit lane. The reduction axis is cut into quads of four input channels at one kernel tap, so the
 * activations are stored channel-quad interleaved ("NCHW4c": one uint32 holds channels 4c..4c+3 of a
 * pixel). A tap's 16 output pixels are then 16 consecutive words of that layout (stride 1): one load,
 * no im2col. Per tile:
 *
 *   1. quantize the input rows the tile reads into ``xq[quad][row][col]`` (padded with the zero point,
 *      so padding and channels past Cin read as the real value 0):  q = clamp(rint(fma(x, 1/s, zp)), 0, 255)
 *      (x/s + zp rounded to float32 once, then to the nearest integer, ties to even); or, when the
 *      previous layer already wrote the input quantized (Q8_QUADS_IN), copy its rows of words;
 *   2. for each block of four output channels, run over the weight quads any of them uses (sparse:
 *      CSR over (channel quad, tap)), four channels x four vectors of 16 pixels in registers;
 *   3. epilogue:  y = (acc - comp[o]) * scale[o] + bias[o] (+ residual) (ReLU),  comp[o] = zp * sum(w[o]),
 *      the residual float32 or (Q8_RESIDUAL_QUADS) the words another layer wrote, dequantized;
 *      stored as float32 and/or (Q8_QUADS_OUT) quantized as step 1 does it for the next layer: the
 *      register block's four channels are one channel quad, so each vector of 16 pixels becomes 16
 *      words of the next layer's input, and that layer skips step 1's conversion.
 *
 * The arithmetic is exact integer arithmetic up to the float epilogue; tests compare it with NumPy.
 * The tile is C, like the bf16 micro-kernel, because it is made of exact instruction choices (the
 * saturating packs and byte shuffle of the quad interleave, vpdpbusd, the two-load permutes of
 * stride 2) around a data-dependent quad list; the TIR kernel (kernels/cpu/int8.py) owns tasks,
 * threads and scratch.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

/* geometry, as the int32 array the TIR kernel passes (kernels/cpu/int8.py: GEOMETRY_FIELDS) */
enum { G_CIN, G_H, G_W, G_KH, G_KW, G_SH, G_SW, G_PH, G_PW, G_DH, G_DW, G_HO, G_WO, G_COUT, G_ROW_WORDS, G_FIELDS };

/* The register block of step 2: output channels x vectors of 16 pixels (int8.py mirrors both). */
#define PENNI_Q8_OUTPUTS 4
#define PENNI_Q8_VECTORS 4
/* Input rows one tile may read (int8.py's tiles stay far below; more is refused). */
#define PENNI_Q8_MAX_IN_ROWS 512

/* The four channels' 16 values as 16 words of uint8 codes, channel s in byte s: q = clamp(rint(fma(v,
 * 1/s, zp)), 0, 255). cvtps2dq rounds to nearest even under the default MXCSR, as np.rint does; past
 * 2^31 it would give INT_MIN, and the second pack reads signed 16 bits: values are capped first (then
 * saturate to 255). The two saturating packs clamp to [0, 255] and leave, per 128-bit lane, the four
 * channels' bytes one after the other; the byte shuffle interleaves them into one word per pixel. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), always_inline)) static inline __m512i
quantize_quad(__m512 c0, __m512 c1, __m512 c2, __m512 c3, __m512 vinv, __m512 vzpf) {
  const __m512 vcap = _mm512_set1_ps(32000.0f);
  const __m512i interleave = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
  const __m512i v0 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_fmadd_ps(c0, vinv, vzpf), vcap)),
                v1 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_fmadd_ps(c1, vinv, vzpf), vcap)),
                v2 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_fmadd_ps(c2, vinv, vzpf), vcap)),
                v3 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_fmadd_ps(c3, vinv, vzpf), vcap));
  const __m512i bytes = _mm512_packus_epi16(_mm512_packus_epi32(v0, v1), _mm512_packus_epi32(v2, v3));
  return _mm512_shuffle_epi8(bytes, interleave);
}

/* Step 1. A row holds G_ROW_WORDS words: the padded input row, or more where the tile's vectors
 * read past it (kernels/cpu/int8.py: row_words). ``x`` is the float32 image (Cin, H, W), or with
 * ``quads_in`` its words (ceil(Cin/4), H, W) as the previous layer's epilogue wrote them. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) static void
quantize_rows(const void* x, int32_t quads_in, const int32_t* g, int32_t in_y0, int32_t rows, int32_t in_rows,
              float inv_scale, int32_t zp, uint32_t* xq) {
  uint8_t read[PENNI_Q8_MAX_IN_ROWS];
  for (int32_t r = 0; r < in_rows; r++) read[r] = 0;
  for (int32_t t = 0; t < rows; t++)
    for (int32_t ky = 0; ky < g[G_KH]; ky++) read[t * g[G_SH] + ky * g[G_DH]] = 1;
  const int32_t cin = g[G_CIN], h = g[G_H], w = g[G_W], pw = g[G_PW], row_words = g[G_ROW_WORDS];
  const int32_t quads = (cin + 3) / 4;
  const uint32_t pad_word = (uint32_t)zp * 0x01010101u;
  const __m512 vinv = _mm512_set1_ps(inv_scale), vzpf = _mm512_set1_ps((float)zp);
  const __m512i vpad = _mm512_set1_epi32((int32_t)pad_word);
  /* a channel past Cin: the value 0 quantizes to the zero point (the cap keeps it exact) */
  const __m512 vzero = _mm512_setzero_ps();
  const float* xf = (const float*)x;
  const uint32_t* xw = (const uint32_t*)x;
  for (int32_t q = 0; q < quads; q++) {
    for (int32_t r = 0; r < in_rows; r++) {
      if (!read[r]) continue;  /* a row no tap reads (1×1 at stride 2): never loaded either */
      uint32_t* out = xq + ((int64_t)q * in_rows + r) * row_words;
      const int32_t iy = in_y0 + r;
      /* the whole row first (padding, and past it what wide vectors read), the image's part after */
      for (int32_t c = 0; c < row_words; c += 16)
        _mm512_mask_storeu_epi32(out + c, (__mmask16)(row_words - c >= 16 ? 0xFFFF : (1u << (row_words - c)) - 1),
                                 vpad);
      if (iy < 0 || iy >= h) continue;
      for (int32_t x0 = 0; x0 < w; x0 += 16) {
        const int32_t n = w - x0 < 16 ? w - x0 : 16;
        const __mmask16 m = (__mmask16)((1u << n) - 1);
        if (quads_in) {
          _mm512_mask_storeu_epi32(out + pw + x0, m, _mm512_maskz_loadu_epi32(m, xw + ((int64_t)q * h + iy) * w + x0));
          continue;
        }
        __m512 f[4];
        for (int32_t s = 0; s < 4; s++) {
          const int32_t ch = 4 * q + s;
          f[s] = ch < cin ? _mm512_maskz_loadu_ps(m, xf + ((int64_t)ch * h + iy) * w + x0) : vzero;
        }
        _mm512_mask_storeu_epi32(out + pw + x0, m, quantize_quad(f[0], f[1], f[2], f[3], vinv, vzpf));
      }
    }
  }
}

/* A vector slot: 16 output pixels. Rows of 16 or more columns give each slot 16 columns of one
 * row (the last masked); narrower rows put ``16 / seg`` rows in one slot, ``seg`` (8 or 4) lanes
 * each, so 8×8 and 4×4 maps still fill whole vectors. */
typedef struct {
  int32_t part[4];   /* word offset in xq of each row part (one part when seg == 16) */
  int64_t out;       /* element offset of the slot's first pixel in one output channel */
  __mmask16 mask;    /* lanes that are real pixels */
  int32_t compress;  /* the real lanes are contiguous in the output only once compressed (wo < seg) */
} Slot;

/* The slot's 16 words of quad ``at`` (at + part offsets), columns ``sw`` words apart. ``seg_const``
 * and ``sw_const`` are literals at each call site (0: not known, gather). */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), always_inline)) static inline __m512i
load_slot(int32_t seg_const, int32_t sw_const, const uint32_t* at, const Slot* slot, __m512i gather_index) {
  if (seg_const == 16 && sw_const == 1) return _mm512_loadu_si512(at + slot->part[0]);
  if (seg_const == 16 && sw_const == 2) {
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const uint32_t* p = at + slot->part[0];
    return _mm512_permutex2var_epi32(_mm512_loadu_si512(p), even, _mm512_loadu_si512(p + 16));
  }
  if (seg_const == 8 && sw_const == 1)
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(at + slot->part[0]))),
                              _mm256_loadu_si256((const __m256i*)(at + slot->part[1])), 1);
  if (seg_const == 8 && sw_const == 2) {  /* the even words of two rows' 16 */
    const __m512i evens = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    return _mm512_permutex2var_epi32(_mm512_loadu_si512(at + slot->part[0]), evens,
                                     _mm512_loadu_si512(at + slot->part[1]));
  }
  if (seg_const == 4 && sw_const == 2) {  /* the even words of four rows' 8 */
    const __m256i evens = _mm256_set_epi32(14, 12, 10, 8, 6, 4, 2, 0);
    const __m256i lo = _mm256_permutex2var_epi32(_mm256_loadu_si256((const __m256i*)(at + slot->part[0])), evens,
                                                 _mm256_loadu_si256((const __m256i*)(at + slot->part[1])));
    const __m256i hi = _mm256_permutex2var_epi32(_mm256_loadu_si256((const __m256i*)(at + slot->part[2])), evens,
                                                 _mm256_loadu_si256((const __m256i*)(at + slot->part[3])));
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
  }
  if (seg_const == 4 && sw_const == 1) {
    const __m512i lo = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i*)(at + slot->part[0])));
    __m512i v = _mm512_inserti32x4(lo, _mm_loadu_si128((const __m128i*)(at + slot->part[1])), 1);
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i*)(at + slot->part[2])), 2);
    return _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i*)(at + slot->part[3])), 3);
  }
  return _mm512_i32gather_epi32(gather_index, (const void*)at, 4);
}

enum {
  Q8_RELU = 1, Q8_BIAS = 2, Q8_RESIDUAL = 4, Q8_QUADS_IN = 8, Q8_QUADS_OUT = 16, Q8_NO_FLOAT_OUT = 32,
  Q8_RESIDUAL_QUADS = 64
};

/* The residual: float32 (Cout, Ho*Wo), or with Q8_RESIDUAL_QUADS the words (ceil(Cout/4), Ho*Wo)
 * another layer wrote, read back as (q - zero_point) * scale. */
typedef struct {
  const void* data;
  float scale;
  float zero_point;
} Residual;

/* Where and how the epilogue writes (step 3). */
typedef struct {
  float* y;           /* (Cout, Ho*Wo) float32 of this image, unless Q8_NO_FLOAT_OUT */
  uint32_t* yq;       /* (ceil(Cout/4), Ho*Wo) words of this image, with Q8_QUADS_OUT */
  float inv_scale;    /* the next layer's input quantization (Q8_QUADS_OUT) */
  float zero_point;
} Output;

/* Steps 2 and 3 for one block of PENNI_Q8_OUTPUTS output channels (from o0) and the ``n`` slots:
 * acc[u][v] = sum over the block's quads j of dot4(slot v of quad j, qw[j][u]), then the epilogue.
 * One function, so that the accumulators never leave registers (passed out through an array, GCC
 * kept them in memory). */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), always_inline)) static inline void
block_tile(int32_t seg_const, int32_t sw_const, const uint32_t* xq, const int32_t* qoff, const int32_t* qw,
           int32_t begin, int32_t end, const Slot* slots, const __m512i* gather_index, int32_t n, int32_t o0,
           int32_t cout, int64_t pixels, const int32_t* comp, const float* scale, const float* bias,
           const Residual* residual, const Output* out, int32_t flags) {
  __m512i acc[PENNI_Q8_OUTPUTS][PENNI_Q8_VECTORS];
#pragma GCC unroll 4
  for (int u = 0; u < PENNI_Q8_OUTPUTS; u++)
#pragma GCC unroll 4
    for (int v = 0; v < PENNI_Q8_VECTORS; v++) acc[u][v] = _mm512_setzero_si512();
  for (int32_t j = begin; j < end; j++) {
    const uint32_t* at = xq + qoff[j];
    const __m512i a0 = load_slot(seg_const, sw_const, at, &slots[0], gather_index[0]),
                  a1 = load_slot(seg_const, sw_const, at, &slots[1], gather_index[1]),
                  a2 = load_slot(seg_const, sw_const, at, &slots[2], gather_index[2]),
                  a3 = load_slot(seg_const, sw_const, at, &slots[3], gather_index[3]);
    const int32_t* w = qw + (int64_t)j * PENNI_Q8_OUTPUTS;
#pragma GCC unroll 4
    for (int u = 0; u < PENNI_Q8_OUTPUTS; u++) {
      const __m512i wv = _mm512_set1_epi32(w[u]);
      acc[u][0] = _mm512_dpbusd_epi32(acc[u][0], a0, wv);
      acc[u][1] = _mm512_dpbusd_epi32(acc[u][1], a1, wv);
      acc[u][2] = _mm512_dpbusd_epi32(acc[u][2], a2, wv);
      acc[u][3] = _mm512_dpbusd_epi32(acc[u][3], a3, wv);
    }
  }
  const __m512 zero = _mm512_setzero_ps();
  __m512i vcomp[PENNI_Q8_OUTPUTS];
  __m512 vscale[PENNI_Q8_OUTPUTS], vbias[PENNI_Q8_OUTPUTS];
#pragma GCC unroll 4
  for (int u = 0; u < PENNI_Q8_OUTPUTS; u++) {  /* channels past Cout: 0, which quantizes to the zero point */
    const int32_t o = o0 + u < cout ? o0 + u : o0;
    const int real = o0 + u < cout;
    vcomp[u] = _mm512_set1_epi32(real ? comp[o] : 0);
    vscale[u] = real ? _mm512_set1_ps(scale[o]) : zero;
    vbias[u] = real && (flags & Q8_BIAS) ? _mm512_set1_ps(bias[o]) : zero;
  }
  const __m512 vinv = _mm512_set1_ps(out->inv_scale), vzpf = _mm512_set1_ps(out->zero_point);
#pragma GCC unroll 4
  for (int v = 0; v < PENNI_Q8_VECTORS; v++) {
    if (v >= n) break;
    const Slot* sl = &slots[v];
    __m512 r[PENNI_Q8_OUTPUTS];
    __m512i res_words = _mm512_setzero_si512();
    if (flags & Q8_RESIDUAL_QUADS) {
      const uint32_t* at = (const uint32_t*)residual->data + (int64_t)(o0 / PENNI_Q8_OUTPUTS) * pixels + sl->out;
      res_words = sl->compress ? _mm512_maskz_expandloadu_epi32(sl->mask, at) : _mm512_maskz_loadu_epi32(sl->mask, at);
    }
    const __m512 res_scale = _mm512_set1_ps(residual->scale), res_zp = _mm512_set1_ps(residual->zero_point);
#pragma GCC unroll 4
    for (int u = 0; u < PENNI_Q8_OUTPUTS; u++) {
      const int32_t o = o0 + u;
      const int64_t at = (int64_t)o * pixels + sl->out;
      r[u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[u][v], vcomp[u])), vscale[u], vbias[u]);
      if (o >= cout) continue;
      if (flags & Q8_RESIDUAL_QUADS) {  /* byte u of each word: channel o's code */
        const __m512 code = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(res_words, 8 * u), _mm512_set1_epi32(0xFF)));
        r[u] = _mm512_fmadd_ps(_mm512_sub_ps(code, res_zp), res_scale, r[u]);
      } else if (flags & Q8_RESIDUAL) {
        const float* res = (const float*)residual->data + at;
        r[u] = _mm512_add_ps(r[u], sl->compress ? _mm512_maskz_expandloadu_ps(sl->mask, res)
                                                : _mm512_maskz_loadu_ps(sl->mask, res));
      }
      if (flags & Q8_RELU) r[u] = _mm512_max_ps(r[u], zero);
      if (flags & Q8_NO_FLOAT_OUT) continue;
      if (sl->compress)
        _mm512_mask_compressstoreu_ps(out->y + at, sl->mask, r[u]);
      else
        _mm512_mask_storeu_ps(out->y + at, sl->mask, r[u]);
    }
    if (flags & Q8_QUADS_OUT) {
      const __m512i words = quantize_quad(r[0], r[1], r[2], r[3], vinv, vzpf);
      uint32_t* at = out->yq + (int64_t)(o0 / PENNI_Q8_OUTPUTS) * pixels + sl->out;
      if (sl->compress)
        _mm512_mask_compressstoreu_epi32(at, sl->mask, words);
      else
        _mm512_mask_storeu_epi32(at, sl->mask, words);
    }
  }
}

/* One tile: output rows [y0, y0 + rows) of one image, output channel blocks [block_begin, block_end)
 * (blocks of PENNI_Q8_OUTPUTS channels; small images split their channels between tasks).
 *   x        (Cin, H, W) float32, the image
 *   xq       scratch, ceil(Cin/4) * in_rows * G_ROW_WORDS words (+ slack), in_rows = (rows-1)*sh + (kh-1)*dh + 1
 *   qptr     (ceil(Cout/4) + 1) CSR over each block of four output channels' quads (the union of
 *            the four channels' nonzero (channel quad, tap) pairs)
 *   qoff     per block quad: its word offset in xq for output row 0, column 0 (quad*in_rows*row_words
 *            + ky*dh*row_words + kx*dw)
 *   qw       per block quad: four words, the four channels' int8 weights packed (channel 4c+s in byte s)
 *   comp     (Cout) zp * sum of the channel's weights;  scale (Cout) s_x * s_w[o]
 *   bias, residual: read only when ``flags`` has Q8_BIAS / Q8_RESIDUAL; residual and y are (Cout, Ho*Wo)
 *            of this image;  Q8_RELU: max(y, 0) last
 *   Q8_QUADS_IN: ``x`` is (ceil(Cin/4), H, W) words already quantized with (inv_scale, zp);
 *   Q8_RESIDUAL_QUADS (with Q8_RESIDUAL): the residual is (ceil(Cout/4), Ho*Wo) words, each code read
 *            back as (q - res_zp) * res_scale;
 *   Q8_QUADS_OUT: the result also goes to ``yq``, (ceil(Cout/4), Ho*Wo) words quantized with
 *            (out_inv_scale, out_zp) for the next layer;  Q8_NO_FLOAT_OUT: not to ``y``
 * Returns 0, or -1 for a tile the geometry does not have. */
#ifdef __cplusplus
extern "C"  /* export_library compiles addons as C++ */
#endif
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) int32_t
penni_q8_conv_tile(const void* x, const int32_t* g, int32_t y0, int32_t rows, int32_t block_begin,
                   int32_t block_end, float inv_scale, int32_t zp, uint32_t* xq, const int32_t* qptr,
                   const int32_t* qoff, const int32_t* qw, const int32_t* comp, const float* scale,
                   const float* bias, const void* residual, float res_scale, int32_t res_zp, float* y,
                   uint32_t* yq, float out_inv_scale, int32_t out_zp, int32_t flags) {
  const int32_t kh = g[G_KH], sh = g[G_SH], sw = g[G_SW], ph = g[G_PH], dh = g[G_DH];
  const int32_t wo = g[G_WO], ho = g[G_HO], cout = g[G_COUT], row_words = g[G_ROW_WORDS];
  const int32_t blocks = (cout + PENNI_Q8_OUTPUTS - 1) / PENNI_Q8_OUTPUTS;
  if (rows < 1 || y0 < 0 || y0 + rows > ho || sw < 1 || block_begin < 0 || block_end > blocks) return -1;
  const int32_t in_rows = (rows - 1) * sh + (kh - 1) * dh + 1;
  if (in_rows > PENNI_Q8_MAX_IN_ROWS) return -1;
  quantize_rows(x, flags & Q8_QUADS_IN, g, y0 * sh - ph, rows, in_rows, inv_scale, zp, xq);
  const Output out = {y, yq, out_inv_scale, (float)out_zp};
  const Residual res = {residual, res_scale, (float)res_zp};

  const int32_t seg = wo > 8 ? 16 : wo > 4 ? 8 : 4;  /* lanes per output row in a slot */
  const int32_t per_slot = 16 / seg;                 /* output rows per slot (seg < 16) */
  const int32_t per_row = (wo + 15) / 16;            /* slots per output row (seg == 16) */
  const int32_t n_slots = seg == 16 ? rows * per_row : (rows + per_slot - 1) / per_slot;
  const int64_t pixels = (int64_t)ho * wo;
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  for (int32_t s0 = 0; s0 < n_slots; s0 += PENNI_Q8_VECTORS) {
    const int32_t n = n_slots - s0 < PENNI_Q8_VECTORS ? n_slots - s0 : PENNI_Q8_VECTORS;
    Slot slots[PENNI_Q8_VECTORS];
    __m512i gather_index[PENNI_Q8_VECTORS];
    for (int v = 0; v < PENNI_Q8_VECTORS; v++) {
      const int32_t s = s0 + (v < n ? v : 0);  /* slots past the tile repeat its first: computed, not stored */
      Slot* sl = &slots[v];
      uint32_t mask = 0;
      if (seg == 16) {
        const int32_t row = s / per_row, col = (s % per_row) * 16, left = wo - col;
        sl->part[0] = sl->part[1] = sl->part[2] = sl->part[3] = row * sh * row_words + col * sw;
        sl->out = (int64_t)(y0 + row) * wo + col;
        mask = left >= 16 ? 0xFFFFu : (1u << left) - 1;
        sl->compress = 0;
      } else {
        const int32_t row0 = s * per_slot;
        for (int k = 0; k < 4; k++) {
          const int32_t row = row0 + (k < per_slot && row0 + k < rows ? k : 0);  /* past the tile: a real row */
          sl->part[k] = row * sh * row_words;
          if (k < per_slot && row0 + k < rows) mask |= ((1u << wo) - 1) << (k * seg);
        }
        sl->out = (int64_t)(y0 + row0) * wo;
        sl->compress = wo < seg;
      }
      sl->mask = (__mmask16)mask;
      /* the general load: lane l reads part l / seg, column (l % seg) * sw */
      const __m512i part = _mm512_permutexvar_epi32(_mm512_srli_epi32(lane, seg == 16 ? 4 : seg == 8 ? 3 : 2),
                                                    _mm512_castsi128_si512(_mm_loadu_si128((const __m128i*)sl->part)));
      const __m512i column = _mm512_and_si512(lane, _mm512_set1_epi32(seg - 1));
      gather_index[v] = _mm512_add_epi32(part, _mm512_mullo_epi32(column, _mm512_set1_epi32(sw)));
    }
    for (int32_t b = block_begin; b < block_end; b++) {
      const int32_t o0 = b * PENNI_Q8_OUTPUTS, begin = qptr[b], end = qptr[b + 1];
#define PENNI_Q8_BLOCK(SEG, SW)                                                                                 \
  block_tile(SEG, SW, xq, qoff, qw, begin, end, slots, gather_index, n, o0, cout, pixels, comp, scale, bias,  \
             &res, &out, flags)
      if (seg == 16 && sw == 1)
        PENNI_Q8_BLOCK(16, 1);
      else if (seg == 16 && sw == 2)
        PENNI_Q8_BLOCK(16, 2);
      else if (seg == 8 && sw == 1)
        PENNI_Q8_BLOCK(8, 1);
      else if (seg == 8 && sw == 2)
        PENNI_Q8_BLOCK(8, 2);
      else if (seg == 4 && sw == 1)
        PENNI_Q8_BLOCK(4, 1);
      else if (seg == 4 && sw == 2)
        PENNI_Q8_BLOCK(4, 2);
      else
        PENNI_Q8_BLOCK(0, 0);
#undef PENNI_Q8_BLOCK
    }
  }
  return 0;
}
