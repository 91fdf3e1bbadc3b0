"""`segwise serve`: an HTTP API and a web page for trained runs (the optional extra `segwise[serve]`).

    >>> from segwise.serve import create_app, serve              # doctest: +SKIP
    >>> serve(["runs/cells"], host="127.0.0.1", port=8000)       # doctest: +SKIP

app.py holds the routes and limits, batcher.py the dynamic batching, responses.py the answer formats,
static/ the page. FastAPI and uvicorn are imported only here, so the rest of segwise never needs them.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    app = create_app(runs, device, **limits)
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")
