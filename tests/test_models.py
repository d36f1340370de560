"""Model loading: presets, tokenizer, folder / single-file round trips, LoRA fusing, error messages."""

import logging

import pytest
import torch

from core.config import LoraSpec, StreamConfig
from core.models import PRESETS, ModelLoadError, load_components, parse_model_spec
from core.presets import build_preset, count_parameters

# The real CLIP ids (openai/clip-vit-large-patch14 tokenizer) of "a photo of a cat".
CLIP_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]


def cfg(model, **kw):
    return StreamConfig(model=model, width=64, height=64, device="cpu", **kw)


def unet_out(pipe, seed=0):
    g = torch.Generator().manual_seed(seed)
    unet = pipe.unet
    x = torch.randn(1, 4, 8, 8, generator=g)
    ctx = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    extra = {}
    if unet.config.addition_embed_type == "text_time":
        pooled = torch.randn(1, pipe.text_encoder_2.config.projection_dim, generator=g)
        extra = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}}
    with torch.no_grad():
        return unet(x, 321, encoder_hidden_states=ctx, **extra).sample


def assert_same_weights(pipe, original, names=("unet", "vae", "text_encoder")):
    """Bit for bit: a round trip through files must not change a single weight."""
    for name in names:
        mine, theirs = getattr(pipe, name).state_dict(), getattr(original, name).state_dict()
        assert mine.keys() == theirs.keys(), name
        different = [k for k in mine if not torch.equal(mine[k], theirs[k])]
        assert not different, f"{name}: {different[:3]}"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """The tiny preset saved as a diffusers folder, its TAESD beside it, and the original objects."""
    root = tmp_path_factory.mktemp("tiny")
    pipe, taesd = build_preset("tiny")
    pipe.save_pretrained(root / "pipe")
    taesd.save_pretrained(root / "taesd")
    return root, pipe, taesd


# ----- tokenizer, spec parsing -------------------------------------------------------------------


def test_tokenizer_gives_the_real_clip_ids():
    from core.clip_tokenizer import build_clip_tokenizer

    tok = build_clip_tokenizer()
    assert tok("a photo of a cat").input_ids == CLIP_IDS
    assert len(tok) == 49408 and tok.convert_ids_to_tokens(320) == "a</w>"
    padded = build_clip_tokenizer("!")("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert padded[:7] == CLIP_IDS and padded[7:] == [0] * 70  # OpenCLIP pads with "!" (id 0)


def test_parse_model_spec(tmp_path):
    assert parse_model_spec("stabilityai/sd-turbo") == ("hub", "stabilityai/sd-turbo")
    assert parse_model_spec(" PRESET:SD-Turbo ") == ("preset", "sd-turbo")
    assert parse_model_spec(str(tmp_path)) == ("folder", str(tmp_path.resolve()))
    assert parse_model_spec(str(tmp_path / "m.safetensors")) == ("file", str(tmp_path / "m.safetensors"))
    assert parse_model_spec("./nowhere/model") == ("folder", str((tmp_path.cwd() / "nowhere/model").resolve()))
    assert parse_model_spec("https://hf.co/a/b/blob/main/x.safetensors")[0] == "file"
    assert PRESETS == ("sd-turbo", "sdxl-turbo", "sd15", "tiny", "tiny-sdxl")


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ModelLoadError) as err:
        load_components(cfg("preset:sd99"))
    assert "sd99" in str(err.value)
    assert all(f"preset:{name}" in str(err.value) for name in PRESETS)


# ----- error messages ----------------------------------------------------------------------------


