// emcaps_nb CPU kernel: votes v_ij = M_i W_ij (+ coordinate offsets), EM routing (Procedure 1 of the
// article), and the backward pass of both, one routing problem (one image position) at a time, so that
// the problem's votes (I x O x H numbers, 590 KB for ConvCaps1) stay in the core's cache from the first
// M-step to the last gradient.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

#include "em_args.h"

namespace emcaps {

struct Shape {
  int64_t I, O, H, P, Iw;  // inputs, outputs (parents), pose entries H = P*P, rows of W (input i uses W[i % Iw])
  int iters;               // routing iterations
  int cost;                // COST_ARTICLE or COST_PAPER
  double cost_scale;       // the paper's cost is multiplied by it (the layers' parents/children rule)
  double spread;           // the article's cost: floor under the variance of the costs across parents (a max)
  double damping;          // mu = (1 - damping) mu_hat + damping mu_prev (the official code's 0.1; 0: none)
};

// What one iteration keeps for the backward pass: R (I*O), mu, var, sum_i c d (O*H each), a, S, cost (O), mean and
// std of the costs (2 numbers).
inline int64_t iter_state(const Shape& s) { return s.I * s.O + 3 * s.O * s.H + 3 * s.O + 2; }

template <typename T>
struct Buffers {  // one per thread, reused for every problem it handles
  std::vector<T> V, gV, R, X, gX, c, gR, gq, gc, x, mu, mh, var, cd, w, L, A, S, cost, la, inv, gmu, gp, gvar, gL, gw, gqd, gA,
      gla, gS, rho, grho;
  void init(const Shape& s, bool fused, bool backward) {
    const int64_t IO = s.I * s.O, OH = s.O * s.H;
    if (fused) V.resize(IO * s.H);
    if (fused && backward) gV.resize(IO * s.H);
    for (auto* v : {&R, &X, &gX, &c, &gR, &gq, &gc}) v->resize(IO);
    for (auto* v : {&mu, &mh, &var, &cd, &w, &L, &gmu, &gp, &gvar, &gL, &gw, &gqd}) v->resize(OH);
    for (auto* v : {&x, &A, &S, &cost, &la, &inv, &gA, &gla, &gS, &rho, &grho}) v->resize(s.O);
  }
};

// sum_i w_ij d_ij^h and sum_i w_ij (d_ij^h)^2 with d_ij = v_ij - mu_j: the centred moments the M-step (w = c) and the
// E-step's backward pass (w = its gradient of q) both need
template <typename T, int HC>
void moments(const Shape& s, const T* __restrict V, const T* __restrict mu, const T* __restrict w, T* __restrict wd,
             T* __restrict wdd) {
  const int64_t O = s.O, H = HC ? HC : s.H;
  std::fill(wd, wd + O * H, T(0));
  std::fill(wdd, wdd + O * H, T(0));
  for (int64_t i = 0; i < s.I; ++i)
    for (int64_t j = 0; j < O; ++j) {
      const T wij = w[i * O + j];
      const T *v = V + (i * O + j) * H, *m = mu + j * H;
      T *p1 = wd + j * H, *p2 = wdd + j * H;
      for (int64_t h = 0; h < H; ++h) {
        const T d = v[h] - m[h], wdh = wij * d;
        p1[h] += wdh;
        p2[h] += wdh * d;
      }
    }
}

// The mass that divides in the M-step (notebook 02): D_j = max(S_j, mass rho_j, tiny), rho_j = sum_i R_ij
template <typename T> inline T mass_floor(T S, T rho, T mass, T tiny) { return std::max(std::max(S, mass * rho), tiny); }

template <typename T> inline T sigmoid(T z) {
  if (z >= 0) return T(1) / (T(1) + std::exp(-z));
  const T e = std::exp(z);
  return e / (T(1) + e);
}

}  // namespace emcaps
