// keras_opt fused optimizer ops: one op call updates a list of variables.
//
// KerasOptFusedApply(var: N resources, slots: S resources (slot-major),
//                    grad: N tensors, coefs: C scalars; rule, use_locking)
// KerasOptFusedSparseApplyAdam(var, m, v, vhat: A resources, the rows to add
//                              to m and v (g * (1 - b1), g * g * (1 - b2),
//                              computed by TF ops as the composite path does),
//                              unique indices, 4 scalars)
// KerasOptVarGroup(members: N resources; names) -> a handle to a fixed list
//                  of variables (a step's variables, then their slots)
// KerasOptFusedApplyGroup(group, grad: N tensors, coefs: C scalars; rule,
//                         use_locking): KerasOptFusedApply on a group's variables
// KerasOptFusedIsa() -> the instruction set picked at load time.
//
// Locking and buffer handling follow TensorFlow's training kernels
// (training_op_helpers.h): every variable is looked up, its mutex taken
// exclusively in ascending address order, and a buffer that is shared with a
// reader (or in copy-on-read mode) is copied before it is updated.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fused_math.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"

namespace tensorflow {
namespace {

REGISTER_OP("KerasOptFusedApply")
    .Input("var: N * resource")
    .Input("slots: S * resource")
    .Input("grad: N * T")
    .Input("coefs: C * T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("rule: int")
    .Attr("N: int >= 1")
    .Attr("S: int >= 0")
    .Attr("C: int >= 0")
    .Attr("use_locking: bool = false")
    .SetIsStateful()
    .SetShapeFn(shape_inference::NoOutputs);

REGISTER_OP("KerasOptVarGroup")
    .Input("members: N * resource")
    .Output("group: resource")
    .Attr("N: int >= 0")
    .Attr("names: list(string) = []")
    .SetIsStateful()
    .SetShapeFn(shape_inference::ScalarShape);

REGISTER_OP("KerasOptFusedApplyGroup")
    .Input("group: resource")
    .Input("grad: N * T")
    .Input("coefs: C * T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("rule: int")
    .Attr("N: int >= 1")
    .Attr("C: int >= 0")
    .Attr("use_locking: bool = false")
    .SetIsStateful()
    .SetShapeFn(shape_inference::NoOutputs);

REGISTER_OP("KerasOptFusedSparseApplyAdam")
    .Input("var: resource")
    .Input("m: resource")
    .Input("v: resource")
    .Input("vhat: A * resource")
    .Input("m_scaled: T")
    .Input("v_scaled: T")
    .Input("indices: Tindices")
    .Input("beta1: T")
    .Input("beta2: T")
    .Input("lr: T")
    .Input("epsilon: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tindices: {int32, int64}")
    .Attr("A: int >= 0")
    .Attr("use_locking: bool = false")
    .SetIsStateful()
    .SetShapeFn(shape_inference::NoOutputs);

REGISTER_OP("KerasOptFusedSparseApplyRMSProp")
    .Input("var: resource")
    .Input("ms: resource")
    .Input("mg: A * resource")
    .Input("ms_add: T")
    .Input("mg_add: A * T")
    .Input("num: T")
    .Input("indices: Tindices")
    .Input("rho: T")
    .Input("epsilon: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tindices: {int32, int64}")
    .Attr("A: int >= 0")
    .Attr("use_locking: bool = false")
    .SetIsStateful()
    .SetShapeFn(shape_inference::NoOutputs);

REGISTER_OP("KerasOptFusedIsa")
    .Output("isa: string")
    .SetShapeFn(shape_inference::ScalarShape);

struct Isa {
  const char* name;
  KoDenseFn dense;
  KoSparseAdamFn sparse_adam;
  KoSparseRmsFn sparse_rms;
  KoSparseNadamFn sparse_nadam;
};

// Picked once at load time from the CPU (KERAS_OPT_FUSED_ISA may lower it).
const Isa& PickIsa() {
  static const Isa isa = [] {
    __builtin_cpu_init();
    const char* env = std::getenv("KERAS_OPT_FUSED_ISA");
    const std::string want = env ? env : "";
    const bool avx512 = __builtin_cpu_supports("avx512f") && want != "avx2" && want != "sse2";
    const bool avx2 = __builtin_cpu_supports("avx2") && want != "sse2";
    if (avx512) {
      return Isa{"avx512", ko_dense_avx512, ko_sparse_adam_avx512, ko_sparse_rms_avx512,
                 ko_sparse_nadam_avx512};
    }
    if (avx2) {
      return Isa{"avx2", ko_dense_avx2, ko_sparse_adam_avx2, ko_sparse_rms_avx2,
                 ko_sparse_nadam_avx2};
    }
    return Isa{"sse2", ko_dense_sse2, ko_sparse_adam_sse2, ko_sparse_rms_sse2,
               ko_sparse_nadam_sse2};
  }();
  return isa;
}

template <typename T>
constexpr int KoDtypeOf();
template <>
constexpr int KoDtypeOf<Eigen::half>() { return KO_F16; }
template <>
constexpr int KoDtypeOf<Eigen::bfloat16>() { return KO_BF16; }
template <>
constexpr int KoDtypeOf<float>() { return KO_F32; }
template <>
constexpr int KoDtypeOf<double>() { return KO_F64; }

int NumSlots(int rule) {
  switch (rule) {
    case KO_SGD: return 0;
    case KO_MOMENTUM: case KO_NESTEROV: case KO_ADAGRAD_V2: case KO_RMSPROP_PLAIN: return 1;
    case KO_LION: return 1;
    case KO_ADAM: case KO_RMSPROP: case KO_RMSPROP_PLAIN_CENTERED: case KO_FTRL:
    case KO_FTRL_V2: return 2;
    case KO_NADAM: return 2;
    case KO_ADAM_AMSGRAD: case KO_RMSPROP_CENTERED: return 3;
    default: return -1;
  }
}
int NumCoefs(int rule) {
  switch (rule) {
    case KO_SGD: return 1;
    case KO_MOMENTUM: case KO_NESTEROV: case KO_ADAGRAD_V2: return 2;
    case KO_RMSPROP: case KO_RMSPROP_CENTERED: case KO_RMSPROP_PLAIN:
    case KO_RMSPROP_PLAIN_CENTERED: case KO_FTRL: return 4;
    case KO_FTRL_V2: case KO_LION: return 5;
    case KO_ADAM: case KO_ADAM_AMSGRAD: return 6;
    case KO_NADAM: return 8;
    default: return -1;
  }
}

// Looks up the variables of inputs [first, first + count), locks them
// (exclusively, ascending mutex address, like TF's training kernels), and
// makes their buffers private: a variable updated in full is copied when its
// buffer is shared or it is in copy-on-read mode (TF's dense update rule); the
// first `row_updated` variables, whose rows alone are updated in place (the
// variable of a sparse op), only when the buffer is shared. In copy-on-read
// mode (set by any sparse read, e.g. an embedding lookup) readers copy, so
// TF's sparse kernels update such a variable in place too; copying it on
// every step would cost a full pass over an embedding table.
class LockedVars {
 public:
  // The variables of inputs [first, first + count).
  template <typename T>
  absl::Status Acquire(OpKernelContext* ctx, int first, int count, int row_updated = 0) {
    owned_.clear();
    own_names_.clear();
    for (int i = 0; i < count; ++i) {
      const ResourceHandle& handle = HandleFromInput(ctx, first + i);
      Var* var = nullptr;
      absl::Status s = LookupResource(ctx, handle, &var);
      if (!s.ok()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "Could not find variable ", handle.name(), " (input ", first + i, "): ",
            s.message()));
      }
      owned_.emplace_back(var);
      own_names_.push_back(handle.name());
    }
    vars_.resize(count);
    for (int i = 0; i < count; ++i) vars_[i] = owned_[i].get();
    names_ = &own_names_;
    return Lock<T>(ctx, row_updated);
  }

  // The variables of a group, which holds them (and their names) while the
  // caller holds the group: no reference or copy is taken per step.
  template <typename T>
  absl::Status AcquireList(OpKernelContext* ctx, const std::vector<Var*>& vars,
                           const std::vector<std::string>& names, int row_updated = 0) {
    vars_ = vars;
    names_ = &names;
    return Lock<T>(ctx, row_updated);
  }

  Tensor* tensor(int i) { return vars_[i]->tensor(); }
  const std::string& name(int i) const { return (*names_)[i]; }

 private:
  template <typename T>
  absl::Status Lock(OpKernelContext* ctx, int row_updated) {
    const int count = static_cast<int>(vars_.size());
    std::vector<Var*> order(count);
    for (int i = 0; i < count; ++i) order[i] = vars_[i];
    std::sort(order.begin(), order.end(),
              [](Var* a, Var* b) { return a->mu() < b->mu(); });
    for (int i = 1; i < count; ++i) {
      if (order[i] == order[i - 1]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "A variable is passed more than once to a fused optimizer update: ",
            order[i]->DebugString()));
      }
    }
    locks_.reserve(count);
    for (Var* var : order) locks_.emplace_back(*var->mu());
    for (int i = 0; i < count; ++i) {
      Var* var = vars_[i];
      Tensor* t = var->tensor();
      if (!var->is_initialized || !t->IsInitialized()) {
        return absl::FailedPreconditionError(
            absl::StrCat("Attempting to use uninitialized variables: ", (*names_)[i]));
      }
      if (t->dtype() != DataTypeToEnum<T>::v()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Variable ", (*names_)[i], " has dtype ", DataTypeString(t->dtype()), ", expected ",
            DataTypeString(DataTypeToEnum<T>::v())));
      }
      const bool copy_on_read = i >= row_updated && var->copy_on_read_mode.load();
      if (copy_on_read || !t->RefCountIsOne()) {
        Tensor tmp;
        tsl::AllocatorAttributes attr;
        attr.set_gpu_compatible(true);
        attr.set_nic_compatible(true);
        TF_RETURN_IF_ERROR(ctx->allocate_temp(t->dtype(), t->shape(), &tmp, attr));
        if (t->TotalBytes() > 0) {
          std::memcpy(tmp.data(), t->data(), t->TotalBytes());
        }
        *t = tmp;
      }
    }
    return absl::OkStatus();
  }

  std::vector<core::RefCountPtr<Var>> owned_;  // Acquire's lookups
  std::vector<std::string> own_names_;
  std::vector<Var*> vars_;
  const std::vector<std::string>* names_ = nullptr;
  std::vector<mutex_lock> locks_;
};

