"""`segwise serve` over real sockets: a bounded load test on loopback, and the page in a real browser."""

from __future__ import annotations

import io
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="segwise[serve] is not installed")
pytest.importorskip("uvicorn", reason="segwise[serve] is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")

import segwise  # noqa: E402
from segwise.serve import create_app, in_background  # noqa: E402
from tests.serving import png_bytes, random_image  # noqa: E402

REQUESTS, CLIENTS = 200, 16


def test_200_requests_from_16_clients_all_answer_right_and_the_server_stays_healthy(trained_run):
    predictor = segwise.load(trained_run, device="cpu")
    images = [random_image(40 + 7 * i, 60 - 5 * i, seed=i) for i in range(4)]
    expected = predictor.predict_proba_batch(images)
    app = create_app([trained_run], device="cpu", max_batch=8, max_queue=REQUESTS)
    with in_background(app) as url:

        def one(index: int) -> tuple[int, int, np.ndarray | None]:
            with httpx.Client(base_url=url, timeout=60) as client:
                which = index % len(images)
                response = client.post("/predict?format=probabilities", content=png_bytes(images[which]))
                body = np.load(io.BytesIO(response.content)) if response.status_code == 200 else None
                return which, response.status_code, body

        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(one, range(REQUESTS)))
        health = httpx.get(f"{url}/health", timeout=10).json()
    assert [status for _, status, _ in answers] == [200] * REQUESTS  # nothing dropped or refused
    for which, _, probabilities in answers:  # each answer is its own image's, whatever batch it was in
        np.testing.assert_allclose(probabilities, expected[which], atol=2e-3)
    assert health == {"status": "ok", "models": ["tiny"], "waiting": 0}
    batches = app.state.batcher.batches
    assert sum(batches) == REQUESTS and max(batches) > 1  # concurrent requests did share forward passes


def _browser():
    """A headless Chromium driven by Selenium with the system's browser and driver, or a skip reason."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip(
            "no Chromium and chromedriver on this machine (Debian: apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


def test_the_page_shows_the_overlay_at_the_images_size_in_a_real_browser(trained_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = random_image(45, 75)
    path = tmp_path / "upload.png"
    path.write_bytes(png_bytes(image))
    browser = _browser()
    try:
        with in_background(create_app([trained_run], device="cpu")) as url:
            browser.get(url)
            WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#model option"))
            browser.find_element(By.ID, "files").send_keys(str(path))
            result = browser.find_element(By.ID, "result")
            WebDriverWait(browser, 60).until(
                lambda b: result.get_attribute("data-state") in ("done", "error")
            )
            assert result.get_attribute("data-state") == "done", browser.find_element(By.ID, "status").text
            canvas = browser.find_element(By.ID, "view")
            size = browser.execute_script("return [arguments[0].width, arguments[0].height]", canvas)
            assert size == [75, 45]
            legend = browser.find_elements(By.CSS_SELECTOR, "#legend tr")
            assert len(legend) == len(segwise.load(trained_run).class_names) - 1  # every class but background
            drawn = browser.execute_script(
                "const c = arguments[0]; return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)",
                canvas,
            )
            assert not np.array_equal(
                np.asarray(drawn).reshape(45, 75, 4)[..., :3], image
            )  # classes drawn over it
            if os.environ.get("SEGWISE_SCREENSHOT"):  # how docs/serve.png is made
                browser.save_screenshot(os.environ["SEGWISE_SCREENSHOT"])
    finally:
        browser.quit()
