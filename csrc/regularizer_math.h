// Per-datapoint CHyVAE regulariser R and its gradients: the math both backends call (host and device
// functions). The general path (any K, any prior) is here; so are the K = 1 isotropic fast path's pieces,
// which the CPU runs row by row or in quads (d fixed at compile time) and the CUDA kernels a thread or
// a warp per datapoint (cuda/regularizer_kernels.cuh).
//
// Notation follows docs/math.md 1.3, generalised to K posterior samples with the Woodbury identity:
//   Z = [z_1 .. z_K] (d x K), P = Psi^-1, U = P Z, G = I_K + Z^T U, H = G^-1,
//   W = L^T U, m = U^T mu, Q' = W^T W + m m^T, Q = Q' + G - I_K.
//   log|Psi'|     = log|Psi| + log|G|
//   tr(M Psi'^-1) = tr(L^T P L) + mu^T P mu + d - tr(H Q)
// Gradients (V = U H, E = P (L W + mu m^T) - V Q' + V):
//   dR/dZ  = -2 alpha V + 2 beta E H
//   dR/dmu = -2 beta (P mu - V m)
//   dR/dL  = tril(-2 beta (P L - V W^T) + diag(1 / L_ii))
// and through Psi = s Sigma0, with tr(Sigma0 Psi'^-1) = (d - K + tr H) / s:
//   dR/ds  = [-(alpha + beta)(d - K + tr H) + beta (T - tr(H^2 Q))] / s   (+ nu d / 2s from c)
// Everything runs in double whatever the storage type: R is a difference of terms that grow
// with nu, and float32 accumulation would lose most of its digits to cancellation.
#pragma once

#include <cmath>
#include <cstdint>

// Always inlined: the CPU backend compiles its callers once per instruction set (target_clones),
// and only code inlined into them is compiled for that set.
#if defined(__CUDACC__)
#define CHY_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define CHY_HD inline __attribute__((always_inline))
#else
#define CHY_HD inline
#endif

namespace chyvae_ext {

// Per-call scalars, all functions of nu and the fixed configuration (RegConfig). Computed on the
// host when nu is a CPU tensor (every CPU call, and CUDA calls given a CPU nu); otherwise the CUDA
// kernels compute them from nu in device memory (reg_params_finish after a block-wide sum of
// reg_const_term), so that nothing waits for the host and a captured CUDA graph reads the current
// nu at every replay.
struct RegParams {
  int d;
  int K;
  double p_iso;         // P = p_iso * Prec0: Prec0 = I (isotropic prior) or Sigma0^-1 (prec != nullptr)
  double alpha;         // (nu + 1) / 2
  double beta;          // (nu + K) / 2
  double s;             // Psi = s * Sigma0, s = max(nu - d - 1, 1)
  double ds_dnu;        // 1 when nu - d - 1 > 1, else 0
  double log_det_psi;   // log|Psi|
  double constant;      // c(nu, Psi, d, K), or 0 without constants
  double dconst_dnu;    // total derivative of c with respect to nu, or 0 without constants
};

// What a call fixes besides nu: shapes and the prior (a fixed hyperparameter).
struct RegConfig {
  int d;
  int K;
  bool full_prior;      // Sigma0 given by its precision (prec != nullptr), else prior_scale * I
  double prior_scale;   // Sigma0 = prior_scale * I (isotropic prior)
  double prior_logdet;  // log|Sigma0| (full prior)
  bool constants;       // include c(nu, Psi, d, K)
};

// digamma and trigamma for x > 0 (the arguments here are (nu - i) / 2 > 0): the recurrences
// psi(x) = psi(x + 1) - 1/x and psi'(x) = psi'(x + 1) + 1/x^2 up to x >= 10, then the asymptotic
// series, whose first omitted term is below 3e-14 relative there. A non-positive or NaN x gives NaN.
CHY_HD double reg_digamma(double x) {
  if (!(x > 0.0)) return NAN;
  double acc = 0.0;
  while (x < 10.0) {
    acc -= 1.0 / x;
    x += 1.0;
  }
  const double r = 1.0 / (x * x);
  const double series =
      r * (1.0 / 12 - r * (1.0 / 120 - r * (1.0 / 252 - r * (1.0 / 240 - r * (1.0 / 132 - r * (691.0 / 32760))))));
  return acc + log(x) - 0.5 / x - series;
}

CHY_HD double reg_trigamma(double x) {
  if (!(x > 0.0)) return NAN;
  double acc = 0.0;
  while (x < 10.0) {
    acc += 1.0 / (x * x);
    x += 1.0;
  }
  const double r = 1.0 / (x * x);
  const double series =
      1.0 / 6 - r * (1.0 / 30 - r * (1.0 / 42 - r * (1.0 / 30 - r * (5.0 / 66 - r * (691.0 / 2730)))));
  return acc + 1.0 / x + 0.5 * r + series * r / x;
}

// Term i (0 <= i < d) of the sums over i in c (forward) or dc/dnu (backward): the multivariate
// log-gamma, digamma and trigamma of docs/math.md 1.1 are sums over a - i/2.
CHY_HD double reg_const_term(double nu, int K, int i, bool backward) {
  const double a = 0.5 * (nu + K) - 0.5 * i, b = 0.5 * nu - 0.5 * i;
  if (!backward) {
    double t = lgamma(a) - lgamma(b);
    if (K != 1) t += 0.5 * (1.0 - K) * reg_digamma(a);
    return t;
  }
  double t = 0.5 * reg_digamma(a) - 0.5 * reg_digamma(b);
  if (K != 1) t += 0.25 * (1.0 - K) * reg_trigamma(a);
  return t;
}

// sum_i reg_const_term(nu, K, i, backward) over i < d, or 0 without constants: the sum
// reg_params_finish takes, for one datapoint's nu (per-datapoint nu on the device).
CHY_HD double reg_const_sum(const RegConfig& c, double nu, bool backward) {
  double acc = 0.0;
  if (c.constants)
    for (int i = 0; i < c.d; ++i) acc += reg_const_term(nu, c.K, i, backward);
  return acc;
}

// The scalars of one call from nu, the configuration and term_sum = sum_i reg_const_term (unused
// without constants). A nu that is not finite and > d - 1 makes every R and gradient NaN (the
// CPU host code refuses such a nu before this; on CUDA it is read in device memory, unchecked).
CHY_HD RegParams reg_params_finish(const RegConfig& c, double nu, double term_sum, bool backward) {
  RegParams p;
  const double dd = static_cast<double>(c.d);
  p.d = c.d;
  p.K = c.K;
  p.alpha = 0.5 * (nu + 1.0);
  p.beta = 0.5 * (nu + c.K);
  p.s = fmax(nu - dd - 1.0, 1.0);
  p.ds_dnu = (nu - dd - 1.0 > 1.0) ? 1.0 : 0.0;
  if (c.full_prior) {
    p.p_iso = 1.0 / p.s;
    p.log_det_psi = dd * log(p.s) + c.prior_logdet;
  } else {
    p.p_iso = 1.0 / (p.s * c.prior_scale);
    p.log_det_psi = dd * log(p.s * c.prior_scale);
  }
  p.constant = 0.0;
  p.dconst_dnu = 0.0;
  if (c.constants) {
    if (!backward) {
      p.constant = 0.5 * nu * p.log_det_psi + 0.5 * (nu + c.K) * dd + 0.5 * dd + 0.5 * dd * log(2.0) + term_sum;
    } else {
      p.dconst_dnu = 0.5 * p.log_det_psi + 0.5 * dd + term_sum + p.ds_dnu * nu * dd / (2.0 * p.s);
    }
  }
  if (!(nu > dd - 1.0 && nu < INFINITY)) {  // NaN-safe: NaN fails the first comparison
    p.p_iso = NAN;
    p.constant = NAN;
    p.dconst_dnu = NAN;
    p.log_det_psi = NAN;
  }
  return p;
}

// Doubles of scratch one datapoint needs.
CHY_HD int64_t reg_workspace_size(int d, int K) {
  return 4 * static_cast<int64_t>(K) * d + 2 * static_cast<int64_t>(d) + K +
         4 * static_cast<int64_t>(K) * K;
}

// One datapoint's scratch, carved from reg_workspace_size(d, K) doubles.
struct RegWorkspace {
  double* U;    // K x d, U_k = P z_k
  double* W;    // K x d, W_k = L^T U_k
  double* V;    // K x d, V = U H (backward)
  double* E;    // K x d (backward)
  double* y;    // d (backward)
  double* pmu;  // d, P mu
  double* m;    // K, m = U^T mu
  double* G;    // K x K
  double* C;    // K x K, Cholesky factor of G
  double* H;    // K x K, G^-1
  double* Qp;   // K x K, Q' = W^T W + m m^T

