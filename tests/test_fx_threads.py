"""A module called on one thread while torch.fx traces on another (Inductor's build beside the frames)."""

import subprocess
import sys
import textwrap

import pytest

# A tracing thread holds fx's patches while its traced forward waits; the main thread meanwhile calls an
# unrelated module, as the GPU thread encodes a prompt while the build thread traces.
SCENARIO = textwrap.dedent("""
    import sys, threading
    import torch
    from core.accel import fx_threads

    if sys.argv[1] == "bound":
        assert fx_threads.install()
    entered, release = threading.Event(), threading.Event()

    class Waits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Linear(3, 3)

        def forward(self, x):
            entered.set()
            release.wait(30)
            return self.inner(x) + 1

    class Holds(torch.nn.Module):  # a model class of its own, as diffusers' UNet is
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    traced = {}
    tracer = threading.Thread(target=lambda: traced.update(gm=torch.fx.symbolic_trace(Waits())))
    tracer.start()
    assert entered.wait(30)
    other = torch.nn.Linear(3, 2)
    compiled = torch.compile(lambda x: x * 2 + 1, backend="eager")
    try:
        out = other(torch.ones(1, 3))
        print("other thread:", tuple(out.shape))
    except NameError as exc:
        print("other thread: NameError", exc)
    # As the stored engines call the UNet: a compiled function that takes the module as an argument. torch 2.11's
    # Dynamo traced the patched Module.__call__ itself here (seen on the GPU); 2.13's goes past it.
    through = torch.compile(lambda module, x: module(x) * 2, backend="eager", fullgraph=True)
    try:
        print("compiled on the other thread:", compiled(torch.ones(2)).tolist())
    except RuntimeError as exc:
        print("compiled on the other thread: RuntimeError", exc)
    try:
        print("traced on the other thread:", tuple(through(Holds(other), torch.ones(1, 3)).shape))
    except Exception as exc:
        print("traced on the other thread:", type(exc).__name__, str(exc)[:200].replace(chr(10), " "))
    finally:
        release.set()
        tracer.join(30)
    ops = [(node.op, str(node.target)) for node in traced["gm"].graph.nodes]
    print("graph:", ops)
""")


def run_scenario(mode: str) -> str:
    done = subprocess.run([sys.executable, "-c", SCENARIO, mode], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def outputs():
    return {mode: run_scenario(mode) for mode in ("plain", "bound")}


def test_the_race_exists_in_plain_torch(outputs):
    # Without the fix the other thread's call goes through the tracer's wrapper: this is the bug being fixed.
    assert "other thread: NameError" in outputs["plain"]


def test_other_threads_call_modules_normally_while_a_trace_runs(outputs):
    assert "other thread: (1, 2)" in outputs["bound"]


def test_dynamo_traces_module_calls_on_other_threads_while_a_trace_runs(outputs):
    assert "traced on the other thread: (1, 2)" in outputs["bound"]


def test_compiled_functions_on_other_threads_run_while_a_trace_runs(outputs):
    assert "compiled on the other thread: RuntimeError Detected that you are using FX" in outputs["plain"]
    assert "compiled on the other thread: [3.0, 3.0]" in outputs["bound"]


def test_the_tracing_thread_still_records_its_submodule_calls(outputs):
    # The traced graph is the same with or without the fix: the submodule is a call_module node, not inlined.
    graph = [line for line in outputs["bound"].splitlines() if line.startswith("graph:")]
    assert graph and "('call_module', 'inner')" in graph[0]
    assert graph == [line for line in outputs["plain"].splitlines() if line.startswith("graph:")]


def test_install_is_idempotent_and_patches_are_restored_after_a_trace():
    import torch

    from core.accel import fx_threads

    call, getattr_ = torch.nn.Module.__call__, torch.nn.Module.__getattr__
    assert fx_threads.install() and fx_threads.install()
    traced = torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))
    assert [node.op for node in traced.graph.nodes].count("call_module") == 2
    assert torch.nn.Module.__call__ is call and torch.nn.Module.__getattr__ is getattr_


def test_a_non_strict_export_on_this_thread_still_records_which_module_each_op_came_from():
    # Non-strict export raises torch's process-wide "compiling" flag while its own fx trace runs on this thread:
    # the patch must stay this thread's then (the opt-in AOTInductor engines export this way).
    import torch

    from core.accel import fx_threads

    class Outer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.inner(x) + 1

    assert fx_threads.install()
    program = torch.export.export(Outer(), (torch.ones(1, 3),), strict=False)
    stacks = [str(node.meta.get("nn_module_stack", {})) for node in program.graph.nodes if node.op == "call_function"]
    assert any("inner" in stack for stack in stacks)
