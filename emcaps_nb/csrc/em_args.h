// emcaps_nb CPU kernel: what Python passes, defined once. fast_routing.py builds its ctypes mirror of Args from this
// file and, at load, checks it against em_args_layout() of the compiled library; both check EMCAPS_ABI.
#pragma once

#include <cstddef>
#include <cstdint>

#define EMCAPS_ABI 6

namespace emcaps {

enum Cost { COST_ARTICLE = 0, COST_PAPER = 1 };  // which activation cost the M-step computes

struct Args {  // V == nullptr means: votes from M, W and off (fused); mu_prev: one step's previous means (or nullptr)
  const void *V, *M, *W, *off, *a, *bv, *ba, *mu_prev;
  const double* lambdas;
  int64_t n, I, O, H, P, Iw;
  int iters, nthreads, cost;
  double eps, tiny, mass, spread, cost_scale;  // floors: variance, ln a_j, S_j where it divides, the costs' variance
  double damping;  // share of the previous iteration's mean the M-step keeps (0: none)
};

}  // namespace emcaps

#define EMCAPS_ARGS_OFFSETS                                                                                          \
  offsetof(Args, V), offsetof(Args, M), offsetof(Args, W), offsetof(Args, off), offsetof(Args, a),                   \
      offsetof(Args, bv), offsetof(Args, ba), offsetof(Args, mu_prev), offsetof(Args, lambdas), offsetof(Args, n), offsetof(Args, I),         \
      offsetof(Args, O), offsetof(Args, H), offsetof(Args, P), offsetof(Args, Iw), offsetof(Args, iters),            \
      offsetof(Args, nthreads), offsetof(Args, cost), offsetof(Args, eps), offsetof(Args, tiny),                     \
      offsetof(Args, mass), offsetof(Args, spread), offsetof(Args, cost_scale), offsetof(Args, damping)
