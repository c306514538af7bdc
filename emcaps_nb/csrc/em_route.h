// emcaps_nb CPU kernel: EM routing of one problem, forward (M-step and E-step of notebooks 02 and 03).
#pragma once

#include "em_common.h"
namespace emcaps {

// One iteration on one problem: the M-step from the assignments R (I x O), then, if X is given, the E-step's logits
// X_ij = ln a_j + ln p_ij = ln max(a_j, tiny) - sum_h ln sigma_j^h - sum_h (v_ij^h - mu_j^h)^2 / 2 (sigma_j^h)^2, before
// their normalisation. mu, var, A (and the rest of the iteration's state, into st if given) are left in b. With damping,
// mu = (1 - damping) mu_hat + damping mp, mp the previous iteration's mean (nullptr: 0); mp may be b.mu itself.
template <typename T, int HC>
void iter_forward(const Shape& s, const T* __restrict V, const T* __restrict a, const T* __restrict bv,
                  const T* __restrict ba, T lam, T eps, T tiny, T mass, const T* __restrict R, T* __restrict st,
                  T* __restrict X, Buffers<T>& b, const T* mp = nullptr) {
  const int64_t I = s.I, O = s.O, H = HC ? HC : s.H;
  T *c = b.c.data(), *mu = b.mu.data(), *var = b.var.data(), *cd = b.cd.data(), *w = b.w.data(), *L = b.L.data(),
    *A = b.A.data(), *S = b.S.data(), *cost = b.cost.data(), *la = b.la.data(), *x = b.x.data(), *rho = b.rho.data();
  // M-step. r'_ij = R_ij a_i;  S_j = sum_i r'_ij;  c_ij = r'_ij / max(S_j, mass rho_j, tiny), rho_j = sum_i R_ij
  std::fill(S, S + O, T(0));
  std::fill(rho, rho + O, T(0));
  for (int64_t i = 0; i < I; ++i)
    for (int64_t j = 0; j < O; ++j) {
      S[j] += (c[i * O + j] = R[i * O + j] * a[i]);
      rho[j] += R[i * O + j];
    }
  for (int64_t j = 0; j < O; ++j) x[j] = T(1) / mass_floor(S[j], rho[j], mass, tiny);
  for (int64_t i = 0; i < I; ++i)
    for (int64_t j = 0; j < O; ++j) c[i * O + j] *= x[j];
  // mu_j^h = sum_i c_ij v_ij^h (into mh first when damped, since mp may be mu)
  const bool damped = s.damping != 0;
  T* acc = damped ? b.mh.data() : mu;
  std::fill(acc, acc + O * H, T(0));
  for (int64_t i = 0; i < I; ++i)
    for (int64_t j = 0; j < O; ++j) {
      const T cij = c[i * O + j];
      const T* v = V + (i * O + j) * H;
      T* m = acc + j * H;
      for (int64_t h = 0; h < H; ++h) m[h] += cij * v[h];
    }
  if (damped) {
    const T dp = T(s.damping);
    for (int64_t k = 0; k < O * H; ++k) mu[k] = (T(1) - dp) * acc[k] + (mp ? dp * mp[k] : T(0));
  }
  // (sigma_j^h)^2 = sum_i c_ij (v_ij^h - mu_j^h)^2, centred; and sum_i c_ij (v_ij^h - mu_j^h), which is 0 up to
  // rounding and is kept because the backward pass needs its rounded value
  moments<T, HC>(s, V, mu, c, cd, var);
  // cost_j = S_j sum_h (beta_v + ln sigma_j^h). The article: a_j = sigmoid(lambda (beta_a + (mean cost - cost_j) / std
  // cost)); the paper: a_j = sigmoid(lambda (beta_a - cost_scale cost_j))
  T cm = 0;
  for (int64_t j = 0; j < O; ++j) {
    T sum = 0;
    for (int64_t h = 0; h < H; ++h) {
      L[j * H + h] = std::log(var[j * H + h] + eps);
      sum += bv[j] + T(0.5) * L[j * H + h];
    }
    cost[j] = sum * S[j];
    cm += cost[j];
  }
  cm /= T(O);
  T sd = 1;
  if (s.cost == COST_PAPER) {
    const T cs = T(s.cost_scale);
    for (int64_t j = 0; j < O; ++j) A[j] = sigmoid(lam * (ba[j] - cs * cost[j]));
  } else {
    T cv = 0;
    for (int64_t j = 0; j < O; ++j) cv += (cost[j] - cm) * (cost[j] - cm);
    sd = std::sqrt(std::max(cv / T(O), T(s.spread)));  // the costs' variance, floored
    for (int64_t j = 0; j < O; ++j) A[j] = sigmoid(lam * (ba[j] + (cm - cost[j]) / sd));
  }
  if (st) {
    T* p = st;
    p = std::copy(R, R + I * O, p);
    p = std::copy(mu, mu + O * H, p);
    p = std::copy(var, var + O * H, p);
    p = std::copy(cd, cd + O * H, p);
    p = std::copy(A, A + O, p);
    p = std::copy(S, S + O, p);
    p = std::copy(cost, cost + O, p);
    p[0] = cm;
    p[1] = sd;
  }
  if (!X) return;
  // E-step logits
  for (int64_t j = 0; j < O; ++j) {
    T sum = 0;
    for (int64_t h = 0; h < H; ++h) {
      w[j * H + h] = T(0.5) / (var[j * H + h] + eps);
      sum += L[j * H + h];
    }
    la[j] = std::log(std::max(A[j], tiny)) - T(0.5) * sum;
  }
  for (int64_t i = 0; i < I; ++i)
    for (int64_t j = 0; j < O; ++j) {
      const T *v = V + (i * O + j) * H, *m = mu + j * H, *ww = w + j * H;
      T q = 0;
      for (int64_t h = 0; h < H; ++h) {
        const T d = v[h] - m[h];
        q += d * d * ww[h];
      }
      X[i * O + j] = la[j] - q;
    }
}

// EM routing of one problem, every iteration: R_ij = 1/O, then M-step, E-step (R_ij = softmax_j X_ij), ..., M-step.
template <typename T, int HC>
void route_one(const Shape& s, const T* __restrict V, const T* __restrict a, const T* __restrict bv,
               const T* __restrict ba, const double* lambdas, T eps, T tiny, T mass, T* __restrict mu_out, T* __restrict a_out,
               T* __restrict st, Buffers<T>& b) {
  const int64_t I = s.I, O = s.O, H = HC ? HC : s.H;
  T *R = b.R.data(), *X = b.X.data();
  std::fill(R, R + I * O, T(1) / T(O));  // R_ij = 1/O
  for (int t = 0; t < s.iters; ++t) {
    const bool last = t == s.iters - 1;
    iter_forward<T, HC>(s, V, a, bv, ba, T(lambdas[t]), eps, tiny, mass, R, st ? st + t * iter_state(s) : nullptr,
                        last ? nullptr : X, b, t ? b.mu.data() : nullptr);
    if (last) break;
    for (int64_t i = 0; i < I; ++i) {  // softmax over the parents of each input
      T mx = -INFINITY, z = 0;
      T* x = X + i * O;
      for (int64_t j = 0; j < O; ++j) mx = std::max(mx, x[j]);
      for (int64_t j = 0; j < O; ++j) z += (x[j] = std::exp(x[j] - mx));
      for (int64_t j = 0; j < O; ++j) R[i * O + j] = x[j] / z;
    }
  }
  std::copy(b.mu.data(), b.mu.data() + O * H, mu_out);
  std::copy(b.A.data(), b.A.data() + O, a_out);
}

}  // namespace emcaps
