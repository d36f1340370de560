"""The frame's way through the program: capture, GPU and postprocess threads joined by one-item slots
(pipeline.py), the records that travel (frames.py), the rolling statistics and the engine policy."""

from app.pipeline.frames import Frame, OutputFrame
from app.pipeline.config import Engine, OutputShape, PipelineConfig
from app.pipeline.pipeline import Pipeline
from app.pipeline.stats import PipelineStats

__all__ = ["Engine", "Frame", "OutputFrame", "OutputShape", "Pipeline", "PipelineConfig", "PipelineStats"]
