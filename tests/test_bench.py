"""The benchmark's byte accounting, argument parsing, output schema, and a tiny end-to-end CLI run (untimed)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import AVAILABLE_ON_CPU

from fusedopt.bench import cli, implementations, report, workloads
from fusedopt.bench.traffic import num_state_tensors, step_traffic


@pytest.mark.parametrize(
    "optimizer,options,dtype,expected",
    [
        ("adamw", {}, torch.float32, 28),  # read p, g, m, v; write p, m, v: 7 x 4 bytes
        ("adam", {"amsgrad": True}, torch.float32, 36),
        ("adamw", {}, torch.bfloat16, 14),
        ("rmsprop", {}, torch.float32, 20),
        ("rmsprop", {"centered": True, "momentum": 0.9}, torch.float32, 36),
        ("rmsprop", {"momentum": 0.0}, torch.float64, 40),
        ("adagrad", {}, torch.float16, 10),
    ],
)
def test_bytes_per_element(optimizer, options, dtype, expected):
    assert step_traffic(optimizer, options, [10], dtype).bytes_per_element == expected


def test_bytes_per_parameter_of_the_mixed_precision_modes():
    """The figures of the mixed-precision issue: AdamW per parameter per step."""
    bf16, fp32 = torch.bfloat16, torch.float32
    assert step_traffic("adamw", {}, [1], fp32).bytes_per_element == 28
    assert step_traffic("adamw", {}, [1], bf16, bf16, param_mode="stochastic").bytes_per_element == 14
    assert step_traffic("adamw", {}, [1], bf16, fp32, param_mode="master").bytes_per_element == 28
    assert step_traffic("adamw", {}, [1], bf16, fp32, param_mode="remainder").bytes_per_element == 26
    # torch's equivalent of "master": a fused step on the float32 master (28), then a copy to bf16 (4 + 2).
    assert step_traffic("adamw", {}, [1], fp32).bytes_per_element + 4 + 2 == 34


def test_total_bytes_counts_step_counters_and_mixed_state():
    traffic = step_traffic("adamw", {}, [1000, 24], torch.bfloat16, state_dtype=torch.float32)
    # bf16 param read+write and grad read (6 bytes), two fp32 states read+write (16 bytes); 2 float32 steps.
    assert traffic.bytes_per_element == 22
    assert traffic.total_bytes == 1024 * 22 + 2 * 2 * 4


def test_state_tensor_counts():
    assert [num_state_tensors("rmsprop", o) for o in ({}, {"centered": True}, {"momentum": 0.5})] == [1, 2, 2]
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        num_state_tensors("sgd", {})


def test_workload_shapes():
    gpt2 = workloads.gpt2_like()
    assert len(gpt2.shapes) == 148
    assert 124_000_000 < gpt2.numel < 125_000_000  # GPT-2 small: 124M parameters
    llama = workloads.llama_like()
    assert 1_090_000_000 < llama.numel < 1_110_000_000  # TinyLlama: 1.1B parameters
    small = workloads.many_small(2000, 4 << 10, 256 << 10)
    assert len(small.sizes) == 2000 and min(small.sizes) >= 4 << 10 and max(small.sizes) <= 256 << 10
    split = workloads.flat(1000, tensors=3)
    assert split.sizes == [333, 333, 334] and split.name == "flat-1000x3"


def test_model_workloads_use_decay_and_no_decay_groups():
    """Model shapes are optimized as training scripts do (matrices decayed, biases and norms not); flat ones stay
    one group."""
    shapes = workloads.gpt2_like(n_layer=1, n_embd=8, vocab_size=16, n_positions=4).shapes
    groups = implementations.decay_groups([torch.zeros(s) for s in shapes])
    assert [len(g["params"]) for g in groups] == [6, 10] and groups[1]["weight_decay"] == 0.0
    assert "weight_decay" not in groups[0]
    flat = [torch.zeros(s) for s in workloads.flat(100, tensors=4).shapes]
    assert implementations.decay_groups(flat) is flat


def test_launch_count_keeps_kernels_only():
    from types import SimpleNamespace

    from fusedopt.bench.runner import count_kernels

    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    events = [
        SimpleNamespace(device_type=cuda, name="void fusedopt::cuda::adam_kernel<float, float, false>(...)"),
        SimpleNamespace(device_type=cuda, name="Memcpy HtoD (Pinned -> Device)"),
        SimpleNamespace(device_type=cuda, name="Memset (Device)"),
        SimpleNamespace(device_type=cpu, name="aten::add_"),
        SimpleNamespace(device_type=cuda, name="void multi_tensor_apply_kernel<...>"),
    ]
    assert count_kernels(events) == 2


def test_parse_size():
    assert cli.parse_size("64M") == 64 << 20 and cli.parse_size("4k") == 4096 and cli.parse_size("123") == 123
    for bad in ("", "M", "-4M", "1.5G"):
        with pytest.raises(Exception, match="invalid size"):
            cli.parse_size(bad)


def test_argument_errors(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--optimizer", "sgd", "--device", "cpu"])
    with pytest.raises(SystemExit, match="unknown dtype"):
        cli.main(["--dtype", "int8", "--device", "cpu"])
    with pytest.raises(SystemExit, match="matches none"):
        cli.main(["--impl", "nothing", "--device", "cpu"])
    with pytest.raises(SystemExit, match="leave no case"):
        cli.main(["--size", "3", "--device", "cpu"])


def test_backend_filter_is_the_implementation_filter():
    args = cli.build_parser().parse_args(["--backend", "fusedopt,torch-fused"])
    names = [i.name for i in cli.select_implementations(args)]
    assert names == ["fusedopt-cuda", "fusedopt-triton", "fusedopt-cpu", "torch-fused"]


def test_quick_plan():
    args = cli.build_parser().parse_args(["--quick"])
    cases = cli.plan_cases(args)
    assert {(c.device, c.optimizer, c.dtype) for c in cases} == {("cpu", "adamw", "float32")}
    assert [c.workload.name for c in cases] == ["flat-1M", "flat-64M", "flat-64Mx200"]
    assert [i.name for i in cli.select_implementations(args)] == list(cli.QUICK_IMPLEMENTATIONS)


def test_end_to_end_cpu_run(tmp_path, capsys):
    json_path, csv_path = tmp_path / "rows.json", tmp_path / "rows.csv"
    argv = [
        "--device", "cpu", "--optimizer", "adamw,rmsprop", "--dtype", "float32", "--size", "1M",
        "--variants", "default", "--impl", "fusedopt,torch-fused,roofline-stream,apex", "--reps", "2",
        "--no-progress", "--json", str(json_path), "--csv", str(csv_path),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    assert "fusedopt-cpu" in table and "roofline-stream" in table
    document = json.loads(json_path.read_text())
    assert document["schema"] == report.JSON_SCHEMA_VERSION
    assert {"date", "command", "torch", "cpu"} <= document["metadata"].keys()
    libraries = document["metadata"]["libraries"]
    assert libraries.keys() == {"deepspeed", "apex", "bitsandbytes", "torchao"}
    assert libraries["deepspeed"] == cli._installed_version("deepspeed")
    rows = {(r["variant"], r["implementation"]): r for r in document["rows"]}
    fused = rows[("adamw", "fusedopt-cpu")]
    assert fused["status"] == "ok" and fused["reps"] == 2 and fused["bytes_per_step"] == (1 << 20) * 28 + 8
    assert fused["gb_per_s"] == pytest.approx(fused["bytes_per_step"] / fused["median_ms"] / 1e6)
    assert rows[("adamw", "roofline-stream")]["pct_of_roofline"] == pytest.approx(100.0)
    assert rows[("adamw", "apex")]["status"].startswith(("not installed", "unsupported"))
    assert rows[("rmsprop", "torch-fused")]["status"].startswith("unsupported")  # torch has no fused RMSprop
    with open(csv_path) as f:
        csv_rows = list(csv.DictReader(f))
    assert list(csv_rows[0].keys()) == report.CSV_FIELDS and len(csv_rows) == len(document["rows"])


def test_plot(tmp_path):
    path = tmp_path / "plot.png"
    assert cli.main(["--device", "cpu", "--optimizer", "adamw", "--dtype", "float32", "--size", "1M",
                     "--variants", "default", "--impl", "fusedopt-cpu,roofline-stream", "--reps", "1",
                     "--no-progress", "--plot", str(path)]) == 0  # fmt: skip
    assert path.stat().st_size > 10_000


def test_an_implementation_refusing_a_case_becomes_a_row():
    from fusedopt.bench.implementations import IMPLEMENTATIONS, Implementation
    from fusedopt.bench.runner import Case, run_case

    def refuse(optimizer, options, params):
        raise RuntimeError("FusedAdam does not support the AMSGrad variant.")

    fused = next(i for i in IMPLEMENTATIONS if i.name == "fusedopt-cpu")
    rows = run_case(
        Case("cpu", "adam", {"amsgrad": True}, "float32", workloads.flat(4096)),
        [Implementation("refuses", "other", refuse), fused],
        reps=1,
    )
    assert rows[0].status == "unsupported: RuntimeError: FusedAdam does not support the AMSGrad variant."
    assert rows[1].status == "ok" and rows[1].median_ms > 0


def test_rows_of_8bit_optimizers_report_time_not_bytes():
    """An 8-bit optimizer moves bytes of its own layout, not the case's count: its row has a time and
    parameters/s, and no GB/s or roofline percentage; other rows keep theirs."""
    from fusedopt.bench.implementations import IMPLEMENTATIONS, Implementation
    from fusedopt.bench.runner import Case, run_case

    fused = next(i for i in IMPLEMENTATIONS if i.name == "fusedopt-cpu")
    roofline = next(i for i in IMPLEMENTATIONS if i.name == "roofline-stream")
    eight_bit = Implementation("eight-bit", "other", fused.build, counted_bytes=False)
    assert {i.name for i in IMPLEMENTATIONS if not i.counted_bytes} == {"bitsandbytes-8bit", "torchao-8bit"}
    rows = run_case(Case("cpu", "adamw", {}, "float32", workloads.flat(4096)), [eight_bit, fused, roofline], reps=2)
    assert rows[0].median_ms > 0 and rows[0].params_per_s > 0
    assert rows[0].gb_per_s is None and rows[0].pct_of_roofline is None
    assert rows[1].gb_per_s > 0 and rows[1].pct_of_roofline > 0


def test_summary_of_a_run_with_rows_that_report_no_bytes(tmp_path):
    """bench/summarize.py (gpu_check.sh's summary) writes every row, "-" where a row has no GB/s (8-bit
    optimizers), no roofline percentage or no launch count, and the speed against torch's fused kernel."""
    from fusedopt.bench.implementations import IMPLEMENTATIONS, Implementation
    from fusedopt.bench.runner import Case, run_case

    fused = next(i for i in IMPLEMENTATIONS if i.name == "fusedopt-cpu")
    torch_fused = next(i for i in IMPLEMENTATIONS if i.name == "torch-fused")
    eight_bit = Implementation("eight-bit", "other", fused.build, counted_bytes=False)
    rows = run_case(Case("cpu", "adamw", {}, "float32", workloads.flat(4096)), [fused, torch_fused, eight_bit], reps=1)
    path = tmp_path / "rows.json"
    report.write_json(str(path), rows, cli.metadata(["--device", "cpu"]))
    summary = _bench_script("summarize").summarize(json.loads(path.read_text()))
    assert "- other libraries: deepspeed " in summary
    lines = {line.split(" | ")[0]: line for line in summary.splitlines() if line.startswith("| ")}
    assert lines["| eight-bit"].split(" | ")[2:4] == ["-", "-"]
    assert lines["| fusedopt-cpu"].split(" | ")[4].endswith("x") and lines["| torch-fused"].split(" | ")[4] == "1.00x"


