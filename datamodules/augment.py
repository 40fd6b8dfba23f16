"""Training augmentation on the CPU: one fused gather (mirror + colour jitter), and where the jitter runs.

:func:`datamodules.windows.cut_windows` draws every window's flip and (brightness, contrast,
saturation) factors in the worker; the pixels change when the window's k frames are gathered into a
batch. On the CPU that gather is :func:`gather_frames`: a small C kernel (:data:`GATHER_SOURCE`,
compiled on first use with the system's C compiler and cached on disk, like ``torch.compile``'s
C++ code) that copies each context frame from its decoded episode into the batch, mirrored and
jittered in the same pass, 16 or 32 pixels at a time: an order of magnitude less than numpy's
separate jitter and mirror passes (a negative-stride copy of 3-byte pixels; timings in
``docs/experiments.md``). The jitter is :func:`datamodules.windows.colour_jitter`'s map, in 16-bit
fixed point for the shipped strengths and in float32 beyond them: every pixel within one level of the
exact map, and of numpy's float32 result (a few per cent of pixels round the other way).
Without a C compiler (or with ``S2E_GATHER_KERNEL=0``) the same batches come from numpy, 10-20x
slower, and the loader says so once in the log.

Where the colour jitter runs (``NavWindowLoader(colour_jitter=...)``, the data module's
``colour_jitter_on``):

- ``"loader"`` (the CPU default): in the consuming process's batch gather, fused with the copy
  that gathering makes anyway. Workers send each decoded episode once; no pixel is touched twice.
- ``"workers"``: the worker gathers and jitters each window's frames itself (:func:`jittered_clips`,
  the same kernel) and sends the finished clips; the consumer copies (and mirrors) them into
  batches. Keeps the jitter's CPU time off the training process, at the price of a second copy of
  every output frame and k frames of shared memory per window instead of sharing the episode's.
- ``"batch"``: the worker sends the episode untouched together with the factors
  (:func:`defer_colour_jitter`); every batch carries them as ``batch["colour_jitter"]`` [B, 3] and
  :func:`apply_colour_jitter` runs where the batch lives: on the accelerator after transfer
  (``NavVideoDataModule.on_after_batch_transfer``) it is a handful of elementwise kernels.

Flips are the same everywhere: the gather mirrors the frames, ``collate_windows`` the waypoints and
the goal; the jitter (a per-pixel map and a per-frame mean) commutes with a mirror.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import itertools
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Optional, Sequence

import numpy as np
import torch

from datamodules.windows import LUMA, EpisodeWindows, Window, colour_jitter

log = logging.getLogger(__name__)

JitterPlacement = Literal["loader", "workers", "batch"]
JITTER_PLACEMENTS: tuple[str, ...] = ("loader", "workers", "batch")

#: Windows per clip tensor a worker sends in the "workers" placement. A tensor lives until the
#: shuffle buffer has let go of its last window, so small chunks keep memory near
#: shuffle_buffer x k frames; each tensor is one shared-memory segment to hand over, so not too small.
WORKER_CLIP_CHUNK = 32


# ------------------------------------------------------------------------------------- the kernel

#: The fused gather, in C. Frames are RGB-interleaved uint8 [h, w, 3]; SIMD paths for SSSE3 and
#: AVX2 (deinterleave 16 pixels into R, G, B planes with byte shuffles, mirror a plane with one
#: more shuffle, jitter in int16 or float32 lanes, interleave back), plain C for the other CPUs and
#: the pixels left over at a row's end; both paths do the same operations, so a pixel does not
#: depend on where in a row it falls. The map is ``colour_jitter``'s with the grey's weights folded
#: into the saturation term: in 16-bit fixed point where a window's factors keep the sums in range
#: (the shipped strengths always do; within one level of the exact map, see ``coef_fixed``), else
#: in float32 with multiply-adds fused where the CPU has FMA (within a float32 rounding of numpy's
#: result). ``-ffp-contract=off`` leaves only the explicit fusions.
GATHER_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__SSSE3__)
#include <immintrin.h>
#define S2E_SIMD 1
#else
#define S2E_SIMD 0
#endif

/* y = A*x + (B*grey(x) + C), A = b*c*s, B = b*c*(1-s), C = (1-c)*b*mean(grey): colour_jitter's map;
   Br, Bg, Bb = B times the grey's weights. fixed: the same map in 16-bit fixed point (below). */
typedef struct { float A, B, C, Br, Bg, Bb; int fixed; int16_t qA, qBr, qBg, qBb, qC; } coef_t;
static const float LR = 0.299f, LG = 0.587f, LB = 0.114f;

/* The fixed-point map, in 32nds of a level: every product x * coefficient is
   pmulhrsw(x << 7, round(coefficient * 8192)) = round(32 * x * coefficient), summed with
   round(32 * C) in int16 and rounded to a level, half to even. Each product is off by at most
   1/64 + 255/16384 of a level, so a pixel stays within one level of the exact map and differs
   from the float path's rounding of it in a few per cent of pixels, as often up as down. It is
   exact integer arithmetic, the same in SIMD and plain C; sums stay in int16 when
   (|A| + |B|) * 255 + |C| <= 1000, which the shipped strengths (factors 0.8-1.2: at most 575)
   meet; other draws take the float path. Twice the lanes of float32 and no conversions: the
   jitter costs about half. */
#define FIXED_LIMIT 1000.0f
static inline int16_t q13(float v) { return (int16_t)lrintf(v * 8192.0f); }
static void coef_fixed(coef_t *q) {
    q->fixed = (fabsf(q->A) + fabsf(q->B)) * 255.0f + fabsf(q->C) <= FIXED_LIMIT;
    if (q->fixed) { q->qA = q13(q->A); q->qBr = q13(q->Br); q->qBg = q13(q->Bg); q->qBb = q13(q->Bb); q->qC = (int16_t)lrintf(q->C * 32.0f); }
}
static inline int32_t mulhrs(int32_t x7, int32_t c) { return (x7 * c + 0x4000) >> 15; } /* pmulhrsw */

static inline uint8_t to_u8(float y) {
    y = nearbyintf(y); /* half to even, as np.rint */
    return (uint8_t)(y < 0.0f ? 0.0f : (y > 255.0f ? 255.0f : y));
}

#if defined(__FMA__)
#define MADD(x, m, a) fmaf(x, m, a)
#else
#define MADD(x, m, a) ((x) * (m) + (a))
#endif
/* the grey's weights carry B: t = B*grey(x) + C in three multiply-adds */
static inline uint8_t level(int32_t y32) {
    int32_t y = (y32 + 15 + ((y32 >> 5) & 1)) >> 5; /* half to even */
    return (uint8_t)(y < 0 ? 0 : (y > 255 ? 255 : y));
}
static inline void pixel(uint8_t *o, const uint8_t *s, const coef_t *q) {
    if (q->fixed) {
        int32_t r = s[0] << 7, g = s[1] << 7, b = s[2] << 7;
        int32_t t = mulhrs(r, q->qBr) + mulhrs(g, q->qBg) + mulhrs(b, q->qBb) + q->qC;
        o[0] = level(mulhrs(r, q->qA) + t);
        o[1] = level(mulhrs(g, q->qA) + t);
        o[2] = level(mulhrs(b, q->qA) + t);
        return;
    }
    float r = s[0], g = s[1], b = s[2];
    float t = MADD(r, q->Br, MADD(g, q->Bg, MADD(b, q->Bb, q->C)));
    o[0] = to_u8(MADD(r, q->A, t));
    o[1] = to_u8(MADD(g, q->A, t));
    o[2] = to_u8(MADD(b, q->A, t));
}

#if S2E_SIMD
/* 16-pixel blocks (48 bytes). With AVX2 two blocks ride in the two 128-bit lanes of a register;
   every shuffle, unpack and pack below acts per lane, so the same masks serve both. */
static const int8_t DM[3][3][16] = { /* plane c <- register j */
    {{0,3,6,9,12,15,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1}, {-1,-1,-1,-1,-1,-1,2,5,8,11,14,-1,-1,-1,-1,-1}, {-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,1,4,7,10,13}},
    {{1,4,7,10,13,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1}, {-1,-1,-1,-1,-1,0,3,6,9,12,15,-1,-1,-1,-1,-1}, {-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,2,5,8,11,14}},
    {{2,5,8,11,14,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1}, {-1,-1,-1,-1,-1,1,4,7,10,13,-1,-1,-1,-1,-1,-1}, {-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,0,3,6,9,12,15}}};
static const int8_t IM[3][3][16] = { /* register j <- plane c */
    {{0,-1,-1,1,-1,-1,2,-1,-1,3,-1,-1,4,-1,-1,5}, {-1,0,-1,-1,1,-1,-1,2,-1,-1,3,-1,-1,4,-1,-1}, {-1,-1,0,-1,-1,1,-1,-1,2,-1,-1,3,-1,-1,4,-1}},
    {{-1,-1,6,-1,-1,7,-1,-1,8,-1,-1,9,-1,-1,10,-1}, {5,-1,-1,6,-1,-1,7,-1,-1,8,-1,-1,9,-1,-1,10}, {-1,5,-1,-1,6,-1,-1,7,-1,-1,8,-1,-1,9,-1,-1}},
    {{-1,11,-1,-1,12,-1,-1,13,-1,-1,14,-1,-1,15,-1,-1}, {-1,-1,11,-1,-1,12,-1,-1,13,-1,-1,14,-1,-1,15,-1}, {10,-1,-1,11,-1,-1,12,-1,-1,13,-1,-1,14,-1,-1,15}}};
static const int8_t REV[16] = {15,14,13,12,11,10,9,8,7,6,5,4,3,2,1,0};

#if defined(__AVX2__)
typedef __m256i V;
typedef __m256 F;
#define BLOCK 32
#define MASK(p) _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(p)))
#define ZERO() _mm256_setzero_si256()
#define SHUF _mm256_shuffle_epi8
#define OR _mm256_or_si256
#define UNPACKLO8 _mm256_unpacklo_epi8
#define UNPACKHI8 _mm256_unpackhi_epi8
#define UNPACKLO16 _mm256_unpacklo_epi16
#define UNPACKHI16 _mm256_unpackhi_epi16
#define PACK32 _mm256_packus_epi32
#define PACKUS16 _mm256_packus_epi16
#define TOF _mm256_cvtepi32_ps
#define TOI _mm256_cvtps_epi32
#define FSET _mm256_set1_ps
#define FMUL _mm256_mul_ps
#define FADD _mm256_add_ps
#if defined(__FMA__)
#define FMADD _mm256_fmadd_ps
#endif
#define SET16 _mm256_set1_epi16
#define ADD16 _mm256_add_epi16
#define MULHRS _mm256_mulhrs_epi16
#define SLLI16 _mm256_slli_epi16
#define SRAI16 _mm256_srai_epi16
#define AND _mm256_and_si256
static inline V load2(const uint8_t *lo, const uint8_t *hi) {
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)lo)), _mm_loadu_si128((const __m128i *)hi), 1);
}
static inline void store2(uint8_t *lo, uint8_t *hi, V v) {
    _mm_storeu_si128((__m128i *)lo, _mm256_castsi256_si128(v));
    _mm_storeu_si128((__m128i *)hi, _mm256_extracti128_si256(v, 1));
}
#else
typedef __m128i V;
typedef __m128 F;
#define BLOCK 16
#define MASK(p) _mm_loadu_si128((const __m128i *)(p))
#define ZERO() _mm_setzero_si128()
#define SHUF _mm_shuffle_epi8
#define OR _mm_or_si128
#define UNPACKLO8 _mm_unpacklo_epi8
#define UNPACKHI8 _mm_unpackhi_epi8
#define UNPACKLO16 _mm_unpacklo_epi16
#define UNPACKHI16 _mm_unpackhi_epi16
#define PACK32 _mm_packs_epi32 /* no packus_epi32 before SSE4.1; rounded values fit int16 */
#define PACKUS16 _mm_packus_epi16
#define TOF _mm_cvtepi32_ps
#define TOI _mm_cvtps_epi32
#define FSET _mm_set1_ps
#define FMUL _mm_mul_ps
#define FADD _mm_add_ps
#if defined(__FMA__)
#define FMADD _mm_fmadd_ps
#endif
#define SET16 _mm_set1_epi16
#define ADD16 _mm_add_epi16
#define MULHRS _mm_mulhrs_epi16
#define SLLI16 _mm_slli_epi16
#define SRAI16 _mm_srai_epi16
#define AND _mm_and_si128
static inline V load2(const uint8_t *lo, const uint8_t *hi) { (void)hi; return _mm_loadu_si128((const __m128i *)lo); }
static inline void store2(uint8_t *lo, uint8_t *hi, V v) { (void)hi; _mm_storeu_si128((__m128i *)lo, v); }
#endif

#if !defined(FMADD)
#define FMADD(x, m, a) FADD(FMUL(x, m), a)
#endif
typedef struct { V d[3][3], i[3][3], rev, zero, qA, qBr, qBg, qBb, qC, half, one; F A, C, Br, Bg, Bb; int fixed; } vconst_t;

static void vconst_init(vconst_t *k, const coef_t *q) {
    for (int c = 0; c < 3; c++)
        for (int j = 0; j < 3; j++) { k->d[c][j] = MASK(DM[c][j]); k->i[c][j] = MASK(IM[c][j]); }
    k->rev = MASK(REV);
    k->zero = ZERO();
    k->fixed = q && q->fixed;
    if (q) { k->A = FSET(q->A); k->C = FSET(q->C); k->Br = FSET(q->Br); k->Bg = FSET(q->Bg); k->Bb = FSET(q->Bb); }
    if (k->fixed) { k->qA = SET16(q->qA); k->qBr = SET16(q->qBr); k->qBg = SET16(q->qBg); k->qBb = SET16(q->qBb); k->qC = SET16(q->qC); k->half = SET16(15); k->one = SET16(1); }
}

/* level() on int16 lanes of 32nds */
static inline V levels(V y, const vconst_t *k) { return SRAI16(ADD16(ADD16(y, k->half), AND(SRAI16(y, 5), k->one)), 5); }
/* pixel()'s fixed-point ops on 8 (AVX2: 16) pixels held as int16 lanes */
static inline void jitter_fixed(V *r, V *g, V *b, const vconst_t *k) {
    V r7 = SLLI16(*r, 7), g7 = SLLI16(*g, 7), b7 = SLLI16(*b, 7);
    V t = ADD16(ADD16(MULHRS(r7, k->qBr), MULHRS(g7, k->qBg)), ADD16(MULHRS(b7, k->qBb), k->qC));
    *r = levels(ADD16(MULHRS(r7, k->qA), t), k);
    *g = levels(ADD16(MULHRS(g7, k->qA), t), k);
    *b = levels(ADD16(MULHRS(b7, k->qA), t), k);
}

/* pixel()'s float ops on 4 (AVX2: 8) pixels held as int32 lanes; cvtps rounds half to even */
static inline void jitter_lanes(V *r, V *g, V *b, const vconst_t *k) {
    F fr = TOF(*r), fg = TOF(*g), fb = TOF(*b);
    F t = FMADD(fr, k->Br, FMADD(fg, k->Bg, FMADD(fb, k->Bb, k->C)));
    *r = TOI(FMADD(fr, k->A, t));
    *g = TOI(FMADD(fg, k->A, t));
    *b = TOI(FMADD(fb, k->A, t));
}

static inline void block(uint8_t *out0, uint8_t *out1, const uint8_t *in0, const uint8_t *in1, int flip, int jitter, const vconst_t *k) {
    V v0 = load2(in0, in1), v1 = load2(in0 + 16, in1 + 16), v2 = load2(in0 + 32, in1 + 32);
    V p[3];
    for (int c = 0; c < 3; c++) p[c] = OR(OR(SHUF(v0, k->d[c][0]), SHUF(v1, k->d[c][1])), SHUF(v2, k->d[c][2]));
    if (flip)
        for (int c = 0; c < 3; c++) p[c] = SHUF(p[c], k->rev);
    if (jitter && k->fixed) {
        V w[3][2]; /* plane c, half h, as int16 lanes */
        for (int c = 0; c < 3; c++) { w[c][0] = UNPACKLO8(p[c], k->zero); w[c][1] = UNPACKHI8(p[c], k->zero); }
        for (int h = 0; h < 2; h++) jitter_fixed(&w[0][h], &w[1][h], &w[2][h], k);
        for (int c = 0; c < 3; c++) p[c] = PACKUS16(w[c][0], w[c][1]); /* clamps to [0, 255] */
    } else if (jitter) {
        V w[3][4]; /* plane c, quarter q, as int32 lanes */
        for (int c = 0; c < 3; c++) {
            V lo = UNPACKLO8(p[c], k->zero), hi = UNPACKHI8(p[c], k->zero);
            w[c][0] = UNPACKLO16(lo, k->zero); w[c][1] = UNPACKHI16(lo, k->zero);
            w[c][2] = UNPACKLO16(hi, k->zero); w[c][3] = UNPACKHI16(hi, k->zero);
        }
        for (int q = 0; q < 4; q++) jitter_lanes(&w[0][q], &w[1][q], &w[2][q], k);
        for (int c = 0; c < 3; c++) p[c] = PACKUS16(PACK32(w[c][0], w[c][1]), PACK32(w[c][2], w[c][3])); /* clamps to [0, 255] */
    }
    for (int j = 0; j < 3; j++) store2(out0 + 16 * j, out1 + 16 * j, OR(OR(SHUF(p[0], k->i[j][0]), SHUF(p[1], k->i[j][1])), SHUF(p[2], k->i[j][2])));
}
#endif

/* Mean grey of n pixels, from exact per-channel sums. */
static float mean_grey(const uint8_t *s, int64_t n) {
    uint64_t acc[3] = {0, 0, 0};
    int64_t p = 0;
#if S2E_SIMD
    static const int8_t keep[3][3][16] = { /* channel c, register j, byte b: kept when (16j + b) % 3 == c */
        {{-1,0,0,-1,0,0,-1,0,0,-1,0,0,-1,0,0,-1}, {0,0,-1,0,0,-1,0,0,-1,0,0,-1,0,0,-1,0}, {0,-1,0,0,-1,0,0,-1,0,0,-1,0,0,-1,0,0}},
        {{0,-1,0,0,-1,0,0,-1,0,0,-1,0,0,-1,0,0}, {-1,0,0,-1,0,0,-1,0,0,-1,0,0,-1,0,0,-1}, {0,0,-1,0,0,-1,0,0,-1,0,0,-1,0,0,-1,0}},
        {{0,0,-1,0,0,-1,0,0,-1,0,0,-1,0,0,-1,0}, {0,-1,0,0,-1,0,0,-1,0,0,-1,0,0,-1,0,0}, {-1,0,0,-1,0,0,-1,0,0,-1,0,0,-1,0,0,-1}}};
    __m128i m[3][3], tot[3], z = _mm_setzero_si128();
    for (int c = 0; c < 3; c++) {
        tot[c] = z;
        for (int j = 0; j < 3; j++) m[c][j] = _mm_loadu_si128((const __m128i *)keep[c][j]);
    }
    for (; p + 16 <= n; p += 16) {
        const uint8_t *b = s + 3 * p;
        __m128i v[3] = {_mm_loadu_si128((const __m128i *)b), _mm_loadu_si128((const __m128i *)(b + 16)), _mm_loadu_si128((const __m128i *)(b + 32))};
        for (int c = 0; c < 3; c++)
            for (int j = 0; j < 3; j++) tot[c] = _mm_add_epi64(tot[c], _mm_sad_epu8(_mm_and_si128(v[j], m[c][j]), z));
    }
    for (int c = 0; c < 3; c++) acc[c] = (uint64_t)_mm_cvtsi128_si64(tot[c]) + (uint64_t)_mm_cvtsi128_si64(_mm_unpackhi_epi64(tot[c], tot[c]));
#endif
    for (; p < n; p++) { acc[0] += s[3 * p]; acc[1] += s[3 * p + 1]; acc[2] += s[3 * p + 2]; }
    return (float)((LR * (double)acc[0] + LG * (double)acc[1] + LB * (double)acc[2]) / (double)n);
}

/* One frame of h rows of w pixels: o = jitter(mirror(s)); q NULL: no jitter. */
static void frame(uint8_t *o, const uint8_t *s, int64_t h, int64_t w, int flip, const coef_t *q) {
    int64_t x0 = 0;
#if S2E_SIMD
    vconst_t k;
    vconst_init(&k, q);
    int64_t blocks = w / BLOCK * BLOCK;
    for (int64_t y = 0; y < h; y++) {
        const uint8_t *row = s + 3 * y * w;
        uint8_t *orow = o + 3 * y * w;
        for (int64_t x = 0; x < blocks; x += BLOCK) {
            if (flip) block(orow + 3 * x, orow + 3 * (x + 16), row + 3 * (w - x - 16), row + 3 * (w - x - 32), 1, q != 0, &k);
            else block(orow + 3 * x, orow + 3 * (x + 16), row + 3 * x, row + 3 * (x + 16), 0, q != 0, &k);
        }
    }
    x0 = blocks;
#endif
    for (int64_t y = 0; y < h; y++) {
        const uint8_t *row = s + 3 * y * w;
        uint8_t *orow = o + 3 * y * w;
        for (int64_t x = x0; x < w; x++) {
            const uint8_t *px = row + 3 * (flip ? w - 1 - x : x);
            if (q) pixel(orow + 3 * x, px, q);
            else { orow[3 * x] = px[0]; orow[3 * x + 1] = px[1]; orow[3 * x + 2] = px[2]; }
        }
    }
}

/* Window i of n is row i of table [n, 4 + k] int64: its episode's frames ([T, h, w, 3] uint8) at
   table[i][0], T at table[i][1], flip at table[i][2], a float32 [T] cache of the episode's mean greys
   at table[i][3] (0: none; NaN entries are computed and stored, so a frame shared by windows is
   averaged once), then the k frame indices. out[i, f] = frame f of window i, mirrored where flip,
   jittered by factors[i] = (brightness, contrast, saturation) unless factors is NULL or factors[i, 0]
   is NaN. Returns 1 (SIMD) or 0 (plain C), or -1 - i when window i indexes outside its episode
   (checked before anything is written). */
int s2e_gather_windows(int64_t n, int64_t k, int64_t h, int64_t w, const int64_t *table, const float *factors, uint8_t *out) {
    int64_t size = h * w * 3, cols = 4 + k;
    for (int64_t i = 0; i < n; i++)
        for (int64_t f = 0; f < k; f++)
            if (table[i * cols + 4 + f] < 0 || table[i * cols + 4 + f] >= table[i * cols + 1]) return (int)(-1 - i);
    for (int64_t i = 0; i < n; i++) {
        const int64_t *row = table + i * cols;
        const uint8_t *episode = (const uint8_t *)(uintptr_t)row[0];
        float *cache = (float *)(uintptr_t)row[3];
        int flip = row[2] != 0;
        for (int64_t f = 0; f < k; f++) {
            int64_t t = row[4 + f];
            const uint8_t *s = episode + t * size;
            uint8_t *o = out + (i * k + f) * size;
            if (factors && !isnan(factors[3 * i])) {
                float mean = cache && !isnan(cache[t]) ? cache[t] : mean_grey(s, h * w);
                if (cache) cache[t] = mean;
                float b = factors[3 * i], c = factors[3 * i + 1], sat = factors[3 * i + 2];
                coef_t q = {b * c * sat, b * c * (1.0f - sat), mean * b * (1.0f - c), 0, 0, 0, 0, 0, 0, 0, 0, 0};
                q.Br = q.B * LR; q.Bg = q.B * LG; q.Bb = q.B * LB;
                coef_fixed(&q);
                frame(o, s, h, w, flip, &q);
            } else if (flip) {
                frame(o, s, h, w, 1, 0);
            } else {
                memcpy(o, s, (size_t)size);
            }
        }
    }
    return S2E_SIMD;
}
"""