  CHY_HD RegWorkspace(double* ws, int d, int K) {
    U = ws;
    W = U + K * d;
    V = W + K * d;
    E = V + K * d;
    y = E + K * d;
    pmu = y + d;
    m = pmu + d;
    G = m + K;
    C = G + K * K;
    H = C + K * K;
    Qp = H + K * K;
  }
};

// sum_i a_i b_i in double with four independent accumulators: the serial add chain, not the
// arithmetic, bounds a plain loop, and this form lets the compiler use SIMD without -ffast-math.
template <typename A, typename B>
CHY_HD double reg_dot(int n, const A* a, const B* b) {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += static_cast<double>(a[i]) * static_cast<double>(b[i]);
    s1 += static_cast<double>(a[i + 1]) * static_cast<double>(b[i + 1]);
    s2 += static_cast<double>(a[i + 2]) * static_cast<double>(b[i + 2]);
    s3 += static_cast<double>(a[i + 3]) * static_cast<double>(b[i + 3]);
  }
  for (; i < n; ++i) s0 += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return (s0 + s1) + (s2 + s3);
}

// out = P x, P = p_iso * Prec0 (Prec0: d x d row-major in double, or I when prec == nullptr).
template <typename T>
CHY_HD void reg_apply_p(int d, const double* prec, double p_iso, const T* x, double* out) {
  if (prec == nullptr) {
    for (int i = 0; i < d; ++i) out[i] = p_iso * static_cast<double>(x[i]);
    return;
  }
  for (int i = 0; i < d; ++i) out[i] = p_iso * reg_dot(d, prec + i * d, x);
}

// out[j] = (P L)_ij for j <= i. L is lower-triangular, so row k of L contributes its first
// min(k, i) + 1 entries; accumulating whole rows keeps the access contiguous.
template <typename T>
CHY_HD void reg_pl_row(int d, const double* prec, double p_iso, const T* L, int i, double* out) {
  const T* li = L + i * d;
  if (prec == nullptr) {
    for (int j = 0; j <= i; ++j) out[j] = p_iso * static_cast<double>(li[j]);
    return;
  }
  for (int j = 0; j <= i; ++j) out[j] = 0.0;
  for (int k = 0; k < d; ++k) {
    const double a = p_iso * prec[i * d + k];
    const T* lk = L + k * d;
    const int len = (k < i ? k : i) + 1;
    for (int j = 0; j < len; ++j) out[j] += a * static_cast<double>(lk[j]);
  }
}