void RunSharded(OpKernelContext* ctx, int64_t total, int64_t cost_per_unit,
                const std::function<void(int64_t, int64_t)>& fn) {
  if (total <= 0) return;
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  workers->ParallelFor(total, cost_per_unit, fn);
}

// Checks a dense rule's attributes: `n` variables, `s` slot handles, `c` coefficients.
absl::Status CheckDenseAttrs(int rule, int n, int s, int c) {
  if (rule < 0 || rule >= KO_NUM_RULES) {
    return absl::InvalidArgumentError(absl::StrCat("Unknown fused rule ", rule));
  }
  if (s != n * NumSlots(rule)) {
    return absl::InvalidArgumentError(absl::StrCat("Rule ", rule, " takes ", NumSlots(rule),
                                                   " slots per variable; got ", s,
                                                   " slots for ", n, " variables"));
  }
  if (c != NumCoefs(rule)) {
    return absl::InvalidArgumentError(absl::StrCat("Rule ", rule, " takes ", NumCoefs(rule),
                                                   " coefficients; got ", c));
  }
  return absl::OkStatus();
}

// Reads the `c` scalar coefficients from inputs [coef0, coef0 + c).
template <typename T>
absl::Status ReadDenseCoefs(OpKernelContext* ctx, int rule, int coef0, int c, T* coefs) {
  for (int i = 0; i < c; ++i) {
    const Tensor& t = ctx->input(coef0 + i);
    if (!TensorShapeUtils::IsScalar(t.shape())) {
      return absl::InvalidArgumentError(
          absl::StrCat("coefficient ", i, " is not a scalar: ", t.shape().DebugString()));
    }
    coefs[i] = t.scalar<T>()();
  }
  if ((rule == KO_FTRL || rule == KO_FTRL_V2) && coefs[3] != static_cast<T>(-0.5)) {
    return absl::InvalidArgumentError(
        "the fused Ftrl kernel supports learning_rate_power=-0.5 only; the "
        "value changed after the step was traced: trace again, or set "
        "KERAS_OPT_FUSED=0 / fused_kernels=False");
  }
  return absl::OkStatus();
}

