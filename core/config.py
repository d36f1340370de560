"""Validated configuration of the stream diffusion engine.

Every field is checked on construction; an invalid value raises ``ConfigError`` naming the field and
the allowed range, so that a typo on the command line or in the GUI gives a sentence, not a traceback
from deep inside the UNet.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from core.guidance import GUIDANCE_RULES

CfgType = Literal["none", "full", "self", "initialize"]
Mode = Literal["img2img", "txt2img"]
Acceleration = Literal["none", "compile", "tensorrt"]
ResizeMode = Literal["crop", "letterbox"]
ParallelMode = Literal["auto", "frames", "asyncdiff"]

CFG_TYPES = tuple(GUIDANCE_RULES)
MODES = ("img2img", "txt2img")
ACCELERATIONS = ("none", "compile", "tensorrt")
RESIZE_MODES = ("crop", "letterbox")
PARALLEL_MODES = ("auto", "frames", "asyncdiff")
DTYPES = ("float16", "bfloat16", "float32")
DEFAULT_MODEL = "stabilityai/sd-turbo"
MAX_SMOOTHING = 0.95  # at 1.0 the output would stop following the camera


class ConfigError(ValueError):
    """A configuration value is out of its allowed range."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field_name = field_name


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA to fuse into the UNet: a hub id, a folder or a .safetensors file, and its scale."""

    source: str
    scale: float = 1.0
    weight_name: str | None = None


@dataclass(frozen=True)
class StreamConfig:
    model: str = DEFAULT_MODEL
    mode: Mode = "img2img"
    width: int = 512
    height: int = 512
    # Indices into the LCM schedule of ``num_inference_steps`` timesteps, one per denoising step.
    # A larger first index keeps more of the input (lower strength).
    t_index_list: tuple[int, ...] = (32,)
    num_inference_steps: int = 50
    frame_buffer_size: int = 1
    cfg_type: CfgType = "none"
    guidance_scale: float = 1.2
    delta: float = 1.0
    seed: int = 2
    use_tiny_vae: bool = True
    tiny_vae: str | None = None  # None: TAESD / TAESDXL matching the model family
    loras: tuple[LoraSpec, ...] = ()
    use_lcm_lora: bool | None = None  # None: on for SD 1.5 checkpoints, off for turbo models
    lcm_lora: str | None = None  # None: the LCM-LoRA matching the model family
    similarity_filter: bool = False
    similarity_threshold: float = 0.98
    max_skip_frames: int = 10
    device: str = "auto"  # "auto": cuda when available, else cpu
    dtype: str = "auto"  # "auto": float16 on cuda, float32 on cpu
    # compile on CUDA by default; on the CPU every choice runs eager (core.accel says so in the log).
    acceleration: Acceleration = "compile"
    # compile: stylized frames within seconds on the CUDA graph of the eager kernels, the compiled engine
    # swapped in between two frames once its background build is done (core.accel.staged).
    quick_start: bool = True
    resize_mode: ResizeMode = "crop"  # how the source fits the generated size, and that the output size
    # The size of the frames the engine hands out (upscaled on the device); 0x0: the generated size.
    # The size frames arrive at (a 1280x720 camera, say); 0x0: the generated size. The load captures its
    # frame graph for this input, so the first live frame runs at once instead of capturing another.
    source_width: int = 0
    source_height: int = 0
    output_width: int = 0
    output_height: int = 0
    smoothing: float = 0.0  # latent feedback: how much of the last output leans into the next input
    # Deep-feature reuse (core.feature_reuse): elements past their first step run the UNet's shallow path on
    # the deep features their sample produced at step 0; refreshed every N frames (0: only after a change).
    feature_reuse: bool = False
    feature_reuse_interval: int = 0
    # How much stays fresh (core.feature_reuse): "layer" (the last up layer: met the targets on the H100)
    # or "block" (the full-resolution blocks: moves the picture less, gains less).
    feature_reuse_depth: str = "layer"
    transition_frames: int = 0  # prompt and seed changes blend in over this many frames (0: at once)
    # Several GPUs (core.parallel): "frames" deals frames to one engine per GPU, "asyncdiff" spreads the UNet's
    # stages over them; "auto" takes frames at one step, asyncdiff at more. ``split_at``: the first UNet unit of
    # each stage after the first (empty: balanced by FLOPs).
    gpus: int = 1
    parallel: ParallelMode = "auto"
    split_at: tuple[int, ...] = ()
    allow_pickle: bool = False  # load .ckpt / .bin pickles only when the user opts in
    cache_dir: str | None = None
    single_file_config: str | None = None  # diffusers config folder or hub id for a single-file model

    def __post_init__(self) -> None:
        # Accept lists from JSON / argparse while keeping the dataclass hashable.
        if not isinstance(self.t_index_list, tuple):
            object.__setattr__(self, "t_index_list", tuple(self.t_index_list))
        if not isinstance(self.loras, tuple):
            object.__setattr__(self, "loras", tuple(self.loras))
        if not isinstance(self.split_at, tuple):
            object.__setattr__(self, "split_at", tuple(self.split_at))
        self._validate()

    def _validate(self) -> None:
        _choice("mode", self.mode, MODES)
        _choice("cfg_type", self.cfg_type, tuple(GUIDANCE_RULES))  # read live: a new row is a new choice
        _choice("acceleration", self.acceleration, ACCELERATIONS)
        _choice("resize_mode", self.resize_mode, RESIZE_MODES)
        if self.dtype != "auto":
            _choice("dtype", self.dtype, DTYPES)
        if not self.model or not isinstance(self.model, str):
            raise ConfigError("model", "give a hub id, a local folder, a .safetensors file or preset:NAME")
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 64 <= value <= 2048 or value % 8:
                raise ConfigError(name, f"must be a multiple of 8 from 64 to 2048, got {value!r}")
        _int_range("num_inference_steps", self.num_inference_steps, 1, 1000)
        if not 1 <= len(self.t_index_list) <= 4:
            raise ConfigError("t_index_list", f"needs 1 to 4 entries (denoising steps), got {len(self.t_index_list)}")
        last = -1
        for index in self.t_index_list:
            if not isinstance(index, int) or not 0 <= index < self.num_inference_steps:
                raise ConfigError(
                    "t_index_list", f"entries must be integers from 0 to {self.num_inference_steps - 1}, got {index!r}"
                )
            if index <= last:
                raise ConfigError("t_index_list", f"entries must increase strictly, got {list(self.t_index_list)}")
            last = index
        _int_range("frame_buffer_size", self.frame_buffer_size, 1, 8)
        _float_range("guidance_scale", self.guidance_scale, 0.0, 20.0)
        _float_range("delta", self.delta, 0.0, 5.0)
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ConfigError("seed", f"must be an integer from 0 to 2**63-1, got {self.seed!r}")
        _float_range("similarity_threshold", self.similarity_threshold, 0.0, 1.0)
        if (self.output_width == 0) != (self.output_height == 0):
            raise ConfigError("output_width", "give both output width and height, or neither (0x0)")
        for name in ("output_width", "output_height"):
            value = getattr(self, name)
            # Even: H.264 and most virtual cameras take 4:2:0 frames.
            if value and (not isinstance(value, int) or not 64 <= value <= 4096 or value % 2):
                raise ConfigError(name, f"must be an even number from 64 to 4096 (or 0: the generated size), got {value!r}")
        _float_range("smoothing", self.smoothing, 0.0, MAX_SMOOTHING)
        _int_range("feature_reuse_interval", self.feature_reuse_interval, 0, 1000)
        _choice("feature_reuse_depth", self.feature_reuse_depth, ("block", "layer"))
        _int_range("transition_frames", self.transition_frames, 0, 600)
        for name in ("source_width", "source_height"):
            _int_range(name, getattr(self, name), 0, 16384)
        _int_range("max_skip_frames", self.max_skip_frames, 0, 10_000)
        _int_range("gpus", self.gpus, 1, 16)
        _choice("parallel", self.parallel, PARALLEL_MODES)
        if self.gpus > 1 and self.parallel == "frames" and self.frame_buffer_size > 1:
            raise ConfigError("parallel", "frame parallelism deals one frame per call; use frame buffer 1 or asyncdiff")
        if self.split_at and len(self.split_at) != self.gpus - 1:
            raise ConfigError("split_at", f"needs one unit index per GPU after the first ({self.gpus - 1}), "
                                          f"got {list(self.split_at)}")
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError("device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        for lora in self.loras:
            _float_range("loras.scale", lora.scale, -4.0, 4.0)

    @property
    def denoising_steps(self) -> int:
        return len(self.t_index_list)

    @property
    def batch_size(self) -> int:
        """Latents in one UNet call before guidance adds any: one per step and buffered frame."""
        return self.denoising_steps * self.frame_buffer_size

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the frames the engine hands out."""
        return (self.output_height, self.output_width) if self.output_width else (self.height, self.width)

    def replace(self, **changes) -> "StreamConfig":
        return dataclasses.replace(self, **changes)

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_dtype(self):
        import torch

        if self.dtype == "auto":
            return torch.float16 if self.resolved_device().startswith("cuda") else torch.float32
        return getattr(torch, self.dtype)

    #: Settings a running engine takes between frames (its setters); every other field needs a new engine.
    LIVE_FIELDS = ("seed", "guidance_scale", "delta", "similarity_filter", "similarity_threshold", "max_skip_frames",
                   "output_width", "output_height", "smoothing", "transition_frames", "resize_mode", "source_width",
                   "source_height", "feature_reuse", "feature_reuse_interval", "feature_reuse_depth")

    def needs_new_engine(self, other: "StreamConfig") -> bool:
        """Whether going from this config to ``other`` takes a new engine (and, accelerated, new graphs):
        anything but the live settings, and the schedule indices only when their count changes."""
        live = {name: getattr(other, name) for name in self.LIVE_FIELDS}
        if len(self.t_index_list) == len(other.t_index_list):
            live.update(t_index_list=other.t_index_list, num_inference_steps=other.num_inference_steps)
        return self.replace(**live) != other


def _choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(name, f"must be one of {', '.join(allowed)}; got {value!r}")


def _int_range(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(name, f"must be an integer from {low} to {high}, got {value!r}")


def _float_range(name: str, value, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(name, f"must be a number from {low} to {high}, got {value!r}")