// sum_i log L_ii with one log per sixteen entries (a log costs as much as a whole row of the
// fast path): the log of each product of sixteen, as long as every partial product stays in the
// normal range (so no digit is lost to underflow), else the sixteen logs. Relative error of a
// product: <= 16 eps. Any entry that is not > 0 (or NaN) gives NaN.
template <typename T>
CHY_HD double reg_sum_log_diag(int d, const T* L) {
  double acc = 0.0;
  bool positive = true;
  for (int i0 = 0; i0 < d; i0 += 16) {
    const int n = d - i0 < 16 ? d - i0 : 16;
    double prod = 1.0;
    bool normal = true;
    for (int t = 0; t < n; ++t) {
      const double v = static_cast<double>(L[(i0 + t) * (d + 1)]);
      positive = positive && (v > 0.0);
      prod *= v;
      normal = normal && (prod > 2.2250738585072014e-308) && (prod < 1.7976931348623157e308);
    }
    if (normal) {
      acc += log(prod);
    } else {
      for (int t = 0; t < n; ++t) acc += log(static_cast<double>(L[(i0 + t) * (d + 1)]));
    }
  }
  return positive ? acc : NAN;
}

// Cholesky of the K x K SPD matrix A into lower C, then Hinv = A^-1; returns log|A|.
// A non-finite or indefinite A gives NaN, never a trap.
CHY_HD double reg_small_chol_inverse(int K, const double* A, double* C, double* Hinv) {
  double log_det = 0.0;
  for (int j = 0; j < K; ++j) {
    double diag = A[j * K + j];
    for (int k = 0; k < j; ++k) diag -= C[j * K + k] * C[j * K + k];
    const double cjj = sqrt(diag);
    C[j * K + j] = cjj;
    log_det += 2.0 * log(cjj);
    for (int i = j + 1; i < K; ++i) {
      double v = A[i * K + j];
      for (int k = 0; k < j; ++k) v -= C[i * K + k] * C[j * K + k];
      C[i * K + j] = v / cjj;
      C[j * K + i] = 0.0;
    }
  }
  // Hinv = C^-T C^-1, column by column: solve C y = e_c, then C^T x = y.
  for (int c = 0; c < K; ++c) {
    for (int i = 0; i < K; ++i) {
      double v = (i == c) ? 1.0 : 0.0;
      for (int k = 0; k < i; ++k) v -= C[i * K + k] * Hinv[k * K + c];
      Hinv[i * K + c] = v / C[i * K + i];
    }
    for (int i = K - 1; i >= 0; --i) {
      double v = Hinv[i * K + c];
      for (int k = i + 1; k < K; ++k) v -= C[k * K + i] * Hinv[k * K + c];
      Hinv[i * K + c] = v / C[i * K + i];
    }
  }
  return log_det;
}

// Quantities shared by the forward and the backward of one datapoint.
struct RegState {
  double log_det_g;  // log|G|
  double trace;      // T = tr((C + mu mu^T + Psi) Psi'^-1)
  double sum_log_l;  // sum_i log L_ii = log|C| / 2 (0 unless asked for)
};

// Fills U, W, pmu, m, G, C, H and Q' of the workspace and returns the scalars.
template <typename T>
CHY_HD RegState reg_state(const RegParams& p, const T* mu, const T* L, const T* z,
                          const double* prec, const RegWorkspace& w_, bool need_log_det_c) {
  const int d = p.d, K = p.K;
  double* U = w_.U;
  double* W = w_.W;
  double* pmu = w_.pmu;
  double* m = w_.m;
  double* G = w_.G;
  double* C = w_.C;
  double* H = w_.H;
  double* Qp = w_.Qp;

  for (int k = 0; k < K; ++k) reg_apply_p(d, prec, p.p_iso, z + k * d, U + k * d);
  reg_apply_p(d, prec, p.p_iso, mu, pmu);
  for (int t = 0; t < K * d; ++t) W[t] = 0.0;

  // One pass over the rows of L: tr(L^T P L) and W_k = L^T U_k (as row axpys).
  double tr_lpl = 0.0;
  const double sum_log_l = need_log_det_c ? reg_sum_log_diag(d, L) : 0.0;
  for (int i = 0; i < d; ++i) {
    const T* li = L + i * d;
    if (prec == nullptr) {
      tr_lpl += reg_dot(i + 1, li, li);
    } else {
      reg_pl_row(d, prec, p.p_iso, L, i, w_.y);
      tr_lpl += reg_dot(i + 1, li, w_.y);
    }
    for (int k = 0; k < K; ++k) {
      const double a = U[k * d + i];
      double* wk = W + k * d;
      for (int j = 0; j <= i; ++j) wk[j] += static_cast<double>(li[j]) * a;
    }
  }
  if (prec == nullptr) tr_lpl *= p.p_iso;
  const double mu_p_mu = reg_dot(d, mu, pmu);
  for (int k = 0; k < K; ++k) {
    m[k] = reg_dot(d, mu, U + k * d);
    for (int l = 0; l <= k; ++l) {
      const double g = (k == l ? 1.0 : 0.0) + reg_dot(d, z + k * d, U + l * d);
      G[k * K + l] = g;
      G[l * K + k] = g;
    }
  }
  for (int k = 0; k < K; ++k) {
    for (int l = 0; l <= k; ++l) {
      const double q = m[k] * m[l] + reg_dot(d, W + k * d, W + l * d);
      Qp[k * K + l] = q;
      Qp[l * K + k] = q;
    }
  }
  RegState st;
  st.log_det_g = reg_small_chol_inverse(K, G, C, H);
  double tr_hq = 0.0;
  for (int k = 0; k < K; ++k)
    for (int l = 0; l < K; ++l) tr_hq += H[k * K + l] * (Qp[l * K + k] + G[l * K + k] - (k == l ? 1.0 : 0.0));
  st.trace = tr_lpl + mu_p_mu + d - tr_hq;
  st.sum_log_l = sum_log_l;
  return st;
}

