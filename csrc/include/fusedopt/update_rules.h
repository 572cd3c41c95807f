// fusedopt/update_rules.h -- the per-element update math of every fusedopt optimizer, written once.
//
// The CPU loops (csrc/cpu/) and the CUDA kernels (csrc/cuda/) both include this header, so the CPU tests
// run the very arithmetic the GPU runs. The Triton helpers in triton_kernels/ mirror it line for line.
// It includes nothing from CUDA or ATen: nvcc or a plain host compiler can check it on its own.
//
// Numeric spec: torch.optim's documented single-tensor algorithms (torch/optim/{adam,rmsprop,adagrad}.py).
// Every function takes values already converted to the compute type T (float for float32/bfloat16/float16
// storage, double for float64) and updates them in place; loading and storing are the caller's job.
// Per-step scalars (bias corrections, decayed learning rates) are computed in double once per tensor, never per
// element: by `scalars_at_step` from a param group's hyperparameters and the tensor's new step count, on the host
// (CPU backend) or once per CTA from the step counter in device memory (CUDA, NOTE [device steps]).
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FUSEDOPT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FUSEDOPT_HOST_DEVICE inline
#endif

namespace fusedopt {

// NOTE [grad factor]: every update starts with  grad *= grad_factor,  one per-launch scalar that folds together
// maximize (a sign: negation by multiplication is exact), GradScaler's unscaling (1 / grad_scale) and the
// clip coefficient of max_grad_norm, so gradients are unscaled and clipped on the fly and never rewritten.
inline double make_grad_factor(bool maximize, double grad_factor) { return maximize ? -grad_factor : grad_factor; }

// How weight decay enters the update. Adam/RMSprop/Adagrad couple it into the gradient (L2 penalty);
// AdamW decouples it and shrinks the parameter directly (Loshchilov & Hutter, 2017).
enum class WeightDecayMode : int { kNone = 0, kL2 = 1, kDecoupled = 2 };

// torch.lerp's formula (aten/src/ATen/native/Lerp.h): the two branches keep the result exact at both ends.
template <typename T>
FUSEDOPT_HOST_DEVICE T lerp(T start, T end, T weight) {
  return weight < T(0.5) ? start + weight * (end - start) : end - (end - start) * (T(1) - weight);
}

template <typename T>
FUSEDOPT_HOST_DEVICE T sqrt_of(T x) {
  using std::sqrt;
  return sqrt(x);
}

template <typename T>
FUSEDOPT_HOST_DEVICE T max_of(T a, T b) {
  // NaN propagates like torch.maximum.
  return (a != a) ? a : ((b != b) ? b : (a > b ? a : b));
}

// ---------------------------------------------------------------------------------------------------------
// Adam / AdamW
// ---------------------------------------------------------------------------------------------------------
template <typename T>
struct AdamScalars {
  T grad_factor;       // see NOTE [grad factor]
  T l2_weight_decay;   // coupled weight decay added to the gradient (kL2 only)
  T decay_factor;      // 1 - lr * weight_decay, applied to the parameter (kDecoupled only)
  T beta1_complement;  // 1 - beta1, the lerp weight of the first moment
  T beta2;             //
  T beta2_complement;  // 1 - beta2
  T step_size;         // lr * sqrt(1 - beta2^t) / (1 - beta1^t): both bias corrections folded into one scalar
  T eps;               // eps * sqrt(1 - beta2^t), see NOTE [folded bias correction]
};

// NOTE [folded bias correction]: torch.optim computes  p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps).  Multiplying
// numerator and denominator by sqrt(bc2) gives  p -= (lr*sqrt(bc2)/bc1) * m / (sqrt(v) + eps*sqrt(bc2)),  the
// "efficient version" of Kingma & Ba (2014, section 2). It is the same update, one division per element
// cheaper: sqrt and division are the slowest vector instructions, and on a CPU with two memory channels per
// core the loop is bound by them as much as by DRAM. The results differ from torch.optim's in the last bits.

// A param group's Adam hyperparameters as the kernels take them: every tensor of a launch has one (NOTE [param
// groups in one launch] in csrc/common/binding_utils.h); grad_factor already carries maximize's sign.
struct AdamHyper {
  double grad_factor, lr, beta1, beta2, eps, weight_decay;
};

inline AdamHyper make_adam_hyper(double lr, double beta1, double beta2, double eps, double weight_decay, bool maximize,
                                 double grad_factor) {
  return {make_grad_factor(maximize, grad_factor), lr, beta1, beta2, eps, weight_decay};
}

// The scalars of step `step` (the new count, 1 at the first step). Host and device: pow and sqrt in double, as
// torch's fused kernels compute the bias corrections.
FUSEDOPT_HOST_DEVICE AdamScalars<double> scalars_at_step(const AdamHyper& h, double step) {
  using std::pow;
  using std::sqrt;
  AdamScalars<double> s;
  s.grad_factor = h.grad_factor;
  s.l2_weight_decay = h.weight_decay;
  s.decay_factor = 1.0 - h.lr * h.weight_decay;
  s.beta1_complement = 1.0 - h.beta1;
  s.beta2 = h.beta2;
  s.beta2_complement = 1.0 - h.beta2;
  const double bias_correction2_sqrt = sqrt(1.0 - pow(h.beta2, step));
  s.step_size = h.lr * bias_correction2_sqrt / (1.0 - pow(h.beta1, step));
  s.eps = h.eps * bias_correction2_sqrt;
  return s;
}

template <typename T, typename S>
FUSEDOPT_HOST_DEVICE AdamScalars<T> cast_scalars(const AdamScalars<S>& s) {
  return {T(s.grad_factor), T(s.l2_weight_decay),  T(s.decay_factor), T(s.beta1_complement),
          T(s.beta2),       T(s.beta2_complement), T(s.step_size),    T(s.eps)};
}

template <typename T, WeightDecayMode kDecay, bool kAmsgrad>
FUSEDOPT_HOST_DEVICE void adam_update(T& param, T grad, T& exp_avg, T& exp_avg_sq, T& max_exp_avg_sq,
                                      const AdamScalars<T>& s) {
  grad *= s.grad_factor;
  if (kDecay == WeightDecayMode::kDecoupled) {
    param *= s.decay_factor;
  } else if (kDecay == WeightDecayMode::kL2) {
    grad += s.l2_weight_decay * param;
  }
  exp_avg = lerp(exp_avg, grad, s.beta1_complement);
  exp_avg_sq = exp_avg_sq * s.beta2 + s.beta2_complement * grad * grad;
  T second_moment = exp_avg_sq;
  if (kAmsgrad) {
    max_exp_avg_sq = max_of(max_exp_avg_sq, exp_avg_sq);
    second_moment = max_exp_avg_sq;
  }
  param -= s.step_size * (exp_avg / (sqrt_of(second_moment) + s.eps));
}

// ---------------------------------------------------------------------------------------------------------
// RMSprop
// ---------------------------------------------------------------------------------------------------------
template <typename T>
struct RmspropScalars {
  T grad_factor;
  T weight_decay;      // coupled (L2) weight decay
  T alpha;             // smoothing constant of the squared-gradient average
  T alpha_complement;  // 1 - alpha
  T eps;
  T momentum;
  T lr;
};

// RMSprop's scalars do not depend on the step: a group's hyperparameters are its scalars.
using RmspropHyper = RmspropScalars<double>;

inline RmspropHyper make_rmsprop_hyper(double lr, double alpha, double eps, double weight_decay, double momentum,
                                       bool maximize, double grad_factor) {
  return {make_grad_factor(maximize, grad_factor), weight_decay, alpha, 1.0 - alpha, eps, momentum, lr};
}

FUSEDOPT_HOST_DEVICE RmspropScalars<double> scalars_at_step(const RmspropHyper& h, double /*step*/) { return h; }

template <typename T, typename S>
FUSEDOPT_HOST_DEVICE RmspropScalars<T> cast_scalars(const RmspropScalars<S>& s) {
  return {T(s.grad_factor), T(s.weight_decay), T(s.alpha), T(s.alpha_complement), T(s.eps), T(s.momentum), T(s.lr)};
}

template <typename T, bool kWeightDecay, bool kCentered, bool kMomentum>
FUSEDOPT_HOST_DEVICE void rmsprop_update(T& param, T grad, T& square_avg, T& grad_avg, T& momentum_buffer,
                                         const RmspropScalars<T>& s) {
  grad *= s.grad_factor;
  if (kWeightDecay) grad += s.weight_decay * param;
  square_avg = square_avg * s.alpha + s.alpha_complement * grad * grad;
  T avg;
  if (kCentered) {
    grad_avg = lerp(grad_avg, grad, s.alpha_complement);
    avg = sqrt_of(square_avg - grad_avg * grad_avg);
  } else {
    avg = sqrt_of(square_avg);
  }
  avg += s.eps;
  if (kMomentum) {
    momentum_buffer = momentum_buffer * s.momentum + grad / avg;
    param -= s.lr * momentum_buffer;
  } else {
    param -= s.lr * (grad / avg);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Adagrad
// ---------------------------------------------------------------------------------------------------------
template <typename T>
struct AdagradScalars {
  T grad_factor;
  T weight_decay;  // coupled (L2) weight decay
  T clr;           // lr / (1 + (t - 1) * lr_decay)
  T eps;
};

struct AdagradHyper {
  double grad_factor, lr, lr_decay, eps, weight_decay;
};

inline AdagradHyper make_adagrad_hyper(double lr, double lr_decay, double eps, double weight_decay, bool maximize,
                                       double grad_factor) {
  return {make_grad_factor(maximize, grad_factor), lr, lr_decay, eps, weight_decay};
}

FUSEDOPT_HOST_DEVICE AdagradScalars<double> scalars_at_step(const AdagradHyper& h, double step) {
  return {h.grad_factor, h.weight_decay, h.lr / (1.0 + (step - 1.0) * h.lr_decay), h.eps};
}

template <typename T, typename S>
FUSEDOPT_HOST_DEVICE AdagradScalars<T> cast_scalars(const AdagradScalars<S>& s) {
  return {T(s.grad_factor), T(s.weight_decay), T(s.clr), T(s.eps)};
}

template <typename T, bool kWeightDecay>
FUSEDOPT_HOST_DEVICE void adagrad_update(T& param, T grad, T& sum, const AdagradScalars<T>& s) {
  grad *= s.grad_factor;
  if (kWeightDecay) grad += s.weight_decay * param;
  sum += grad * grad;
  const T std_dev = sqrt_of(sum) + s.eps;
  param -= s.clr * (grad / std_dev);
}

}  // namespace fusedopt
