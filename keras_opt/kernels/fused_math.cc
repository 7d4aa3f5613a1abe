// Element loops of keras_opt's fused optimizer kernels.
//
// Every expression follows TensorFlow's CPU kernel (training_ops.cc) or, for
// the composite paths (sparse Adam, RMSprop without momentum), the order of
// the TensorFlow ops keras_opt emits, one rounding per operation:
// float16 and bfloat16 operations are computed in float and rounded to the
// type after each operation, as Eigen does. Built with -ffp-contract=off so no
// multiply-add is fused. Compiled once per ISA with -DKO_ISA=<name>; all code
// except the two exported functions has internal linkage.
#include "fused_math.h"

#ifndef KO_ISA
#define KO_ISA sse2
#endif
#define KO_CAT2(a, b) a##_##b
#define KO_CAT(a, b) KO_CAT2(a, b)

namespace {

struct H {  // IEEE binary16 bits
  uint16_t b;
};
struct B {  // bfloat16 bits
  uint16_t b;
};

inline uint32_t f2u(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  return u;
}
inline float u2f(uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

// binary16 <-> float, round to nearest even (the rounding Eigen uses).
inline float tof(H h) {
  const uint32_t shifted_exp = 0x7c00u << 13;
  uint32_t o = (uint32_t)(h.b & 0x7fff) << 13;
  const uint32_t exp = shifted_exp & o;
  o += (uint32_t)(127 - 15) << 23;
  if (exp == shifted_exp) {
    o += (uint32_t)(128 - 16) << 23;  // Inf / NaN
  } else if (exp == 0) {
    o += 1u << 23;  // subnormal: renormalise exactly
    o = f2u(u2f(o) - u2f(113u << 23));
  }
  o |= (uint32_t)(h.b & 0x8000) << 16;
  return u2f(o);
}
inline H toH(float x) {
  uint32_t f = f2u(x);
  const uint32_t sign = f & 0x80000000u;
  f ^= sign;
  uint16_t o;
  if (f >= ((uint32_t)(127 + 16) << 23)) {  // >= 65536: Inf, or NaN
    o = (f > (255u << 23)) ? 0x7e00 : 0x7c00;
  } else if (f < (113u << 23)) {  // result is subnormal or zero
    const uint32_t magic = (uint32_t)((127 - 15) + (23 - 10) + 1) << 23;
    o = (uint16_t)(f2u(u2f(f) + u2f(magic)) - magic);
  } else {
    const uint32_t mant_odd = (f >> 13) & 1;
    f += ((uint32_t)(15 - 127) << 23) + 0xfff;
    f += mant_odd;
    o = (uint16_t)(f >> 13);
  }
  H h;
  h.b = (uint16_t)(o | (sign >> 16));
  return h;
}
inline float tof(B v) { return u2f((uint32_t)v.b << 16); }
inline B toB(float x) {
  const uint32_t u = f2u(x);
  B r;
  if (x != x) {
    r.b = (uint16_t)((u >> 16) | 0x0040);  // quiet NaN
  } else {
    r.b = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
  }
  return r;
}

// One rounding per operation.
inline float add(float a, float b) { return a + b; }
inline float sub(float a, float b) { return a - b; }
inline float mul(float a, float b) { return a * b; }
inline float dvd(float a, float b) { return a / b; }
inline float sqr(float a) { return __builtin_sqrtf(a); }
inline bool lt(float a, float b) { return a < b; }
inline float absv(float a) { return __builtin_fabsf(a); }
inline double add(double a, double b) { return a + b; }
inline double sub(double a, double b) { return a - b; }
inline double mul(double a, double b) { return a * b; }
inline double dvd(double a, double b) { return a / b; }
inline double sqr(double a) { return __builtin_sqrt(a); }
inline bool lt(double a, double b) { return a < b; }
inline double absv(double a) { return __builtin_fabs(a); }
#define KO_HALF_OPS(T, TO)                                               \
  inline T add(T a, T b) { return TO(tof(a) + tof(b)); }                 \
  inline T sub(T a, T b) { return TO(tof(a) - tof(b)); }                 \
  inline T mul(T a, T b) { return TO(tof(a) * tof(b)); }                 \
  inline T dvd(T a, T b) { return TO(tof(a) / tof(b)); }                 \
  inline T sqr(T a) { return TO(__builtin_sqrtf(tof(a))); }              \
  inline bool lt(T a, T b) { return tof(a) < tof(b); }                    \
  inline T absv(T a) {                                                    \
    T r;                                                                  \
    r.b = (uint16_t)(a.b & 0x7fff);                                       \
    return r;                                                             \
  }
KO_HALF_OPS(H, toH)
KO_HALF_OPS(B, toB)

template <typename T>
inline T cst(double x);
template <>
inline float cst<float>(double x) {
  return (float)x;
}
template <>
inline double cst<double>(double x) {
  return x;
}
template <>
inline H cst<H>(double x) {
  return toH((float)x);
}
template <>
inline B cst<B>(double x) {
  return toB((float)x);
}

// Eigen's cwiseMax (vhat.cwiseMax(v), tf.maximum(vhat, v)): the first operand
// unless the second is larger.
template <typename T>
inline T maxv(T a, T b) {
  return lt(a, b) ? b : a;
}
// Eigen's sign(): -1, 0 or 1 of the type.
template <typename T>
inline T sgn(T x, T zero, T one, T minus_one) {
  return lt(x, zero) ? minus_one : (lt(zero, x) ? one : zero);
}

// tf.sign: -1, +0 or 1 of the type, and NaN for NaN (Lion's step).
template <typename T>
inline T sign_or_nan(T x, T zero, T one, T minus_one) {
  if (lt(x, zero)) return minus_one;
  if (lt(zero, x)) return one;
  if (lt(x, one)) return zero;  // -0 and +0 give +0
  return x;                     // NaN: no comparison holds
}

// Scalars of one call, computed once (in T, as the TF kernels do).
template <typename T>
struct Scal {
  T c[8];
  T alpha;   // Adam: lr * sqrt(1 - b2p) / (1 - b1p)
  T omb1;    // 1 - b1
  T omb2;    // 1 - b2
  T two_a;   // Ftrl: 2 * l2
  T two_b;   // FtrlV2: 2 * l2_shrinkage
  T omsn;    // Nadam: 1 - m_schedule_new
  T omsn_next;  // Nadam: 1 - m_schedule_new * m_t_1
  T zero, one, minus_one;
};

template <typename T>
Scal<T> make_scal(int rule, const T* c) {
  Scal<T> s;
  const int nc = rule == KO_NADAM ? 8 : 6;
  for (int i = 0; i < nc; ++i) s.c[i] = c[i];
  s.zero = cst<T>(0.0);
  s.one = cst<T>(1.0);
  s.minus_one = cst<T>(-1.0);
  s.alpha = s.omb1 = s.omb2 = s.two_a = s.two_b = s.omsn = s.omsn_next = s.zero;
  if (rule == KO_ADAM || rule == KO_ADAM_AMSGRAD) {
    // alpha = lr() * sqrt(T(1) - beta2_power()) / (T(1) - beta1_power())
    s.alpha = dvd(mul(c[2], sqr(sub(s.one, c[1]))), sub(s.one, c[0]));
    s.omb1 = sub(s.one, c[3]);
    s.omb2 = sub(s.one, c[4]);
  } else if (rule == KO_NADAM) {
    // The scalar ops of nadam.py's _prepare_local (one rounding each in T):
    // 1 - beta_1, 1 - beta_2, 1 - m_schedule_new, 1 - m_schedule_new * m_t_1.
    s.omb1 = sub(s.one, c[1]);
    s.omb2 = sub(s.one, c[2]);
    s.omsn = sub(s.one, c[4]);
    s.omsn_next = sub(s.one, mul(c[4], c[5]));
  } else if (rule == KO_RMSPROP || rule == KO_RMSPROP_CENTERED) {
    s.omb1 = sub(s.one, c[1]);  // 1 - rho
  } else if (rule == KO_FTRL || rule == KO_FTRL_V2) {
    const T two = cst<T>(2.0);
    s.two_a = mul(two, c[2]);
    if (rule == KO_FTRL_V2) s.two_b = mul(two, c[4]);
  }
  return s;
}

template <typename T, int R>
void run(const KoTensor& t, int64_t lo, int64_t hi, const Scal<T>& s) {
  T* __restrict__ w = static_cast<T*>(t.var);
  T* __restrict__ s0 = static_cast<T*>(t.slot[0]);
  T* __restrict__ s1 = static_cast<T*>(t.slot[1]);
  T* __restrict__ s2 = static_cast<T*>(t.slot[2]);
  const T* __restrict__ gp = static_cast<const T*>(t.grad);
  if (R == KO_ADAM || R == KO_ADAM_AMSGRAD) {
    const T omb1 = s.omb1, omb2 = s.omb2, alpha = s.alpha, eps = s.c[5];
    for (int64_t i = lo; i < hi; ++i) {
      const T g = gp[i];
      const T m = add(s0[i], mul(sub(g, s0[i]), omb1));
      const T v = add(s1[i], mul(sub(mul(g, g), s1[i]), omb2));
      s0[i] = m;
      s1[i] = v;
      T d = v;
      if (R == KO_ADAM_AMSGRAD) {
        d = maxv(s2[i], v);
        s2[i] = d;
      }
      w[i] = sub(w[i], dvd(mul(m, alpha), add(sqr(d), eps)));
    }
  } else if (R == KO_LION) {
    // lion.py: step = lr * sign(m * b1 + g * (1 - b1)); var -= step;
    // m = m * b2 + g * (1 - b2), both from the old m.
    const T lr = s.c[0], b1 = s.c[1], omb1 = s.c[2], b2 = s.c[3], omb2 = s.c[4];
    const T zero = s.zero, one = s.one, m1 = s.minus_one;
    for (int64_t i = lo; i < hi; ++i) {
      const T g = gp[i];
      const T m = s0[i];
      const T step = mul(lr, sign_or_nan(add(mul(m, b1), mul(g, omb1)), zero, one, m1));
      w[i] = sub(w[i], step);
      s0[i] = add(mul(m, b2), mul(g, omb2));
    }
  } else if (R == KO_NADAM) {
    // nadam.py's _resource_apply_dense, op by op:
    // g' = g / (1 - msn); m = b1 * m + (1 - b1) * g; m' = m / (1 - msn_next);
    // v = b2 * v + (1 - b2) * square(g); v' = v / v_den;
    // m_bar = (1 - m_t) * g' + m_t_1 * m'; var = var - lr * m_bar / (sqrt(v') + eps)
    const T lr = s.c[0], b1 = s.c[1], b2 = s.c[2], eps = s.c[3], mt1 = s.c[5];
    const T omm_t = s.c[6], vden = s.c[7], omb1 = s.omb1, omb2 = s.omb2;
    const T omsn = s.omsn, omsn_next = s.omsn_next;
    for (int64_t i = lo; i < hi; ++i) {
      const T g = gp[i];
      const T g_prime = dvd(g, omsn);
      const T m = add(mul(b1, s0[i]), mul(omb1, g));
      s0[i] = m;
      const T m_prime = dvd(m, omsn_next);
      const T v = add(mul(b2, s1[i]), mul(omb2, mul(g, g)));
      s1[i] = v;
      const T v_prime = dvd(v, vden);
      const T m_bar = add(mul(omm_t, g_prime), mul(mt1, m_prime));
      w[i] = sub(w[i], dvd(mul(lr, m_bar), add(sqr(v_prime), eps)));
    }
  } else if (R == KO_MOMENTUM || R == KO_NESTEROV) {
    const T lr = s.c[0], mom = s.c[1];
    for (int64_t i = lo; i < hi; ++i) {
      const T g = gp[i];
      const T a = sub(mul(s0[i], mom), mul(g, lr));
      s0[i] = a;
      if (R == KO_NESTEROV) {
        w[i] = add(w[i], sub(mul(a, mom), mul(g, lr)));
      } else {
        w[i] = add(w[i], a);
      }
    }
  } else if (R == KO_SGD) {
    const T lr = s.c[0];
    for (int64_t i = lo; i < hi; ++i) w[i] = sub(w[i], mul(gp[i], lr));
  } else if (R == KO_ADAGRAD_V2) {
    const T lr = s.c[0], eps = s.c[1];
    for (int64_t i = lo; i < hi; ++i) {
      const T g = gp[i];
      const T a = add(s0[i], mul(g, g));
      s0[i] = a;
      w[i] = sub(w[i], dvd(mul(g, lr), add(sqr(a), eps)));
    }
  } else if (R == KO_RMSPROP || R == KO_RMSPROP_CENTERED) {
    const T lr = s.c[0], mom = s.c[2], eps = s.c[3], omr = s.omb1;
    for (int64_t i = lo; i < hi; ++i) {
      const T g = gp[i];
      const T ms = add(s0[i], mul(sub(mul(g, g), s0[i]), omr));
      s0[i] = ms;
      T denom;
      if (R == KO_RMSPROP_CENTERED) {
        const T mg = add(s2[i], mul(sub(g, s2[i]), omr));
        s2[i] = mg;
        denom = add(sub(ms, mul(mg, mg)), eps);
      } else {
        denom = add(ms, eps);
      }
      const T mo = add(mul(s1[i], mom), dvd(mul(g, lr), sqr(denom)));
      s1[i] = mo;
      w[i] = sub(w[i], mo);
    }
  } else if (R == KO_RMSPROP_PLAIN || R == KO_RMSPROP_PLAIN_CENTERED) {
    // rms = rho * rms + (1 - rho) * square(g); [mg = rho * mg + (1 - rho) * g;
    // d = rms - square(mg)]; var = var - lr * g / (sqrt(d) + eps)
    const T lr = s.c[0], rho = s.c[1], omr = s.c[2], eps = s.c[3];
    for (int64_t i = lo; i < hi; ++i) {
      const T g = gp[i];
      const T ms = add(mul(rho, s0[i]), mul(omr, mul(g, g)));
      s0[i] = ms;
      T d = ms;
      if (R == KO_RMSPROP_PLAIN_CENTERED) {
        const T mg = add(mul(rho, s1[i]), mul(omr, g));
        s1[i] = mg;
        d = sub(ms, mul(mg, mg));
      }
      w[i] = sub(w[i], dvd(mul(lr, g), add(sqr(d), eps)));
    }
  } else if (R == KO_FTRL || R == KO_FTRL_V2) {
    // learning_rate_power == -0.5 (checked by the op).
    const T lr = s.c[0], l1 = s.c[1], two_l2 = s.two_a, two_l2s = s.two_b;
    const T zero = s.zero, one = s.one, m1 = s.minus_one;
    for (int64_t i = lo; i < hi; ++i) {
      const T g = gp[i];
      const T a = s0[i];
      const T x0 = w[i];
      const T na = add(a, mul(g, g));
      const T gs = (R == KO_FTRL_V2) ? add(g, mul(two_l2s, x0)) : g;
      const T l = add(s1[i], sub(gs, mul(dvd(sub(sqr(na), sqr(a)), lr), x0)));
      s1[i] = l;
      const T x = sub(mul(l1, sgn(l, zero, one, m1)), l);
      const T y = add(dvd(sqr(na), lr), two_l2);
      w[i] = lt(l1, absv(l)) ? dvd(x, y) : zero;
      s0[i] = na;
    }
  }
}

template <typename T>
void dense(int rule, const KoTensor* ts, const int64_t* starts, int64_t n, const void* coefs,
           int64_t begin, int64_t end) {
  const Scal<T> s = make_scal<T>(rule, static_cast<const T*>(coefs));
  // Last tensor that starts at or before `begin`.
  int64_t lo = 0, hi = n;
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (starts[mid] <= begin) lo = mid; else hi = mid;
  }
  for (int64_t i = lo; i < n && starts[i] < end; ++i) {
    const int64_t a = (begin > starts[i] ? begin : starts[i]) - starts[i];
    const int64_t b = (end < starts[i + 1] ? end : starts[i + 1]) - starts[i];
    if (a >= b) continue;
    switch (rule) {
#define KO_CASE(R) \
  case R:          \
    run<T, R>(ts[i], a, b, s); \
    break;
      KO_CASE(KO_ADAM)
      KO_CASE(KO_ADAM_AMSGRAD)
      KO_CASE(KO_MOMENTUM)
      KO_CASE(KO_NESTEROV)
      KO_CASE(KO_ADAGRAD_V2)
      KO_CASE(KO_RMSPROP)
      KO_CASE(KO_RMSPROP_CENTERED)
      KO_CASE(KO_RMSPROP_PLAIN)
      KO_CASE(KO_RMSPROP_PLAIN_CENTERED)
      KO_CASE(KO_FTRL)
      KO_CASE(KO_FTRL_V2)
      KO_CASE(KO_SGD)
      KO_CASE(KO_NADAM)
      KO_CASE(KO_LION)
#undef KO_CASE
      default:
        break;
    }
  }
}

template <typename T, bool AMS>
void sparse_adam(T* __restrict__ w, T* __restrict__ m, T* __restrict__ v, T* __restrict__ vh,
                 const T* __restrict__ ga, const T* __restrict__ gb, const int64_t* pos,
                 int64_t row_size, const T* c, int64_t r0, int64_t r1) {
  // Composite ops: m = m * b1; m[idx] += ga (= g * (1 - b1)); v = v * b2;
  // v[idx] += gb (= g * g * (1 - b2)); [vhat = max(vhat, v)];
  // var -= lr * m / (sqrt(v) + eps). ga and gb come from TF ops, so graph
  // rewrites of the composite path (e.g. Grappler's) apply to them alike.
  const T b1 = c[0], b2 = c[1], lr = c[2], eps = c[3];
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t base = r * row_size;
    const int64_t p = pos[r];
    if (p >= 0) {
      const T* gar = ga + p * row_size;
      const T* gbr = gb + p * row_size;
      for (int64_t j = 0; j < row_size; ++j) {
        const int64_t i = base + j;
        const T mm = add(mul(m[i], b1), gar[j]);
        const T vv = add(mul(v[i], b2), gbr[j]);
        m[i] = mm;
        v[i] = vv;
        T d = vv;
        if (AMS) {
          d = maxv(vh[i], vv);
          vh[i] = d;
        }
        w[i] = sub(w[i], dvd(mul(lr, mm), add(sqr(d), eps)));
      }
    } else {
      for (int64_t j = 0; j < row_size; ++j) {
        const int64_t i = base + j;
        const T mm = mul(m[i], b1);
        const T vv = mul(v[i], b2);
        m[i] = mm;
        v[i] = vv;
        T d = vv;
        if (AMS) {
          d = maxv(vh[i], vv);
          vh[i] = d;
        }
        w[i] = sub(w[i], dvd(mul(lr, mm), add(sqr(d), eps)));
      }
    }
  }
}

