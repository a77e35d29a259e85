"""The ``glomx serve`` subcommand (``make serve``): a registered model over HTTP, bounded."""

from __future__ import annotations

import argparse


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from glomx.tracking.http_guard import build_app
    from glomx.tracking.names import DEFAULT_MODEL

    # a bad limit or model is one message, before listening
    app = build_app(args.model or DEFAULT_MODEL)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve a registered model on /invocations (MLflow's scoring API, with limits)",
        description="Limits come from the environment: GLOMX_SERVE_MAX_BODY_MB, "
        "GLOMX_SERVE_MAX_CONCURRENT, GLOMX_SERVE_MAX_PIXELS, GLOMX_SERVE_MAX_REQUEST_PIXELS "
        "(docs/usage.md, Serve).",
    )
    serve.add_argument(
        "--model",
        help="models:/NAME@ALIAS or models:/NAME/VERSION (default: models:/glomx@champion)",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=5001)
    serve.set_defaults(func=_serve)