#: Compiler flag sets tried in order: tuned for this CPU (AVX2 where it has it), then portable.
_FLAG_SETS = (("-O3", "-march=native"), ("-O3",))
_COMMON_FLAGS = ("-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC")

_kernel_lock = threading.Lock()
_kernel: Optional[Callable[..., int]] = None
_kernel_tried = False
_kernel_info = "not loaded"


def _cache_dirs() -> list[Path]:
    """Where compiled kernels are kept: ``S2E_KERNEL_CACHE``, else the user's cache, else the temp dir (read-only homes)."""
    configured = os.environ.get("S2E_KERNEL_CACHE")
    if configured:
        return [Path(configured)]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [Path(base) / "s2e" / "kernels", Path(tempfile.gettempdir()) / f"s2e-kernels-{os.getuid() if hasattr(os, 'getuid') else 0}"]


def _cpu_signature() -> str:
    """What ``-march=native`` code depends on: the CPU model and feature flags (so a cache shared by machines stays safe)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f.read().splitlines() if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _compile(compiler: str, flags: Sequence[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        source = Path(tmp) / "gather.c"
        source.write_text(GATHER_SOURCE)
        built = Path(tmp) / target.name
        result = subprocess.run([compiler, *flags, *_COMMON_FLAGS, str(source), "-o", str(built)], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} {' '.join(flags)} failed: {result.stderr.strip()[-500:]}")
        os.replace(built, target)  # atomic: processes compiling at once each leave a whole library


def _load_kernel() -> tuple[Optional[Callable[..., int]], str]:
    if os.environ.get("S2E_GATHER_KERNEL", "1").strip().lower() in ("0", "false", "no", "off"):
        return None, "disabled by S2E_GATHER_KERNEL=0"
    compiler = os.environ.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if compiler is None:
        return None, "no C compiler found (cc, gcc or clang; or set CC)"
    errors = []
    for flags, cache in itertools.product(_FLAG_SETS, _cache_dirs()):
        key = hashlib.sha256("\n".join([GATHER_SOURCE, compiler, *flags, *_COMMON_FLAGS, platform.machine(), _cpu_signature()]).encode()).hexdigest()[:20]
        target = cache / f"s2e_gather_{key}.so"
        try:
            if not target.exists():
                _compile(compiler, flags, target)
            fn = ctypes.CDLL(str(target)).s2e_gather_windows
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_void_p] * 3
            simd = _probe(fn)
        except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as exc:
            errors.append(str(exc))
            continue
        return fn, f"{target.name} ({' '.join(flags)}, {'SIMD' if simd else 'no SIMD'})"
    return None, "; ".join(errors)


def _probe(fn: Callable[..., int]) -> int:
    """Run the kernel once on a tiny frame (a library that loads but cannot run fails here, not in a worker)."""
    frame = np.arange(3, dtype=np.uint8).reshape(1, 1, 1, 3)
    out = np.zeros_like(frame)
    table = np.array([[frame.ctypes.data, 1, 0, 0, 0]], np.int64)
    simd = fn(1, 1, 1, 1, table.ctypes.data, None, out.ctypes.data)
    if simd < 0 or not np.array_equal(out, frame):
        raise RuntimeError("the compiled gather gives wrong pixels")
    return simd


def gather_kernel() -> Optional[Callable[..., int]]:
    """The compiled gather of this process (compiled or loaded from the disk cache on the first call), or None.

    None means every gather runs in numpy (:func:`_gather_numpy`); why is logged once and kept in
    :func:`gather_kernel_info`.
    """
    global _kernel, _kernel_tried, _kernel_info
    if _kernel_tried:
        return _kernel
    with _kernel_lock:
        if not _kernel_tried:
            try:
                _kernel, _kernel_info = _load_kernel()
            except Exception as exc:  # noqa: BLE001 - any toolchain surprise: numpy is always there
                _kernel, _kernel_info = None, f"{type(exc).__name__}: {exc}"
            if _kernel is None:
                log.warning("the compiled frame gather is unavailable (%s): flips and colour jitter run in numpy, 10-20x slower", _kernel_info)
            else:
                log.debug("compiled frame gather: %s", _kernel_info)
            _kernel_tried = True
    return _kernel


def gather_kernel_info() -> str:
    """Which gather this process uses: the cached library and its flags, or why numpy."""
    gather_kernel()
    return _kernel_info


# -------------------------------------------------------------------------------------- gathering


def gather_frames(
    out: torch.Tensor,
    sources: Sequence[torch.Tensor],
    source: np.ndarray,
    indices: np.ndarray,
    flip: np.ndarray,
    factors: Optional[np.ndarray],
    grey_means: Optional[Sequence[Optional[torch.Tensor]]] = None,
) -> None:
    """Fill ``out`` [n, k, H, W, 3] uint8 with window i's frames ``indices[i]`` of ``sources[source[i]]`` ([T, H, W, 3] uint8).

    Window i's frames are mirrored left-right where ``flip[i]`` and jittered by ``factors[i]``
    (brightness, contrast, saturation; a NaN row or ``factors`` None: no jitter) as
    :func:`datamodules.windows.colour_jitter` defines it. ``grey_means[j]`` (optional) is a float32
    [T] cache of source j's per-frame mean grey, NaN where not yet known: the kernel fills it in
    (:func:`episode_grey_means`). An index outside its episode raises IndexError before anything
    is written.
    """
    n, k = indices.shape
    if tuple(out.shape[:2]) != (n, k) or any(s.shape[1:] != out.shape[2:] for s in sources):
        raise ValueError(f"frames {[tuple(s.shape) for s in sources]} and indices {indices.shape} do not fill a batch of {tuple(out.shape)}")
    if n == 0:
        return
    kernel = gather_kernel()
    usable = kernel is not None and out.dtype == torch.uint8 and out.is_contiguous() and out.device.type == "cpu"
    usable = usable and all(s.dtype == torch.uint8 and s.is_contiguous() and s.device.type == "cpu" for s in sources)
    if not usable:
        lengths = np.array([len(s) for s in sources], np.int64)[source]
        if (indices < 0).any() or (indices >= lengths[:, None]).any():
            raise IndexError("a frame index lies outside its episode")
        _gather_numpy(out.numpy(), sources, source, indices, flip, factors)
        return
    per_source = np.array([[s.data_ptr(), len(s), 0] for s in sources], np.int64)
    if factors is not None and grey_means is not None:
        per_source[:, 2] = [m.data_ptr() if m is not None else 0 for m in grey_means]
    table = np.empty((n, 4 + k), np.int64)
    table[:, [0, 1, 3]] = per_source[source]
    table[:, 2] = flip
    table[:, 4:] = indices
    fac = None if factors is None else np.ascontiguousarray(factors, np.float32)
    result = kernel(n, k, out.shape[2], out.shape[3], table.ctypes.data, None if fac is None else fac.ctypes.data, out.data_ptr())
    if result < 0:
        raise IndexError(f"window {-1 - result} has a frame index outside its episode")


def _gather_numpy(
    out: np.ndarray, sources: Sequence[torch.Tensor], source: np.ndarray, indices: np.ndarray, flip: np.ndarray, factors: Optional[np.ndarray]
) -> None:
    """:func:`gather_frames` without the compiled kernel: one numpy copy per frame, then :func:`colour_jitter` per window."""
    arrays = [s.numpy() for s in sources]
    indices = np.asarray(indices, np.int64)
    for slot, j in enumerate(source.tolist()):
        frames = arrays[j][:, :, ::-1] if flip[slot] else arrays[j]
        for dst, index in zip(out[slot], indices[slot].tolist()):
            dst[...] = frames[index]
        if factors is not None and not np.isnan(factors[slot, 0]):
            colour_jitter(out[slot], *factors[slot].tolist())


def episode_grey_means(windows: EpisodeWindows) -> torch.Tensor:
    """The episode's per-frame mean-grey cache for :func:`gather_frames` (float32 [T], NaN until computed).

    Kept on the frames tensor, so the slices an episode arrives in share it (an attribute, not a
    dataclass field: it never travels between processes).
    """
    frames = windows.frames
    cached = getattr(frames, "_s2e_grey_means", None)
    if cached is None:
        cached = torch.full((len(frames),), float("nan"), dtype=torch.float32)
        frames._s2e_grey_means = cached
    return cached


# ------------------------------------------------------------------------------------- placements


@dataclass
class DeferredJitterWindows(EpisodeWindows):
    """Windows whose jitter factors travel with the batch instead of being applied by ``collate_windows``.

    ``jitter`` is None (so collation leaves the pixels alone); ``colour_jitter`` holds the [n, 3]
    factors that :func:`batch_colour_jitter` puts into the batch.
    """

    colour_jitter: Optional[np.ndarray] = None


def defer_colour_jitter(windows: EpisodeWindows) -> EpisodeWindows:
    """The same windows with their jitter moved out of collation and into the batch ("batch" placement)."""
    if windows.jitter is None:
        return windows
    values = {f.name: getattr(windows, f.name) for f in dataclasses.fields(EpisodeWindows)}
    values["jitter"] = None
    return DeferredJitterWindows(**values, colour_jitter=windows.jitter)


def jittered_clips(
    windows: EpisodeWindows, allocate: Optional[Callable[[tuple[int, ...]], torch.Tensor]] = None, chunk: int = WORKER_CLIP_CHUNK
) -> Iterator[EpisodeWindows]:
    """The windows with their frames gathered and jittered in this process ("workers" placement).

    Each chunk of windows becomes an :class:`EpisodeWindows` whose frames are the jittered clips
    (window i's k frames at rows i*k .. i*k+k-1, one gather per chunk into a tensor made by
    ``allocate``: shared memory in a DataLoader worker), with no jitter left to apply. Flips stay
    with the rows: the consumer's ``collate_windows`` mirrors frames, waypoints and goal while it
    copies, as for any window. Windows without jitter pass through: their frames stay shared.
    """
    if windows.jitter is None:
        yield windows
        return
    k = windows.frame_indices.shape[1]
    per_row = [f.name for f in dataclasses.fields(EpisodeWindows) if f.name not in ("frames", "jitter", "key")]
    means = [episode_grey_means(windows)]
    for start in range(0, len(windows), chunk):
        rows = slice(start, min(start + chunk, len(windows)))
        n = rows.stop - start
        shape = (n * k, *windows.frames.shape[1:])
        clips = allocate(shape) if allocate is not None else torch.empty(shape, dtype=torch.uint8)
        gather_frames(
            clips.view(n, k, *shape[1:]), [windows.frames], np.zeros(n, np.int64), windows.frame_indices[rows], np.zeros(n, bool), windows.jitter[rows], means
        )
        values = {name: getattr(windows, name)[rows] for name in per_row}
        values["frame_indices"] = np.arange(n * k, dtype=np.int64).reshape(n, k)
        yield EpisodeWindows(frames=clips, jitter=None, key=windows.key, **values)


def batch_colour_jitter(windows: Sequence[Window]) -> Optional[torch.Tensor]:
    """float32 [B, 3] factors of a batch's deferred windows (1, 1, 1 for the others); None when none has any."""
    deferred = [isinstance(e, DeferredJitterWindows) and e.colour_jitter is not None for e, _ in windows]
    if not any(deferred):
        return None
    factors = np.ones((len(windows), 3), np.float32)
    for slot, ((episode, row), has) in enumerate(zip(windows, deferred)):
        if has:
            factors[slot] = episode.colour_jitter[row]
    return torch.from_numpy(factors)


