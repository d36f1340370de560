"""Recordings people can share: H.264 in MP4 with the index first, played by a real browser."""

import errno
import functools
import http.server
import json
import logging
import shutil
import struct
import subprocess
import threading
import time

import numpy as np
import pytest

import app.outputs.h264 as h264
from app.commands.cli import main
from app.outputs import OutputError, Recorder, probe_video

pytestmark = pytest.mark.timeout(120)


def _top_level_atoms(path) -> list[str]:
    data, atoms, offset = path.read_bytes(), [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        atoms.append(kind.decode("latin-1"))
        offset += size if size else len(data)
    return atoms


def _record(path, frames=30, size=(64, 48), fps=30.0, **kwargs) -> Recorder:
    recorder = Recorder(path, fps=fps, timing="frames", **kwargs)
    width, height = size
    for i in range(frames):
        recorder.write(np.full((height, width, 3), (i * 8) % 256, np.uint8))
    recorder.close()
    return recorder


def test_a_recording_is_h264_in_mp4_with_the_index_before_the_media(tmp_path):
    recorder = _record(tmp_path / "clip.mp4", frames=30, size=(128, 72))
    info = probe_video(tmp_path / "clip.mp4")
    assert (info.codec, info.width, info.height, info.frames) == ("h264", 128, 72, 30)
    assert info.duration_s == pytest.approx(1.0, abs=1e-6)
    atoms = _top_level_atoms(tmp_path / "clip.mp4")
    # A browser streaming the file needs moov before mdat, or it must fetch the whole file first.
    assert atoms[0] == "ftyp" and atoms.index("moov") < atoms.index("mdat")
    assert recorder.encoder in h264.ENCODER_OPTIONS


def test_pixels_are_420_so_players_decode_them(tmp_path):
    import av

    _record(tmp_path / "clip.mp4", frames=3)
    with av.open(str(tmp_path / "clip.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.pix_fmt == "yuv420p"
        frame = next(container.decode(stream))
        grey = frame.to_ndarray(format="rgb24")
    assert grey.shape == (48, 64, 3) and np.abs(grey.astype(int) - 0).max() <= 4  # the first frame was black


def test_an_odd_sized_first_frame_records_at_the_even_size_below_it(tmp_path):
    _record(tmp_path / "odd.mp4", frames=4, size=(65, 49))
    info = probe_video(tmp_path / "odd.mp4")
    assert (info.width, info.height, info.frames) == (64, 48, 4)


def test_nvenc_missing_falls_back_to_x264_and_says_why(monkeypatch, caplog):
    monkeypatch.setattr(h264, "encoder_problem", lambda name: "no NVIDIA driver" if name == "h264_nvenc" else None)
    with caplog.at_level(logging.INFO, logger="app.outputs.h264"):
        assert h264.pick_encoder() == "libx264"
    assert "h264_nvenc is not available (no NVIDIA driver)" in caplog.text


def test_no_encoder_at_all_is_a_message_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(h264, "encoder_problem", lambda name: "not in this FFmpeg build")
    with pytest.raises(OutputError, match="No H.264 encoder could be opened: h264_nvenc is not available"):
        Recorder(tmp_path / "x.mp4").write(np.zeros((48, 64, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_encoding_is_a_message_and_the_frames_so_far_stay_playable(tmp_path, monkeypatch):
    recorder = Recorder(tmp_path / "full.mp4", timing="frames")
    for _ in range(5):
        recorder.write(np.zeros((48, 64, 3), np.uint8))
    real_write = h264.H264Writer.write

    def disk_full(self, rgb):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(h264.H264Writer, "write", disk_full)
    with pytest.raises(OutputError, match="The disk is full"):
        recorder.write(np.zeros((48, 64, 3), np.uint8))
    monkeypatch.setattr(h264.H264Writer, "write", real_write)
    recorder.close()
    assert probe_video(tmp_path / "full.mp4").frames == 5


def _sixteen_by_nine_recording(tmp_path, seconds=2.0):
    target = tmp_path / "wide.mp4"
    rc = main(["run", "--source", "test:320x180", "--fps", "15", "--seconds", str(seconds), "--output", str(target),
               "--model", "preset:tiny", "--width", "128", "--height", "72", "--output-size", "640x360", "--quiet"])
    assert rc == 0
    return target


def test_a_16_by_9_recording_has_the_output_size_and_the_real_duration(tmp_path):
    started = time.perf_counter()
    target = _sixteen_by_nine_recording(tmp_path)
    elapsed = time.perf_counter() - started
    info = probe_video(target)
    assert (info.codec, info.width, info.height) == ("h264", 640, 360)
    # The file is on the capture clock: as long as the run captured, give or take the first frame's wait.
    assert 1.5 <= info.duration_s <= min(elapsed, 2.2), (info, elapsed)


class _ReportingServer(http.server.ThreadingHTTPServer):
    """Serves a folder and keeps what the page POSTs to /report."""

    def __init__(self, folder):
        self.reports = []
        reports = self.reports

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_POST(self):
                reports.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))


_PAGE = """<html><body><video id="v" muted src="wide.mp4"></video><script>
const v = document.getElementById("v");
const report = (o) => fetch("/report", {method: "POST", body: JSON.stringify(o)});
v.addEventListener("error", () => report({error: v.error ? v.error.code : "unknown"}));
v.addEventListener("ended", () => report({ended: true, width: v.videoWidth, height: v.videoHeight,
                                          duration: v.duration, time: v.currentTime}));
v.play().catch((e) => report({error: "play: " + e}));
</script></body></html>"""


def test_a_browser_plays_the_recording_to_its_end_at_its_size_and_duration(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium here (Debian/Ubuntu: apt install chromium) to play the recording as a client would")
    target = _sixteen_by_nine_recording(tmp_path)
    (tmp_path / "page.html").write_text(_PAGE)
    server = _ReportingServer(tmp_path)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # No sandbox: CI runs as root, where Chromium refuses to start with one.
    process = subprocess.Popen(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required",
         f"--user-data-dir={tmp_path / 'profile'}", f"http://127.0.0.1:{server.server_port}/page.html"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not server.reports and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        process.kill()
        process.wait()
        server.shutdown()
        server.server_close()
    assert server.reports, "the browser reported neither the end of the video nor an error within 60 s"
    report = server.reports[0]
    info = probe_video(target)
    assert report.get("ended") is True, report
    assert (report["width"], report["height"]) == (640, 360)
    assert report["duration"] == pytest.approx(info.duration_s, abs=0.1)
    assert report["time"] == pytest.approx(report["duration"], abs=0.1)
