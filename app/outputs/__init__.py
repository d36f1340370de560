"""Where processed frames go: the virtual webcam, a video file, a PNG snapshot.
Each output is a small class with ``write`` and ``close`` (base.py); everything is imported from here."""

from app.outputs.base import Output, OutputError, fit_frame
from app.outputs.h264 import VIDEO_EXTENSIONS, VideoInfo, probe_video
from app.outputs.recorder import MIN_FREE_BYTES, Recorder, video_path_problem
from app.outputs.snapshot import snapshot
from app.outputs.virtual_camera import VirtualCamera, virtualcam_available, virtualcam_setup_hint

__all__ = [
    "Output", "OutputError", "fit_frame", "Recorder", "VideoInfo", "probe_video", "video_path_problem",
    "MIN_FREE_BYTES", "VIDEO_EXTENSIONS", "snapshot", "VirtualCamera", "virtualcam_available", "virtualcam_setup_hint",
]