def apply_colour_jitter(frames: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """uint8 frames [B, k, 3, H, W] jittered per window by factors [B, 3], where the frames are.

    The definition of ``collate_windows``' jitter (brightness x*b; contrast: blend with the frame's
    mean grey by c; saturation: blend with each pixel's grey by s; clamped and rounded once at the
    end). On the CPU that is the gather's own kernel (:func:`gather_frames`, each window's frames
    from the batch itself); on an accelerator, :func:`_jitter_tensor`. The result keeps the
    frames' memory layout (channels-last from the loader).
    """
    if frames.device.type != "cpu":
        return _jitter_tensor(frames, factors)
    clips = frames.permute(0, 1, 3, 4, 2)  # [B, k, H, W, 3]: the loader's memory, a view
    if not clips.is_contiguous():
        raise ValueError("frames must have the loader's channels-last memory ([B, k, H, W, 3] contiguous)")
    batch, k = clips.shape[:2]
    out = torch.empty_like(clips)
    source = clips.reshape(batch * k, *clips.shape[2:])
    gather_frames(
        out,
        [source],
        np.zeros(batch, np.int64),
        np.arange(batch * k, dtype=np.int64).reshape(batch, k),
        np.zeros(batch, bool),
        factors.to(torch.float32).numpy(),
    )
    return out.permute(0, 1, 4, 2, 3)


def _jitter_tensor(frames: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """:func:`apply_colour_jitter` as elementwise tensor kernels, in float32, for accelerators."""
    x = frames.to(torch.float32)
    b, c, s = (f.view(-1, 1, 1, 1, 1) for f in factors.to(device=x.device, dtype=torch.float32).unbind(-1))
    luma = torch.tensor(LUMA, device=x.device, dtype=torch.float32).view(1, 1, 3, 1, 1)
    grey = (x * luma).sum(2, keepdim=True)  # [B, k, 1, H, W]
    mean = grey.mean(dim=(-2, -1), keepdim=True) * b  # mean grey after brightness, per frame
    y = x * (b * c * s) + grey * (b * c * (1 - s)) + mean * (1 - c)
    out = torch.empty_like(frames)
    out.copy_(y.clamp_(0, 255).round_())
    return out