def test_missing_hub_model_says_how_to_download(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as err:
        load_components(cfg("nobody-here/no-such-model-xyz"))
    text = str(err.value)
    assert "nobody-here/no-such-model-xyz" in text and "download" in text
    assert "hf download nobody-here/no-such-model-xyz" in text and "preset:sd-turbo" in text


def test_paths_that_are_not_models(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_components(cfg(str(tmp_path / "missing")))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_components(cfg(str(tmp_path / "missing.safetensors")))
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a diffusers pipeline folder.*weights.safetensors"):
        load_components(cfg(str(tmp_path)))


def test_pickles_are_refused_without_opt_in(tmp_path, tiny_folder):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"something.weight": torch.zeros(2)}}, ckpt)
    with pytest.raises(ModelLoadError, match="--allow-pickle") as err:
        load_components(cfg(str(ckpt)))
    assert "pickle" in str(err.value)
    # With the opt-in the gate opens and the file is read (and found not to be an SD checkpoint).
    with pytest.raises(ModelLoadError, match="not a full SD / SDXL checkpoint"):
        load_components(cfg(str(ckpt), allow_pickle=True))
    # A diffusers folder saved as pickles is refused too, and loads once the user opts in.
    pickled = build_preset("tiny")[0]
    pickled.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    with pytest.raises(ModelLoadError, match="only pickle files.*--allow-pickle"):
        load_components(cfg(str(tmp_path / "pickled"), use_tiny_vae=False))
    assert not load_components(cfg(str(tmp_path / "pickled"), use_tiny_vae=False, allow_pickle=True)).random_weights
    lora = tmp_path / "lora.bin"
    torch.save({}, lora)
    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        load_components(cfg(str(tiny_folder[0] / "pipe"), use_tiny_vae=False, loras=(LoraSpec(str(lora)),)))


def test_out_of_memory_while_moving_becomes_a_model_load_error(monkeypatch, tiny_folder):
    from diffusers import StableDiffusionPipeline

    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(StableDiffusionPipeline, "to", oom)
    with pytest.raises(ModelLoadError, match="Not enough GPU memory") as err:
        load_components(StreamConfig(model=str(tiny_folder[0] / "pipe"), device="cuda", dtype="float32",
                                     use_tiny_vae=False))
    assert "smaller model" in str(err.value)


def test_v_prediction_models_are_refused(tmp_path, tiny_folder):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_folder[0] / "pipe")
    pipe.scheduler.register_to_config(prediction_type="v_prediction")
    pipe.save_pretrained(tmp_path / "vpred")
    with pytest.raises(ModelLoadError, match="epsilon-prediction"):
        load_components(cfg(str(tmp_path / "vpred"), use_tiny_vae=False))


# ----- presets -----------------------------------------------------------------------------------