// The dense update of `n` locked variables (then their slots, slot-major) with
// the gradients of inputs [grad0, grad0 + n), split across the CPU threads in
// blocks that span tensors.
template <typename T>
absl::Status RunDense(OpKernelContext* ctx, LockedVars& locked, int rule, int n, int grad0,
                      const T* coefs) {
  const int nslots = NumSlots(rule);
  std::vector<KoTensor> ts(n);
  std::vector<int64_t> starts(n + 1, 0);
  for (int i = 0; i < n; ++i) {
    Tensor* var = locked.tensor(i);
    const Tensor& grad = ctx->input(grad0 + i);
    if (!var->shape().IsSameSize(grad.shape())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "var and grad do not have the same shape (variable ", locked.name(i),
          "): ", var->shape().DebugString(), " ", grad.shape().DebugString()));
    }
    KoTensor& t = ts[i];
    t.var = var->data();
    t.grad = grad.data();
    t.size = var->NumElements();
    for (int j = 0; j < 3; ++j) t.slot[j] = nullptr;
    for (int j = 0; j < nslots; ++j) {
      Tensor* slot = locked.tensor(n + j * n + i);
      if (!var->shape().IsSameSize(slot->shape())) {
        return absl::InvalidArgumentError(absl::StrCat(
            "var and slot do not have the same shape (variable ", locked.name(i), ", slot ",
            locked.name(n + j * n + i), "): ", var->shape().DebugString(), " ",
            slot->shape().DebugString()));
      }
      t.slot[j] = slot->data();
    }
    starts[i + 1] = starts[i] + t.size;
  }
  const int64_t total = starts[n];
  constexpr int64_t kBlock = 1024;
  const int64_t blocks = (total + kBlock - 1) / kBlock;
  const Isa& isa = PickIsa();
  const KoTensor* tp = ts.data();
  const int64_t* sp = starts.data();
  const int64_t nn = n;
  const int64_t bytes = static_cast<int64_t>(sizeof(T)) * (3 + 2 * nslots);
  RunSharded(ctx, blocks, kBlock * (bytes + 20),
             [&isa, rule, tp, sp, nn, coefs, total](int64_t b0, int64_t b1) {
               isa.dense(rule, KoDtypeOf<T>(), tp, sp, nn, coefs, b0 * kBlock,
                         std::min(total, b1 * kBlock));
             });
  return absl::OkStatus();
}