template <typename T>
CHY_HD double reg_forward_point(const RegParams& p, const T* mu, const T* L, const T* z,
                                const double* prec, double* ws) {
  const RegState st = reg_state(p, mu, L, z, prec, RegWorkspace(ws, p.d, p.K), true);
  return -p.alpha * (p.log_det_psi + st.log_det_g) - p.beta * st.trace + st.sum_log_l + p.constant;
}

// Writes g * dR/d(mu, L, z) and returns g * dR/dnu for one datapoint.
template <typename T>
CHY_HD double reg_backward_point(const RegParams& p, double g, const T* mu, const T* L, const T* z,
                                 const double* prec, double* ws, T* g_mu, T* g_l, T* g_z) {
  const int d = p.d, K = p.K;
  const RegWorkspace w_(ws, d, K);
  const RegState st = reg_state(p, mu, L, z, prec, w_, false);
  const double* U = w_.U;
  const double* W = w_.W;
  double* V = w_.V;
  double* E = w_.E;
  double* y = w_.y;
  const double* pmu = w_.pmu;
  const double* m = w_.m;
  const double* G = w_.G;
  const double* H = w_.H;
  const double* Qp = w_.Qp;

  // V = U H
  for (int k = 0; k < K; ++k)
    for (int i = 0; i < d; ++i) {
      double acc = 0.0;
      for (int l = 0; l < K; ++l) acc += U[l * d + i] * H[l * K + k];
      V[k * d + i] = acc;
    }
  // One pass over the rows of L: Y_k[i] = (L W_k)_i + mu_i m_k into E, and row i of
  // dR/dL = -2 beta ((P L)_i - sum_k V_k[i] W_k) + e_i / L_ii (lower triangle only).
  const double two_a = 2.0 * p.alpha, two_b = 2.0 * p.beta;
  const double scale_l = -two_b * g;
  for (int i = 0; i < d; ++i) {
    const T* li = L + i * d;
    for (int k = 0; k < K; ++k) E[k * d + i] = static_cast<double>(mu[i]) * m[k] + reg_dot(i + 1, li, W + k * d);
    reg_pl_row(d, prec, p.p_iso, L, i, y);
    for (int k = 0; k < K; ++k) {
      const double v = V[k * d + i];
      const double* wk = W + k * d;
      for (int j = 0; j <= i; ++j) y[j] -= v * wk[j];
    }
    T* gi = g_l + i * d;
    for (int j = 0; j < i; ++j) gi[j] = static_cast<T>(scale_l * y[j]);
    gi[i] = static_cast<T>(scale_l * y[i] + g / static_cast<double>(li[i]));
    for (int j = i + 1; j < d; ++j) gi[j] = static_cast<T>(0);
  }
  // E_k = P Y_k - sum_j V_j Q'_jk + V_k (P applied in place through y).
  for (int k = 0; k < K; ++k) {
    double* ek = E + k * d;
    if (prec == nullptr) {
      for (int i = 0; i < d; ++i) ek[i] *= p.p_iso;
    } else {
      for (int i = 0; i < d; ++i) y[i] = ek[i];
      reg_apply_p(d, prec, p.p_iso, y, ek);
    }
    for (int i = 0; i < d; ++i) {
      double acc = V[k * d + i];
      for (int j = 0; j < K; ++j) acc -= V[j * d + i] * Qp[j * K + k];
      ek[i] += acc;
    }
  }
  for (int k = 0; k < K; ++k)
    for (int i = 0; i < d; ++i) {
      double eh = 0.0;
      for (int l = 0; l < K; ++l) eh += E[l * d + i] * H[l * K + k];
      g_z[k * d + i] = static_cast<T>(g * (-two_a * V[k * d + i] + two_b * eh));
    }
  for (int i = 0; i < d; ++i) {
    double vm = 0.0;
    for (int k = 0; k < K; ++k) vm += V[k * d + i] * m[k];
    g_mu[i] = static_cast<T>(g * (-two_b * (pmu[i] - vm)));
  }

  // dR/dnu: explicit through alpha and beta, and through s when Psi = s(nu) Sigma0.
  double tr_h = 0.0, tr_h2q = 0.0;
  for (int k = 0; k < K; ++k) {
    tr_h += H[k * K + k];
    for (int l = 0; l < K; ++l) {
      double h2 = 0.0;
      for (int j = 0; j < K; ++j) h2 += H[k * K + j] * H[j * K + l];
      tr_h2q += h2 * (Qp[l * K + k] + G[l * K + k] - (k == l ? 1.0 : 0.0));
    }
  }
  double dnu = -0.5 * (p.log_det_psi + st.log_det_g) - 0.5 * st.trace;
  if (p.ds_dnu != 0.0) {
    const double spread = d - K + tr_h;
    dnu += p.ds_dnu * (-(p.alpha + p.beta) * spread + p.beta * (st.trace - tr_h2q)) / p.s;
  }
  return g * (dnu + p.dconst_dnu);
}

// ---- Fast path: K = 1 and an isotropic prior (P = p I), the paper's setting. ----------------
// The same R and gradients as the general code above, with U = p z, G = a, H = 1/a folded into
// scalars and each pass over L doing all its work at once. The forward leaves w = L^T u, five
// sums and log a in `saved` (reg_iso1_saved_size doubles); a backward given them makes one pass
// over L instead of two, and takes no log.

