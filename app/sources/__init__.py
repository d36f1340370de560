"""Where frames come from: cameras, screens and regions, video files, the test pattern.
The contract every source keeps is in base.py; everything is imported from here."""

from app.sources.base import Pacer, Source, SourceError, SourceLost
from app.sources.camera import COMMON_FPS, COMMON_RESOLUTIONS, Camera, CameraInfo, list_cameras
from app.sources.screen import Screen, list_monitors
from app.sources.spec import LimitedSource, default_source, parse_source
from app.sources.test_pattern import TestPattern
from app.sources.video_file import VideoFile

__all__ = [
    "Source", "SourceError", "SourceLost", "Pacer", "Camera", "CameraInfo", "list_cameras", "COMMON_RESOLUTIONS",
    "COMMON_FPS", "Screen", "list_monitors", "VideoFile", "TestPattern", "LimitedSource", "parse_source",
    "default_source",
]
