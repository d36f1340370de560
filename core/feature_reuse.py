"""Deep-feature reuse inside Stream Batch (DeepCache's idea, arXiv 2312.00858, in a stream).

The UNet is split at its outermost level: the *shallow* path is ``conv_in``, the first down block, the last
up block and the output head, all at full latent resolution; the *deep* path is everything between (the
other down blocks, the middle block and the other up blocks), whose output, the hidden state entering the
last up block, changes little from one denoising step to the next.

In a Stream Batch the element at step k this frame is the same sample that sat at step k-1 in the last
frame's batch. So only the new frames (step 0) run the whole UNet; every later element runs the shallow path
on the deep features its own sample produced at step 0, kept per UNet row and shifted along with the latents
(``FeatureCache``). A refresh frame (every ``interval`` frames, and after any change of prompt, seed,
strength or the stream) runs the whole UNet for every row.

``unet_split_forward`` re-states diffusers' ``UNet2DConditionModel.forward`` for what the presets use (SD 1.x,
SD 2.x, SDXL: no ControlNet, adapter or class labels) so that the split point is reachable; a test holds it
equal to diffusers' own forward.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def unet_embeddings(unet, sample, timestep, encoder_hidden_states, added_cond_kwargs):
    t_emb = unet.get_time_embed(sample=sample, timestep=timestep)
    emb = unet.time_embedding(t_emb, None)
    aug_emb = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                                 added_cond_kwargs=added_cond_kwargs or {})
    if aug_emb is not None:
        emb = emb + aug_emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    encoder_hidden_states = unet.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states,
                                                               added_cond_kwargs=added_cond_kwargs or {})
    return emb, encoder_hidden_states


def run_down_block(block, hidden, emb, encoder_hidden_states):
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=hidden, temb=emb, encoder_hidden_states=encoder_hidden_states)
    return block(hidden_states=hidden, temb=emb)


def run_up_block(block, hidden, emb, res_samples, encoder_hidden_states, upsample_size):
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res_samples,
                     encoder_hidden_states=encoder_hidden_states, upsample_size=upsample_size)
    return block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res_samples, upsample_size=upsample_size)


DEPTHS = ("block", "layer")


def up_block_layers(block, hidden, emb, res_samples, encoder_hidden_states, indices):
    """Layers ``indices`` of an up block without an upsampler (its resnets and their attentions), each taking
    the skip at the end of ``res_samples``: diffusers' up-block forward, re-stated per layer so that the last
    block can be cut between its layers. Returns the hidden state and the skips left."""
    for i in indices:
        hidden = block.resnets[i](torch.cat([hidden, res_samples[-1]], dim=1), emb)
        hidden, res_samples = attend(block, i, hidden, encoder_hidden_states), res_samples[:-1]
    return hidden, res_samples


def attend(block, layer: int, hidden, encoder_hidden_states):
    """Layer ``layer``'s attention of a block (nothing for a block without attentions)."""
    attentions = getattr(block, "attentions", None)
    if attentions is None:
        return hidden
    return attentions[layer](hidden, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


def unet_split_forward(unet, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, deep=None,
                       depth="layer"):
    """The UNet's noise prediction and its deep features: the hidden state entering the last up block
    (``depth="block"``: the shallow path is conv_in, the first down block, the last up block and the head) or its
    last layer (``"layer"``: only conv_in, that layer and the head stay fresh; DeepCache's shallowest branch).

    ``deep`` given: the shallow path only, on those deep features (one per row of ``sample``); the deep
    features returned are then ``deep`` itself.
    """
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    upsample_factor = 2 ** unet.num_upsamplers
    needs_size = any(dim % upsample_factor for dim in sample.shape[-2:])
    emb, encoder_hidden_states = unet_embeddings(unet, sample, timestep, encoder_hidden_states, added_cond_kwargs)
    hidden = unet.conv_in(sample)
    res = (hidden,)
    last = unet.up_blocks[-1]
    layer = depth == "layer"
    if layer and deep is not None:  # the last layer's skip is conv_in's output: no down block runs
        out, _ = up_block_layers(last, deep, emb, res, encoder_hidden_states, [len(last.resnets) - 1])
        return _head(unet, out), deep
    hidden, first_res = run_down_block(unet.down_blocks[0], hidden, emb, encoder_hidden_states)
    res += first_res
    shallow_res = res[: len(last.resnets)]  # the last up block's skips: conv_in's and the first block's resnets
    if deep is None:
        deep = _deep_path(unet, hidden, res, emb, encoder_hidden_states, needs_size)
        if layer:
            deep, shallow_res = up_block_layers(last, deep, emb, shallow_res, encoder_hidden_states,
                                                range(len(last.resnets) - 1))
            out, _ = up_block_layers(last, deep, emb, shallow_res, encoder_hidden_states, [len(last.resnets) - 1])
            return _head(unet, out), deep
    return _head(unet, run_up_block(last, deep, emb, shallow_res, encoder_hidden_states, None)), deep


def _deep_path(unet, hidden, res, emb, encoder_hidden_states, needs_size):
    """The down blocks after the first, the middle block and the up blocks before the last."""
    for block in unet.down_blocks[1:]:
        hidden, block_res = run_down_block(block, hidden, emb, encoder_hidden_states)
        res += block_res
    if unet.mid_block is not None:
        if getattr(unet.mid_block, "has_cross_attention", False):
            hidden = unet.mid_block(hidden, emb, encoder_hidden_states=encoder_hidden_states)
        else:
            hidden = unet.mid_block(hidden, emb)
    for block in unet.up_blocks[:-1]:
        block_res, res = res[-len(block.resnets):], res[: -len(block.resnets)]
        size = res[-1].shape[2:] if needs_size else None
        hidden = run_up_block(block, hidden, emb, block_res, encoder_hidden_states, size)
    return hidden


def _head(unet, out):
    if unet.conv_norm_out is not None:
        out = unet.conv_act(unet.conv_norm_out(out))
    return unet.conv_out(out)


class FeatureCache:
    """The deep features each UNet row's sample produced at its first step, shifted along the batch.

    UNet rows come in groups (the negative inputs, then the positive ones; see core.guidance); within a group
    row i denoises stream element i, and element i + frame_buffer_size next frame is the same sample one step
    further. The first ``frame_buffer_size`` rows of each group are the new frames: they always run the
    whole UNet.
    """

    def __init__(self, negative_count: int, batch_size: int, frame_buffer_size: int, interval: int = 0):
        self.groups = [g for g in (negative_count, batch_size) if g]
        self.fb = frame_buffer_size
        self.interval = interval  # 0: refresh only after a change; N: also every N frames
        # One buffer per depth, each kept for good once made: a captured graph of that depth writes and reads it.
        self.depth = "layer"
        self._deep: dict[str, torch.Tensor] = {}  # one row per UNet row; rows of new frames unused
        self.refresh_next = True
        self.frames = 0
        self.since_refresh = 0  # reuse frames since the last refresh
        self.refusal_logged = False  # an accelerator without the UNet's parts: said once

    @property
    def deep(self) -> torch.Tensor | None:
        """The deep features of the current depth."""
        return self._deep.get(self.depth)

    @deep.setter
    def deep(self, value: torch.Tensor | None) -> None:
        if value is None:
            self._deep.pop(self.depth, None)
        else:
            self._deep[self.depth] = value

    def set_depth(self, depth: str) -> None:
        """Reuse from another depth: its own buffer, refreshed at the next frame."""
        if depth != self.depth:
            self.depth = depth
            self.refresh_next = True

    def invalidate(self) -> None:
        """The next frame runs the whole UNet for every row (a new prompt, seed, strength or stream)."""
        self.refresh_next = True

    def is_refresh(self) -> bool:
        """Whether the coming frame runs the whole UNet for every row; decided before the frame (a captured
        graph per kind of frame)."""
        return (self.refresh_next or self.deep is None
                or (self.interval > 0 and self.since_refresh >= self.interval - 1))

    def full_and_shallow(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of ``x`` that run the whole UNet (each group's new frames) and those that run the shallow path,
        each in row order (slices and cats only: inside a captured graph, index lists would be host copies)."""
        full, shallow, start = [], [], 0
        for size in self.groups:
            head = min(self.fb, size)
            full.append(x[start : start + head])
            shallow.append(x[start + head : start + size])
            start += size
        return torch.cat(full), torch.cat(shallow)

    def merge(self, full: torch.Tensor, shallow: torch.Tensor) -> torch.Tensor:
        """The inverse of ``full_and_shallow``."""
        rows, f, s = [], 0, 0
        for size in self.groups:
            head = min(self.fb, size)
            rows += [full[f : f + head], shallow[s : s + size - head]]
            f, s = f + head, s + size - head
        return torch.cat(rows)

    def cached_for_shallow(self) -> torch.Tensor:
        return self.full_and_shallow(self.deep)[1]

    def advance(self, used: torch.Tensor) -> None:
        """Inside the frame step: ``used`` holds, per row, the deep features the row ran on; next frame each
        sample is one row further in its group. Tensor work only (in place once allocated), so that a captured
        graph replays it; the bookkeeping is ``frame_done``'s, outside the graph."""
        if self.deep is None or self.deep.shape != used.shape:
            self.deep = torch.zeros_like(used)
        start = 0
        for size in self.groups:
            if size > self.fb:
                self.deep[start + self.fb : start + size].copy_(used[start : start + size - self.fb])
            start += size

    def frame_done(self, refreshed: bool) -> None:
        self.frames += 1
        if refreshed:
            self.refresh_next, self.since_refresh = False, 0
        else:
            self.since_refresh += 1

    def state(self) -> tuple:
        return (None if self.deep is None else self.deep.clone(), self.frames, self.refresh_next, self.since_refresh,
                self.depth)

    def restore(self, state: tuple) -> None:
        deep, self.frames, self.refresh_next, self.since_refresh, *depth = state
        self.depth = depth[0] if depth else self.depth
        if deep is None:
            if self.deep is not None:  # keep the storage: a graph captured meanwhile writes into it
                self.deep.zero_()
                self.refresh_next = True
        elif self.deep is not None and self.deep.shape == deep.shape:
            self.deep.copy_(deep)
        else:
            self.deep = deep.clone()

    def copy(self) -> "FeatureCache":
        twin = FeatureCache(0, 0, self.fb, self.interval)
        twin.groups = list(self.groups)
        twin.depth = self.depth
        twin.restore(self.state())
        return twin


def reuse_decision(config, cache: FeatureCache, accelerated, acceleration: str) -> bool | None:
    """Before a frame: None (no reuse), True (refresh every deep feature) or False (reuse them); a graph per kind
    of frame. Reuse runs the UNet's two paths, eager or compiled (``unet_split``); an accelerator without them
    (TensorRT, a stored engine, AsyncDiff's stages) keeps the plain UNet, said once in the log."""
    if not config.feature_reuse or config.denoising_steps == 1:  # one step: every row is new
        cache.invalidate()  # frames without reuse leave the cache behind the stream
        return None
    own_unet = getattr(accelerated.frame_runner, "runs_its_own_unet", False)
    if own_unet or (accelerated.unet is not None and accelerated.unet_split is None):
        if not cache.refusal_logged:
            cache.refusal_logged = True
            log.info("feature reuse needs the UNet's parts, which %s does not expose; the plain UNet runs",
                     "AsyncDiff's stages" if own_unet else acceleration)
        cache.invalidate()
        return None
    cache.interval = config.feature_reuse_interval
    cache.set_depth(config.feature_reuse_depth)
    return cache.is_refresh()


def predict_with_reuse(split, cache: FeatureCache, refresh: bool, x_in, timesteps, encoder_hidden_states,
                       added_cond_kwargs=None, depth: str = "layer"):
    """One UNet pass over the stream batch's rows: the whole UNet where ``refresh`` or for the new frames, the
    shallow path on cached deep features elsewhere; the cache advances. ``split`` is ``unet_split_forward``
    bound to the UNet, or its compiled form."""
    if refresh or len(cache.groups) == 0 or all(size <= cache.fb for size in cache.groups):
        eps, deep = split(x_in, timesteps, encoder_hidden_states, added_cond_kwargs, depth=depth)
        cache.advance(deep)
        return eps
    rows = (x_in, timesteps, encoder_hidden_states) + tuple((added_cond_kwargs or {}).values())
    parts = [cache.full_and_shallow(tensor) for tensor in rows]
    names = list((added_cond_kwargs or {}).keys())

    def extra(part):
        return {name: parts[3 + i][part] for i, name in enumerate(names)} or None

    eps_full, deep_full = split(parts[0][0], parts[1][0], parts[2][0], extra(0), depth=depth)
    cached = cache.cached_for_shallow()
    eps_shallow, _ = split(parts[0][1], parts[1][1], parts[2][1], extra(1), deep=cached, depth=depth)
    cache.advance(cache.merge(deep_full, cached))
    return cache.merge(eps_full, eps_shallow)
