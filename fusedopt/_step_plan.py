"""The step plan: the operands of every fused call of a step, kept in C++ so that later steps skip the Python walk
over param groups. See NOTE [step plan] in csrc/common/step_operands.h.

A plan is made after each regular step whose calls all went to a planning backend (cpu, cuda, and triton, whose
plan is triton_kernels/_plan.py, gathering grads with the CPU extension) with contiguous, real tensors or DTensors
with such local shards (no complex views or non-contiguous proxies). FSDP2's DTensor parameters keep their memory
in a Python attribute (the local shard), so for them each planned step hands the C++ check this step's local
params and grads, gathered here in one pass over the params; plain tensors are read in C++ alone. With
max_grad_norm, a planned step lists the grads for the norm (the operands read them in C++ for plain tensors; for
DTensors, whose norm needs their DTensor grads, Python does), after every check has passed, so that each
step computes the norm once whichever path it takes (for DTensor grads the norm is a collective that every rank
must join equally). The next step uses the plan when nothing it was made from has changed, which is checked in
O(number of groups) here:
- the param groups (the same group dicts, params lists, their lengths and versions (NOTE [tracked params] in
  fusedopt/_tracked_params.py: a parameter replaced inside a list changes it), and the settings that split groups
  into calls: amsgrad, centered, momentum on/off, state_dtype, master_weights, stochastic_rounding),
- the optimizer's state dict object, its length and its version (load_state_dict, state.clear(), `del state[p]`,
  `state[p] = {...}` and `state[p][name] = t` change them (NOTE [foreign state] in fusedopt/_state.py), and every
  fusedopt method that replaces state drops the plan);
and, in C++, that every planned parameter's grad is usable or None (a parameter without a grad is left out of
that step, as torch.optim skips it) and every other parameter still has none. Hyperparameters (lr from schedulers,
betas, weight decay, ...) and GradScaler's scale are read at every step.

The optimizer keeps the plans of its last few grad patterns (StepPlans), newest use first. Since a plan skips
parameters without a grad, one plan made at a step where every parameter had one serves every later step (a
mixture-of-experts layer whose experts get no tokens now and then); a few plans serve models whose parameters get
grads in turns (task heads trained in alternation), where each plan's absent parameters are the other turn's.

The newest plan, while current, also serves zero_grad(set_to_none=True): it holds every parameter of the
optimizer, so one C++ loop clears their grads (NOTE [planned zero_grad] in csrc/common/step_operands.h).

In-place changes of values (`p.data.zero_()`, `state[p]["exp_avg"].mul_(0.5)`) need no notice: a plan holds
addresses, not values. After `p.data = other`, each planned step reads the parameter's new address in C++ (other
memory of another size, dtype or layout takes the regular path).
"""

from __future__ import annotations

from typing import Any

from fusedopt import functional
from fusedopt._tensors import DTensor, is_dtensor, is_plain, local_tensor
from fusedopt._tracked_params import TrackedParams


def _plan_key(optimizer) -> tuple:
    groups = tuple(
        (
            id(group),
            id(group["params"]),
            len(group["params"]),
            getattr(group["params"], "version", None),  # NOTE [tracked params]
            optimizer._plan_signature(group),
        )
        for group in optimizer.param_groups
    )
    state_version = getattr(optimizer.state, "version", None)  # NOTE [foreign state]
    return (id(optimizer.state), len(optimizer.state), state_version, optimizer.max_grad_norm, groups)


def _keyed_objects(optimizer) -> list:
    """The objects whose ids the key holds: the plan keeps them alive, so no new object can take an id over."""
    return [optimizer.state, *optimizer.param_groups, *(group["params"] for group in optimizer.param_groups)]