template <typename T>
class FusedApplyOp : public OpKernel {
 public:
  explicit FusedApplyOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("rule", &rule_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &n_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("S", &s_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("C", &c_));
    OP_REQUIRES_OK(ctx, CheckDenseAttrs(rule_, n_, s_, c_));
  }

  void Compute(OpKernelContext* ctx) override {
    const int grad0 = n_ + s_;
    T coefs[8];
    OP_REQUIRES_OK(ctx, ReadDenseCoefs<T>(ctx, rule_, grad0 + n_, c_, coefs));
    LockedVars locked;
    OP_REQUIRES_OK(ctx, locked.Acquire<T>(ctx, 0, n_ + s_));
    OP_REQUIRES_OK(ctx, RunDense<T>(ctx, locked, rule_, n_, grad0, coefs));
  }

 private:
  int rule_, n_, s_, c_;
};

// A fixed list of variables (an optimizer step's variables, then their slots,
// slot-major), made once so that a traced step passes one handle to
// KerasOptFusedApplyGroup instead of one per variable and slot: a
// tf.function's per-call cost grows with the number of handles it captures.
// The group holds references to the variables themselves (not their buffers),
// so assignments and restores are seen by the next update.
class VarGroup : public ResourceBase {
 public:
  VarGroup(std::vector<Var*> vars, std::vector<std::string> names)
      : vars_(std::move(vars)), names_(std::move(names)) {}
  ~VarGroup() override {
    for (Var* var : vars_) var->Unref();
  }
  std::string DebugString() const override {
    return absl::StrCat("KerasOptVarGroup of ", vars_.size(), " variables");
  }
  const std::vector<Var*>& vars() const { return vars_; }
  const std::vector<std::string>& names() const { return names_; }

 private:
  std::vector<Var*> vars_;  // each holds a reference
  std::vector<std::string> names_;
};

