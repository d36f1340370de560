"""StreamEngine: Stream Batch denoising with residual CFG, frame in, frame out.

Stages per frame, in order (as a diffusers pipeline would have them): preprocess on the device,
(similarity filter), VAE encode, add noise, one batched UNet call over every denoising step, the LCM
step, re-noise the stream buffer, VAE decode, uint8.

Every per-frame tensor the engine reads lives in a persistent buffer that parameter changes overwrite
in place; shapes never change for the life of an engine. That is what lets a captured CUDA graph or a
TensorRT engine be reused across prompt, seed, strength and guidance changes.
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
import time
import warnings
from dataclasses import fields, replace

import numpy as np
import torch
from diffusers import LCMScheduler

from core import imageops, schedule
from core.accel.parts import AcceleratedParts, StreamSnapshot
from core.config import StreamConfig
from core.feature_reuse import FeatureCache, predict_with_reuse, reuse_decision, unet_split_forward
from core.guidance import GUIDANCE_RULES
from core.live_settings import LiveSettings
from core.host_copies import PinnedCopies
from core.prompts import Conditioning, conditioning_layout, encode_conditioning
from core.similarity import SimilarityFilter
from core.stream_batch import StreamBatch
from core.transitions import Transitions
from core.vae import vae_decode, vae_encode

log = logging.getLogger(__name__)


class StreamEngine(LiveSettings):
    def __init__(self, components, config: StreamConfig):
        self.components = components
        self.config = config
        self.device = torch.device(config.resolved_device())
        self.dtype = config.resolved_dtype()
        if self.device.type == "cpu" and self.dtype != torch.float32:
            raise ValueError("on the CPU the engine runs in float32; pass dtype float32 or auto")
        if self.device.type == "cpu":
            warnings.warn("running on the CPU: expect seconds per frame at full model sizes", stacklevel=2)
        pipe = components.pipe
        self.unet = pipe.unet
        use_tiny = config.use_tiny_vae and components.tiny_vae is not None
        self.vae = components.tiny_vae if use_tiny else pipe.vae
        # The SDXL VAE overflows in float16; it runs in float32 unless the tiny VAE replaces it.
        self.vae_dtype = torch.float32 if getattr(self.vae.config, "force_upcast", False) else self.dtype
        if self.vae.dtype != self.vae_dtype:
            self.vae.to(self.vae_dtype)
        self.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
        if self.scheduler.config.prediction_type != "epsilon":
            raise ValueError(f"only epsilon-prediction models are supported, got {self.scheduler.config.prediction_type}")
        self.timesteps = schedule.lcm_timesteps(self.scheduler, config.num_inference_steps)
        self.guidance = GUIDANCE_RULES[config.cfg_type]
        self.layout = conditioning_layout(self.guidance, config.denoising_steps, config.frame_buffer_size)
        self.accelerated = AcceleratedParts()
        self._offered: tuple | None = None  # parts from another thread, installed at the next frame
        self.startup = None  # a background build (core.accel.staged) while the engine runs its quick path
        self.closed = False
        self.latent_shape = (4, config.height // 8, config.width // 8)

        self._lock = threading.Lock()
        self._pending_config: dict[str, object] = {}  # StreamConfig fields to change at the next frame
        self._pending_prompt: tuple[str, str] | None = None
        self.prompt = self.negative_prompt = ""
        self.filter = SimilarityFilter(config.similarity_threshold, config.max_skip_frames, seed=config.seed)
        self.similarity_enabled = config.similarity_filter
        self.last_frame_skipped = False
        self.skipped_frames = self.frames_processed = 0
        self.last_gpu_ms = 0.0
        self._last_output: torch.Tensor | None = None
        self._host = PinnedCopies(self.device)
        self.acceleration = "none"  # what actually runs; core.accel sets it
        self.acceleration_note = ""  # why it is not what the config asked for, when it is not
        self.parallel = ""  # how the work spreads over several devices (core.parallel), when it does
        self.batch = StreamBatch(self.scheduler, self.timesteps, config, self.guidance, self.latent_shape, self.device,
                                 self.dtype)
        self.transitions = Transitions()
        self.conditioning: Conditioning | None = None
        self.reuse_refresh: bool | None = None  # this frame: None (no reuse), True (refresh all), False (reuse)

    @classmethod
    def from_config(cls, config: StreamConfig, progress=None, components=None) -> "StreamEngine":
        """The model loaded (or given), accelerated, warmed up; ``gpus`` > 1: over several GPUs (core.parallel)."""
        from core.models import load_components

        if config.gpus > 1:
            from core.parallel import build_parallel_engine

            return build_parallel_engine(cls, config, progress, components)
        engine = cls(components or load_components(config, progress), config)
        if config.acceleration != "none":
            from core.accel import accelerate

            if accelerate(engine, progress, staged=config.quick_start) != "none":
                engine.warm_up()
            if engine.startup is not None:  # the quick path runs: build the full-speed one beside it
                engine.startup.start()
        return engine

    # ----- the accelerator interface ---------------------------------------------------------------

    def install(self, **parts) -> None:
        """Run the given parts (fields of ``AcceleratedParts``) in place of the current ones."""
        self.accelerated = replace(self.accelerated, **parts)

    def restore_eager(self, *names: str) -> None:
        """Back to eager PyTorch for the named parts (all of them when none is named)."""
        names = names or tuple(f.name for f in fields(AcceleratedParts))
        self.accelerated = replace(self.accelerated, **{name: None for name in names})

    def offer(self, acceleration: str | None = None, on_installed=None, **parts) -> bool:
        """From any thread: install ``parts`` (and call ``on_installed``) at the start of the next frame, so
        that an upgrade built in the background replaces the running one between two frames. False (nothing
        kept) once the engine is closed."""
        with self._lock:
            if self.closed:
                return False
            self._offered = (parts, acceleration, on_installed)
            return True

    def _install_offered(self) -> None:
        with self._lock:
            offered, self._offered = self._offered, None
        if offered is None:
            return
        parts, acceleration, on_installed = offered
        self.install(**parts)
        if acceleration is not None:
            self.acceleration = acceleration
        if on_installed is not None:
            on_installed()

    @property
    def stage(self) -> str:
        """What the user waits for: "eager", "full speed", or a background build's "quick start, compiling ~62%"."""
        if self.startup is not None:
            return self.startup.stage()
        return "eager" if self.acceleration == "none" else "full speed"

    def view(self, parts: AcceleratedParts | None = None, own_state: bool = False) -> "StreamEngine":
        """This engine running other accelerated ``parts``: the same networks, conditioning and settings,
        and the same stream state unless ``own_state`` (then throwaway runs on it change nothing here).
        A background build warms up on an own-state view and records its graph on a shared one."""
        twin = copy.copy(self)
        twin.accelerated = self.accelerated if parts is None else parts
        if own_state:
            twin.batch = self.batch.scratch()
        return twin

    @property
    def unet_forward(self):
        # "is None", never truthiness: a torch.compile'd module raises on len(), and so on bool().
        return self.unet if self.accelerated.unet is None else self.accelerated.unet

    @property
    def unet_batch_size(self) -> int:
        """Inputs per UNet call: the stream batch plus the cfg type's negative inputs."""
        return len(self.batch.unet_rows)

    def snapshot_stream(self) -> StreamSnapshot:
        return self.batch.snapshot()

    def restore_stream(self, snapshot: StreamSnapshot) -> None:
        self.batch.restore(snapshot)

    def close(self) -> None:
        """Drop the networks, the accelerators' graphs and every device buffer, so their memory is freed even
        while something still holds this engine (a model swap must not keep two models on the GPU)."""
        if self.startup is not None:
            self.startup.cancel()
        with self._lock:
            self.closed = True
            self._offered = None
        self.accelerated = AcceleratedParts()
        self.components = self.unet = self.vae = None
        self.conditioning = self._last_output = self.batch = None
        self.transitions.clear()
        self._host = PinnedCopies(self.device)

    def _require_open(self) -> None:
        if self.closed:
            raise RuntimeError("this engine was closed (its model was swapped out)")

    # ----- precomputation -------------------------------------------------------------------------

    def prepare(self, prompt: str, negative_prompt: str = "") -> None:
        """Encode the prompts and reset the stream buffer; call once before the first frame."""
        self._require_open()
        self.prompt, self.negative_prompt = prompt, negative_prompt
        conditioning = self._encode(prompt, negative_prompt)
        if self.conditioning is None:
            self.conditioning = conditioning
        else:
            self.conditioning.copy_(conditioning)  # captured graphs keep reading the same tensors
        self.transitions.clear()
        self.batch.reset()
        self.filter.reset()
        self._last_output = None

    @torch.no_grad()
    def warm_up(self) -> None:
        """Run one throwaway frame at the source's size (``source_width/height``, else the model size), so that
        compiling and graph capture happen now (in a loader thread, with progress) rather than at the first
        live frame."""
        cfg = self.config
        if self.conditioning is None:
            self.prepare("")
        frame = None
        if cfg.mode == "img2img":
            height, width = (cfg.source_height, cfg.source_width) if cfg.source_width else (cfg.height, cfg.width)
            frame = np.zeros((cfg.frame_buffer_size, height, width, 3), dtype=np.uint8)
        self.process(frame)
        if self.reuse_refresh:  # feature reuse: a reuse frame too, so that its graph exists before the live ones
            self.process(frame)
        self.prepare(self.prompt, self.negative_prompt)  # empties the stream buffer again
        self.skipped_frames = self.frames_processed = 0

    def _encode(self, prompt: str, negative_prompt: str) -> Conditioning:
        cfg = self.config
        return encode_conditioning(self.components, prompt, negative_prompt, self.layout, cfg.width, cfg.height,
                                   self.device, self.dtype)

    # ----- live parameter changes: the setters queue them (core.live_settings), applied here ---------

    def apply_pending(self) -> None:
        with self._lock:
            changes, self._pending_config = self._pending_config, {}
            prompt, self._pending_prompt = self._pending_prompt, None
            if prompt is not None:
                self.prompt, self.negative_prompt = prompt
        cfg = self.config.replace(**changes) if changes else self.config
        frames = cfg.transition_frames if self._last_output is not None else 0  # no blend before the first frame
        if prompt is not None:
            target = self._encode(self.prompt, self.negative_prompt)
            self.transitions.start("prompt", self.conditioning.pairs_with(target), frames)
        if "seed" in changes:
            self.transitions.start("seed", [(self.batch.noise, self.batch.noise_for(cfg.seed))], frames, spherical=True)
        self.transitions.advance()
        if prompt is not None or {"seed", "t_index_list"} & set(changes):
            self.batch.conditions_changed()  # the deep features carried over belong to the old conditions
        if not changes:
            return
        if "t_index_list" in changes:
            self.batch.set_schedule(cfg.t_index_list)
        self.batch.set_scalars(cfg)
        self.similarity_enabled = cfg.similarity_filter
        self.filter.threshold, self.filter.max_skip_frames = cfg.similarity_threshold, cfg.max_skip_frames
        self.config = cfg

    # ----- the per-frame stages -------------------------------------------------------------------

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] to scaled latents in the engine dtype."""
        if self.accelerated.encode_images is not None:
            return self.accelerated.encode_images(images)
        return vae_encode(self.vae, images, self.vae_dtype, self.dtype)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents to images in [-1, 1]."""
        if self.accelerated.decode_latents is not None:
            return self.accelerated.decode_latents(latents)
        return vae_decode(self.vae, latents, self.vae_dtype)

    def predict_noise(self, x_in: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """One UNet call over the stream batch's inputs (the cfg type's negative inputs included)."""
        cond = self.conditioning
        if self.reuse_refresh is not None:
            split = self.accelerated.unet_split or functools.partial(unet_split_forward, self.unet)
            return predict_with_reuse(split, self.batch.features, self.reuse_refresh, x_in, timesteps,
                                      cond.encoder_hidden_states, cond.added_cond_kwargs, self.config.feature_reuse_depth)
        return self.unet_forward(x_in, timesteps, encoder_hidden_states=cond.encoder_hidden_states,
                                 added_cond_kwargs=cond.added_cond_kwargs, return_dict=False)[0]

    @property
    def feature_cache(self) -> FeatureCache:
        return self.batch.features

    def denoise(self, x_new: torch.Tensor) -> torch.Tensor:
        """Stream Batch step (core.stream_batch): the new frames' clean latents (zeros for txt2img) in,
        the fully denoised latents of the frames leaving the batch out."""
        return self.batch.step(x_new, self.predict_noise, txt2img=self.config.mode == "txt2img")

    def frame_step(self, frames_u8: torch.Tensor) -> torch.Tensor:
        """Device uint8 NxHxWx3 in (any size), device uint8 N x height x width x 3 out."""
        return self.frame_back(self.predict_noise(self.frame_front(frames_u8), self.batch.unet_timesteps))

    def frame_front(self, frames_u8: torch.Tensor | None) -> torch.Tensor:
        """The frame up to the UNet: preprocess, encode, noise; the UNet's input rows out (``StreamBatch.begin``)."""
        cfg = self.config
        if cfg.mode == "txt2img":
            x_new = torch.zeros((cfg.frame_buffer_size, *self.latent_shape), device=self.device, dtype=self.dtype)
        else:
            images = imageops.to_model_input(frames_u8, cfg.height, cfg.width, self.dtype, cfg.resize_mode == "letterbox")
            x_new = self.encode_images(images)
        return self.batch.begin(x_new, txt2img=cfg.mode == "txt2img")

    def frame_back(self, eps: torch.Tensor) -> torch.Tensor:
        """The frame after the UNet: the step, decode and uint8, from the UNet's noise for ``frame_front``'s rows."""
        cfg = self.config
        out_h, out_w = cfg.output_size
        return imageops.to_output_frames(self.decode_latents(self.batch.finish(eps)), out_h, out_w,
                                         cfg.resize_mode == "letterbox")

    # ----- the public per-frame call --------------------------------------------------------------

    @torch.no_grad()
    def process(self, frame=None):
        """One frame (HxWx3) or ``frame_buffer_size`` frames (NxHxWx3) of uint8 RGB in, the same out.

        numpy in gives numpy out (host); a torch tensor in gives a tensor on the engine's device.
        txt2img takes no frame.
        """
        self._require_open()
        if self.conditioning is None:
            raise RuntimeError("call prepare(prompt) before the first frame")
        fb = self.config.frame_buffer_size
        single = frame is None or getattr(frame, "ndim", 0) == 3
        to_host = frame is None or isinstance(frame, np.ndarray)
        frames = None
        if frame is not None:
            frames = self._host.upload(imageops.as_uint8_tensor(frame))
            if frames.shape[0] != fb:
                raise ValueError(f"expected {fb} frame(s) per call (frame_buffer_size), got {frames.shape[0]}")
        elif self.config.mode == "img2img":
            raise ValueError("img2img needs an input frame")

        started = time.perf_counter()
        output = self.step(frames)
        if to_host:
            output = self._host.download(output)
        else:
            output = output.clone()  # the accelerators reuse their output buffer every frame
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
        self.last_gpu_ms = (time.perf_counter() - started) * 1000.0
        return output[0] if single else output

    def step(self, frames_u8):
        """One frame on the device, host copies left to the caller (the result may be an accelerator's reused
        buffer: copy it before the next call)."""
        if self.begin_step(frames_u8):
            return self._last_output
        return self.end_step(self.run_frame_step(frames_u8))

    def begin_step(self, frames_u8) -> bool:
        """Before a frame's work: offered parts and pending changes installed, feature reuse decided; True when
        the similarity filter skips the frame (``last_output`` stands for it)."""
        self._install_offered()
        self.apply_pending()
        self.reuse_refresh = reuse_decision(self.config, self.batch.features, self.accelerated, self.acceleration)
        if self._should_skip(frames_u8):
            self.last_frame_skipped = True
            self.skipped_frames += 1
            return True
        return False

    def end_step(self, output):
        """After a frame's work (``output``, device uint8): the counters and what the next skipped frame shows."""
        if self.reuse_refresh is not None:
            self.batch.features.frame_done(self.reuse_refresh)
        self._last_output = output
        self.last_frame_skipped = False
        self.frames_processed += 1
        return output

    @property
    def last_output(self):
        return self._last_output

    def run_frame_step(self, frames_u8):
        """The hot path: an accelerator's frame runner (a captured graph) where one is installed."""
        runner = self.accelerated.frame_runner
        return self.frame_step(frames_u8) if runner is None else runner(frames_u8)

    def _should_skip(self, frames_u8) -> bool:
        if not self.similarity_enabled or frames_u8 is None:
            return False
        # The filter is consulted even without an output yet, so that it learns its reference frame.
        return self.filter.should_skip_frames(frames_u8) and self._last_output is not None
