"""``python main.py bench-remote``: what the engine server adds to a frame's latency, and how many 30 fps streams
one GPU serves with the sessions batched and without (issue 12). Loopback: a real ``main.py serve`` process on
127.0.0.1 and the clients in this one, so encode, network stack and decode are all in the figures.

1. Local: the same engine setting in this process, ``process()`` per frame at the source rate.
2. Remote: one client sending those frames at the same rate; the latency is send to return of each frame.
3. Streams: N clients at once, each at the source rate, against a server batching its sessions and one that
   does not. A stream is sustained when it gets 95% of its frames back with a p95 latency under 100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="main.py bench-remote", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="preset:sd-turbo")
    parser.add_argument("--acceleration", default="compile")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=512, help="generated size, square (default: %(default)s)")
    parser.add_argument("--latency-input", default="1280x720", metavar="WxH", help="frames of the latency test")
    parser.add_argument("--stream-input", default="512x512", metavar="WxH", help="frames of the streams test")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=8.0, help="each measurement (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds every client streams before each measurement (a batched server compiles its "
                             "UNet for a new batch in the background meanwhile; default: %(default)s)")
    parser.add_argument("--streams", default="1,4,6", help="client counts for the streams test")
    parser.add_argument("--servers", choices=("both", "batched", "sessions"), default="both",
                        help="batched (serve --batch), one thread per session, or both (default: %(default)s)")
    parser.add_argument("--server-log", action="store_true", help="the servers' own log (serve --verbose) on stderr")
    parser.add_argument("--connect-timeout", type=float, default=300.0,
                        help="seconds a session may take to start (a cold compile takes minutes)")
    parser.add_argument("--json", metavar="PATH")
    return parser.parse_args(argv)


def frames_of(size: str, count: int = 16) -> list[np.ndarray]:
    """Smooth moving gradients: what a video codec keeps well, as a camera's frames."""
    width, height = (int(v) for v in size.lower().split("x"))
    y, x = np.mgrid[0:height, 0:width]
    return [np.stack([(x // 3 + i * 4) % 256, (y // 3) % 256, ((x + y) // 4 + i * 6) % 256], -1).astype(np.uint8)
            for i in range(count)]


def summary(latencies_ms: list[float], sent: int, seconds: float) -> dict:
    return {"sent": sent, "returned": len(latencies_ms), "fps": round(len(latencies_ms) / seconds, 1),
            "median_ms": round(float(np.percentile(latencies_ms, 50)), 2) if latencies_ms else None,
            "p95_ms": round(float(np.percentile(latencies_ms, 95)), 2) if latencies_ms else None}


class Server:
    """``main.py serve`` in its own process on a free local port."""

    def __init__(self, args, batch: bool, max_sessions: int):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.token = secrets.token_urlsafe(24)
        self.token_file = tempfile.NamedTemporaryFile("w", suffix=".token", delete=False)
        self.token_file.write(self.token)
        self.token_file.close()
        command = [sys.executable, "main.py", "serve", "--port", str(self.port), "--token-file", self.token_file.name,
                   "--model", args.model, "--acceleration", args.acceleration, "--device", args.device,
                   "--width", str(args.size), "--height", str(args.size), "--no-quick-start",
                   "--max-sessions", str(max_sessions), "--max-frame-size", "1920x1080"] + (["--batch"] if batch else []) + (["--verbose"] if args.server_log else [])
        self.process = subprocess.Popen(command, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode})")
            try:
                request = urllib.request.Request(self.url + "/health", headers={"Authorization": f"Bearer {self.token}"})
                urllib.request.urlopen(request, timeout=1).read()
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("the server did not come up in 300 s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.unlink(self.token_file.name)


def stream_client(client, frames, fps: float, seconds: float, start_at: float, out: dict,
                  stop: threading.Event | None = None) -> None:
    """Frames at ``fps`` from ``start_at`` for ``seconds`` (or until ``stop``); each returned frame's latency."""
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    period, number = 1.0 / fps, 0
    end = start_at + seconds
    try:
        while time.monotonic() < start_at:
            time.sleep(0.001)
        while True:
            now = time.monotonic()
            if now >= end or (stop is not None and stop.is_set()):
                break
            due = start_at + number * period
            if now >= due:
                sent_at[number] = now
                returned = client.submit(frames[number % len(frames)], tag=number)
                number += 1
            else:
                returned = client.flush(min(due - now, 0.005))
            arrived = time.monotonic()
            latencies += [(arrived - sent_at[r.tag]) * 1000.0 for r in returned if r.tag in sent_at]
        for r in client.flush(0.5):
            if r.tag in sent_at:
                latencies.append((time.monotonic() - sent_at[r.tag]) * 1000.0)
    except Exception as exc:  # noqa: BLE001 - a stream that died is not sustained; the others go on
        out["error"] = f"{type(exc).__name__}: {exc}"
    out.update(summary(latencies, number, seconds))


def time_remote(url, token, frames, fps, seconds, clients: int, timeout_s: float, warmup_s: float = 2.0) -> list[dict]:
    from app.remote.client import RemoteEngine

    engines, feeding, stop = [], [], threading.Event()
    try:
        for _ in range(clients):  # each fed from its start (its graph captured, the offset learned), so that none
            engines.append(RemoteEngine(url, token, timeout_s=timeout_s))  # idles out while the next one starts
            feeding.append(threading.Thread(target=stream_client, args=(engines[-1], frames, fps, 1e9,
                                                                        time.monotonic(), {}, stop)))
            feeding[-1].start()
        time.sleep(warmup_s)
        stop.set()
        for thread in feeding:
            thread.join()
        results = [dict() for _ in engines]
        start_at = time.monotonic() + 0.5
        threads = [threading.Thread(target=stream_client, args=(e, frames, fps, seconds, start_at, r))
                   for e, r in zip(engines, results)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results
    finally:
        for engine in engines:
            engine.close()


def time_local(args, frames) -> dict:
    from core.config import StreamConfig
    from core.stream import StreamEngine

    config = StreamConfig(model=args.model, width=args.size, height=args.size, t_index_list=(32,),
                          acceleration=args.acceleration, device=args.device, quick_start=False)
    engine = StreamEngine.from_config(config)
    engine.prepare("a portrait, oil painting", "blurry")
    for frame in frames[:5]:
        engine.process(frame)
    latencies, period = [], 1.0 / args.fps
    start = time.monotonic()
    number = 0
    while time.monotonic() - start < args.seconds:
        due = start + number * period
        if time.monotonic() < due:
            time.sleep(due - time.monotonic())
        began = time.monotonic()
        engine.process(frames[number % len(frames)])
        latencies.append((time.monotonic() - began) * 1000.0)
        number += 1
    engine.close()
    return summary(latencies, number, args.seconds)


def main(argv=None) -> int:
    args = parse_args(argv)
    counts = [int(n) for n in args.streams.split(",")]
    report: dict = {"fps": args.fps, "seconds": args.seconds, "model": args.model, "size": args.size}
    latency_frames, stream_frames = frames_of(args.latency_input), frames_of(args.stream_input)
    report["local"] = local = time_local(args, latency_frames)
    print(f"local engine, {args.latency_input}: {local}", file=sys.stderr)
    for batch in {"both": (True, False), "batched": (True,), "sessions": (False,)}[args.servers]:
        server = Server(args, batch, max(counts))
        try:
            mode = "batched" if batch else "one thread per session"
            if batch:
                remote = time_remote(server.url, server.token, latency_frames, args.fps, args.seconds, 1,
                                     args.connect_timeout, args.warmup)[0]
                report["remote"] = remote
                added = None if remote["median_ms"] is None else round(remote["median_ms"] - local["median_ms"], 2)
                report["added_median_ms"] = added
                print(f"remote, {args.latency_input}: {remote}; added at the median: {added} ms", file=sys.stderr)
            for count in counts:
                rows = time_remote(server.url, server.token, stream_frames, args.fps, args.seconds, count,
                                   args.connect_timeout, args.warmup)
                sustained = sum("error" not in r and r["returned"] >= 0.95 * r["sent"] and (r["p95_ms"] or 1e9) < 100
                                for r in rows)
                report.setdefault("streams", []).append({"mode": mode, "clients": count, "sustained": sustained,
                                                         "per_stream": rows})
                print(f"{mode}, {count} streams: {sustained} sustained; {rows}", file=sys.stderr)
        finally:
            server.stop()
    print_report(report)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
    return 0


def print_report(report: dict) -> None:
    local, remote = report["local"], report.get("remote") or {}
    print("| path | fps | median ms | p95 ms |\n| --- | --- | --- | --- |")
    print(f"| local engine | {local['fps']} | {local['median_ms']} | {local['p95_ms']} |")
    print(f"| through the server (loopback) | {remote.get('fps')} | {remote.get('median_ms')} | {remote.get('p95_ms')} |")
    print(f"\nadded at the median: {report.get('added_median_ms')} ms\n")
    print("| server | clients | sustained | worst stream fps | worst p95 ms |\n| --- | --- | --- | --- | --- |")
    for row in report.get("streams", []):
        streams = row["per_stream"]
        worst_fps = min(s["fps"] for s in streams)
        worst_p95 = max((s["p95_ms"] or float("inf")) for s in streams)
        print(f"| {row['mode']} | {row['clients']} | {row['sustained']} | {worst_fps} | {worst_p95} |")


if __name__ == "__main__":
    sys.exit(main())