class VarGroupOp : public OpKernel {
 public:
  explicit VarGroupOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("names", &names_));
  }

  void Compute(OpKernelContext* ctx) override {
    const int n = ctx->num_inputs();
    OP_REQUIRES(ctx, names_.empty() || static_cast<int>(names_.size()) == n,
                absl::InvalidArgumentError(absl::StrCat(
                    "names has ", names_.size(), " entries for ", n, " variables")));
    std::vector<Var*> vars;
    std::vector<std::string> names;
    vars.reserve(n);
    auto release = [&vars] {
      for (Var* v : vars) v->Unref();
    };
    for (int i = 0; i < n; ++i) {
      const ResourceHandle& handle = HandleFromInput(ctx, i);
      Var* var = nullptr;
      absl::Status s = LookupResource(ctx, handle, &var);
      if (!s.ok()) {
        release();
        ctx->CtxFailure(absl::FailedPreconditionError(absl::StrCat(
            "Could not find variable ", names_.empty() ? handle.name() : names_[i],
            " (input ", i, "): ", s.message())));
        return;
      }
      vars.push_back(var);  // LookupResource returned a reference
      names.push_back(names_.empty() ? handle.name() : names_[i]);
    }
    tsl::AllocatorAttributes attr;
    attr.set_on_host(true);
    Tensor* out = nullptr;
    absl::Status s = ctx->allocate_output(0, TensorShape({}), &out, attr);
    if (!s.ok()) {
      release();
      ctx->CtxFailure(s);
      return;
    }
    out->scalar<ResourceHandle>()() = ResourceHandle::MakeRefCountingHandle<VarGroup>(
        new VarGroup(std::move(vars), std::move(names)), ctx->device()->name());
  }

 private:
  std::vector<std::string> names_;
};

template <typename T>
class FusedApplyGroupOp : public OpKernel {
 public:
  explicit FusedApplyGroupOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("rule", &rule_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &n_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("C", &c_));
    OP_REQUIRES_OK(ctx, CheckDenseAttrs(rule_, n_, n_ * NumSlots(rule_), c_));
  }

  void Compute(OpKernelContext* ctx) override {
    T coefs[8];
    OP_REQUIRES_OK(ctx, ReadDenseCoefs<T>(ctx, rule_, 1 + n_, c_, coefs));
    core::RefCountPtr<VarGroup> group;
    OP_REQUIRES_OK(ctx, LookupResource(ctx, HandleFromInput(ctx, 0), &group));
    const int want = n_ * (1 + NumSlots(rule_));
    OP_REQUIRES(ctx, static_cast<int>(group->vars().size()) == want,
                absl::InvalidArgumentError(absl::StrCat(
                    "The variable group has ", group->vars().size(), " variables; rule ", rule_,
                    " with ", n_, " gradients needs ", want)));
    LockedVars locked;
    OP_REQUIRES_OK(ctx, locked.AcquireList<T>(ctx, group->vars(), group->names()));
    OP_REQUIRES_OK(ctx, RunDense<T>(ctx, locked, rule_, n_, 1, coefs));
  }

 private:
  int rule_, n_, c_;
};

// The scalar coefficients inputs[first .. first + n) of a sparse op, as T.
template <typename T>
absl::Status ReadScalarCoefs(OpKernelContext* ctx, int first, int n, T* out) {
  for (int i = 0; i < n; ++i) {
    const Tensor& c = ctx->input(first + i);
    if (!TensorShapeUtils::IsScalar(c.shape())) {
      return absl::InvalidArgumentError(
          absl::StrCat("coefficient ", i, " is not a scalar: ", c.shape().DebugString()));
    }
    out[i] = c.scalar<T>()();
  }
  return absl::OkStatus();
}

// A sparse op's locked var is at least 1-D and each of its slots has its shape.
absl::Status CheckVarAndSlots(LockedVars& locked, int nv) {
  const Tensor* var = locked.tensor(0);
  if (!TensorShapeUtils::IsVectorOrHigher(var->shape())) {
    return absl::InvalidArgumentError("var must be at least 1 dimensional");
  }
  for (int j = 1; j < nv; ++j) {
    if (!var->shape().IsSameSize(locked.tensor(j)->shape())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "var and slot do not have the same shape: ", var->shape().DebugString(), " ",
          locked.tensor(j)->shape().DebugString()));
    }
  }
  return absl::OkStatus();
}

