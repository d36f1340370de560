"""``main.py serve``: run the engine as a server for clients on other machines (``run --engine URL``).

Listens on 127.0.0.1 unless told otherwise; a public address needs ``--cert`` and ``--key`` (TLS) or
``--insecure``. Every session needs the token: from ``--token-file``, or made now and printed once. Each session
gets its own engine on the one loaded model (app.remote.server). Needs the serve extra:
``pip install -e ".[serve]"``.
"""

from __future__ import annotations

import argparse
import logging
import ssl
import sys

from core.cli_options import add_engine_arguments, config_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="main.py serve", description=__doc__.splitlines()[0].split(": ", 1)[1])
    net = parser.add_argument_group("server")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine)")
    net.add_argument("--port", type=int, default=8765, help="default: %(default)s")
    net.add_argument("--token-file", help="read the token from this file (default: make one and print it)")
    net.add_argument("--cert", help="TLS certificate (PEM) for https")
    net.add_argument("--key", help="TLS private key (PEM)")
    net.add_argument("--insecure", action="store_true",
                     help="allow a public address without TLS (the token and video travel unencrypted)")
    net.add_argument("--max-sessions", type=int, default=4,
                     help="clients at once (default: %(default)s; with --ray: replicas x --sessions-per-replica)")
    net.add_argument("--max-frame-size", default="2560x1440", metavar="WxH",
                     help="largest frame a client may send (default: %(default)s)")
    net.add_argument("--batch", action="store_true",
                     help="all sessions' frames of a tick in one UNet call, replayed from CUDA graphs, instead of "
                          "each session's own engine thread (see docs/remote-engine.md)")
    cluster = parser.add_argument_group("Ray Serve (several GPUs or machines; needs ray[serve], in the serve extra)")
    cluster.add_argument("--ray", action="store_true",
                         help="run the engines as replicas of a Ray Serve deployment, one GPU each")
    cluster.add_argument("--ray-address", default=None,
                         help="the Ray cluster to join (\"auto\": the one `ray start` made here; default: a new local one)")
    cluster.add_argument("--replicas", default="1", metavar="N|auto",
                         help="engine replicas; auto: Ray Serve scales from 1 to --max-replicas (default: %(default)s)")
    cluster.add_argument("--max-replicas", type=int, default=None, help="with --replicas auto (default: the GPUs seen)")
    cluster.add_argument("--sessions-per-replica", type=int, default=4, help="default: %(default)s")
    net.add_argument("--verbose", action="store_true", help="log details to stderr")
    add_engine_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from app.remote.security import SecurityError, check_bind, new_token, read_token

    try:
        check_bind(args.host, args.cert, args.key, args.insecure)
        token = read_token(args.token_file) if args.token_file else new_token()
        width, height = (int(v) for v in args.max_frame_size.lower().split("x"))
        config = config_from_args(args)
    except (SecurityError, ValueError) as exc:
        print(f"main.py serve: {exc}", file=sys.stderr)
        return 2
    try:
        from aiohttp import web

        from app.remote.server import EngineServer, ServerLimits
    except ImportError as exc:
        print(f"main.py serve needs the serve extra ({exc}): pip install -e \".[serve]\"", file=sys.stderr)
        return 2

    def describe() -> dict:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        return {"model": config.model, "size": f"{config.width}x{config.height}", "steps": config.denoising_steps,
                "gpu": gpu}

    limits = ServerLimits(max_sessions=args.max_sessions, max_frame_pixels=width * height)
    if args.ray:  # the replicas load the model, not this process
        from app.remote.ray_serve import ray_ingress

        try:
            server = ray_ingress(args, config, token, limits, describe)
        except (ImportError, RuntimeError, ValueError, ConnectionError) as exc:
            print(f"main.py serve --ray: {exc}", file=sys.stderr)
            return 2
    else:
        from app.remote.server import session_engines

        print(f"loading {config.model} ...", file=sys.stderr)
        make_engine = session_engines(config, args.prompt, args.negative_prompt,
                                      lambda message: print(message, file=sys.stderr))
        server = EngineServer(make_engine, token, limits, describe, batch=args.batch)
    context = None
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    scheme = "https" if context else "http"
    if not args.token_file:
        print(f"token (give it to clients; shown once): {token}", file=sys.stderr)
    print(f"serving {config.model} at {scheme}://{args.host}:{args.port} (Ctrl+C stops)", file=sys.stderr)
    web.run_app(server.app(), host=args.host, port=args.port, ssl_context=context, print=None)
    return 0
