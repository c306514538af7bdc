// emcaps_nb CPU kernel: votes v_ij = M_i W_ij (+ coordinate offsets), EM routing (Procedure 1 of the article, with
// the article's or the paper's activation cost) and the backward pass of both. Built by fast_routing.cpu_kernel().
#include "em_args.h"
#include "em_common.h"
#include "em_votes.h"
#include "em_route.h"
#include "em_backward.h"
namespace emcaps {

template <typename F>
void parallel(int64_t n, int nt, F f) {  // tasks 0..n-1 handed out one at a time; f(task, thread)
  std::atomic<int64_t> next(0);
  auto body = [&](int tid) {
    for (int64_t k; (k = next.fetch_add(1)) < n;) f(k, tid);
  };
  std::vector<std::thread> pool;
  for (int tid = 1; tid < nt; ++tid) pool.emplace_back(body, tid);
  body(0);
  for (auto& th : pool) th.join();
}

template <typename T, int HC>
void forward(const Args& x, T* mu, T* A, T* st) {
  const Shape s{x.I, x.O, x.H, x.P, x.Iw, x.iters, x.cost, x.cost_scale, x.spread, x.damping};
  const int64_t IOH = s.I * s.O * s.H, sp = iter_state(s) * s.iters;
  const int nt = (int)std::max<int64_t>(1, std::min<int64_t>(x.nthreads, x.n));
  const bool fused = x.V == nullptr;
  std::vector<Buffers<T>> bufs(nt);
  for (auto& b : bufs) b.init(s, fused, false);
  parallel(x.n, nt, [&](int64_t k, int tid) {
    Buffers<T>& b = bufs[tid];
    const T* V = fused ? b.V.data() : (const T*)x.V + k * IOH;
    if (fused) votes_one<T, HC>(s, (const T*)x.M + k * s.I * s.H, (const T*)x.W, (const T*)x.off, b.V.data());
    route_one<T, HC>(s, V, (const T*)x.a + k * s.I, (const T*)x.bv + k * s.O, (const T*)x.ba + k * s.O, x.lambdas,
                     T(x.eps), T(x.tiny), T(x.mass), mu + k * s.O * s.H, A + k * s.O, st ? st + k * sp : nullptr, b);
  });
}

template <typename T, int HC>
void backward(const Args& x, const T* st, const T* gmu, const T* gA, T* gV, T* gM, T* gW, T* ga, T* gbv, T* gba) {
  const Shape s{x.I, x.O, x.H, x.P, x.Iw, x.iters, x.cost, x.cost_scale, x.spread, x.damping};
  const int64_t IOH = s.I * s.O * s.H, sp = iter_state(s) * s.iters, nw = s.Iw * s.O * s.H;
  const int nt = (int)std::max<int64_t>(1, std::min<int64_t>(x.nthreads, x.n));
  const bool fused = x.V == nullptr;
  // dL/dW is a sum over problems. So that it does not depend on the number of threads or on which thread took
  // which problem, the problems are cut into at most 16 fixed blocks of consecutive problems; each block sums
  // into its own buffer, in order, and the blocks are added in order at the end. (64 blocks cost 6% of a training
  // step in zeroing and adding buffers; 16 keep up to 16 threads busy.)
  const int64_t blocks = fused ? std::min<int64_t>(x.n, 16) : x.n;
  std::vector<T> gWb(fused ? blocks * nw : 0, T(0));
  std::vector<Buffers<T>> bufs(nt);
  for (auto& b : bufs) b.init(s, fused, true);
  parallel(blocks, nt, [&](int64_t blk, int tid) {
    Buffers<T>& b = bufs[tid];
    for (int64_t k = blk * x.n / blocks; k < (blk + 1) * x.n / blocks; ++k) {
      const T* M = (const T*)x.M + k * s.I * s.H;
      if (fused) votes_one<T, HC>(s, M, (const T*)x.W, (const T*)x.off, b.V.data());  // recomputed, never stored
      const T* V = fused ? b.V.data() : (const T*)x.V + k * IOH;
      T* g = fused ? b.gV.data() : gV + k * IOH;
      route_backward_one<T, HC>(s, V, (const T*)x.a + k * s.I, (const T*)x.bv + k * s.O, x.lambdas, T(x.eps),
                                T(x.tiny), T(x.mass), st + k * sp, gmu + k * s.O * s.H, gA + k * s.O, g, ga + k * s.I,
                                gbv + k * s.O, gba + k * s.O, b);
      if (fused) votes_backward_one<T, HC>(s, M, (const T*)x.W, g, gM + k * s.I * s.H, gWb.data() + blk * nw);
    }
  });
  if (fused) {
    std::fill(gW, gW + nw, T(0));
    for (int64_t blk = 0; blk < blocks; ++blk)
      for (int64_t k = 0; k < nw; ++k) gW[k] += gWb[blk * nw + k];
  }
}

// One iteration of routing problems whose assignments are normalised outside (children shared by overlapping parents,
// notebook 05): R (n x I x O) and, with damping, x.mu_prev (the previous iteration's means, or nullptr: 0) in; mu, A
// and, if X is given, the E-step's logits X out; st the iteration's state.
template <typename T, int HC>
void step_forward(const Args& x, const T* R, T* mu, T* A, T* X, T* st) {
  const Shape s{x.I, x.O, x.H, x.P, x.Iw, 1, x.cost, x.cost_scale, x.spread, x.damping};
  const int64_t IO = s.I * s.O, IOH = IO * s.H, sp = iter_state(s);
  const int nt = (int)std::max<int64_t>(1, std::min<int64_t>(x.nthreads, x.n));
  const bool fused = x.V == nullptr;
  std::vector<Buffers<T>> bufs(nt);
  for (auto& b : bufs) b.init(s, fused, false);
  parallel(x.n, nt, [&](int64_t k, int tid) {
    Buffers<T>& b = bufs[tid];
    const T* V = fused ? b.V.data() : (const T*)x.V + k * IOH;
    if (fused) votes_one<T, HC>(s, (const T*)x.M + k * s.I * s.H, (const T*)x.W, (const T*)x.off, b.V.data());
    iter_forward<T, HC>(s, V, (const T*)x.a + k * s.I, (const T*)x.bv + k * s.O, (const T*)x.ba + k * s.O,
                        T(x.lambdas[0]), T(x.eps), T(x.tiny), T(x.mass), R + k * IO, st ? st + k * sp : nullptr,
                        X ? X + k * IO : nullptr, b, x.mu_prev ? (const T*)x.mu_prev + k * s.O * s.H : nullptr);
    std::copy(b.mu.data(), b.mu.data() + s.O * s.H, mu + k * s.O * s.H);
    std::copy(b.A.data(), b.A.data() + s.O, A + k * s.O);
  });
}

// Backward of step_forward: gmu, gA (either may be nullptr: zero) and gX (nullptr if the step made no X) in; the
// gradients of V (or of M and W), a, beta_v, beta_a, R and, if gmp is given, of x.mu_prev out, all overwritten.
template <typename T, int HC>
void step_backward(const Args& x, const T* st, const T* gmu, const T* gA, const T* gX, T* gV, T* gM, T* gW, T* ga,
                   T* gbv, T* gba, T* gR, T* gmp) {
  const Shape s{x.I, x.O, x.H, x.P, x.Iw, 1, x.cost, x.cost_scale, x.spread, x.damping};
  const int64_t IO = s.I * s.O, IOH = IO * s.H, OH = s.O * s.H, sp = iter_state(s), nw = s.Iw * OH;
  const int nt = (int)std::max<int64_t>(1, std::min<int64_t>(x.nthreads, x.n));
  const bool fused = x.V == nullptr;
  const int64_t blocks = fused ? std::min<int64_t>(x.n, 16) : x.n;  // fixed blocks, as in backward()
  std::vector<T> gWb(fused ? blocks * nw : 0, T(0));
  std::vector<Buffers<T>> bufs(nt);
  for (auto& b : bufs) b.init(s, fused, true);
  parallel(blocks, nt, [&](int64_t blk, int tid) {
    Buffers<T>& b = bufs[tid];
    for (int64_t k = blk * x.n / blocks; k < (blk + 1) * x.n / blocks; ++k) {
      const T* M = (const T*)x.M + k * s.I * s.H;
      if (fused) votes_one<T, HC>(s, M, (const T*)x.W, (const T*)x.off, b.V.data());
      const T* V = fused ? b.V.data() : (const T*)x.V + k * IOH;
      T* g = fused ? b.gV.data() : gV + k * IOH;
      if (gmu) std::copy(gmu + k * OH, gmu + (k + 1) * OH, b.gmu.data()); else std::fill(b.gmu.begin(), b.gmu.end(), T(0));
      if (gA) std::copy(gA + k * s.O, gA + (k + 1) * s.O, b.gA.data()); else std::fill(b.gA.begin(), b.gA.end(), T(0));
      std::fill(g, g + IOH, T(0));
      std::fill(ga + k * s.I, ga + (k + 1) * s.I, T(0));
      std::fill(gbv + k * s.O, gbv + (k + 1) * s.O, T(0));
      std::fill(gba + k * s.O, gba + (k + 1) * s.O, T(0));
      iter_backward<T, HC>(s, V, (const T*)x.a + k * s.I, (const T*)x.bv + k * s.O, T(x.lambdas[0]), T(x.eps),
                           T(x.tiny), T(x.mass), st + k * sp, gX ? gX + k * IO : nullptr, g, ga + k * s.I, gbv + k * s.O,
                           gba + k * s.O, b);
      std::copy(b.gR.data(), b.gR.data() + IO, gR + k * IO);
      if (gmp) std::copy(b.gmu.data(), b.gmu.data() + OH, gmp + k * OH);  // zero unless damped
      if (fused) votes_backward_one<T, HC>(s, M, (const T*)x.W, g, gM + k * s.I * s.H, gWb.data() + blk * nw);
    }
  });
  if (fused) {
    std::fill(gW, gW + nw, T(0));
    for (int64_t blk = 0; blk < blocks; ++blk)
      for (int64_t k = 0; k < nw; ++k) gW[k] += gWb[blk * nw + k];
  }
}

template <typename T>
void forward_any(const Args& x, T* mu, T* A, T* st) {
  (x.H == 16 && x.P == 4) ? forward<T, 16>(x, mu, A, st) : forward<T, 0>(x, mu, A, st);
}
template <typename T>
void backward_any(const Args& x, const T* st, const T* gmu, const T* gA, T* gV, T* gM, T* gW, T* ga, T* gbv, T* gba) {
  (x.H == 16 && x.P == 4) ? backward<T, 16>(x, st, gmu, gA, gV, gM, gW, ga, gbv, gba)
                          : backward<T, 0>(x, st, gmu, gA, gV, gM, gW, ga, gbv, gba);
}

template <typename T>
void step_forward_any(const Args& x, const T* R, T* mu, T* A, T* X, T* st) {
  (x.H == 16 && x.P == 4) ? step_forward<T, 16>(x, R, mu, A, X, st) : step_forward<T, 0>(x, R, mu, A, X, st);
}
template <typename T>
void step_backward_any(const Args& x, const T* st, const T* gmu, const T* gA, const T* gX, T* gV, T* gM, T* gW, T* ga,
                       T* gbv, T* gba, T* gR, T* gmp) {
  (x.H == 16 && x.P == 4) ? step_backward<T, 16>(x, st, gmu, gA, gX, gV, gM, gW, ga, gbv, gba, gR, gmp)
                          : step_backward<T, 0>(x, st, gmu, gA, gX, gV, gM, gW, ga, gbv, gba, gR, gmp);
}

}  // namespace emcaps

