// emcaps_nb CPU kernel: the backward pass of EM routing, derived by hand (notebook 04a).
#pragma once

#include "em_common.h"
namespace emcaps {

// Backward of one iteration (iter_forward) on one problem, from its saved state st. In: b.gmu and b.gA, the gradients
// of the iteration's mu and a; GX, the gradient of its E-step logits X (nullptr if it made none). Out: gV, ga, gbv, gba
// accumulated; b.gR, the gradient of the iteration's R; b.gA zeroed, and b.gmu zeroed, or with damping the gradient of
// the previous iteration's mean (mu = (1 - damping) mu_hat + damping mu_prev).
template <typename T, int HC>
void iter_backward(const Shape& s, const T* __restrict V, const T* __restrict a, const T* __restrict bv, T lam, T eps,
                   T tiny, T mass, const T* __restrict st, const T* __restrict GX, T* __restrict gV, T* __restrict ga,
                   T* __restrict gbv, T* __restrict gba, Buffers<T>& b) {
  const int64_t I = s.I, O = s.O, H = HC ? HC : s.H;
  T *gR = b.gR.data(), *gq = b.gq.data(), *c = b.c.data(), *gc = b.gc.data(), *gmu = b.gmu.data(),
    *gvar = b.gvar.data(), *gL = b.gL.data(), *gw = b.gw.data(), *gqd = b.gqd.data(), *gA = b.gA.data(),
    *gla = b.gla.data(), *gS = b.gS.data(), *inv = b.inv.data(), *rho = b.rho.data(), *grho = b.grho.data();
  const T *R = st, *mu = R + I * O, *var = mu + O * H, *cd = var + O * H, *A = cd + O * H, *S = A + O,
          *cost = S + O;
  const T cm = cost[O], sd = cost[O + 1];
  const bool estep = GX != nullptr;
  std::fill(gL, gL + O * H, T(0));
  if (estep) {
    // x_ij = ln a_j - sum_h L_jh / 2 - q_ij
    std::fill(gla, gla + O, T(0));
    for (int64_t i = 0; i < I; ++i)
      for (int64_t j = 0; j < O; ++j) {
        const T gx = GX[i * O + j];
        gq[i * O + j] = -gx;
        gla[j] += gx;
      }
    for (int64_t j = 0; j < O; ++j) {
      if (A[j] > tiny) gA[j] += gla[j] / A[j];  // ln max(a_j, tiny)
      for (int64_t h = 0; h < H; ++h) gL[j * H + h] = T(-0.5) * gla[j];
    }
  }
  if (s.cost == COST_PAPER) {  // a_j = sigmoid(z_j), z_j = lambda (beta_a - cost_scale cost_j)
    for (int64_t j = 0; j < O; ++j) {
      const T gz = gA[j] * A[j] * (T(1) - A[j]);
      gba[j] += lam * gz;
      gS[j] = -lam * T(s.cost_scale) * gz;  // gcost_j
    }
  } else {  // a_j = sigmoid(z_j), z_j = lambda (beta_a + u_j), u_j = -k_j / sd, k_j = cost_j - mean cost
    T sgk = 0;
    for (int64_t j = 0; j < O; ++j) {
      const T gz = gA[j] * A[j] * (T(1) - A[j]);
      gba[j] += lam * gz;
      gS[j] = lam * gz;  // gu_j for now
      sgk += gS[j] * (cost[j] - cm);
    }
    // sd = sqrt(max(mean k^2, SPREAD)): where the floor binds, sd is a constant
    T cv = 0;
    for (int64_t j = 0; j < O; ++j) cv += (cost[j] - cm) * (cost[j] - cm);
    if (cv / T(O) < T(s.spread)) sgk = 0;
    T gkm = 0;
    for (int64_t j = 0; j < O; ++j) {
      gS[j] = -gS[j] / sd + sgk * (cost[j] - cm) / (T(O) * sd * sd * sd);  // gk_j
      gkm += gS[j];
    }
    gkm /= T(O);
    for (int64_t j = 0; j < O; ++j) gS[j] = gS[j] - gkm;  // gcost_j
  }
  // cost_j = S_j (H beta_v + sum_h L_jh / 2), L = ln(var + eps)
  for (int64_t j = 0; j < O; ++j) {
    const T gcost = gS[j];
    T lsum = 0;
    for (int64_t h = 0; h < H; ++h) {
      lsum += std::log(var[j * H + h] + eps);
      gL[j * H + h] += T(0.5) * gcost * S[j];
      gvar[j * H + h] = gL[j * H + h] / (var[j * H + h] + eps);
    }
    gbv[j] += gcost * S[j] * T(H);
    gS[j] = gcost * (T(H) * bv[j] + T(0.5) * lsum);
  }
  std::fill(rho, rho + O, T(0));
  for (int64_t i = 0; i < I; ++i)
    for (int64_t j = 0; j < O; ++j) rho[j] += R[i * O + j];
  for (int64_t j = 0; j < O; ++j) inv[j] = T(1) / mass_floor(S[j], rho[j], mass, tiny);
  for (int64_t i = 0; i < I; ++i)
    for (int64_t j = 0; j < O; ++j) c[i * O + j] = R[i * O + j] * a[i] * inv[j];
  if (estep) {
    // q_ij = sum_h w_jh d_ijh^2, w = 1 / 2 (var + eps):  gw_jh = sum_i gq_ij d^2,  sum_i gD^E = 2 w sum_i gq_ij d
    moments<T, HC>(s, V, mu, gq, gqd, gw);
    for (int64_t k = 0; k < O * H; ++k) {
      const T ve = var[k] + eps;
      gvar[k] -= gw[k] * T(0.5) / (ve * ve);
      gqd[k] *= T(1) / ve;
    }
  }
  // d = v - mu, gD = 2 d (gq w + gvar c):  gmu_total = gmu - sum_i gD = gmu - sum_i gD^E - 2 gvar sum_i c d
  for (int64_t k = 0; k < O * H; ++k) gmu[k] -= (estep ? gqd[k] : T(0)) + T(2) * gvar[k] * cd[k];
  // damped: mu = (1 - damping) mu_hat + damping mu_prev; what follows needs the gradient of mu_hat
  const bool damped = s.damping != 0;
  T* gp = b.gp.data();
  if (damped)
    for (int64_t k = 0; k < O * H; ++k) {
      gp[k] = T(s.damping) * gmu[k];
      gmu[k] *= T(1) - T(s.damping);
    }
  // gV += gD + c gmu_total;  gc_ij = sum_h (gvar d^2 + gmu_total v)
  for (int64_t i = 0; i < I; ++i)
    for (int64_t j = 0; j < O; ++j) {
      const T cij = c[i * O + j], gqw = estep ? gq[i * O + j] : T(0);
      const T *v = V + (i * O + j) * H, *m = mu + j * H, *gv = gvar + j * H, *gm = gmu + j * H, *ve = var + j * H;
      T* out = gV + (i * O + j) * H;
      T acc = 0;
      for (int64_t h = 0; h < H; ++h) {
        const T d = v[h] - m[h];
        out[h] += T(2) * d * (gqw * T(0.5) / (ve[h] + eps) + gv[h] * cij) + cij * gm[h];
        acc += gv[h] * d * d + gm[h] * v[h];
      }
      gc[i * O + j] = acc;
    }
  // c_ij = r'_ij / D_j, D_j = max(S_j, mass rho_j, tiny), S_j = sum_i r'_ij, r'_ij = R_ij a_i, rho_j = sum_i R_ij: the
  // gradient of D_j goes to S_j or to rho_j, whichever is the max (neither when tiny is)
  std::fill(gla, gla + O, T(0));
  for (int64_t i = 0; i < I; ++i)
    for (int64_t j = 0; j < O; ++j) gla[j] += gc[i * O + j] * c[i * O + j];
  for (int64_t j = 0; j < O; ++j) {
    const T fl = mass * rho[j];
    grho[j] = 0;
    if (S[j] >= fl && S[j] > tiny) gS[j] -= gla[j] * inv[j];
    else if (fl > S[j] && fl > tiny) grho[j] = -gla[j] * inv[j] * mass;
  }
  for (int64_t i = 0; i < I; ++i) {
    T gai = 0;
    for (int64_t j = 0; j < O; ++j) {
      const T gr = gc[i * O + j] * inv[j] + gS[j];
      gai += gr * R[i * O + j];
      gR[i * O + j] = gr * a[i] + grho[j];
    }
    ga[i] += gai;
  }
  if (damped) std::copy(gp, gp + O * H, gmu);
  else std::fill(gmu, gmu + O * H, T(0));
  std::fill(gA, gA + O, T(0));
}

// Backward of route_one from its saved state, iteration by iteration in reverse. gV, ga, gbv, gba are overwritten.
template <typename T, int HC>
void route_backward_one(const Shape& s, const T* __restrict V, const T* __restrict a, const T* __restrict bv,
                        const double* lambdas, T eps, T tiny, T mass, const T* __restrict st, const T* __restrict gmu_in,
                        const T* __restrict gA_in, T* __restrict gV, T* __restrict ga, T* __restrict gbv,
                        T* __restrict gba, Buffers<T>& b) {
  const int64_t I = s.I, O = s.O, H = HC ? HC : s.H, P = iter_state(s);
  T *gR = b.gR.data(), *gX = b.gX.data();
  std::fill(gV, gV + I * O * H, T(0));
  std::fill(ga, ga + I, T(0));
  std::fill(gbv, gbv + O, T(0));
  std::fill(gba, gba + O, T(0));
  std::copy(gmu_in, gmu_in + O * H, b.gmu.data());  // the outputs are the last iteration's mu and a
  std::copy(gA_in, gA_in + O, b.gA.data());
  for (int t = s.iters - 1; t >= 0; --t) {
    const T* GX = nullptr;
    if (t < s.iters - 1) {  // this iteration's E-step made R of iteration t + 1, whose gradient is gR
      // softmax over parents: gx_ij = R'_ij (gR_ij - sum_k R'_ik gR_ik)
      const T* Rn = st + (t + 1) * P;
      for (int64_t i = 0; i < I; ++i) {
        T dot = 0;
        for (int64_t j = 0; j < O; ++j) dot += Rn[i * O + j] * gR[i * O + j];
        for (int64_t j = 0; j < O; ++j) gX[i * O + j] = Rn[i * O + j] * (gR[i * O + j] - dot);
      }
      GX = gX;
    }
    iter_backward<T, HC>(s, V, a, bv, T(lambdas[t]), eps, tiny, mass, st + t * P, GX, gV, ga, gbv, gba, b);
  }
}

}  // namespace emcaps