def test_tiny_presets_are_seeded_loud_and_small(caplog):
    from diffusers import AutoencoderTiny, LCMScheduler

    with caplog.at_level(logging.WARNING):
        first = load_components(cfg("preset:tiny"))
    assert any("RANDOM" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    second = load_components(cfg("preset:tiny"))
    assert first.random_weights and first.family == "sd" and isinstance(first.tiny_vae, AutoencoderTiny)
    for a, b in zip(first.pipe.unet.parameters(), second.pipe.unet.parameters()):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in first.pipe.unet.parameters()) and not first.pipe.unet.training
    sched = LCMScheduler.from_config(first.pipe.scheduler.config).config
    assert (sched.beta_schedule, sched.beta_start, sched.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert (sched.num_train_timesteps, sched.prediction_type) == (1000, "epsilon")
    # Small enough to run a frame in well under a second on any CPU (checked by size, never by a clock).
    assert count_parameters(first.pipe.unet) + count_parameters(first.pipe.text_encoder) < 5e6

    pipe, image = first.pipe, torch.rand(1, 3, 64, 64) * 2 - 1
    emb = pipe.encode_prompt("a photo of a cat", "cpu", 1, False)[0]

    def frame():  # encode + UNet + decode, through the full VAE and through TAESD
        with torch.no_grad():
            for vae in (pipe.vae, first.tiny_vae):
                latents = vae.encode(image)
                latents = latents.latents if hasattr(latents, "latents") else latents.latent_dist.mean
                eps = pipe.unet(latents, 500, encoder_hidden_states=emb).sample
                out = vae.decode(latents - eps).sample
                assert latents.shape == (1, 4, 8, 8) and out.shape == (1, 3, 64, 64)

    frame()


def test_tiny_sdxl_preset():
    comps = load_components(cfg("preset:tiny-sdxl"))
    pipe = comps.pipe
    assert comps.family == "sdxl" and type(pipe).__name__ == "StableDiffusionXLPipeline"
    embeds, _, pooled, _ = pipe.encode_prompt("a photo of a cat", device="cpu", do_classifier_free_guidance=False)
    assert embeds.shape == (1, 77, pipe.unet.config.cross_attention_dim)
    assert pooled.shape == (1, pipe.text_encoder_2.config.projection_dim)
    assert pipe.tokenizer_2.pad_token == "!" and unet_out(pipe).shape == (1, 4, 8, 8)


def test_full_presets_have_the_real_parameter_counts():
    # Built on the meta device: the same code path, no memory, no time.
    counts = {}
    for name in ("sd-turbo", "sdxl-turbo", "sd15"):
        pipe, taesd = build_preset(name, device="meta")
        counts[name] = {k: count_parameters(v) for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}
        counts[name]["taesd"] = count_parameters(taesd)
    assert round(counts["sd-turbo"]["unet"] / 1e6, 1) == 865.9
    assert round(counts["sd-turbo"]["text_encoder"] / 1e6, 1) == 340.4
    assert round(counts["sdxl-turbo"]["unet"] / 1e6) == 2567
    assert round(counts["sdxl-turbo"]["text_encoder_2"] / 1e6, 1) == 694.7
    assert round(counts["sd15"]["unet"] / 1e6, 1) == 859.5
    assert round(counts["sd15"]["text_encoder"] / 1e6, 1) == 123.1  # CLIP ViT-L, also SDXL's first encoder
    assert counts["sdxl-turbo"]["text_encoder"] == counts["sd15"]["text_encoder"]
    assert all(round(c["vae"] / 1e6, 2) == 83.65 and c["taesd"] == 2_445_063 for c in counts.values())
    pipe, _ = build_preset("sdxl-turbo", device="meta", with_tiny_vae=False)
    assert pipe.vae.config.scaling_factor == 0.13025 and pipe.unet.config.sample_size == 64


# ----- real loading paths, offline ---------------------------------------------------------------


def test_saved_pipeline_loads_back_by_path(tiny_folder):
    root, original, taesd = tiny_folder
    comps = load_components(cfg(str(root / "pipe"), tiny_vae=str(root / "taesd")))
    assert not comps.random_weights and comps.family == "sd" and str(root / "pipe") in comps.source
    assert_same_weights(comps.pipe, original)
    # Same weights; the outputs only to a tolerance, since kernels may sum in another order on another CPU.
    torch.testing.assert_close(unet_out(comps.pipe), unet_out(original), rtol=1e-4, atol=1e-5)
    assert comps.pipe.safety_checker is None
    assert comps.pipe.tokenizer("a photo of a cat").input_ids == CLIP_IDS
    image = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(comps.tiny_vae.encode(image).latents, taesd.encode(image).latents)


def test_lora_is_fused_and_its_layers_removed(tmp_path, tiny_folder):
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(tiny_folder[0] / "pipe")
    base = unet_out(pipe)
    torch.manual_seed(3)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with_lora = unet_out(pipe)
    StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(pipe.unet))
    lora = tmp_path / "pytorch_lora_weights.safetensors"

    comps = load_components(cfg(str(tiny_folder[0] / "pipe"), use_tiny_vae=False, loras=(LoraSpec(str(lora)),)))
    assert (with_lora - base).abs().max() > 1e-3
    torch.testing.assert_close(unet_out(comps.pipe), with_lora, rtol=1e-4, atol=1e-5)
    assert not any("lora" in name for name, _ in comps.pipe.unet.named_parameters())


def test_lcm_lora_default_rule(tiny_folder):
    from core.models import wants_lcm_lora

    sd15 = build_preset("sd15", device="meta", with_tiny_vae=False)[0]
    turbo = build_preset("sd-turbo", device="meta", with_tiny_vae=False)[0]
    config = cfg("x")
    assert wants_lcm_lora(config, sd15, "sd", "hub", "hub someone/dreamshaper-8")
    assert not wants_lcm_lora(config, sd15, "sd", "hub", "hub someone/sd15-turbo")
    assert not wants_lcm_lora(config, turbo, "sd", "hub", "hub stabilityai/sd-turbo")
    assert not wants_lcm_lora(config, sd15, "sd", "preset", "preset:sd15")
    assert wants_lcm_lora(config.replace(use_lcm_lora=True), turbo, "sd", "hub", "x")
    assert not wants_lcm_lora(config.replace(use_lcm_lora=False), sd15, "sd", "hub", "x")


# ----- single-file checkpoints -------------------------------------------------------------------
# diffusers only converts ldm -> diffusers; to get a single file offline we write the tiny model back in
# the original Stable Diffusion (ldm) key layout, inverting the key renames that diffusers' converters
# apply. The round trip through diffusers' own converter is then what `from_single_file` exercises.

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}