// pos[row] = position of row in `indices` (or -1); rejects out-of-range and repeated rows.
template <typename Index>
absl::Status RowPositions(const Tensor& indices, int64_t rows, std::vector<int64_t>* pos) {
  if (!TensorShapeUtils::IsVector(indices.shape())) {
    return absl::InvalidArgumentError("indices must be one-dimensional");
  }
  pos->assign(rows, -1);
  const auto idx = indices.flat<Index>();
  for (int64_t i = 0; i < idx.size(); ++i) {
    const int64_t r = static_cast<int64_t>(idx(i));
    if (r < 0 || r >= rows) {
      return absl::InvalidArgumentError(
          absl::StrCat("indices[", i, "] = ", r, " is not in [0, ", rows, ")"));
    }
    if ((*pos)[r] >= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("indices must be unique; ", r, " is repeated"));
    }
    (*pos)[r] = i;
  }
  return absl::OkStatus();
}

// The checks every exact sparse op makes once its variables are locked: var
// and its slots (CheckVarAndSlots), each row input (named in `names`) shaped
// like var with the first dimension of indices, and the indices themselves
// (RowPositions). Gives var's number of rows, the row size and row positions.
template <typename Index>
absl::Status SparseRows(LockedVars& locked, int nv, const Tensor& indices,
                        const std::vector<const Tensor*>& row_inputs, const char* names,
                        int64_t* rows, int64_t* row_size, std::vector<int64_t>* pos) {
  TF_RETURN_IF_ERROR(CheckVarAndSlots(locked, nv));
  if (!TensorShapeUtils::IsVector(indices.shape())) {
    return absl::InvalidArgumentError("indices must be one-dimensional");
  }
  const Tensor* var = locked.tensor(0);
  *rows = var->dim_size(0);
  *row_size = *rows > 0 ? var->NumElements() / *rows : 0;
  TensorShape want = var->shape();
  want.set_dim(0, indices.dim_size(0));
  for (const Tensor* t : row_inputs) {
    if (!t->shape().IsSameSize(want)) {
      std::string got;
      for (const Tensor* u : row_inputs) {
        absl::StrAppend(&got, got.empty() ? "" : ", ", u->shape().DebugString());
      }
      return absl::InvalidArgumentError(
          absl::StrCat(names, " must be var.shape with the first dimension of indices: ", got,
                       " vs ", want.DebugString()));
    }
  }
  return RowPositions<Index>(indices, *rows, pos);
}

template <typename T, typename Index>
class FusedSparseApplyAdamOp : public OpKernel {
 public:
  explicit FusedSparseApplyAdamOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("A", &a_));
    OP_REQUIRES(ctx, a_ <= 1, absl::InvalidArgumentError("vhat takes 0 or 1 variables"));
  }

  void Compute(OpKernelContext* ctx) override {
    const int nv = 3 + a_;
    const Tensor& grad = ctx->input(nv);
    const Tensor& grad2 = ctx->input(nv + 1);
    const Tensor& indices = ctx->input(nv + 2);
    T coefs[4];
    OP_REQUIRES_OK(ctx, ReadScalarCoefs<T>(ctx, nv + 3, 4, coefs));
    LockedVars locked;
    OP_REQUIRES_OK(ctx, locked.Acquire<T>(ctx, 0, nv, /*row_updated=*/1));
    int64_t rows, row_size;
    std::vector<int64_t> pos;
    OP_REQUIRES_OK(ctx, SparseRows<Index>(locked, nv, indices, {&grad, &grad2},
                                          "m_scaled and v_scaled", &rows, &row_size, &pos));
    Tensor* var = locked.tensor(0);
    const Isa& isa = PickIsa();
    void* w = var->data();
    void* m = locked.tensor(1)->data();
    void* v = locked.tensor(2)->data();
    void* vh = a_ ? locked.tensor(3)->data() : nullptr;
    const void* g = grad.data();
    const void* g2 = grad2.data();
    const int64_t* pp = pos.data();
    RunSharded(ctx, rows, row_size * (static_cast<int64_t>(sizeof(T)) * 8 + 20),
               [&isa, w, m, v, vh, g, g2, pp, row_size, &coefs](int64_t r0, int64_t r1) {
                 isa.sparse_adam(KoDtypeOf<T>(), w, m, v, vh, g, g2, pp, row_size, coefs, r0,
                                 r1);
               });
  }

 private:
  int a_;
};

