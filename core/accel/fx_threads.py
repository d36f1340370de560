"""torch.fx's tracing made visible to the tracing thread only.

While ``torch.fx.Tracer.trace`` runs, it replaces ``torch.nn.Module.__call__`` and ``__getattr__`` for the
whole process and raises a process-wide "FX is tracing" flag. Inductor traces small graphs that way many times
during a compile, and a build runs on a thread beside the frames. Any module called on another thread at that
moment (the text encoder for a new prompt, a capture for a new size) went through the tracer's wrapper and
failed with ``NameError: module is not installed as a submodule`` (seen on the lent H100), and a
``torch.compile``'d function called there raised "Detected that you are using FX to symbolically trace a
dynamo-optimized function" (seen with several GPUs). A lock around the trace would deadlock against Dynamo's
own compile lock and stall a prompt change for a whole trace, so instead each method patch is bound to the
thread that made it (every other thread calls what was there before), and Dynamo's check of the flag also asks
whether this thread is the one tracing.

Not covered: two traces on two threads at once (torch keeps one current patcher for the process). Our builds
run one at a time. ``install()`` is idempotent and must run before the ``torch.compile`` wrappers are made
(Dynamo binds the check when it makes one). Where torch's tracer no longer has the shape this relies on, it
logs once and leaves torch as it is: the race comes back, nothing else changes.
"""

from __future__ import annotations

import functools
import logging
import threading

log = logging.getLogger(__name__)

_STATE = {"installed": False}
_LOCK = threading.Lock()


def bound_to_current_thread(new_fn, orig_fn):
    """``new_fn`` for the calling thread, ``orig_fn`` for all others."""
    import torch

    owner = threading.get_ident()

    # Dynamo tracing a module call on another thread meets this function as Module.__call__: the check that Dynamo
    # folds to True comes first (it cannot trace get_ident), so it traces the original. is_dynamo_compiling, not
    # is_compiling: the latter is a process-wide flag also raised by non-strict export, whose own fx trace on
    # this thread must keep its wrapper.
    dynamo_compiling = getattr(torch.compiler, "is_dynamo_compiling", torch.compiler.is_compiling)

    @functools.wraps(new_fn)
    def dispatch(*args, **kwargs):
        if not dynamo_compiling() and threading.get_ident() == owner:
            return new_fn(*args, **kwargs)
        return orig_fn(*args, **kwargs)

    return dispatch


def install() -> bool:
    """Bind fx's method patches to their tracing thread; True when they are (now or before)."""
    with _LOCK:
        if _STATE["installed"]:
            return True
        try:
            from torch.fx import _symbolic_trace as symbolic_trace

            patcher = symbolic_trace._Patcher
            original_patch_method = patcher.patch_method
        except (ImportError, AttributeError) as exc:
            log.info("torch.fx's tracer has changed (%s): a module called beside a background build may fail "
                     "while the build traces", exc)
            return False

        # The tracer's own closures (Module.__call__, __getattr__) are patched without deduplication. The
        # deduplicated ones wrap methods that look for proxies among their arguments and so are harmless to
        # other threads, and a second tracer on another thread relies on finding them already in place.
        @functools.wraps(original_patch_method)
        def patch_method(self, cls, name, new_fn, deduplicate=True):
            if not deduplicate:
                new_fn = bound_to_current_thread(new_fn, getattr(cls, name))
            return original_patch_method(self, cls, name, new_fn, deduplicate)

        patcher.patch_method = patch_method
        _bind_tracing_flag(symbolic_trace)
        _STATE["installed"] = True
        return True


def _bind_tracing_flag(symbolic_trace) -> None:
    """Dynamo's "is FX tracing?" answers yes only on the thread inside ``Tracer.trace`` (and only where torch's
    own flag says so too, which torch clears for its own nested compiles)."""
    import torch

    tracing = threading.local()
    original_trace = symbolic_trace.Tracer.trace

    @functools.wraps(original_trace)
    def trace(self, *args, **kwargs):
        depth = getattr(tracing, "depth", 0)
        tracing.depth = depth + 1
        try:
            return original_trace(self, *args, **kwargs)
        finally:
            tracing.depth = depth

    def is_fx_symbolic_tracing() -> bool:
        return (getattr(tracing, "depth", 0) > 0 and symbolic_trace._is_fx_tracing_flag
                and not torch.compiler.is_compiling())

    symbolic_trace.Tracer.trace = trace
    symbolic_trace.is_fx_symbolic_tracing = is_fx_symbolic_tracing