template <typename T>
void sparse_adam_t(void* w, void* m, void* v, void* vh, const void* g, const void* g2,
                   const int64_t* pos, int64_t row_size, const void* c, int64_t r0, int64_t r1) {
  if (vh) {
    sparse_adam<T, true>(static_cast<T*>(w), static_cast<T*>(m), static_cast<T*>(v),
                         static_cast<T*>(vh), static_cast<const T*>(g),
                         static_cast<const T*>(g2), pos, row_size,
                         static_cast<const T*>(c), r0, r1);
  } else {
    sparse_adam<T, false>(static_cast<T*>(w), static_cast<T*>(m), static_cast<T*>(v), nullptr,
                          static_cast<const T*>(g), static_cast<const T*>(g2), pos, row_size,
                          static_cast<const T*>(c),
                          r0, r1);
  }
}

template <typename T, bool CENTERED>
void sparse_rms(T* __restrict__ w, T* __restrict__ ms, T* __restrict__ mg,
                const T* __restrict__ msa, const T* __restrict__ mga, const T* __restrict__ num,
                const int64_t* pos, int64_t row_size, const T* c, int64_t r0, int64_t r1) {
  // Composite ops: ms = ms * rho; ms[idx] += g * g * (1 - rho); [mg likewise
  // with g * (1 - rho)]; var[idx] += (-lr * g) / (sqrt(ms[idx] [- mg[idx]^2]) + eps).
  const T rho = c[0], eps = c[1];
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t base = r * row_size;
    const int64_t p = pos[r];
    if (p >= 0) {
      const int64_t q = p * row_size;
      for (int64_t j = 0; j < row_size; ++j) {
        const int64_t i = base + j;
        const T s = add(mul(ms[i], rho), msa[q + j]);
        ms[i] = s;
        T d = s;
        if (CENTERED) {
          const T a = add(mul(mg[i], rho), mga[q + j]);
          mg[i] = a;
          d = sub(s, mul(a, a));
        }
        w[i] = add(w[i], dvd(num[q + j], add(sqr(d), eps)));
      }
    } else {
      for (int64_t j = 0; j < row_size; ++j) {
        const int64_t i = base + j;
        ms[i] = mul(ms[i], rho);
        if (CENTERED) mg[i] = mul(mg[i], rho);
      }
    }
  }
}

