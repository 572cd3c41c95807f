"""FusedOptimizer: the torch.optim.Optimizer base class of every fusedopt optimizer.

It owns what the four optimizers share: the backend choice, validation of a step before anything is modified,
grouping parameters into buckets (param group x device x dtype), state in flat per-bucket buffers
(NOTE [flat state] in _tensors.py), and state_dict loading. A subclass names its state tensors and makes the one
functional call that updates a bucket.

It also owns the options beyond torch.optim that every optimizer shares: state_dtype=, master_weights=,
stochastic_rounding= (fusedopt/_rounding.py), max_grad_norm= and GradScaler's fused path (NOTE [grad factor]).

Everything else is torch.optim's own: param groups, add_param_group, zero_grad, hooks, state_dict() (with its
entries handed out as plain dicts) and lr schedulers (group["lr"] is read at every step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from fusedopt import _rounding, _step_plan, backends, clip, functional
from fusedopt._state import TrackedEntry, TrackedState
from fusedopt._step_hooks import hooked_step, profiler_recording
from fusedopt._tensors import bucket_by_device_and_dtype, is_dtensor, local_tensor, state_views
from fusedopt._tracked_params import track_params

_SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.complex64, torch.complex128)
# fusedopt's group options beyond torch.optim, and their defaults (what _option reads in their absence).
_OPTION_DEFAULTS = {"state_dtype": None, "master_weights": False, "stochastic_rounding": False}


def _option(group: dict[str, Any], name: str) -> Any:
    """A fusedopt group option (absent from a group that keeps its default)."""
    return group.get(name, _OPTION_DEFAULTS[name])


# state_dtype= choices, and the (param dtype, state dtype) pairs the kernels are built for besides equal dtypes.
_STATE_DTYPES = (None, torch.float32, torch.bfloat16)
_MIXED_STATE_PAIRS = {(torch.bfloat16, torch.float32), (torch.float16, torch.float32), (torch.float32, torch.bfloat16)}
_LOW_PRECISION = (torch.bfloat16, torch.float16)
# State tensors of the parameter modes, with their fixed dtypes (fusedopt/_rounding.py).
MASTER_STATE = {"master_param": torch.float32, "master_remainder": torch.int16}


def scalar(value: float | Tensor) -> float:
    """A hyperparameter as a Python float (lr and betas may be one-element tensors)."""
    return float(value.item()) if isinstance(value, Tensor) else float(value)


class LaunchGroup:
    """The parameters one fused call updates: every bucket of one device and dtype whose param groups share a
    launch signature (NOTE [param groups in one launch] in csrc/common/binding_utils.h), group after group, with
    the functional API's per-group view of them."""

    def __init__(self, optimizer: Optimizer, parts: list[tuple[dict[str, Any], list[Tensor]]]) -> None:
        self.groups = [group for group, _ in parts]
        self.group_sizes = [len(bucket) for _, bucket in parts]
        self.params = [p for _, bucket in parts for p in bucket]
        self.states = [optimizer.state[p] for p in self.params]

    @property
    def grads(self) -> list[Tensor]:
        return [p.grad for p in self.params]

    def column(self, name: str) -> list[Tensor]:
        """Every parameter's state tensor `name`."""
        return [state[name] for state in self.states]

    def columns(self, read: Callable[[dict[str, Any]], tuple]) -> list[list[Any]]:
        """The values `read(group)` returns, one list per value with one entry per group: the per-group
        hyperparameter lists of a fused call, read in one pass over the groups (a planned step reads them at every
        step; NOTE [cold step] in _step_hooks.py)."""
        return list(map(list, zip(*map(read, self.groups))))


def check_lr(lr: float | Tensor) -> None:
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")


def check_torch_only_flags(capturable: bool, differentiable: bool, foreach: bool | None, fused: bool | None) -> None:
    """torch.optim's implementation switches. fused/foreach are accepted and ignored: fusedopt always fuses."""
    if differentiable:
        raise ValueError("differentiable=True is not supported by fusedopt; use torch.optim for differentiable steps")
    if capturable:
        raise ValueError("capturable=True is not supported by fusedopt yet; use torch.optim for CUDA-graph capture")
    if fused and foreach:
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")


