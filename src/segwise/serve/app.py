"""The FastAPI application behind `segwise serve`: routes, limits and the status code of each refusal.

    GET  /          the web page (static/index.html; every asset served from here, no outside network)
    GET  /health    {"status": "ok", ...}
    GET  /models    each model's classes, palette, input size and metrics
    POST /predict   an image (raw bytes, or multipart field `file`) → the format asked for (responses.py)
    GET  /docs      FastAPI's OpenAPI page (its Swagger UI script comes from a CDN; /openapi.json is local)

Refusals: 404 unknown model; 413 upload over the byte limit, or an image over the pixel limit (checked
from its header: a decompression bomb is never decoded); 415 not an image; 422 a parameter out of range;
503 with Retry-After when as many requests wait as the queue holds. No request names a file: models are
chosen by name among those the server was started with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ..data.dataset import match_channels
from ..errors import PixelLimitError, SegwiseError
from ..inference.ensemble import load
from ..inference.predictor import Predictor
from ..inference.tuned import applied_steps
from ..io import read_image_bytes
from .batcher import Batcher, BatchKey, QueueFull
from .models import model_card, model_names
from .responses import FORMATS, answer

STATIC = Path(__file__).with_name("static")
MIB = 2**20


@dataclass(frozen=True)
class Limits:
    max_batch: int = 8  # images per forward pass
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for others
    max_queue: int = 64  # requests waiting at most; more get 503
    max_upload_bytes: int = 32 * MIB


def create_app(runs: Sequence[str | Path], device: str = "auto", limits: Limits = Limits()) -> FastAPI:
    """The app serving the runs (run folders, or folders from `save_pretrained`), by folder name."""
    if not runs:
        raise SegwiseError("serve: no run given; pass one or more run folders")
    predictors = {name: load(run, device=device) for name, run in zip(model_names(runs), runs, strict=True)}
    for predictor in predictors.values():  # a damaged postprocess.json stops the start, not each request
        applied_steps(predictor.run_dir, predictor.task, predictor.class_names)
    batcher = Batcher(
        _batch_predictor(predictors), limits.max_batch, limits.max_wait_ms / 1000, limits.max_queue
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="segwise", summary="Semantic segmentation of uploaded images", lifespan=lifespan)
    app.state.batcher, app.state.predictors = batcher, predictors
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_pages(app, predictors, batcher)
    _add_predict(app, predictors, batcher, limits)
    return app


def _batch_predictor(predictors: dict[str, Predictor]):
    def predict(key: BatchKey, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return predictors[key.model].predict_proba_batch(images, calibrated=False, tta=key.tta, tile=key.tile)

    return predict


def _add_pages(app: FastAPI, predictors: dict[str, Predictor], batcher: Batcher) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "models": list(predictors), "waiting": batcher.waiting}

    @app.get("/models")
    def models() -> list[dict]:
        return [model_card(name, predictor) for name, predictor in predictors.items()]


_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
            },
        },
    }
}


def _add_predict(app: FastAPI, predictors: dict[str, Predictor], batcher: Batcher, limits: Limits) -> None:
    @app.post("/predict", openapi_extra=_BODY, responses={413: {}, 415: {}, 503: {}})
    async def predict(
        request: Request,
        model: str | None = Query(None, description="model name (GET /models); default: the first"),
        format: Literal[FORMATS] = Query("mask", description="what to answer: " + ", ".join(FORMATS)),  # noqa: A002
        tta: Literal["none", "flips", "d4", "scales"] = Query("none", description="test-time augmentation"),
        tile: int | None = Query(None, ge=32, le=8192, description="predict in tiles of this side"),
        threshold: float | None = Query(None, gt=0, lt=1, description="foreground threshold (binary runs)"),
        min_size: int | None = Query(None, ge=1, description="remove objects under this many pixels"),
        fill_holes: bool = Query(False, description="fill background holes inside objects"),
        largest: bool = Query(False, description="keep only the largest object of each class"),
    ) -> Response:
        name = model or next(iter(predictors))
        if name not in predictors:
            raise HTTPException(404, f"no model named {name!r}; GET /models lists them")
        predictor = predictors[name]
        image = await _image(request, limits.max_upload_bytes)
        try:  # here, so that an image the model cannot take fails alone, not the batch it would join
            image = match_channels(image, predictor.model.in_channels, Path("upload"))
        except SegwiseError as error:
            raise HTTPException(415, str(error)) from None
        # the run's recorded post-processing (postprocess.json, threshold.json), as `segwise predict` applies it
        steps = applied_steps(
            predictor.run_dir, predictor.task, predictor.class_names, threshold=threshold, min_size=min_size,
            fill_holes=fill_holes, largest=largest,
        ).steps  # fmt: skip

        def finish(raw: np.ndarray):  # on the batcher's thread; decided on the model's own probabilities
            shown = predictor.tempered(raw)  # those shown get the run's temperature, as `predict` writes them
            return answer(format, predictor.config.classes, image, shown, steps(raw))

        key = BatchKey(name, tta, None if tile is None else (tile, tile))
        try:
            body = await batcher.submit(key, image, finish)
        except QueueFull:
            raise HTTPException(
                503, "too many requests waiting; retry shortly", {"Retry-After": "1"}
            ) from None
        except SegwiseError as error:
            raise HTTPException(422, str(error)) from None
        return Response(body.body, media_type=body.media_type)

    @app.exception_handler(SegwiseError)
    async def user_error(request: Request, error: SegwiseError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=422)


async def _image(request: Request, limit: int) -> np.ndarray:
    """The uploaded image's pixels: the raw body, or a multipart body's `file` field."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"upload of {int(declared):,} bytes is over the limit of {limit:,}")
    body = await _body(request, limit)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        body = await _file_field(request, body)
    if not body:
        raise HTTPException(
            415, "empty upload; send an image (PNG, JPEG, TIFF, BMP) as the body or as field 'file'"
        )
    try:
        return await run_in_threadpool(read_image_bytes, body, "upload")
    except PixelLimitError as error:
        raise HTTPException(413, str(error)) from None
    except SegwiseError as error:
        raise HTTPException(
            415, f"{error}".replace("replace or remove the file", "send a PNG, JPEG, TIFF or BMP image")
        ) from None


async def _body(request: Request, limit: int) -> bytes:
    """The body, read no further than `limit` bytes (a body without a Content-Length may be any size)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"upload is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _file_field(request: Request, body: bytes) -> bytes:
    """The `file` field of a multipart body already read (and size-checked) by `_body`."""

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, receive=replay).form(max_files=1, max_fields=16)
    except Exception as error:  # the multipart parser's errors: a malformed body
        raise HTTPException(
            415, f"malformed multipart body ({error}); send the image as field 'file'"
        ) from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise HTTPException(415, "multipart body without a file field named 'file'")
    return await upload.read()