template <typename T>
void sparse_rms_t(void* w, void* ms, void* mg, const void* msa, const void* mga, const void* num,
                  const int64_t* pos, int64_t row_size, const void* c, int64_t r0, int64_t r1) {
  if (mg) {
    sparse_rms<T, true>(static_cast<T*>(w), static_cast<T*>(ms), static_cast<T*>(mg),
                        static_cast<const T*>(msa), static_cast<const T*>(mga),
                        static_cast<const T*>(num), pos, row_size, static_cast<const T*>(c), r0,
                        r1);
  } else {
    sparse_rms<T, false>(static_cast<T*>(w), static_cast<T*>(ms), nullptr,
                         static_cast<const T*>(msa), nullptr, static_cast<const T*>(num), pos,
                         row_size, static_cast<const T*>(c), r0, r1);
  }
}

template <typename T>
void sparse_nadam(T* __restrict__ w, T* __restrict__ m, T* __restrict__ v,
                  const T* __restrict__ gt, const T* __restrict__ ma, const T* __restrict__ va,
                  const int64_t* pos, int64_t row_size, const T* c, int64_t r0, int64_t r1) {
  // nadam.py's composite sparse ops: m = m * b1; m[idx] += ma (= g * (1 - b1));
  // v = v * b2; v[idx] += va (= g * g * (1 - b2)); on the rows idx:
  // m_bar = gt (= (1 - m_t) * (g / (1 - msn))) + m_t_1 * (m / omsn_next);
  // var[idx] += (neg_lr * m_bar) / (sqrt(v / v_den) + eps). The row terms gt,
  // ma, va come from TF ops, as on the composite path.
  const T b1 = c[0], b2 = c[1], omsn_next = c[2], vden = c[3], mt1 = c[4], neg_lr = c[5];
  const T eps = c[6];
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t base = r * row_size;
    const int64_t p = pos[r];
    if (p >= 0) {
      const int64_t q = p * row_size;
      for (int64_t j = 0; j < row_size; ++j) {
        const int64_t i = base + j;
        const T mm = add(mul(m[i], b1), ma[q + j]);
        m[i] = mm;
        const T m_bar = add(gt[q + j], mul(mt1, dvd(mm, omsn_next)));
        const T vv = add(mul(v[i], b2), va[q + j]);
        v[i] = vv;
        const T denom = add(sqr(dvd(vv, vden)), eps);
        w[i] = add(w[i], dvd(mul(neg_lr, m_bar), denom));
      }
    } else {
      for (int64_t j = 0; j < row_size; ++j) {
        const int64_t i = base + j;
        m[i] = mul(m[i], b1);
        v[i] = mul(v[i], b2);
      }
    }
  }
}