def _ldm_unet_key(p, cfg, top):
    key = ".".join(p)
    if key in top:
        return top[key]
    step = cfg["layers_per_block"] + 1

    def inner(kind, rest):  # names inside a resnet differ, inside a transformer they do not
        return (["0", _RESNET.get(rest[0], rest[0])] + rest[1:]) if kind == "resnets" else ["1"] + rest

    if p[0] == "mid_block":
        slot = "1" if p[1] == "attentions" else str(2 * int(p[2]))
        return ".".join(["middle_block", slot] + inner(p[1], p[3:])[1:])
    block, kind, j = int(p[1]), p[2], int(p[3])
    if kind == "downsamplers":
        return ".".join(["input_blocks", str((block + 1) * step), "0", "op"] + p[5:])
    if kind == "upsamplers":
        slot = "2" if "CrossAttn" in cfg["up_block_types"][block] else "1"
        return ".".join(["output_blocks", str(block * step + step - 1), slot] + p[4:])
    if p[0] == "down_blocks":
        return ".".join(["input_blocks", str(block * step + j + 1)] + inner(kind, p[4:]))
    return ".".join(["output_blocks", str(block * step + j)] + inner(kind, p[4:]))


def _ldm_vae_item(p, t, n_up, top):
    key = ".".join(p)
    if key in top:
        return top[key], t
    if p[1] == "mid_block" and p[2] == "resnets":
        return ".".join([p[0], "mid", f"block_{int(p[3]) + 1}"] + p[4:]), t
    if p[1] == "mid_block":  # ldm stores the attention projections as 1x1 convolutions
        return ".".join([p[0], "mid", "attn_1", _VAE_ATTN[p[4]], p[-1]]), t[:, :, None, None] if t.ndim == 2 else t
    stage, i = ("down", int(p[2])) if p[0] == "encoder" else ("up", n_up - 1 - int(p[2]))
    if p[3] == "resnets":
        rest = ["nin_shortcut" if p[5] == "conv_shortcut" else p[5]] + p[6:]
        return ".".join([p[0], stage, str(i), "block", p[4]] + rest), t
    return ".".join([p[0], stage, str(i), stage + "sample"] + p[5:]), t


def to_ldm_checkpoint(pipe) -> dict:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING as M

    out = {}
    top = {**M["unet"]["layers"], **M["unet"]["addition_embed_type"]}
    for key, t in pipe.unet.state_dict().items():
        out["model.diffusion_model." + _ldm_unet_key(key.split("."), dict(pipe.unet.config), top)] = t
    for key, t in pipe.vae.state_dict().items():
        name, t = _ldm_vae_item(key.split("."), t, len(pipe.vae.config.up_block_types), M["vae"])
        out["first_stage_model." + name] = t
    for key, t in pipe.text_encoder.state_dict().items():  # SD 1.x layout: the HF CLIP keys under a prefix
        out["cond_stage_model.transformer." + ("" if key.startswith("text_model.") else "text_model.") + key] = t
    return {k: v.contiguous() for k, v in out.items()}


def test_single_file_checkpoint_loads_offline(tmp_path, tiny_folder):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    from safetensors.torch import save_file

    root, original, _ = tiny_folder
    checkpoint = to_ldm_checkpoint(original)
    assert "model.diffusion_model.input_blocks.0.0.weight" in checkpoint
    # The inversion is exact: diffusers' converter maps it back key for key.
    back = convert_ldm_unet_checkpoint(checkpoint, dict(original.unet.config))
    assert back.keys() == original.unet.state_dict().keys()
    path = tmp_path / "tiny-model.safetensors"
    save_file(checkpoint, path)

    # No config given: the architecture is recognised and described by the bundled tiny preset.
    comps = load_components(cfg(str(path), use_tiny_vae=False))
    # A config folder given explicitly (here the saved pipeline, with its own tokenizer) is used instead.
    explicit = load_components(cfg(str(path), use_tiny_vae=False), single_file_config=str(root / "pipe"))
    for loaded in (comps, explicit):
        assert not loaded.random_weights and loaded.family == "sd" and "tiny-model.safetensors" in loaded.source
        assert_same_weights(loaded.pipe, original)
        torch.testing.assert_close(unet_out(loaded.pipe), unet_out(original), rtol=1e-4, atol=1e-5)
        assert loaded.pipe.tokenizer("a photo of a cat").input_ids == CLIP_IDS