extern "C" {
using namespace emcaps;
int em_abi_version() { return EMCAPS_ABI; }
// sizeof(Args) and the offset of each of its fields, in declaration order: Python checks its ctypes mirror against them
int64_t em_args_layout(int64_t k) {
  static const int64_t layout[] = {sizeof(Args), EMCAPS_ARGS_OFFSETS};
  return k < (int64_t)(sizeof(layout) / sizeof(layout[0])) ? layout[k] : -1;
}
int64_t em_state_size(int64_t I, int64_t O, int64_t H, int iters) {
  return iter_state(Shape{I, O, H, 0, 1, iters, COST_ARTICLE, 1.0}) * iters;
}
#define EM_EXPORT(T, sfx)                                                                                         \
  void em_forward_##sfx(const Args* x, T* mu, T* A, T* st) { forward_any<T>(*x, mu, A, st); }                     \
  void em_backward_##sfx(const Args* x, const T* st, const T* gmu, const T* gA, T* gV, T* gM, T* gW, T* ga,       \
                         T* gbv, T* gba) {                                                                        \
    backward_any<T>(*x, st, gmu, gA, gV, gM, gW, ga, gbv, gba);                                                   \
  }                                                                                                               \
  void em_step_forward_##sfx(const Args* x, const T* R, T* mu, T* A, T* X, T* st) {                               \
    step_forward_any<T>(*x, R, mu, A, X, st);                                                                     \
  }                                                                                                               \
  void em_step_backward_##sfx(const Args* x, const T* st, const T* gmu, const T* gA, const T* gX, T* gV, T* gM,   \
                              T* gW, T* ga, T* gbv, T* gba, T* gR, T* gmp) {                                      \
    step_backward_any<T>(*x, st, gmu, gA, gX, gV, gM, gW, ga, gbv, gba, gR, gmp);                                 \
  }
EM_EXPORT(float, f32)
EM_EXPORT(double, f64)
}
