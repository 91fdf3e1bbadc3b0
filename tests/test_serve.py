"""`segwise serve`: the API through FastAPI's test client, every refusal's status, and the batcher."""

from __future__ import annotations

import asyncio
import io
import threading

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="segwise[serve] is not installed")
pytest.importorskip("python_multipart", reason="segwise[serve] is not installed")

from fastapi.testclient import TestClient  # noqa: E402

import segwise  # noqa: E402
from segwise.constants import MAX_PIXELS_ENV  # noqa: E402
from segwise.serve import create_app  # noqa: E402
from segwise.serve.batcher import Batcher, BatchKey, QueueFull  # noqa: E402
from tests.serving import decoded, png_bytes, png_claiming, random_image  # noqa: E402

IMAGE = random_image(50, 70)


@pytest.fixture(scope="module")
def client(trained_run):
    with TestClient(create_app([trained_run], device="cpu")) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def predictor(trained_run):
    return segwise.load(trained_run, device="cpu")


def post(client, data: bytes = png_bytes(IMAGE), **params):
    return client.post("/predict", params=params, content=data, headers={"content-type": "image/png"})


def test_mask_equals_the_predictors_own_at_the_images_size(client, predictor):
    response = post(client)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    mask = decoded(response.content)
    assert mask.shape == IMAGE.shape[:2]
    # what the server runs: one batch of one image (a batch's float rounding may differ from the
    # single-image path's by an ulp, enough to flip an exact tie)
    np.testing.assert_array_equal(mask, predictor.predict_proba_batch([IMAGE])[0].argmax(0))


def test_every_format_answers_what_it_says(client, predictor):
    expected = predictor.predict_proba_batch([IMAGE])[0]
    labels = decoded(post(client, format="labels").content)
    np.testing.assert_array_equal(labels, expected.argmax(0))
    overlay = decoded(post(client, format="overlay").content)
    assert overlay.shape == (50, 70, 3)
    probabilities = np.load(io.BytesIO(post(client, format="probabilities").content), allow_pickle=False)
    np.testing.assert_allclose(probabilities, expected, atol=1e-3)  # float16
    objects = post(client, format="objects").json()
    assert (objects["width"], objects["height"]) == (70, 50)
    assert {o["class_name"] for o in objects["objects"]} <= set(predictor.class_names[1:])


def test_post_processing_parameters_change_the_mask_as_the_cli_does(client, predictor):
    from segwise.inference import postprocess

    response = post(client, min_size=40, fill_holes="true")
    steps = postprocess.Steps(predictor.task, min_size=40, fill_holes=True)
    np.testing.assert_array_equal(decoded(response.content), steps(predictor.predict_proba_batch([IMAGE])[0]))


def test_a_multipart_upload_answers_as_the_raw_body(client):
    multipart = client.post("/predict", files={"file": ("cells.png", png_bytes(IMAGE), "image/png")})
    assert multipart.status_code == 200
    assert multipart.content == post(client).content


def test_models_and_health_describe_the_server(client, predictor):
    cards = client.get("/models").json()
    assert [card["name"] for card in cards] == ["tiny"]
    assert cards[0]["classes"] == list(predictor.class_names)
    assert cards[0]["palette"] == predictor.palette
    assert client.get("/health").json()["status"] == "ok"
    schema = client.get("/openapi.json").json()
    assert "/predict" in schema["paths"] and client.get("/docs").status_code == 200


def test_the_page_and_its_assets_are_served_from_the_server_itself(client):
    page = client.get("/")
    assert page.status_code == 200 and "segwise" in page.text
    for asset in ("static/app.js", "static/style.css"):
        assert asset in page.text and client.get("/" + asset).status_code == 200
    assert "http" not in page.text.replace("http-equiv", "")  # no asset from outside
    assert client.get("/static/../app.py").status_code == 404


@pytest.mark.parametrize(
    "body, status",
    [
        (b"", 415),
        (b"not an image at all", 415),
        (png_claiming(60000, 60000), 413),  # a decompression bomb, refused from its header
    ],
)
def test_bad_uploads_are_refused_with_their_status(client, body, status):
    response = post(client, body)
    assert response.status_code == status
    assert "detail" in response.json()