template <typename T, typename Index>
class FusedSparseApplyRmsOp : public OpKernel {
 public:
  explicit FusedSparseApplyRmsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("A", &a_));
    OP_REQUIRES(ctx, a_ <= 1, absl::InvalidArgumentError("mg takes 0 or 1 variables"));
  }

  void Compute(OpKernelContext* ctx) override {
    const int nv = 2 + a_;
    const Tensor& ms_add = ctx->input(nv);
    const Tensor* mg_add = a_ ? &ctx->input(nv + 1) : nullptr;
    const Tensor& num = ctx->input(nv + 1 + a_);
    const Tensor& indices = ctx->input(nv + 2 + a_);
    T coefs[2];
    OP_REQUIRES_OK(ctx, ReadScalarCoefs<T>(ctx, nv + 3 + a_, 2, coefs));
    LockedVars locked;
    OP_REQUIRES_OK(ctx, locked.Acquire<T>(ctx, 0, nv, /*row_updated=*/1));
    int64_t rows, row_size;
    std::vector<int64_t> pos;
    std::vector<const Tensor*> row_inputs = {&ms_add, &num};
    if (mg_add) row_inputs.push_back(mg_add);
    OP_REQUIRES_OK(ctx, SparseRows<Index>(locked, nv, indices, row_inputs,
                                          "ms_add, num (and mg_add)", &rows, &row_size, &pos));
    Tensor* var = locked.tensor(0);
    const Isa& isa = PickIsa();
    void* w = var->data();
    void* ms = locked.tensor(1)->data();
    void* mg = a_ ? locked.tensor(2)->data() : nullptr;
    const void* msa = ms_add.data();
    const void* mga = mg_add ? mg_add->data() : nullptr;
    const void* np = num.data();
    const int64_t* pp = pos.data();
    RunSharded(ctx, rows, row_size * (static_cast<int64_t>(sizeof(T)) * 6 + 20),
               [&isa, w, ms, mg, msa, mga, np, pp, row_size, &coefs](int64_t r0, int64_t r1) {
                 isa.sparse_rms(KoDtypeOf<T>(), w, ms, mg, msa, mga, np, pp, row_size, coefs,
                                r0, r1);
               });
  }

 private:
  int a_;
};

// KerasOptFusedSparseApplyNadam(var, m, v, the row terms of nadam.py's
// composite sparse path computed by TF ops (g_term = (1 - m_t) * (g / (1 -
// m_schedule_new)), m_scaled = g * (1 - b1), v_scaled = g * g * (1 - b2)),
// unique indices, 7 scalars): one pass that decays every row of m and v, adds
// the rows and updates var's rows as the composite ops do.
REGISTER_OP("KerasOptFusedSparseApplyNadam")
    .Input("var: resource")
    .Input("m: resource")
    .Input("v: resource")
    .Input("g_term: T")
    .Input("m_scaled: T")
    .Input("v_scaled: T")
    .Input("indices: Tindices")
    .Input("beta1: T")
    .Input("beta2: T")
    .Input("one_minus_m_schedule_next: T")
    .Input("v_t_prime_denominator: T")
    .Input("m_t_1: T")
    .Input("neg_lr: T")
    .Input("epsilon: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tindices: {int32, int64}")
    .Attr("use_locking: bool = false")
    .SetIsStateful()
    .SetShapeFn(shape_inference::NoOutputs);