CHY_HD int64_t reg_iso1_saved_size(int d) { return static_cast<int64_t>(d) + 6; }

struct RegIso1Sums {
  double a, m, ww, ss;  // a = 1 + z^T P z, m = mu^T P z, |w|^2, |L|_F^2
  double mm;            // |mu|^2
  double log_a;         // log a
};

// Fills r.log_a and writes the sums after w in `saved` (saved[d..d+6)), as reg_iso1_load reads them.
CHY_HD void reg_iso1_store(int d, RegIso1Sums& r, double* saved) {
  r.log_a = log(r.a);
  saved[d] = r.a;
  saved[d + 1] = r.m;
  saved[d + 2] = r.ww;
  saved[d + 3] = r.ss;
  saved[d + 4] = r.mm;
  saved[d + 5] = r.log_a;
}

// DS: d as a compile-time constant (0: d = p.d at run time). With DS > 0 every row is walked in
// full with the upper triangle masked to zero: fixed trip counts let the compiler keep w in
// registers instead of reloading it from memory row after row.
template <int DS>
CHY_HD bool reg_in_lower(int i, int j) {
  return DS == 0 || j <= i;
}

template <int DS>
CHY_HD int reg_row_end(int i) {
  return DS > 0 ? DS : i + 1;
}

// L_ij as a double, zero above the diagonal (read only when DS > 0 walks full rows).
template <int DS, typename T>
CHY_HD double reg_lower_at(const T* li, int i, int j) {
  return reg_in_lower<DS>(i, j) ? static_cast<double>(li[j]) : 0.0;
}

// Four doubles as one SIMD value, for the run-time-d rows on the CPU. GCC would not vectorise the
// four-lane scalar loops below by itself (its output was mostly scalar code, 2-wide at best); the
// vector extension makes it 4-wide with AVX2 and two 2-wide halves on baseline x86-64. CUDA
// threads are scalar and keep the plain loops.
#if !defined(__CUDACC__) && !defined(CHY_CUDA_EMULATION) && defined(__GNUC__)
#define CHY_QUAD 1
typedef double RegQuad __attribute__((vector_size(32)));
typedef float RegQuadF __attribute__((vector_size(16)));

