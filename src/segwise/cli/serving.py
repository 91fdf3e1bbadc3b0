"""`segwise serve`: an HTTP API and a web page for trained runs."""

from __future__ import annotations

import argparse

from .arguments import add_command, add_max_pixels


def register(commands: argparse._SubParsersAction) -> None:
    serve = add_command(
        commands,
        "serve",
        _serve,
        help="serve runs over HTTP: an API and a web page to try them",
        description="Serve one or more runs: POST /predict takes an image and answers a mask, overlay, "
        "probabilities or objects; GET /models and /health describe the server; the page at / lets you drop "
        "images and see the overlay. Requests that arrive together are predicted in one batch. Listens on "
        "127.0.0.1 (this machine only) unless --host says otherwise. From a shell: "
        "curl --data-binary @cell.png 'http://127.0.0.1:8000/predict?format=overlay' -o overlay.png. Needs the extra: pip install 'segwise[serve]'.",
        examples=[
            "segwise serve runs/cells                      # then open http://127.0.0.1:8000",
            "segwise serve runs/cells runs/roads --port 9000 --max-batch 4",
        ],
    )
    serve.add_argument("runs", nargs="+", metavar="RUN", help="run folders to serve (named by folder)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    serve.add_argument("--max-batch", type=int, default=8, help="images per forward pass at most (default 8)")
    serve.add_argument(
        "--max-wait-ms",
        type=float,
        default=10.0,
        help="how long a request waits for others to batch with (default 10)",
    )
    serve.add_argument(
        "--max-queue", type=int, default=64, help="requests waiting at most; more get 503 (default 64)"
    )
    serve.add_argument(
        "--max-upload-mb", type=float, default=32.0, help="largest upload in MiB; more get 413 (default 32)"
    )
    add_max_pixels(serve)


def _serve(args: argparse.Namespace) -> int:
    from ..errors import SegwiseError
    from ..serve import create_app, run

    if args.max_batch < 1 or args.max_queue < 1 or args.max_wait_ms < 0 or args.max_upload_mb <= 0:
        raise SegwiseError(
            "serve: --max-batch and --max-queue must be ≥ 1, --max-wait-ms ≥ 0, --max-upload-mb > 0"
        )
    app = create_app(
        args.runs,
        args.device,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
    )  # loaded first: a run that does not load is one line, before anything says it is serving
    print(f"serving {', '.join(args.runs)} on http://{args.host}:{args.port}  (Ctrl-C stops)")
    run(app, args.host, args.port)
    return 0