class FusedOptimizer(Optimizer):
    #: Exception message for sparse gradients, worded as torch.optim words it for this optimizer.
    sparse_grad_message: ClassVar[str]
    #: torch.amp.GradScaler then hands step() its scale and found_inf (as attributes) instead of unscaling the
    #: grads itself: the kernels unscale on the fly and a step with an inf or NaN grad changes nothing.
    _step_supports_amp_scaling = True

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        *,
        backend: str = "auto",
        max_grad_norm: float | None = None,
        error_if_nonfinite: bool = False,
        state_dtype: torch.dtype | None = None,
        master_weights: bool | str = False,
        stochastic_rounding: bool = False,
        rounding_seed: int = 0,
    ) -> None:
        if master_weights not in (False, True, "remainder"):
            raise ValueError(f"Invalid master_weights value: {master_weights!r}; expected False, True or 'remainder'")
        if master_weights and stochastic_rounding:
            raise ValueError(
                "stochastic_rounding=True rounds parameters that have no master copy; with master_weights the "
                "parameter is rounded to nearest from its float32 master"
            )
        if max_grad_norm is not None and not max_grad_norm > 0.0:
            raise ValueError(f"Invalid max_grad_norm value: {max_grad_norm}")
        if state_dtype not in _STATE_DTYPES:
            raise ValueError(
                f"Invalid state_dtype value: {state_dtype}; expected None, torch.float32 or torch.bfloat16"
            )
        # fusedopt's own group options enter the param groups (and so checkpoints) only where they differ from
        # their defaults: then a param group holds torch.optim's keys, and torch.distributed.checkpoint, which loads
        # only into a state dict whose every key the checkpoint has, moves checkpoints both ways (_option reads
        # an absent option as its default).
        options = {
            "state_dtype": state_dtype,
            "master_weights": master_weights,
            "stochastic_rounding": stochastic_rounding,
        }
        defaults = {**defaults, **{key: value for key, value in options.items() if value != _OPTION_DEFAULTS[key]}}
        self.rounding_seed = int(rounding_seed)
        self._requested_backend = backends.check_backend_name(backend)
        self._backends: dict[str, backends.Backend] = {}
        self.max_grad_norm = max_grad_norm
        self.error_if_nonfinite = error_if_nonfinite
        #: The total gradient norm of the last step (a tensor), when max_grad_norm is set.
        self.last_grad_norm: Tensor | None = None
        #: NOTE [step plan] (fusedopt/_step_plan.py): the operands of the last regular steps, kept in C++.
        self._step_plans = _step_plan.StepPlans()
        super().__init__(params, defaults)
        self.state = TrackedState()  # NOTE [foreign state]

    # --- what subclasses provide ------------------------------------------------------------------------------
    def _state_layout(self, group: dict[str, Any]) -> list[tuple[str, float]]:
        """Names of the per-parameter state tensors this group needs, in torch.optim's order, with fill values."""
        raise NotImplementedError

    #: The functional API's (and the kernel modules') name of this optimizer's update.
    _kernel: ClassVar[str]

    def _launch_signature(self, group: dict[str, Any]) -> tuple:
        """What param groups must agree on to share one fused call (the state tensors the kernel reads)."""
        return ()

    def _state_columns(self, launch: LaunchGroup) -> list[list[Tensor]]:
        """The state lists of the functional call, in its order; [] for a list the call does not use."""
        raise NotImplementedError

    def _hyperparameters(self, launch: LaunchGroup) -> dict[str, Any]:
        """The functional call's hyperparameters: one value per group, and the launch's flags."""
        raise NotImplementedError

    def _update(self, launch: LaunchGroup, backend: backends.Backend, grad_factor: float | Tensor) -> None:
        """One fused call updating `launch.params` (all with grads and state) with their groups' settings,
        multiplying every gradient by `grad_factor` as it is read (NOTE [grad factor]), and changing nothing where
        GradScaler's found_inf is set."""
        getattr(functional, self._kernel)(
            launch.params,
            launch.grads,
            *self._state_columns(launch),
            launch.column("step"),
            **self._hyperparameters(launch),
            backend=backend,
            found_inf=getattr(self, "found_inf", None),
            **self._common_kwargs(launch, grad_factor),
        )

    # --- backend ----------------------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """The backend updating this optimizer's parameters ("a,b" when devices of several types need two)."""
        names = sorted({b.name for b in self._backends.values()})
        return ",".join(names) if names else self._requested_backend

    def _backend_for(self, device: torch.device) -> backends.Backend:
        backend = self._backends.get(device.type)
        if backend is None:
            backend = backends.resolve(self._requested_backend, device)
            self._backends[device.type] = backend
        return backend

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "_step_plans" in self.__dict__:  # add_param_group runs inside Optimizer.__init__ too
            self._step_plans.clear()
        first_new = len(self.param_groups)
        super().add_param_group(param_group)
        track_params(self.param_groups[first_new])  # NOTE [tracked params]
        try:
            for p in self.param_groups[first_new]["params"]:
                self._backend_for(local_tensor(p).device)
        except Exception:
            del self.param_groups[first_new:]
            raise

    # --- step -------------------------------------------------------------------------------------------------
    @staticmethod
    def _state_dtype(group: dict[str, Any], p: Tensor, name: str = "") -> torch.dtype:
        """The dtype of p's state `name`: fixed for master state, else the group's state_dtype, else torch.optim's
        rule (the parameter's dtype)."""
        return MASTER_STATE.get(name) or _option(group, "state_dtype") or p.dtype

    @staticmethod
    def _param_mode(group: dict[str, Any], dtype: torch.dtype) -> int:
        """How a bucket of `dtype` parameters is updated (fusedopt/_rounding.py)."""
        master = _option(group, "master_weights")
        if master == "remainder" and dtype == torch.bfloat16:
            return _rounding.REMAINDER
        if master and dtype in _LOW_PRECISION:
            return _rounding.MASTER
        if _option(group, "stochastic_rounding") and dtype == torch.bfloat16:
            return _rounding.STOCHASTIC
        return _rounding.PLAIN

    def _common_kwargs(self, launch: LaunchGroup, grad_factor: float | Tensor) -> dict[str, Any]:
        """The functional API's arguments every optimizer passes the same way: group sizes, grad factor, and
        masters/param_mode/rounding_seed (the groups of a launch share the parameter mode)."""
        mode = self._param_mode(launch.groups[0], launch.params[0].dtype)
        name = {_rounding.MASTER: "master_param", _rounding.REMAINDER: "master_remainder"}.get(mode)
        return {
            "group_sizes": launch.group_sizes,
            "grad_factor": grad_factor,
            "masters": launch.column(name) if name else [],
            "param_mode": mode,
            "rounding_seed": self.rounding_seed,
        }

    def _check_param_and_grad(self, group: dict[str, Any], p: Tensor, group_index: int, param_index: int) -> None:
        # The common case in a few attribute reads (this runs for every parameter at every step); anything else
        # goes through the checks below, which name the parameter and the rule it breaks.
        grad, dtype = p.grad, p.dtype
        if (
            grad.layout is torch.strided
            and grad.dtype is dtype
            and dtype in _SUPPORTED_DTYPES
            and grad.shape == p.shape
            and grad.device == p.device
            and _option(group, "state_dtype") is None
            and _option(group, "master_weights") != "remainder"
        ):
            return
        self._explain_invalid(group, p, group_index, param_index)

    def _explain_invalid(self, group: dict[str, Any], p: Tensor, group_index: int, param_index: int) -> None:
        """Raises the error of the first rule that `p` or its grad breaks (nothing when they break none)."""
        where = f"parameter {param_index} of param group {group_index}"
        if _option(group, "master_weights") == "remainder" and p.dtype == torch.float16:
            raise TypeError(
                f"fusedopt.{type(self).__name__}: master_weights='remainder' keeps the low 16 bits of a float32 "
                f"master beside a bfloat16 parameter; {where} is float16 (use master_weights=True)"
            )
        state_dtype = self._state_dtype(group, p)
        if state_dtype != p.dtype and (p.dtype, state_dtype) not in _MIXED_STATE_PAIRS:
            raise TypeError(
                f"fusedopt.{type(self).__name__}: state_dtype={state_dtype} is not supported for {where}, which is "
                f"{p.dtype}; supported: float32 state for bfloat16/float16 params, bfloat16 state for float32 params"
            )
        grad = p.grad
        if grad.is_sparse:
            raise RuntimeError(self.sparse_grad_message)
        if p.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(
                f"fusedopt.{type(self).__name__} updates float32, float64, bfloat16, float16 and complex "
                f"parameters; {where} is {p.dtype}"
            )
        for what, got, expected in (
            ("shape", tuple(grad.shape), tuple(p.shape)),
            ("dtype", grad.dtype, p.dtype),
            ("device", grad.device, p.device),
        ):
            if got != expected:
                raise RuntimeError(
                    f"fusedopt.{type(self).__name__}: the grad of {where} has {what} {got} "
                    f"but the parameter has {what} {expected}"
                )

    def _plan_step(self) -> list[tuple[dict[str, Any], list[list[Tensor]]]]:
        """Checks every parameter that has a grad, modifying nothing; returns the buckets to update per group."""
        plan = []
        for group_index, group in enumerate(self.param_groups):
            with_grad = []
            for param_index, p in enumerate(group["params"]):
                if p.grad is not None:
                    self._check_param_and_grad(group, p, group_index, param_index)
                    with_grad.append(p)
            buckets = list(bucket_by_device_and_dtype(with_grad).values())
            for bucket in buckets:
                self._backend_for(local_tensor(bucket[0]).device)
            plan.append((group, buckets))
        return plan

    def _check_state_fits(self, group: dict[str, Any], params: list[Tensor]) -> None:
        """Raises, naming the parameter, if the state of one of `params` (one bucket) no longer fits it: its memory
        was replaced (`p.data = other`, `module.to(...)`) by one of another size, dtype or device after its state
        was made. The kernels refuse that too, but only when its call comes, after the earlier calls of the step
        have run. The first state tensor stands for all: they are made together, for the parameter as it was.
        A Python loop costs about 0.5 us per parameter (0.55 ms more per regular step over 1,000 tensors when every
        call was checked, measured), so only the calls after a step's first take it."""
        name = self._state_layout(group)[0][0]
        first = local_tensor(params[0])
        dtype, device = self._state_dtype(group, first, name), first.device
        for p in params:
            state = self.state.get(p)
            value = None if state is None else state.get(name)
            if value is None:
                continue
            value, local = local_tensor(value), local_tensor(p)
            if value.numel() != local.numel() or value.dtype != dtype or value.device != device:
                index = next(i for i, q in enumerate(group["params"]) if q is p)
                group_index = next(i for i, g in enumerate(self.param_groups) if g is group)
                raise RuntimeError(
                    f"fusedopt.{type(self).__name__}: the state of parameter {index} of param group "
                    f"{group_index} ({name}: {value.numel()} elements of {value.dtype} on "
                    f"{value.device}) does not fit the parameter, which now has {local.numel()} elements of "
                    f"{local.dtype} on {local.device} (its memory was replaced after its state was made); load a "
                    "state_dict that fits it, or drop its state with `del optimizer.state[p]`"
                )

    def _ensure_state(self, group: dict[str, Any], params: list[Tensor]) -> None:
        """Creates the missing state of `params` (one bucket) in new flat buffers, as torch.optim would lazily."""
        device = local_tensor(params[0]).device
        backend = self._backend_for(device)
        for p in params:
            state = self.state[p]
            if "step" not in state:
                state["step"] = backends.step_counter(backend, device)
        for name, fill in self._state_layout(group):
            missing = [p for p in params if name not in self.state[p]]
            if missing:
                dtype = self._state_dtype(group, missing[0])
                for p, view in zip(missing, state_views(missing, fill, dtype=dtype)):
                    self.state[p][name] = view
        mode = self._param_mode(group, params[0].dtype)
        if mode in (_rounding.MASTER, _rounding.REMAINDER):
            # The master starts as the parameter itself: exactly (its float32 value), or a zero remainder.
            name = "master_param" if mode == _rounding.MASTER else "master_remainder"
            missing = [p for p in params if name not in self.state[p]]
            initial = (lambda p: p.detach()) if mode == _rounding.MASTER else None
            for p, view in zip(missing, state_views(missing, 0, initial=initial, dtype=MASTER_STATE[name])):
                self.state[p][name] = view

    # torch.optim's hooks, profiler label and no_grad around the step, in less host time; inside a torch.compile'd
    # function the step runs as it is, behind a graph break (NOTE [cold step] in _step_hooks.py).
    @hooked_step
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        """Performs a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the loss.
        """
        self._refuse_graph_capture()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # NOTE [step plan]: the grads are checked in C++; a step no plan can take runs the regular path.
        if self._step_plans.run(self, getattr(self, "found_inf", None)):
            return loss
        if not isinstance(self.state, TrackedState):  # `optimizer.state = defaultdict(dict)`, a common reset
            self.state = TrackedState(self.state)  # NOTE [foreign state]: its entries are adopted below
        foreign = self.state.take_assigned()
        if foreign:  # NOTE [foreign state]: entries written by others (ZeroRedundancyOptimizer) become ours
            self._adopt_loaded_state({}, only=foreign)
        plan = self._plan_step()
        grad_factor = self._grad_factor(lambda: [p.grad for _, buckets in plan for bucket in buckets for p in bucket])
        if grad_factor is None:
            return loss
        calls = list(self._launches(plan))
        # A fused call checks all of its operands before it changes anything; the calls after the first are
        # checked here too, before the first runs, so that a failed step changes nothing. A step of one call (one
        # device and dtype, the common case) pays nothing for it.
        for parts in calls[1:]:
            for group, bucket in parts:
                self._check_state_fits(group, bucket)
        launches = []
        for parts in calls:
            for group, bucket in parts:
                self._ensure_state(group, bucket)
            launch = LaunchGroup(self, parts)
            launches.append((launch, self._backend_for(local_tensor(launch.params[0]).device)))
        for launch, backend in launches:
            self._update(launch, backend, grad_factor)
        self.state.take_assigned()  # the entries this step made are fusedopt's own
        self._step_plans.add(_step_plan.StepPlan.build(self, launches))
        return loss

    def _refuse_graph_capture(self) -> None:
        """torch.optim's error for a step captured into a CUDA graph by an optimizer without capturable=True
        (Optimizer._cuda_graph_capture_health_check), raised before anything runs. fusedopt's GPU steps are not
        capturable: both GPU backends upload the param groups' hyperparameters (lr, GradScaler's factor) at every
        step from pinned host memory that is reused once the copy is done, so a replayed graph would copy whatever
        that memory holds by then. Only optimizers with CUDA parameters ask (a CPU-only torch cannot answer)."""
        if "cuda" in self._backends and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"Attempting CUDA graph capture of step() for an instance of {type(self).__name__} but "
                "param_groups' capturable is False. fusedopt does not support capturable=True yet: capture the "
                "forward and backward passes and call step() outside the graph, or use torch.optim with "
                "capturable=True"
            )

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch.optim's zero_grad. With set_to_none (the default) and a current step plan, in one C++ loop over the
        plan's parameters instead of a Python one (NOTE [planned zero_grad] in csrc/common/step_operands.h); while a
        profiler records, torch.optim's, with its label."""
        if set_to_none and not profiler_recording() and self._step_plans.clear_grads(self):
            return
        super().zero_grad(set_to_none)

    def _launches(self, plan: list[tuple[dict[str, Any], list[list[Tensor]]]]):
        """The buckets of a step merged into fused calls: one per device, dtype, parameter mode, state dtype and
        launch signature, spanning param groups (NOTE [param groups in one launch])."""
        launches: dict[tuple, list[tuple[dict[str, Any], list[Tensor]]]] = {}
        for group, buckets in plan:
            for bucket in buckets:
                local = local_tensor(bucket[0])
                key = (
                    local.device,
                    local.dtype,
                    self._param_mode(group, local.dtype),
                    self._state_dtype(group, local),
                    self._launch_signature(group),
                )
                launches.setdefault(key, []).append((group, bucket))
        return launches.values()

    def _plan_signature(self, group: dict[str, Any]) -> tuple:
        """The settings of a group that decide how its parameters split into fused calls (NOTE [step plan])."""
        # The fusedopt options (_option of each), read without a Python call per option: this runs at every step.
        return (self._launch_signature(group), *map(group.get, _OPTION_DEFAULTS, _OPTION_DEFAULTS.values()))

    def _grad_factor(self, grads_to_clip: Callable[[], list[Tensor]]) -> float | Tensor | None:
        """The factor every gradient is multiplied by as it is read (NOTE [grad factor]): GradScaler's 1/scale
        times the clip coefficient of max_grad_norm, as a tensor on the grads' device that the kernels read there
        (no host synchronisation), or 1.0 when there is neither. GradScaler's found_inf goes to the kernels too,
        which then change nothing, step counters included (NOTE [device steps]), as torch.optim's fused kernels
        do. Only error_if_nonfinite=True reads the norm on the host, as torch does; it then reads found_inf first
        and returns None when it is set (the step changes nothing). `grads_to_clip()` gives the grads of the
        step's parameters, whose total norm max_grad_norm clips; it is called once per step, on every rank (the
        norm of DTensor grads is a collective)."""
        found_inf = getattr(self, "found_inf", None)
        checks_norm = self.max_grad_norm is not None and self.error_if_nonfinite
        if found_inf is not None and checks_norm and float(found_inf) != 0.0:
            return None
        grad_scale = getattr(self, "grad_scale", None)
        inverse_scale = None if grad_scale is None else torch.as_tensor(grad_scale, dtype=torch.float32).reciprocal()
        if self.max_grad_norm is None:
            return 1.0 if inverse_scale is None else inverse_scale
        norm = clip.total_norm(grads_to_clip())
        if is_dtensor(norm):
            # FSDP2's shards: the norm of every rank's shards together (an all-reduce, as in torch's
            # clip_grad_norm_), as a plain tensor the kernels can read on this rank's device.
            norm = norm.full_tensor()
        if inverse_scale is not None:
            norm = norm * inverse_scale.to(norm.device)
        if self.error_if_nonfinite and not torch.isfinite(norm):
            raise RuntimeError(clip.nonfinite_norm_message(2.0))
        self.last_grad_norm = norm
        coefficient = clip.clip_coefficient(norm, self.max_grad_norm)
        return coefficient if inverse_scale is None else coefficient * inverse_scale.to(coefficient.device)

    # --- checkpoints ------------------------------------------------------------------------------------------
    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # Unpickled or loaded entries are adopted at the next step (load_state_dict adopts them at once).
        self.state = TrackedState(self.state)
        self.__dict__.setdefault("_requested_backend", "auto")
        self.__dict__.setdefault("_backends", {})
        self.__dict__.setdefault("max_grad_norm", None)
        self.__dict__.setdefault("error_if_nonfinite", False)
        self.__dict__.setdefault("last_grad_norm", None)
        self.__dict__.setdefault("rounding_seed", 0)
        self._step_plans = _step_plan.StepPlans()
        for group in self.param_groups:
            track_params(group)
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim.Optimizer.state_dict: the same keys and layout, loadable by either optimizer."""
        state_dict = super().state_dict()
        # Plain dicts (NOTE [foreign state]): a checkpoint must load where fusedopt is not installed, and pytree and
        # others tell containers by their exact type.
        if isinstance(state_dict.get("state"), dict):
            state_dict["state"] = {
                key: dict(entry) if isinstance(entry, TrackedEntry) else entry
                for key, entry in state_dict["state"].items()
            }
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state_dict written by this optimizer or by its torch.optim counterpart (and vice versa).

        torch.optim's loader casts every state tensor to its parameter's dtype; fusedopt then copies the state
        from the checkpoint's own tensors instead, so float32 state of bfloat16 params (state_dtype=) survives.
        """
        self._step_plans.clear()
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        own_params = [p for group in self.param_groups for p in group["params"]]
        originals = {p: state_dict["state"][i] for i, p in zip(saved_ids, own_params) if i in state_dict["state"]}
        super().load_state_dict(state_dict)
        self._adopt_loaded_state(originals)
        self.state.take_assigned()

    def _adopt_loaded_state(self, originals: dict[Tensor, dict[str, Any]], only: list[Tensor] | None = None) -> None:
        """Moves loaded state (of the params `only`, or all) into new flat buffers (NOTE [flat state]) of the
        group's state dtype, copying from the checkpoint's tensors (`originals`, else the state's own), and step
        counters to where the backend keeps them (NOTE [device steps])."""
        chosen = None if only is None else set(only)
        for group in self.param_groups:
            with_state = [p for p in group["params"] if self.state.get(p) and (chosen is None or p in chosen)]
            for p in with_state:
                step = self.state[p].get("step")
                if step is not None:
                    device = local_tensor(p).device
                    self.state[p]["step"] = backends.step_counter(self._backend_for(device), device, scalar(step))
            for bucket in bucket_by_device_and_dtype(with_state).values():
                names = dict.fromkeys(
                    name
                    for p in bucket
                    for name, value in self.state[p].items()
                    if name != "step" and isinstance(value, Tensor) and value.shape == p.shape
                )
                for name in names:
                    owners = [p for p in bucket if name in self.state[p]]

                    def source(p: Tensor, name: str = name) -> Tensor:
                        original = originals.get(p, {}).get(name)
                        return original if isinstance(original, Tensor) else self.state[p][name]

                    dtype = self._state_dtype(group, owners[0], name)
                    for p, view in zip(owners, state_views(owners, 0, initial=source, dtype=dtype)):
                        self.state[p][name] = view