inline __attribute__((always_inline)) RegQuad reg_quad_load(const double* p) {
  RegQuad v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
// Four floats widened as four scalars: GCC lowers __builtin_convertvector of a float quad in
// these (target-neutral) inline functions into two halves through the stack, which the AVX2 clone
// then inherits; this form becomes one vcvtps2pd (faster: benchmarks/RESULTS.md, "Numbers behind the code's comments").
inline __attribute__((always_inline)) RegQuad reg_quad_load(const float* p) {
  return RegQuad{static_cast<double>(p[0]), static_cast<double>(p[1]), static_cast<double>(p[2]),
                 static_cast<double>(p[3])};
}
inline __attribute__((always_inline)) void reg_quad_store(double* p, RegQuad v) { __builtin_memcpy(p, &v, sizeof v); }
inline __attribute__((always_inline)) void reg_quad_store(float* p, RegQuad v) {
  const RegQuadF f = __builtin_convertvector(v, RegQuadF);
  __builtin_memcpy(p, &f, sizeof f);
}
#endif

// Computes w into saved[0..d) and the sums and log a into saved[d..d+6).
template <int DS, typename T>
CHY_HD RegIso1Sums reg_iso1_sums(int d_run, double p_iso, const T* mu, const T* L, const T* z, double* saved) {
  const int d = DS > 0 ? DS : d_run;
  double w_local[DS > 0 ? DS : 1];  // registers when d is known: nothing else can alias it
  double* w = DS > 0 ? w_local : saved;
  double zz = 0.0, mz = 0.0, mm = 0.0;
  for (int i = 0; i < d; ++i) {
    const double zi = static_cast<double>(z[i]), mi = static_cast<double>(mu[i]);
    zz += zi * zi;
    mz += mi * zi;
    mm += mi * mi;
    w[i] = 0.0;
  }
  // |L|_F^2 in four lanes: one accumulator would chain every add of a row behind the last (four
  // cycles each) and keep the compiler from vectorising the row; with four it runs 4 wide.
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  for (int i = 0; i < d; ++i) {
    const T* li = L + i * d;
    const double ui = p_iso * static_cast<double>(z[i]);
    const int jend = reg_row_end<DS>(i);
    int j = 0;
#ifdef CHY_QUAD
    if (DS == 0) {  // the lanes as one vector: no masking needed, j + 3 <= i
      RegQuad sq = {0.0, 0.0, 0.0, 0.0};
      for (; j + 4 <= jend; j += 4) {
        const RegQuad l = reg_quad_load(li + j);
        sq += l * l;
        reg_quad_store(w + j, reg_quad_load(w + j) + l * ui);
      }
      s0 += sq[0];
      s1 += sq[1];
      s2 += sq[2];
      s3 += sq[3];
    }
#endif
    for (; j + 4 <= jend; j += 4) {
      const double l0 = reg_lower_at<DS>(li, i, j), l1 = reg_lower_at<DS>(li, i, j + 1);
      const double l2 = reg_lower_at<DS>(li, i, j + 2), l3 = reg_lower_at<DS>(li, i, j + 3);
      s0 += l0 * l0;
      s1 += l1 * l1;
      s2 += l2 * l2;
      s3 += l3 * l3;
      w[j] += l0 * ui;
      w[j + 1] += l1 * ui;
      w[j + 2] += l2 * ui;
      w[j + 3] += l3 * ui;
    }
    for (; j < jend; ++j) {
      const double l = reg_lower_at<DS>(li, i, j);
      s0 += l * l;
      w[j] += l * ui;
    }
  }
  const double ss = (s0 + s1) + (s2 + s3);
  double ww = 0.0;
  for (int j = 0; j < d; ++j) ww += w[j] * w[j];
  if (DS > 0)
    for (int j = 0; j < d; ++j) saved[j] = w[j];
  RegIso1Sums r;
  r.a = 1.0 + p_iso * zz;
  r.m = p_iso * mz;
  r.ww = ww;
  r.ss = ss;
  r.mm = mm;
  reg_iso1_store(d, r, saved);
  return r;
}

CHY_HD RegIso1Sums reg_iso1_load(int d, const double* saved) {
  RegIso1Sums r;
  r.a = saved[d];
  r.m = saved[d + 1];
  r.ww = saved[d + 2];
  r.ss = saved[d + 3];
  r.mm = saved[d + 4];
  r.log_a = saved[d + 5];
  return r;
}

// T = tr(M Psi'^-1) from the sums (docs/math.md 1.3).
CHY_HD double reg_iso1_trace(int d, double p_iso, const RegIso1Sums& r) {
  const double q = r.ww + r.m * r.m + (r.a - 1.0);
  return p_iso * r.ss + p_iso * r.mm + d - q / r.a;
}

// R of one datapoint from its sums and sum_i log L_ii.
CHY_HD double reg_iso1_value_from(const RegParams& p, int d, const RegIso1Sums& r, double sum_log_l) {
  return -p.alpha * (p.log_det_psi + r.log_a) - p.beta * reg_iso1_trace(d, p.p_iso, r) + sum_log_l + p.constant;
}

// R of one datapoint from its sums.
template <typename T>
CHY_HD double reg_iso1_value(const RegParams& p, int d, const RegIso1Sums& r, const T* L) {
  return reg_iso1_value_from(p, d, r, reg_sum_log_diag(d, L));
}

// g * dR/dnu of one datapoint from its sums: explicit through alpha and beta, and through s when
// Psi = s(nu) Sigma0.
CHY_HD double reg_iso1_dnu(const RegParams& p, int d, double g, const RegIso1Sums& r) {
  const double inv_a = 1.0 / r.a;
  const double trace = reg_iso1_trace(d, p.p_iso, r);
  double dnu = -0.5 * (p.log_det_psi + r.log_a) - 0.5 * trace;
  if (p.ds_dnu != 0.0) {
    const double tr_h2q = (r.ww + r.m * r.m + r.a - 1.0) * inv_a * inv_a;
    dnu += p.ds_dnu * (-(p.alpha + p.beta) * (d - 1 + inv_a) + p.beta * (trace - tr_h2q)) / p.s;
  }
  return g * (dnu + p.dconst_dnu);
}

// `saved`: reg_iso1_saved_size(d) doubles, filled for the backward.
template <int DS, typename T>
CHY_HD double reg_forward_point_iso1(const RegParams& p, const T* mu, const T* L, const T* z, double* saved) {
  return reg_iso1_value(p, p.d, reg_iso1_sums<DS>(p.d, p.p_iso, mu, L, z, saved), L);
}

// `saved`: what the forward left for this datapoint, or nullptr to recompute it into `ws`
// (reg_iso1_saved_size(d) doubles).
template <int DS, typename T>
CHY_HD double reg_backward_point_iso1(const RegParams& p, double g, const T* mu, const T* L, const T* z,
                                      const double* saved, double* ws, T* g_mu, T* g_l, T* g_z) {
  const int d = DS > 0 ? DS : p.d;
  const double pi = p.p_iso;
  const RegIso1Sums r = saved != nullptr ? reg_iso1_load(d, saved) : reg_iso1_sums<DS>(d, pi, mu, L, z, ws);
  const double* w_mem = saved != nullptr ? saved : ws;
  double w_local[DS > 0 ? DS : 1];  // registers when d is known, and provably not aliased by g_l
  if (DS > 0)
    for (int j = 0; j < d; ++j) w_local[j] = w_mem[j];
  const double* w = DS > 0 ? w_local : w_mem;
  const double inv_a = 1.0 / r.a;
  const double two_a = 2.0 * p.alpha, two_b = 2.0 * p.beta;
  const double scale_l = -two_b * g;
  const double qp = r.ww + r.m * r.m;  // Q'
  // Row i: y_i = (L w)_i + mu_i m feeds dR/dz; dR/dL_i = -2 beta (p L_i - V_i w) + e_i / L_ii.
  for (int i = 0; i < d; ++i) {
    const T* li = L + i * d;
    T* gi = g_l + i * d;
    const double vi = pi * static_cast<double>(z[i]) * inv_a;  // V = u / a
    const double cl = scale_l * pi, cw = -scale_l * vi;          // dR/dL_ij = cl L_ij + cw w_j
    // y in four lanes, as |L|_F^2 in the forward: a single chain would serialise the row.
    double y0 = 0.0, y1 = 0.0, y2 = 0.0, y3 = 0.0;
    const int jend = reg_row_end<DS>(i);
    int j = 0;
#ifdef CHY_QUAD
    if (DS == 0) {  // the lanes as one vector: no masking needed, j + 3 <= i
      RegQuad yq = {0.0, 0.0, 0.0, 0.0};
      for (; j + 4 <= jend; j += 4) {
        const RegQuad l = reg_quad_load(li + j), wq = reg_quad_load(w + j);
        yq += l * wq;
        reg_quad_store(gi + j, cl * l + cw * wq);
      }
      y0 = yq[0];
      y1 = yq[1];
      y2 = yq[2];
      y3 = yq[3];
    }
#endif
    for (; j + 4 <= jend; j += 4) {
      const double l0 = reg_lower_at<DS>(li, i, j), l1 = reg_lower_at<DS>(li, i, j + 1);
      const double l2 = reg_lower_at<DS>(li, i, j + 2), l3 = reg_lower_at<DS>(li, i, j + 3);
      y0 += l0 * w[j];
      y1 += l1 * w[j + 1];
      y2 += l2 * w[j + 2];
      y3 += l3 * w[j + 3];
      gi[j] = static_cast<T>(reg_in_lower<DS>(i, j) ? cl * l0 + cw * w[j] : 0.0);
      gi[j + 1] = static_cast<T>(reg_in_lower<DS>(i, j + 1) ? cl * l1 + cw * w[j + 1] : 0.0);
      gi[j + 2] = static_cast<T>(reg_in_lower<DS>(i, j + 2) ? cl * l2 + cw * w[j + 2] : 0.0);
      gi[j + 3] = static_cast<T>(reg_in_lower<DS>(i, j + 3) ? cl * l3 + cw * w[j + 3] : 0.0);
    }
    for (; j < jend; ++j) {
      const double l = reg_lower_at<DS>(li, i, j);
      y0 += l * w[j];
      gi[j] = static_cast<T>(reg_in_lower<DS>(i, j) ? cl * l + cw * w[j] : 0.0);
    }
    double y = (y0 + y1) + (y2 + y3);
    gi[i] = static_cast<T>(static_cast<double>(gi[i]) + g / static_cast<double>(li[i]));
    for (j = jend; j < d; ++j) gi[j] = static_cast<T>(0);
    y += static_cast<double>(mu[i]) * r.m;
    const double e = pi * y + vi * (1.0 - qp);  // E = P Y - V Q' + V
    g_z[i] = static_cast<T>(g * (-two_a * vi + two_b * e * inv_a));
    g_mu[i] = static_cast<T>(g * (-two_b * (pi * static_cast<double>(mu[i]) - vi * r.m)));
  }
  return reg_iso1_dnu(p, d, g, r);
}

#ifdef CHY_QUAD
// ---- Fast path with d fixed at compile time, in quads (CPU) ------------------------------------
// The same R and gradients as reg_forward_point_iso1 / reg_backward_point_iso1, for a d known at
// compile time (10 and 32, docs/math.md 2's latent sizes), written as whole quads of columns: every
// loop has a constant trip count, so after unrolling each row's lower-triangle mask is a constant
// and no column above the diagonal costs anything. GCC left the scalar form mostly scalar, with
// a compare and branch per entry (its cost: benchmarks/RESULTS.md, "Numbers behind the code's comments").

typedef long long RegQuadI __attribute__((vector_size(32)));
// Two doubles: the last, half-used quad of a row when D % 4 == 2 (D = 10) is one 8- or 16-byte load.
typedef double RegPair __attribute__((vector_size(16)));
typedef float RegPairF __attribute__((vector_size(8)));

inline __attribute__((always_inline)) RegPair reg_pair_load(const double* p) {
  RegPair v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
inline __attribute__((always_inline)) RegPair reg_pair_load(const float* p) {
  RegPairF v;
  __builtin_memcpy(&v, p, sizeof v);
  return __builtin_convertvector(v, RegPair);
}

// Columns [4q, 4q + 4) of a row of D entries, zero past column D - 1 (never read there).
template <int D, typename T>
inline __attribute__((always_inline)) RegQuad reg_quad_load_cols(const T* row, int q) {
  if (4 * q + 4 <= D) return reg_quad_load(row + 4 * q);
  if (4 * q + 2 == D) {
    const RegPair lo = reg_pair_load(row + 4 * q), zero = {0.0, 0.0};
    return __builtin_shufflevector(lo, zero, 0, 1, 2, 3);
  }
  RegQuad v = {0.0, 0.0, 0.0, 0.0};
  for (int t = 0; t < D - 4 * q; ++t) v[t] = static_cast<double>(row[4 * q + t]);
  return v;
}

// Stores the lanes of v that are columns [4q, 4q + 4) of a row of D entries.
template <int D, typename T>
inline __attribute__((always_inline)) void reg_quad_store_cols(T* row, int q, RegQuad v) {
  if (4 * q + 4 <= D) return reg_quad_store(row + 4 * q, v);
  for (int t = 0; t < D - 4 * q; ++t) row[4 * q + t] = static_cast<T>(v[t]);
}

// v with the lanes of quad q that lie above the diagonal of row i (column 4q + lane > i) zeroed:
// a bit mask, so whatever the upper triangle holds (NaN included) never reaches the result.
inline __attribute__((always_inline)) RegQuad reg_quad_lower(RegQuad v, int i, int q) {
  const RegQuadI lane = {0, 1, 2, 3};
  const RegQuadI keep = (lane + 4 * q) <= i;
  return reinterpret_cast<RegQuad>(reinterpret_cast<RegQuadI>(v) & keep);
}

// v with only lane t kept.
inline __attribute__((always_inline)) RegQuad reg_quad_lane(RegQuad v, int t) {
  const RegQuadI lane = {0, 1, 2, 3};
  return reinterpret_cast<RegQuad>(reinterpret_cast<RegQuadI>(v) & (lane == t));
}

inline __attribute__((always_inline)) double reg_quad_sum(RegQuad v) { return (v[0] + v[1]) + (v[2] + v[3]); }

// `saved`: reg_iso1_saved_size(D) doubles, filled for the backward (as reg_forward_point_iso1).
template <int D, typename T>
inline __attribute__((always_inline)) double reg_forward_point_iso1_quads(const RegParams& p, const T* mu,
                                                                          const T* L, const T* z, double* saved) {
  constexpr int NQ = (D + 3) / 4;
  const double pi = p.p_iso;
  RegQuad w[NQ], sq[NQ];
  RegQuad zz = {0.0, 0.0, 0.0, 0.0}, mz = zz, mm = zz;
#pragma GCC unroll 16
  for (int q = 0; q < NQ; ++q) {
    const RegQuad zq = reg_quad_load_cols<D>(z, q), mq = reg_quad_load_cols<D>(mu, q);
    zz += zq * zq;
    mz += mq * zq;
    mm += mq * mq;
    w[q] = RegQuad{0.0, 0.0, 0.0, 0.0};
    sq[q] = w[q];
  }
#pragma GCC unroll 64
  for (int i = 0; i < D; ++i) {
    const T* li = L + i * D;
    const double ui = pi * static_cast<double>(z[i]);
#pragma GCC unroll 16
    for (int q = 0; q < NQ; ++q) {
      if (4 * q > i) continue;  // wholly above the diagonal
      const RegQuad l = reg_quad_lower(reg_quad_load_cols<D>(li, q), i, q);
      sq[q] += l * l;
      w[q] += l * ui;
    }
  }
  RegQuad ssq = sq[0], wwq = w[0] * w[0];
#pragma GCC unroll 16
  for (int q = 1; q < NQ; ++q) {
    ssq += sq[q];
    wwq += w[q] * w[q];
  }
#pragma GCC unroll 16
  for (int q = 0; q < NQ; ++q) reg_quad_store_cols<D>(saved, q, w[q]);
  RegIso1Sums r;
  r.a = 1.0 + pi * reg_quad_sum(zz);
  r.m = pi * reg_quad_sum(mz);
  r.ww = reg_quad_sum(wwq);
  r.ss = reg_quad_sum(ssq);
  r.mm = reg_quad_sum(mm);
  reg_iso1_store(D, r, saved);
  return reg_iso1_value(p, D, r, L);
}

// `saved`: what the forward left for this datapoint, or nullptr to recompute it into `ws`
// (reg_iso1_saved_size(D) doubles), as reg_backward_point_iso1.
template <int D, typename T>
inline __attribute__((always_inline)) double reg_backward_point_iso1_quads(const RegParams& p, double g,
                                                                           const T* mu, const T* L, const T* z,
                                                                           const double* saved, double* ws,
                                                                           T* g_mu, T* g_l, T* g_z) {
  constexpr int NQ = (D + 3) / 4;
  if (saved == nullptr) {
    reg_forward_point_iso1_quads<D>(p, mu, L, z, ws);
    saved = ws;
  }
  const double pi = p.p_iso;
  const RegIso1Sums r = reg_iso1_load(D, saved);
  const double inv_a = 1.0 / r.a;
  const double two_a = 2.0 * p.alpha, two_b = 2.0 * p.beta;
  const double scale_l = -two_b * g;
  const double cl = scale_l * pi;      // dR/dL_ij = cl L_ij + cw_i w_j (+ g / L_ii on the diagonal)
  const double qp = r.ww + r.m * r.m;  // Q'
  RegQuad w[NQ], ginv_diag[NQ];
#pragma GCC unroll 16
  for (int q = 0; q < NQ; ++q) {
    w[q] = reg_quad_load_cols<D>(saved, q);
    RegQuad diag = {1.0, 1.0, 1.0, 1.0};
    for (int t = 0; t < 4 && 4 * q + t < D; ++t) diag[t] = static_cast<double>(L[(4 * q + t) * (D + 1)]);
    ginv_diag[q] = g / diag;
  }
  double y[4 * NQ];
#pragma GCC unroll 64
  for (int i = 0; i < D; ++i) {
    const T* li = L + i * D;
    T* gi = g_l + i * D;
    const double cw = -scale_l * pi * static_cast<double>(z[i]) * inv_a;
    RegQuad yq = {0.0, 0.0, 0.0, 0.0};
#pragma GCC unroll 16
    for (int q = 0; q < NQ; ++q) {
      RegQuad out = {0.0, 0.0, 0.0, 0.0};
      if (4 * q <= i) {
        const RegQuad l = reg_quad_lower(reg_quad_load_cols<D>(li, q), i, q);
        yq += l * w[q];
        out = reg_quad_lower(cl * l + cw * w[q], i, q);
        if (q == i / 4) out += reg_quad_lane(ginv_diag[q], i % 4);
      }
      reg_quad_store_cols<D>(gi, q, out);
    }
    y[i] = reg_quad_sum(yq) + static_cast<double>(mu[i]) * r.m;
  }
  for (int i = D; i < 4 * NQ; ++i) y[i] = 0.0;
#pragma GCC unroll 16
  for (int q = 0; q < NQ; ++q) {
    const RegQuad zq = reg_quad_load_cols<D>(z, q), mq = reg_quad_load_cols<D>(mu, q);
    const RegQuad vq = (pi * inv_a) * zq;                        // V = u / a
    const RegQuad e = pi * reg_quad_load(y + 4 * q) + (1.0 - qp) * vq;  // E = P Y - V Q' + V
    reg_quad_store_cols<D>(g_z, q, g * (-two_a * vq + (two_b * inv_a) * e));
    reg_quad_store_cols<D>(g_mu, q, g * (-two_b * (pi * mq - r.m * vq)));
  }
  return reg_iso1_dnu(p, D, g, r);
}
#endif  // CHY_QUAD

}  // namespace chyvae_ext
