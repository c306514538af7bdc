// emcaps_nb CPU kernel: the votes and their gradient.
#pragma once

#include "em_common.h"
namespace emcaps {

// V[i, o, p, r] = sum_q M[i, p, q] W[i % Iw, o, q, r] + off[i, p, r]
template <typename T, int HC>
void votes_one(const Shape& s, const T* __restrict M, const T* __restrict W, const T* __restrict off, T* __restrict V) {
  const int64_t O = s.O, H = HC ? HC : s.H, P = HC == 16 ? 4 : s.P;
  for (int64_t i = 0; i < s.I; ++i) {
    const T* m = M + i * H;
    const T* Wi = W + (i % s.Iw) * O * H;
    for (int64_t o = 0; o < O; ++o) {
      const T* w = Wi + o * H;
      T* v = V + (i * O + o) * H;
      for (int64_t p = 0; p < P; ++p)
        for (int64_t r = 0; r < P; ++r) {
          T acc = off ? off[i * H + p * P + r] : T(0);
          for (int64_t q = 0; q < P; ++q) acc += m[p * P + q] * w[q * P + r];
          v[p * P + r] = acc;
        }
    }
  }
}

// gM[i, p, q] = sum_{o, r} gV[i, o, p, r] W[i % Iw, o, q, r];  gW[i % Iw, o, q, r] += sum_p M[i, p, q] gV[i, o, p, r]
template <typename T, int HC>
void votes_backward_one(const Shape& s, const T* __restrict M, const T* __restrict W, const T* __restrict gV,
                        T* __restrict gM, T* __restrict gW) {
  const int64_t O = s.O, H = HC ? HC : s.H, P = HC == 16 ? 4 : s.P;
  for (int64_t i = 0; i < s.I; ++i) {
    const T* m = M + i * H;
    T* gm = gM + i * H;
    const int64_t iw = i % s.Iw;
    std::fill(gm, gm + H, T(0));
    for (int64_t o = 0; o < O; ++o) {
      const T* w = W + (iw * O + o) * H;
      const T* g = gV + (i * O + o) * H;
      T* gw = gW + (iw * O + o) * H;
      for (int64_t p = 0; p < P; ++p)
        for (int64_t q = 0; q < P; ++q) {
          T acc = 0;
          for (int64_t r = 0; r < P; ++r) acc += g[p * P + r] * w[q * P + r];
          gm[p * P + q] += acc;
        }
      for (int64_t q = 0; q < P; ++q)
        for (int64_t r = 0; r < P; ++r) {
          T acc = 0;
          for (int64_t p = 0; p < P; ++p) acc += m[p * P + q] * g[p * P + r];
          gw[q * P + r] += acc;
        }
    }
  }
}

}  // namespace emcaps