template <typename T>
void sparse_nadam_t(void* w, void* m, void* v, const void* gt, const void* ma, const void* va,
                    const int64_t* pos, int64_t row_size, const void* c, int64_t r0, int64_t r1) {
  sparse_nadam<T>(static_cast<T*>(w), static_cast<T*>(m), static_cast<T*>(v),
                  static_cast<const T*>(gt), static_cast<const T*>(ma),
                  static_cast<const T*>(va), pos, row_size, static_cast<const T*>(c), r0, r1);
}

}  // namespace

extern "C" void KO_CAT(ko_sparse_nadam, KO_ISA)(int dtype, void* w, void* m, void* v,
                                                const void* gt, const void* ma, const void* va,
                                                const int64_t* pos, int64_t row_size,
                                                const void* c, int64_t r0, int64_t r1) {
  switch (dtype) {
    case KO_F16: sparse_nadam_t<H>(w, m, v, gt, ma, va, pos, row_size, c, r0, r1); break;
    case KO_BF16: sparse_nadam_t<B>(w, m, v, gt, ma, va, pos, row_size, c, r0, r1); break;
    case KO_F32: sparse_nadam_t<float>(w, m, v, gt, ma, va, pos, row_size, c, r0, r1); break;
    case KO_F64: sparse_nadam_t<double>(w, m, v, gt, ma, va, pos, row_size, c, r0, r1); break;
    default: break;
  }
}