def test_an_upload_over_the_byte_limit_is_refused_unread(trained_run):
    with TestClient(create_app([trained_run], device="cpu", max_upload_bytes=1000)) as small:
        declared = post(small, png_bytes(IMAGE))  # a Content-Length over the limit
        assert declared.status_code == 413
        chunked = small.post("/predict", content=iter([png_bytes(IMAGE)]))  # no Content-Length
        assert chunked.status_code == 413


def test_the_pixel_limit_applies_to_uploads(client, monkeypatch):
    monkeypatch.setenv(MAX_PIXELS_ENV, "100")
    response = post(client)
    assert response.status_code == 413 and "over the limit of 100 pixels" in response.json()["detail"]


@pytest.mark.parametrize(
    "params, status",
    [({"model": "other"}, 404), ({"format": "gif"}, 422), ({"tta": "spin"}, 422), ({"threshold": 2}, 422)],
)
def test_bad_parameters_are_refused(client, params, status):
    assert post(client, **params).status_code == status


def test_a_multipart_body_without_a_file_is_refused(client):
    assert (
        client.post(
            "/predict", data={"note": "no image"}, files={"other": ("x", b"", "text/plain")}
        ).status_code
        == 415
    )


def test_a_full_queue_answers_503_with_retry_after(trained_run):
    app = create_app([trained_run], device="cpu", max_batch=1, max_queue=1, max_wait_ms=0)
    release, started = threading.Event(), threading.Event()
    predictor = app.state.predictors["tiny"]
    original = predictor.predict_proba_batch

    def slow(images, **options):
        started.set()
        release.wait(30)
        return original(images, **options)

    predictor.predict_proba_batch = slow
    with TestClient(app) as test_client:
        answers = []
        first = threading.Thread(target=lambda: answers.append(post(test_client).status_code))
        first.start()
        assert started.wait(30)  # the first request is being predicted: the queue is empty again
        second = threading.Thread(target=lambda: answers.append(post(test_client).status_code))
        second.start()
        while app.state.batcher.waiting < 1:
            threading.Event().wait(0.01)
        refused = post(test_client)  # the queue holds one request, and it is taken
        release.set()
        first.join(30), second.join(30)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert sorted(answers) == [200, 200]


def test_the_batcher_batches_requests_that_arrive_together():
    seen = []

    def predict(key, images):
        seen.append((key, len(images)))
        return [image * 2 for image in images]

    async def scenario():
        batcher = Batcher(predict, max_batch=4, max_wait_s=0.05, max_queue=16)
        batcher.start()
        images = [np.full((2, 2), i) for i in range(6)]
        keys = [BatchKey("a")] * 5 + [BatchKey("a", tta="flips")]
        results = await asyncio.gather(*(batcher.submit(k, im) for k, im in zip(keys, images, strict=True)))
        await batcher.stop()
        return images, results

    images, results = asyncio.run(scenario())
    for image, result in zip(images, results, strict=True):
        np.testing.assert_array_equal(result, image * 2)
    assert sorted(size for _, size in seen) == [1, 1, 4]  # never more than max_batch, keys never mixed
    assert {key for key, size in seen if size == 4} == {BatchKey("a")}


def test_the_batcher_refuses_when_full_and_fails_only_the_failing_batch():
    def predict(key, images):
        if key.model == "broken":
            raise RuntimeError("boom")
        return list(images)

    async def scenario():
        batcher = Batcher(predict, max_batch=1, max_wait_s=0, max_queue=1)
        with pytest.raises(QueueFull):
            batcher._jobs.append(object())  # one waiting: full
            await batcher.submit(BatchKey("a"), np.zeros(1))
        batcher._jobs.clear()
        batcher.start()
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(BatchKey("broken"), np.zeros(1))
        result = await batcher.submit(BatchKey("fine"), np.ones(1))
        await batcher.stop()
        return result

    np.testing.assert_array_equal(asyncio.run(scenario()), np.ones(1))


def test_serve_without_the_extra_says_how_to_install_it(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def without_uvicorn(name, *args, **kwargs):
        if name == "uvicorn":
            raise ImportError(name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_uvicorn)
    from segwise.cli import main

    assert main(["serve", "runs/none"]) == 2
    assert "pip install 'segwise[serve]'" in capsys.readouterr().err


def test_serve_of_a_run_that_does_not_load_is_one_line_before_it_says_it_serves(tmp_path, capsys):
    from segwise.cli import main

    assert main(["serve", str(tmp_path / "missing")]) == 2
    captured = capsys.readouterr()
    assert "run folder not found" in captured.err and "serving" not in captured.out
