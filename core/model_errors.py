"""User-facing explanations for model loading failures.

Loading goes through diffusers and huggingface_hub, which report a missing download, a typo in a
repository id, a gated model and a dead network connection with different exception classes that
diffusers then often re-wraps in a bare ``OSError``. This module walks the exception chain back to
the hub's own error and turns it into a sentence that says what to do.
"""

from __future__ import annotations

import sys

from .hub import offline_reason

PRESET_HINT = "try the program without weights: --model preset:sd-turbo (random weights: real speed, no real images)"


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what failed and what to do about it."""


def _hub_errors():
    try:
        from huggingface_hub import errors
    except ImportError:  # huggingface_hub < 0.24 kept them in utils
        from huggingface_hub import utils as errors
    names = ("GatedRepoError", "RepositoryNotFoundError", "RevisionNotFoundError", "LocalEntryNotFoundError",
             "EntryNotFoundError", "HFValidationError", "OfflineModeIsEnabled", "HfHubHTTPError")
    return {name: getattr(errors, name, None) for name in names}


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def hub_error_kind(exc: BaseException) -> str | None:
    """Which hub failure is behind ``exc``: gated, not_found, revision, offline, missing_file, bad_id, network."""
    kinds = _hub_errors()
    order = (("GatedRepoError", "gated"), ("RepositoryNotFoundError", "not_found"),
             ("RevisionNotFoundError", "revision"), ("OfflineModeIsEnabled", "offline"),
             ("LocalEntryNotFoundError", "offline"), ("EntryNotFoundError", "missing_file"),
             ("HFValidationError", "bad_id"), ("HfHubHTTPError", "network"))
    for err in _chain(exc):
        for name, kind in order:
            cls = kinds.get(name)
            if cls is not None and isinstance(err, cls):
                return kind
        text = str(err).lower()
        if "offline" in text or "cannot find the requested files in the local cache" in text:
            return "offline"
        if type(err).__name__ in ("ConnectError", "ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout"):
            return "network"
    return None


def download_instructions(repo_id: str, cache_dir: str | None = None) -> str:
    target = f" --cache-dir {cache_dir}" if cache_dir else ""
    return (
        "How to fix it, any one of:\n"
        f"  - on a machine with internet: pip install huggingface_hub, then run `hf download {repo_id}{target}`, "
        "and copy the Hugging Face cache folder (~/.cache/huggingface/hub, or the --cache-dir folder) "
        "to this computer;\n"
        "  - pass a local diffusers folder or a .safetensors checkpoint with --model;\n"
        f"  - {PRESET_HINT}."
    )


def explain_hub_failure(what: str, repo_id: str, exc: BaseException, cache_dir: str | None = None,
                        local_alternative: bool = True) -> ModelLoadError:
    """A ModelLoadError for ``what`` (e.g. "model", "tiny VAE") that failed to come from hub repo ``repo_id``."""
    kind = hub_error_kind(exc)
    detail = f"{type(exc).__name__}: {exc}".strip()
    if len(detail) > 400:
        detail = detail[:400] + "..."
    howto = download_instructions(repo_id, cache_dir) if local_alternative else (
        f"On a machine with internet run `hf download {repo_id}` and copy the Hugging Face cache here.")
    if kind == "gated":
        msg = (f"The {what} '{repo_id}' is gated on the Hugging Face hub: accept its license on "
               f"https://huggingface.co/{repo_id} and log in with `hf auth login`, then retry.")
    elif kind == "not_found":
        msg = (f"There is no {what} '{repo_id}' on the Hugging Face hub (check the spelling; private models need "
               "`hf auth login`), and no local folder of that name exists.")
    elif kind == "revision":
        msg = f"The {what} '{repo_id}' has no such revision on the hub."
    elif kind == "bad_id":
        msg = (f"'{repo_id}' is not a valid hub id (owner/name), and no file or folder of that name exists. "
               "Give a hub id, a local diffusers folder, a .safetensors file or preset:NAME.")
    elif kind == "missing_file":
        msg = (f"The hub repository '{repo_id}' exists but is not a diffusers {what} (a file diffusers needs is "
               "missing). If it holds a single checkpoint, pass the URL or local path of its .safetensors file.")
    elif kind in ("offline", "network"):
        reason = offline_reason()
        msg = (f"The {what} '{repo_id}' has not been downloaded to this computer, and the model hub could not be "
               f"reached{f' ({reason})' if reason else ''}.\n{howto}")
    else:
        msg = f"Could not load the {what} '{repo_id}'."
    if kind in ("offline", "network"):
        # The library's own sentence here ("set local_files_only to False") is not something a user of
        # this program can do; the message above says what is. The chained exception keeps it for the log.
        return ModelLoadError(msg)
    return ModelLoadError(f"{msg}\n(Details: {detail})")


def pickle_refused(path: str, what: str = "model") -> ModelLoadError:
    return ModelLoadError(
        f"Refusing to load the {what} '{path}': .ckpt/.pt/.pth/.bin files are Python pickles, which can run "
        "arbitrary code when opened. Prefer a .safetensors version of it. If you trust where the file came from, "
        "opt in with --allow-pickle (allow_pickle=True).")


def is_out_of_memory(exc: BaseException | None) -> bool:
    """Memory ran out: torch's OutOfMemoryError, Python's MemoryError, or an error whose text says so
    (CUDA failures that other libraries re-raise as RuntimeError). The one rule for the whole program."""
    if exc is None:
        return False
    torch = sys.modules.get("torch")  # never imported here: without torch loaded, no torch error exists
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return ((oom is not None and isinstance(exc, oom)) or isinstance(exc, MemoryError)
            or type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower())


#: What helps when the GPU runs out of memory while a model runs (loading has its own sentence below).
OOM_ADVICE = ("Choose a smaller size or fewer steps (for example 512x512 or 384x384, 1 step), keep the tiny VAE "
              "on, use cfg type 'none' or 'self', or close other programs that use the GPU.")


def out_of_memory_while_running(config=None) -> str:
    """The sentence for an out-of-memory on a frame, naming the size and steps that did not fit."""
    where = ""
    if config is not None:
        where = f" at {config.width}x{config.height} with {len(config.t_index_list)} step(s)"
    return f"The GPU ran out of memory{where}. {OOM_ADVICE}"


def out_of_memory(source: str, device: str, exc: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"Not enough GPU memory to hold the model '{source}' on {device}. Close other programs that use the GPU "
        "(games, other AI tools, browsers with hardware acceleration), or pick a smaller model (sd-turbo "
        f"instead of an SDXL model), or keep the tiny VAE on.\n(Details: {str(exc)[:300]})")


#: Exceptions whose message was written for users: shown as they are, logged without a traceback.
# By name, so that core needs none of them imported; RemoteError: app.remote.client (a server refused or left).
EXPLAINED_ERRORS = ("ModelLoadError", "ConfigError", "SourceError", "OutputError", "RemoteError")


def is_explained(exc: BaseException) -> bool:
    return type(exc).__name__ in EXPLAINED_ERRORS


def user_message(exc: BaseException) -> str:
    """A sentence for a dialog or a terminal: the message as written where it was written for users."""
    if is_out_of_memory(exc):
        return f"The GPU ran out of memory. {OOM_ADVICE}"
    text = str(exc).strip() or type(exc).__name__
    return text if is_explained(exc) else f"{type(exc).__name__}: {text}"


def load_failure_reason(exc: BaseException) -> str:
    """Why building an engine failed, for a place that already says it failed (the window's dialog)."""
    if is_out_of_memory(exc):
        return f"The GPU ran out of memory while loading the model. {OOM_ADVICE}"
    return user_message(exc)


def load_failure_message(exc: BaseException) -> str:
    """The same as a sentence of its own, for ``run`` and the pipeline's error callback."""
    reason = load_failure_reason(exc)
    return reason if is_explained(exc) or is_out_of_memory(exc) else f"Loading the model failed: {reason}"