extern "C" void KO_CAT(ko_sparse_rms, KO_ISA)(int dtype, void* w, void* ms, void* mg,
                                              const void* msa, const void* mga, const void* num,
                                              const int64_t* pos, int64_t row_size,
                                              const void* c, int64_t r0, int64_t r1) {
  switch (dtype) {
    case KO_F16: sparse_rms_t<H>(w, ms, mg, msa, mga, num, pos, row_size, c, r0, r1); break;
    case KO_BF16: sparse_rms_t<B>(w, ms, mg, msa, mga, num, pos, row_size, c, r0, r1); break;
    case KO_F32: sparse_rms_t<float>(w, ms, mg, msa, mga, num, pos, row_size, c, r0, r1); break;
    case KO_F64: sparse_rms_t<double>(w, ms, mg, msa, mga, num, pos, row_size, c, r0, r1); break;
    default: break;
  }
}

extern "C" void KO_CAT(ko_dense, KO_ISA)(int rule, int dtype, const KoTensor* ts,
                                         const int64_t* starts, int64_t n, const void* coefs,
                                         int64_t begin, int64_t end) {
  switch (dtype) {
    case KO_F16: dense<H>(rule, ts, starts, n, coefs, begin, end); break;
    case KO_BF16: dense<B>(rule, ts, starts, n, coefs, begin, end); break;
    case KO_F32: dense<float>(rule, ts, starts, n, coefs, begin, end); break;
    case KO_F64: dense<double>(rule, ts, starts, n, coefs, begin, end); break;
    default: break;
  }
}

extern "C" void KO_CAT(ko_sparse_adam, KO_ISA)(int dtype, void* w, void* m, void* v, void* vh,
                                               const void* g, const void* g2,
                                               const int64_t* pos,
                                               int64_t row_size, const void* c, int64_t r0,
                                               int64_t r1) {
  switch (dtype) {
    case KO_F16: sparse_adam_t<H>(w, m, v, vh, g, g2, pos, row_size, c, r0, r1); break;
    case KO_BF16: sparse_adam_t<B>(w, m, v, vh, g, g2, pos, row_size, c, r0, r1); break;
    case KO_F32: sparse_adam_t<float>(w, m, v, vh, g, g2, pos, row_size, c, r0, r1); break;
    case KO_F64: sparse_adam_t<double>(w, m, v, vh, g, g2, pos, row_size, c, r0, r1); break;
    default: break;
  }
}
