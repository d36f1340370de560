"""The fp8 lever's switch: off by default, and where it cannot run it says why and changes nothing."""

import logging
from types import SimpleNamespace

import torch

from core.accel import fp8


def test_off_unless_asked(monkeypatch):
    monkeypatch.delenv("LIVEDIFFUSION_FP8", raising=False)
    assert not fp8.wanted()
    monkeypatch.setenv("LIVEDIFFUSION_FP8", "1")
    assert fp8.wanted()


def test_on_the_cpu_it_says_why_and_leaves_the_unet_alone(monkeypatch, caplog):
    monkeypatch.setenv("LIVEDIFFUSION_FP8", "1")
    unet = torch.nn.Sequential(torch.nn.Linear(32, 32))
    before = unet[0].weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger="core.accel.fp8"):
        assert not fp8.apply_if_wanted(SimpleNamespace(device=torch.device("cpu"), unet=unet))
    assert "need an NVIDIA GPU" in caplog.text and "running float16" in caplog.text
    assert type(unet[0].weight) is torch.nn.Parameter and torch.equal(unet[0].weight, before)
