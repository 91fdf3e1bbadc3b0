"""`segwise serve`: an HTTP API and a web page for trained runs (the optional extra `segwise[serve]`).

    >>> from segwise.serve import create_app, serve              # doctest: +SKIP
    >>> serve(["runs/cells"], host="127.0.0.1", port=8000)       # doctest: +SKIP

app.py holds the routes and limits, batcher.py the dynamic batching, responses.py the answer formats,
static/ the page. FastAPI and uvicorn are imported only here, so the rest of segwise never needs them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import SegwiseError

INSTALL = "pip install 'segwise[serve]'"


def require_serve() -> None:
    """Fail in one line when the serve extra (FastAPI, uvicorn, python-multipart) is missing."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (FastAPI's form parser)
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise SegwiseError(f"segwise serve needs {error.name}, which is not installed; {INSTALL}") from None


def create_app(runs: Sequence[str | Path], device: str = "auto", **limits):
    """The FastAPI app for `runs`; `limits` as app.Limits' fields (max_batch, max_wait_ms, …)."""
    require_serve()
    from .app import Limits
    from .app import create_app as create

    return create(runs, device, Limits(**limits))


def serve(
    runs: Sequence[str | Path], host: str = "127.0.0.1", port: int = 8000, device: str = "auto", **limits
) -> None:
    """Serve `runs` until interrupted."""
    run(create_app(runs, device, **limits), host, port)


def run(app, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve an app from `create_app` until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")


@contextlib.contextmanager
def in_background(app, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 30) -> Iterator[str]:
    """Serve `app` with uvicorn in a thread while the block runs (port 0: a free one); yields the base
    URL. For notebooks, tests and benchmarks.

    >>> with in_background(create_app(["runs/cells"])) as url:  # doctest: +SKIP
    ...     httpx.post(f"{url}/predict", content=open("cell.png", "rb").read())
    """
    require_serve()
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True, name="segwise-serve")
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise SegwiseError(f"serve: the server did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout_s)
