// Interface between the TensorFlow op library (fused_ops.cc) and the element
// loops (fused_math.cc). fused_math.cc is compiled once per instruction set
// (KO_ISA = sse2, avx2, avx512) and includes no TensorFlow or Eigen header, so
// the objects share no inline code that could be linked from the wrong ISA.
#ifndef KERAS_OPT_KERNELS_FUSED_MATH_H_
#define KERAS_OPT_KERNELS_FUSED_MATH_H_

#include <stdint.h>

extern "C" {

// Update rules of KerasOptFusedApply (the slot order of each is in dispatch.py).
enum KoRule {
  KO_ADAM = 0,              // slots m, v;        coefs b1p, b2p, lr, b1, b2, eps
  KO_ADAM_AMSGRAD = 1,      // slots m, v, vhat;  coefs as KO_ADAM
  KO_MOMENTUM = 2,          // slots accum;       coefs lr, momentum
  KO_NESTEROV = 3,          // slots accum;       coefs lr, momentum
  KO_ADAGRAD_V2 = 4,        // slots accum;       coefs lr, eps
  KO_RMSPROP = 5,           // slots ms, mom;     coefs lr, rho, momentum, eps
  KO_RMSPROP_CENTERED = 6,  // slots ms, mom, mg; coefs lr, rho, momentum, eps
  KO_RMSPROP_PLAIN = 7,     // slots ms;          coefs lr, rho, one_minus_rho, eps
  KO_RMSPROP_PLAIN_CENTERED = 8,  // slots ms, mg; coefs as KO_RMSPROP_PLAIN
  KO_FTRL = 9,              // slots accum, linear; coefs lr, l1, l2, lr_power
  KO_FTRL_V2 = 10,          // as KO_FTRL plus l2_shrinkage
  KO_SGD = 11,              // no slots;          coefs lr
  // Nadam's composite ops (nadam.py): slots m, v; coefs lr, b1, b2, eps,
  // m_schedule_new, m_t_1, one_minus_m_t, v_t_prime_denominator.
  KO_NADAM = 12,
  // Lion (lion.py): slots momentum; coefs lr, b1, 1 - b1, b2, 1 - b2.
  KO_LION = 13,
  KO_NUM_RULES = 14
};

// dtype codes
enum KoDtype { KO_F16 = 0, KO_BF16 = 1, KO_F32 = 2, KO_F64 = 3 };

struct KoTensor {
  void* var;
  void* slot[3];
  const void* grad;
  int64_t size;
};

// Updates the elements [begin, end) of the concatenation of `tensors`
// (starts[i] is where tensor i begins; starts[n] is the total). `coefs` holds
// the rule's scalar coefficients as values of the dtype.
typedef void (*KoDenseFn)(int rule, int dtype, const KoTensor* tensors,
                          const int64_t* starts, int64_t n, const void* coefs,
                          int64_t begin, int64_t end);

// Exact sparse Adam over rows [row_begin, row_end): every row of m and v is
// decayed; rows with pos[row] >= 0 add row pos[row] of m_add / v_add; every
// row of var is updated. coefs: b1, b2, lr, eps. vhat may be null.
typedef void (*KoSparseAdamFn)(int dtype, void* var, void* m, void* v, void* vhat,
                               const void* m_add, const void* v_add, const int64_t* pos,
                               int64_t row_size,
                               const void* coefs, int64_t row_begin, int64_t row_end);

// Exact sparse RMSprop without momentum over rows [row_begin, row_end): every
// row of ms (and mg) is decayed by rho; rows with pos[row] >= 0 add row pos of
// ms_add (mg_add) and update var: var += num / (sqrt(ms [- mg^2]) + eps).
// coefs: rho, eps. mg and mg_add are null unless centered.
typedef void (*KoSparseRmsFn)(int dtype, void* var, void* ms, void* mg, const void* ms_add,
                              const void* mg_add, const void* num, const int64_t* pos,
                              int64_t row_size, const void* coefs, int64_t row_begin,
                              int64_t row_end);

// Exact sparse Nadam (nadam.py's composite ops) over rows [row_begin, row_end):
// every row of m and v is decayed (m * b1, v * b2); rows with pos[row] >= 0
// add row pos of m_add / v_add and update var:
// var += (neg_lr * (g_term + m_t_1 * (m / omsn_next))) / (sqrt(v / v_den) + eps).
// coefs: b1, b2, omsn_next, v_den, m_t_1, neg_lr, eps.
typedef void (*KoSparseNadamFn)(int dtype, void* var, void* m, void* v, const void* g_term,
                                const void* m_add, const void* v_add, const int64_t* pos,
                                int64_t row_size, const void* coefs, int64_t row_begin,
                                int64_t row_end);

void ko_sparse_nadam_sse2(int, void*, void*, void*, const void*, const void*, const void*,
                          const int64_t*, int64_t, const void*, int64_t, int64_t);
void ko_sparse_nadam_avx2(int, void*, void*, void*, const void*, const void*, const void*,
                          const int64_t*, int64_t, const void*, int64_t, int64_t);
void ko_sparse_nadam_avx512(int, void*, void*, void*, const void*, const void*, const void*,
                            const int64_t*, int64_t, const void*, int64_t, int64_t);
void ko_sparse_rms_sse2(int, void*, void*, void*, const void*, const void*, const void*,
                        const int64_t*, int64_t, const void*, int64_t, int64_t);
void ko_sparse_rms_avx2(int, void*, void*, void*, const void*, const void*, const void*,
                        const int64_t*, int64_t, const void*, int64_t, int64_t);
void ko_sparse_rms_avx512(int, void*, void*, void*, const void*, const void*, const void*,
                          const int64_t*, int64_t, const void*, int64_t, int64_t);
void ko_dense_sse2(int, int, const KoTensor*, const int64_t*, int64_t, const void*,
                   int64_t, int64_t);
void ko_dense_avx2(int, int, const KoTensor*, const int64_t*, int64_t, const void*,
                   int64_t, int64_t);
void ko_dense_avx512(int, int, const KoTensor*, const int64_t*, int64_t, const void*,
                     int64_t, int64_t);
void ko_sparse_adam_sse2(int, void*, void*, void*, void*, const void*, const void*, const int64_t*,
                         int64_t, const void*, int64_t, int64_t);
void ko_sparse_adam_avx2(int, void*, void*, void*, void*, const void*, const void*, const int64_t*,
                         int64_t, const void*, int64_t, int64_t);
void ko_sparse_adam_avx512(int, void*, void*, void*, void*, const void*, const void*, const int64_t*,
                           int64_t, const void*, int64_t, int64_t);
}

#endif  // KERAS_OPT_KERNELS_FUSED_MATH_H_