def _bench_script(name: str):
    """bench/NAME.py loaded as a module (the bench folder is scripts, not a package)."""
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location(name, pathlib.Path(__file__).parent.parent / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_deepspeed_cpu_adam_keeps_state_in_the_params_dtype(monkeypatch):
    """DeepSpeedCPUAdam keeps float32 state for bfloat16 params and no weight decay unless told otherwise; the
    benchmark tells it, so its row moves the bytes and does the arithmetic every other row does (a stand-in module
    records the arguments)."""
    import sys
    import types

    made = []

    class DeepSpeedCPUAdam:
        def __init__(self, model_params, lr=1e-3, weight_decay=0, adamw_mode=True, fp32_optimizer_states=True):
            made.append(dict(adamw_mode=adamw_mode, fp32_optimizer_states=fp32_optimizer_states, decay=weight_decay))

        def step(self):
            pass

    ops = types.ModuleType("deepspeed.ops.adam")
    ops.DeepSpeedCPUAdam = DeepSpeedCPUAdam
    monkeypatch.setitem(sys.modules, "deepspeed.ops.adam", ops)
    deepspeed = next(i for i in implementations.IMPLEMENTATIONS if i.name == "deepspeed")
    params = [torch.zeros(4, dtype=torch.bfloat16)]
    deepspeed.build("adamw", {}, params)()
    deepspeed.build("adam", {}, params)
    assert made == [  # and torch.optim's default weight decay, as the other rows have it (AdamW 0.01, Adam 0)
        dict(adamw_mode=True, fp32_optimizer_states=False, decay=0.01),
        dict(adamw_mode=False, fp32_optimizer_states=False, decay=0),
    ]
    with pytest.raises(implementations.Unavailable, match="without amsgrad"):
        deepspeed.build("adam", {"amsgrad": True}, params)


def test_host_overhead_script_without_some_grads():
    """--without-grads: every implementation steps with some parameters' grads set to None, drawn anew each round."""
    host_overhead = _bench_script("host_overhead")
    results = host_overhead.measure("cpu", tensors=10, numel=3, reps=3, warmup=1, without_grads=4)
    assert set(results) == set(host_overhead.IMPLEMENTATIONS)
    assert all(row["status"] == "ok" for row in results.values())


@pytest.mark.parametrize("interleave", [True, False])
def test_host_overhead_script_measures_every_implementation(interleave):
    host_overhead = _bench_script("host_overhead")
    results = host_overhead.measure("cpu", tensors=10, numel=3, reps=3, warmup=1, interleave=interleave)
    assert set(results) == set(host_overhead.IMPLEMENTATIONS)
    for row in results.values():
        assert row["status"] == "ok" and row["median_us"] > 0
    assert results["fusedopt (step plan)"]["backend"] == "cpu"


@pytest.mark.skipif("triton" not in AVAILABLE_ON_CPU, reason="needs the interpreted Triton backend")
def test_triton_tune_launches_each_block_size_it_reports(monkeypatch):
    """bench/triton_tune.py times one configuration per row: every step it times runs with that row's BLOCK (a
    kept step plan must not carry the previous BLOCK's launch over)."""
    import importlib

    tune = _bench_script("triton_tune")
    monkeypatch.setattr(tune, "BLOCKS", (1024, 4096))
    monkeypatch.setattr(tune, "WARPS", (4,))
    adam_module = importlib.import_module("fusedopt.triton_kernels.adam")
    launch_module = importlib.import_module("fusedopt.triton_kernels._launch")
    monkeypatch.setattr(launch_module, "BLOCK", launch_module.BLOCK)  # restored after the test
    monkeypatch.setattr(launch_module, "NUM_WARPS", launch_module.NUM_WARPS)
    real, grids = adam_module._adam_kernel, []

    class Recording:
        def __getitem__(self, grid):
            grids.append((launch_module.BLOCK, grid))
            return real[grid]

    monkeypatch.setattr(adam_module, "_adam_kernel", Recording())
    rows = tune.tune(numel=5000, reps=1, device="cpu")
    assert [(row["block"], row["num_warps"]) for row in rows] == [(1024, 4), (4096, 4)] * 2
    assert grids and all(grid == (-(-5000 // block),) for block, grid in grids)


def test_host_overhead_script_with_clipping(monkeypatch):
    host_overhead = _bench_script("host_overhead")
    monkeypatch.setattr(host_overhead, "_MAX_GRAD_NORM", 1.0)
    clipped, clip = [], torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *args, **kw: clipped.append(1) or clip(*args, **kw))
    results = host_overhead.measure("cpu", tensors=10, numel=3, reps=2, warmup=1)
    for row in results.values():
        assert row["status"] == "ok" and row["median_us"] > 0
    assert len(clipped) == 3 * (1 + 1 + 2)  # the three torch rows clip at every step: a first step, warm-up, reps


def test_modes_benchmark(tmp_path, capsys):
    """python -m fusedopt.bench.modes: every row runs, with the bytes per parameter of its mode, and the goals of
    the mixed-precision issue are read off the rows."""
    from fusedopt.bench import modes

    path = tmp_path / "modes.json"
    assert (
        modes.main(["--device", "cpu", "--size", "3000", "--reps", "2", "--backend", "cpu", "--json", str(path)]) == 0
    )
    rows = {row["name"]: row for row in json.loads(path.read_text())["rows"]}
    assert {name: row["bytes_per_param"] for name, row in rows.items()} == {
        "torch fp32": 28, "fusedopt fp32": 28, "fusedopt bf16 sr": 14, "fusedopt bf16 master": 28,
        "torch bf16 master": 34, "fusedopt bf16 remainder": 26, "fusedopt fp32 clip": 32, "torch fp32 clip": 40,
        "copy roofline": 28,
    }  # fmt: skip
    assert all(row["status"] == "ok" and row["median_ms"] > 0 for row in rows.values())
    assert rows["torch fp32"]["vs_torch_fp32"] == 1.0 and rows["copy roofline"]["pct_of_roofline"] == pytest.approx(100)
    output = capsys.readouterr().out
    assert "fusedopt bf16 sr vs torch fp32: " in output and "(goal 1.8x: " in output
    assert "fusedopt fp32 clip vs torch fp32 clip: " in output and "(goal 1.3x: " in output


def test_modes_benchmark_rows_configure_their_mode():
    """Each fusedopt row's optimizer is set up as the row says (a step shows the state it made)."""
    from fusedopt.bench import modes

    builders = modes.row_builders("cpu")
    expected = {
        "fusedopt fp32": (torch.float32, torch.float32, set()),
        "fusedopt bf16 sr": (torch.bfloat16, torch.bfloat16, set()),
        "fusedopt bf16 master": (torch.bfloat16, torch.float32, {"master_param"}),
        "fusedopt bf16 remainder": (torch.bfloat16, torch.float32, {"master_remainder"}),
        "fusedopt fp32 clip": (torch.float32, torch.float32, set()),
    }
    for name, (param_dtype, state_dtype, extra) in expected.items():
        step = builders[name][1](workloads.flat(100), "cpu", 0)
        step()
        optimizer = step.__self__
        param = optimizer.param_groups[0]["params"][0]
        state = optimizer.state[param]
        assert param.dtype == param_dtype and state["exp_avg"].dtype == state_dtype, name
        assert set(state) - {"step", "exp_avg", "exp_avg_sq"} == extra, name
        assert optimizer.param_groups[0].get("stochastic_rounding", False) == (name == "fusedopt bf16 sr"), name
        assert (optimizer.max_grad_norm is not None) == name.endswith("clip"), name


def test_modes_benchmark_workloads():
    import argparse

    from fusedopt.bench import modes

    assert modes.find_workload("3K").shapes == ((3072,),)
    gpt2 = modes.find_workload("gpt2-small")
    assert len(gpt2.shapes) == 148 and gpt2.numel == 124_439_808
    with pytest.raises(argparse.ArgumentTypeError, match="unknown workload 'gpt3'"):
        modes.find_workload("gpt3")
