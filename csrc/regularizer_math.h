// Per-datapoint CHyVAE regulariser R and its gradients, written once for CPU and CUDA.
//
// Notation follows SPEC 1.3, generalised to K posterior samples with the Woodbury identity:
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

#if defined(__CUDACC__)
#define CHY_HD __host__ __device__ __forceinline__
#else
#define CHY_HD inline
#endif

namespace chyvae_ext {

// Per-call scalars, computed once on the host from nu, d, K and the prior.
struct RegParams {
  int d;
  int K;
  double p_iso;         // P = p_iso * I when the prior is isotropic (prec == nullptr)
  double alpha;         // (nu + 1) / 2
  double beta;          // (nu + K) / 2
  double s;             // Psi = s * Sigma0, s = max(nu - d - 1, 1)
  double ds_dnu;        // 1 when nu - d - 1 > 1, else 0
  double log_det_psi;   // log|Psi|
  double constant;      // c(nu, Psi, d, K), or 0 without constants
  double dconst_dnu;    // total derivative of c with respect to nu, or 0 without constants
};

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

// out = P x (P is d x d row-major in double, or p_iso * I when prec == nullptr).
template <typename T>
CHY_HD void reg_apply_p(int d, const double* prec, double p_iso, const T* x, double* out) {
  if (prec == nullptr) {
    for (int i = 0; i < d; ++i) out[i] = p_iso * static_cast<double>(x[i]);
    return;
  }
  for (int i = 0; i < d; ++i) {
    double acc = 0.0;
    for (int k = 0; k < d; ++k) acc += prec[i * d + k] * static_cast<double>(x[k]);
    out[i] = acc;
  }
}

// (P L)_ij for j <= i; L is lower-triangular so only rows k >= j contribute.
template <typename T>
CHY_HD double reg_pl(int d, const double* prec, double p_iso, const T* L, int i, int j) {
  if (prec == nullptr) return p_iso * static_cast<double>(L[i * d + j]);
  double acc = 0.0;
  for (int k = j; k < d; ++k) acc += prec[i * d + k] * static_cast<double>(L[k * d + j]);
  return acc;
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
  double sum_log_l;  // sum_i log L_ii = log|C| / 2
};

// Fills U, W, pmu, m, G, C, H and Q' of the workspace and returns the scalars.
template <typename T>
CHY_HD RegState reg_state(const RegParams& p, const T* mu, const T* L, const T* z,
                          const double* prec, const RegWorkspace& w_) {
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

  double tr_lpl = 0.0, mu_p_mu = 0.0, sum_log_l = 0.0;
  for (int i = 0; i < d; ++i) {
    mu_p_mu += static_cast<double>(mu[i]) * pmu[i];
    sum_log_l += log(static_cast<double>(L[i * d + i]));
    for (int j = 0; j <= i; ++j) tr_lpl += static_cast<double>(L[i * d + j]) * reg_pl(d, prec, p.p_iso, L, i, j);
  }
  for (int k = 0; k < K; ++k) {
    const double* u = U + k * d;
    double* w = W + k * d;
    double mk = 0.0;
    for (int j = 0; j < d; ++j) {
      double acc = 0.0;
      for (int i = j; i < d; ++i) acc += static_cast<double>(L[i * d + j]) * u[i];
      w[j] = acc;
      mk += static_cast<double>(mu[j]) * u[j];
    }
    m[k] = mk;
    for (int l = 0; l <= k; ++l) {
      double g = (k == l) ? 1.0 : 0.0;
      for (int i = 0; i < d; ++i) g += static_cast<double>(z[k * d + i]) * U[l * d + i];
      G[k * K + l] = g;
      G[l * K + k] = g;
    }
  }
  for (int k = 0; k < K; ++k) {
    for (int l = 0; l <= k; ++l) {
      double q = m[k] * m[l];
      for (int j = 0; j < d; ++j) q += W[k * d + j] * W[l * d + j];
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
  const RegState st = reg_state(p, mu, L, z, prec, RegWorkspace(ws, p.d, p.K));
  return -p.alpha * (p.log_det_psi + st.log_det_g) - p.beta * st.trace + st.sum_log_l + p.constant;
}

// Writes g * dR/d(mu, L, z) and returns g * dR/dnu for one datapoint.
template <typename T>
CHY_HD double reg_backward_point(const RegParams& p, double g, const T* mu, const T* L, const T* z,
                                 const double* prec, double* ws, T* g_mu, T* g_l, T* g_z) {
  const int d = p.d, K = p.K;
  const RegWorkspace w_(ws, d, K);
  const RegState st = reg_state(p, mu, L, z, prec, w_);
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
  // E_k = P (L W_k + mu m_k) - sum_j V_j Q'_jk + V_k
  for (int k = 0; k < K; ++k) {
    for (int i = 0; i < d; ++i) {
      double acc = static_cast<double>(mu[i]) * m[k];
      for (int j = 0; j <= i; ++j) acc += static_cast<double>(L[i * d + j]) * W[k * d + j];
      y[i] = acc;
    }
    reg_apply_p(d, prec, p.p_iso, y, E + k * d);
    for (int i = 0; i < d; ++i) {
      double acc = V[k * d + i];
      for (int j = 0; j < K; ++j) acc -= V[j * d + i] * Qp[j * K + k];
      E[k * d + i] += acc;
    }
  }
  const double two_a = 2.0 * p.alpha, two_b = 2.0 * p.beta;
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
  for (int i = 0; i < d; ++i) {
    for (int j = 0; j <= i; ++j) {
      double vw = 0.0;
      for (int k = 0; k < K; ++k) vw += V[k * d + i] * W[k * d + j];
      double v = -two_b * (reg_pl(d, prec, p.p_iso, L, i, j) - vw);
      if (i == j) v += 1.0 / static_cast<double>(L[i * d + i]);
      g_l[i * d + j] = static_cast<T>(g * v);
    }
    for (int j = i + 1; j < d; ++j) g_l[i * d + j] = static_cast<T>(0);
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

}  // namespace chyvae_ext