class StepPlan:
    def __init__(self, optimizer, calls: list[tuple[Any, Any, Any]]) -> None:
        #: What the plan was made from (_plan_key): the plan is current while the optimizer's key equals it.
        self.key = _plan_key(optimizer)
        self._keyed_objects = _keyed_objects(optimizer)
        self._calls = calls  # (launch, planned function, StepOperands, its DTensor params or None)
        # Whether every param is a plain tensor (DTensor params are not, so then no call of the plan holds local
        # shards): NOTE [planned zero_grad] in csrc/common/step_operands.h and grads() need it.
        self._all_plain = all(is_plain(p) for group in optimizer.param_groups for p in group["params"])

    @classmethod
    def build(cls, optimizer, launches: list[tuple[Any, Any]]) -> StepPlan | None:
        """The plan of a regular step's calls (LaunchGroup, backend), or None when it cannot have one."""
        if not launches:
            return None
        # NOTE [tracked params]: a list put in place by hand (`group["params"] = [...]`) cannot tell the plan when
        # a parameter inside it is replaced; wrapping it would break the caller's hold on it, so no plan is made.
        if not all(isinstance(group["params"], TrackedParams) for group in optimizer.param_groups):
            return None
        # The cheap refusal first: a backend without planned calls (reference) needs no walk over params.
        modules = [getattr(backend, "planned_module", lambda: None)() for _, backend in launches]
        if None in modules:
            return None
        planned = {id(p) for launch, _ in launches for p in launch.params}
        absent = [p for group in optimizer.param_groups for p in group["params"] if id(p) not in planned]
        if not all(functional._is_kernel_ready(local_tensor(p)) for p in absent):
            return None
        calls = []
        for (launch, _), module in zip(launches, modules):
            columns = [[local_tensor(t) for t in column] for column in optimizer._state_columns(launch)]
            common = optimizer._common_kwargs(launch, 1.0)
            params, grads = [local_tensor(p) for p in launch.params], [local_tensor(g) for g in launch.grads]
            masters = [local_tensor(t) for t in common["masters"]]
            sharded = is_dtensor(launch.params[0])
            if any(is_dtensor(p) != sharded or is_dtensor(g) != sharded for p, g in zip(launch.params, launch.grads)):
                return None  # DTensor and plain params in one call: the regular path
            try:
                operands = module.StepOperands(
                    params, columns, launch.column("step"), masters, launch.group_sizes, common["param_mode"],
                    absent if not calls else [], local_grads=grads if sharded else None,
                )  # fmt: skip
            except (RuntimeError, TypeError, ValueError):
                # StepOperands checks every tensor (real dtype, dense, contiguous, plain: no complex views or
                # non-contiguous proxies of the regular path). A plan only saves time: the regular path takes any
                # step it cannot.
                return None
            function = getattr(module, f"{optimizer._kernel}_planned")
            calls.append((launch, function, operands, launch.params if sharded else None))
        return cls(optimizer, calls)

    def clear_grads(self) -> bool:
        """optimizer.zero_grad() with set_to_none over the plan's params, planned and absent: every param of the
        optimizer while the plan is current; False, with nothing changed, for a plan that must leave it to
        torch.optim (DTensor shards, tensor subclasses)."""
        if not self._all_plain:
            return False
        for _, _, operands, _ in self._calls:
            operands.clear_grads()
        return True

    def grads(self) -> list:
        """This step's grads of the planned parameters (for max_grad_norm's norm): for plain tensors read by each
        call's operands in C++ (a Python loop over .grad costs about 0.1 us per parameter); for DTensor params, whose
        norm needs their DTensor grads (a collective), from Python."""
        if self._all_plain:
            return [grad for _, _, operands, _ in self._calls for grad in operands.grads()]
        return [p.grad for launch, _, _, _ in self._calls for p in launch.params if p.grad is not None]

    def run(self, optimizer, found_inf) -> bool:
        """One step over the planned operands; False, with nothing modified and nothing computed, when a grad does
        not fit the plan."""
        # Every call's grads are checked before the first call runs; each gather allows one planned call.
        if not all(_gather(ops, sharded_params) for _, _, ops, sharded_params in self._calls):
            return False
        grad_factor = optimizer._grad_factor(self.grads)
        if grad_factor is None:  # error_if_nonfinite with GradScaler's found_inf set: the step changes nothing
            return True
        for launch, function, ops, _ in self._calls:
            function(
                ops,
                **optimizer._hyperparameters(launch),
                **functional.grad_factor_kwargs(grad_factor, launch.params, found_inf),
                rounding_seed=optimizer.rounding_seed,
            )
        return True


def _gather(operands, sharded_params) -> bool:
    """operands.gather_grads(); for DTensor params, with this step's local shards of the params and their grads."""
    if sharded_params is None:
        return operands.gather_grads()
    local_params, local_grads = [], []
    for p in sharded_params:
        grad = p.grad
        if grad is not None and type(grad) is not DTensor:  # a grad that is not a DTensor like its parameter
            return False
        local_params.append(p._local_tensor)
        local_grads.append(None if grad is None else grad._local_tensor)
    return operands.gather_grads(local_params, local_grads)


class StepPlans:
    """The plans of an optimizer's last few grad patterns, the one used last first (see the module's doc)."""

    #: How many grad patterns are kept; each plan holds its calls' operands (a few pointers per parameter).
    LIMIT = 4

    def __init__(self) -> None:
        self._plans: list[StepPlan] = []

    def __len__(self) -> int:
        return len(self._plans)

    def newest(self) -> StepPlan | None:
        """The plan used or made last."""
        return self._plans[0] if self._plans else None

    def clear(self) -> None:
        self._plans.clear()

    def add(self, plan: StepPlan | None) -> None:
        if plan is not None:
            self._plans = [plan, *self._plans[: self.LIMIT - 1]]

    def clear_grads(self, optimizer) -> bool:
        """optimizer.zero_grad() with set_to_none by the newest plan, when it is current and can (StepPlan.clear_grads);
        False, with nothing changed, otherwise."""
        plan = self.newest()
        return plan is not None and plan.key == _plan_key(optimizer) and plan.clear_grads()

    def run(self, optimizer, found_inf) -> bool:
        """One step by the first current plan that fits this step's grads; False, with nothing modified, when none
        does. Plans made before the optimizer changed are dropped."""
        key = _plan_key(optimizer)
        self._plans = [plan for plan in self._plans if plan.key == key]
        for index, plan in enumerate(self._plans):
            if plan.run(optimizer, found_inf):
                if index:
                    self._plans.insert(0, self._plans.pop(index))
                return True
        return False