template <typename T, typename Index>
class FusedSparseApplyNadamOp : public OpKernel {
 public:
  explicit FusedSparseApplyNadamOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    constexpr int nv = 3;
    const Tensor& g_term = ctx->input(nv);
    const Tensor& m_scaled = ctx->input(nv + 1);
    const Tensor& v_scaled = ctx->input(nv + 2);
    const Tensor& indices = ctx->input(nv + 3);
    T coefs[7];
    OP_REQUIRES_OK(ctx, ReadScalarCoefs<T>(ctx, nv + 4, 7, coefs));
    LockedVars locked;
    OP_REQUIRES_OK(ctx, locked.Acquire<T>(ctx, 0, nv, /*row_updated=*/1));
    int64_t rows, row_size;
    std::vector<int64_t> pos;
    OP_REQUIRES_OK(ctx, SparseRows<Index>(locked, nv, indices, {&g_term, &m_scaled, &v_scaled},
                                          "g_term, m_scaled and v_scaled", &rows, &row_size,
                                          &pos));
    Tensor* var = locked.tensor(0);
    const Isa& isa = PickIsa();
    void* w = var->data();
    void* m = locked.tensor(1)->data();
    void* v = locked.tensor(2)->data();
    const void* gt = g_term.data();
    const void* ma = m_scaled.data();
    const void* va = v_scaled.data();
    const int64_t* pp = pos.data();
    RunSharded(ctx, rows, row_size * (static_cast<int64_t>(sizeof(T)) * 6 + 20),
               [&isa, w, m, v, gt, ma, va, pp, row_size, &coefs](int64_t r0, int64_t r1) {
                 isa.sparse_nadam(KoDtypeOf<T>(), w, m, v, gt, ma, va, pp, row_size, coefs, r0,
                                  r1);
               });
  }
};

class FusedIsaOp : public OpKernel {
 public:
  explicit FusedIsaOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
    out->scalar<tstring>()() = PickIsa().name;
  }
};

#define KO_REGISTER(T)                                                                   \
  REGISTER_KERNEL_BUILDER(                                                               \
      Name("KerasOptFusedApply").Device(DEVICE_CPU).TypeConstraint<T>("T"),              \
      FusedApplyOp<T>);                                                                  \
  REGISTER_KERNEL_BUILDER(                                                               \
      Name("KerasOptFusedApplyGroup").Device(DEVICE_CPU).TypeConstraint<T>("T"),         \
      FusedApplyGroupOp<T>);                                                             \
  REGISTER_KERNEL_BUILDER(Name("KerasOptFusedSparseApplyAdam")                           \
                              .Device(DEVICE_CPU)                                        \
                              .TypeConstraint<T>("T")                                    \
                              .TypeConstraint<int32>("Tindices"),                        \
                          FusedSparseApplyAdamOp<T, int32>);                             \
  REGISTER_KERNEL_BUILDER(Name("KerasOptFusedSparseApplyAdam")                           \
                              .Device(DEVICE_CPU)                                        \
                              .TypeConstraint<T>("T")                                    \
                              .TypeConstraint<int64_t>("Tindices"),                      \
                          FusedSparseApplyAdamOp<T, int64_t>);                           \
  REGISTER_KERNEL_BUILDER(Name("KerasOptFusedSparseApplyRMSProp")                        \
                              .Device(DEVICE_CPU)                                        \
                              .TypeConstraint<T>("T")                                    \
                              .TypeConstraint<int32>("Tindices"),                        \
                          FusedSparseApplyRmsOp<T, int32>);                              \
  REGISTER_KERNEL_BUILDER(Name("KerasOptFusedSparseApplyRMSProp")                        \
                              .Device(DEVICE_CPU)                                        \
                              .TypeConstraint<T>("T")                                    \
                              .TypeConstraint<int64_t>("Tindices"),                      \
                          FusedSparseApplyRmsOp<T, int64_t>);                            \
  REGISTER_KERNEL_BUILDER(Name("KerasOptFusedSparseApplyNadam")                          \
                              .Device(DEVICE_CPU)                                        \
                              .TypeConstraint<T>("T")                                    \
                              .TypeConstraint<int32>("Tindices"),                        \
                          FusedSparseApplyNadamOp<T, int32>);                            \
  REGISTER_KERNEL_BUILDER(Name("KerasOptFusedSparseApplyNadam")                          \
                              .Device(DEVICE_CPU)                                        \
                              .TypeConstraint<T>("T")                                    \
                              .TypeConstraint<int64_t>("Tindices"),                      \
                          FusedSparseApplyNadamOp<T, int64_t>);
KO_REGISTER(Eigen::half)
KO_REGISTER(Eigen::bfloat16)
KO_REGISTER(float)
KO_REGISTER(double)
#undef KO_REGISTER

REGISTER_KERNEL_BUILDER(Name("KerasOptFusedIsa").Device(DEVICE_CPU), FusedIsaOp);
REGISTER_KERNEL_BUILDER(Name("KerasOptVarGroup").Device(DEVICE_CPU), VarGroupOp);

}  // namespace
}  // namespace tensorflow
