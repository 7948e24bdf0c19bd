"""The search page of ``manet serve`` in headless Chromium, against the real server over a real
catalogue: pick a generated photo of a product, wait for the tiles, find the product among them.

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` (JSON messages
separated by NUL bytes on fds 3 and 4), so a file can be set on the page's file input as a user
would pick it, with no Python dependency beyond the standard library. Skipped where no Chromium
is installed (apt-get install chromium).
"""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from helpers import TINY_MODEL

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,  # starts Chromium and a server thread
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (apt-get install chromium)")]

WINDOW = (1280, 900)
TIMEOUT = 30.0  # seconds for any one wait: a search on the tiny model takes well under one
API_KEY = "s3cret-key"
TRICKY = '<img src=x onerror="document.body.dataset.xss=1">Fizz & "Pop" <b>'  # a title that must stay text


class DevTools:
    """A headless Chromium and one page of it, driven over the DevTools pipe."""

    def __init__(self, profile: Path) -> None:
        # Chromium reads commands on fd 3 and writes answers on fd 4; bash puts the pipe ends there
        # (high copies first, so that no end already sits on 3 or 4 when the other is moved).
        commands, answers = os.pipe(), os.pipe()
        child_in, child_out = (_high_fd(fd) for fd in (commands[0], answers[1]))
        for fd in (commands[0], answers[1]):
            os.close(fd)
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                f"--window-size={WINDOW[0]},{WINDOW[1]}", "about:blank"]
        script = f'exec "$0" "$@" 3<&{child_in} 4>&{child_out} {child_in}<&- {child_out}>&-'
        self.process = subprocess.Popen(["bash", "-c", script, *args], pass_fds=(child_in, child_out),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(child_in)
        os.close(child_out)
        self._write, self._read = commands[1], answers[0]
        self._answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        self.session: str | None = None
        self.target: str | None = None
        threading.Thread(target=self._reader, name="devtools-reader", daemon=True).start()

    def _reader(self) -> None:
        buffer = b""
        while chunk := os.read(self._read, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._answers.put(json.loads(message))

    def send(self, method: str, params: dict[str, Any] | None = None, *, browser: bool = False) -> dict[str, Any]:
        """One command's result (to the page's session unless ``browser``); fails on an error."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if not browser and self.session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                answer = self._answers.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"Chromium did not answer {method} in {TIMEOUT:.0f} s") from None
            if answer.get("id") == self._next_id:
                assert "error" not in answer, f"{method}: {answer['error']}"
                return answer.get("result", {})
            self.events.append(answer)

    def open_page(self) -> None:
        """A new tab (a fresh page and its own events) that the commands go to from now on."""
        self.target = self.send("Target.createTarget", {"url": "about:blank"}, browser=True)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": self.target, "flatten": True},
                                 browser=True)["sessionId"]
        self.events = []
        for domain in ("Page", "Runtime", "DOM"):
            self.send(f"{domain}.enable")
        # A fixed viewport: headless window sizes include a frame that varies between versions.
        self.send("Emulation.setDeviceMetricsOverride", {"width": WINDOW[0], "height": WINDOW[1],
                                                        "deviceScaleFactor": 1, "mobile": False})

    def navigate(self, url: str) -> None:
        """Open ``url`` and wait until it has loaded (scripts ran, the first fetches may not have)."""
        self.send("Page.navigate", {"url": url})
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'", f"page {url}")

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str) -> Any:
        """Poll ``expression`` until it is truthy; fail with the page's own lines after TIMEOUT."""
        deadline = time.monotonic() + TIMEOUT
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} after {TIMEOUT:.0f} s; page says {self.page_lines()!r}, "
                                     f"script errors {self.script_errors()!r}")
            time.sleep(0.1)
        return value

    def page_lines(self) -> dict[str, str]:
        return self.evaluate("({status: document.getElementById('status').textContent, "
                             "error: document.getElementById('error').textContent})")

    def script_errors(self) -> list[str]:
        """Uncaught exceptions and console errors the page reported so far."""
        errors = [event["params"]["exceptionDetails"].get("text", "") for event in self.events
                  if event.get("method") == "Runtime.exceptionThrown"]
        errors += [" ".join(str(arg.get("value", arg.get("description", ""))) for arg in event["params"]["args"])
                   for event in self.events if event.get("method") == "Runtime.consoleAPICalled"
                   and event["params"].get("type") == "error"]
        return errors

    def set_file(self, selector: str, path: Path) -> None:
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        assert node, f"no {selector} on the page"
        self.send("DOM.setFileInputFiles", {"nodeId": node, "files": [str(path)]})

    def screenshot(self) -> Image.Image:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
        return image.convert("RGB")

    def close_page(self) -> None:
        self.send("Target.closeTarget", {"targetId": self.target}, browser=True)
        self.session = self.target = None

    def close(self) -> None:
        try:
            self.send("Browser.close", browser=True)
            self.process.wait(10)
        except (AssertionError, OSError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        finally:
            for fd in (self._write, self._read):
                os.close(fd)


def _high_fd(fd: int) -> int:
    """An inheritable copy of ``fd`` numbered 10 or above (bash moves it down to 3 or 4)."""
    import fcntl

    copy = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.set_inheritable(copy, True)
    return copy


def studio_shot(spec: Any, index: int, path: Path) -> Path:
    """Product ``index``'s studio shot drawn as small_catalogue (seed 1, 96 px) draws it."""
    from manet.tools.synthetic import catalogue_image, render_pack

    pixels = catalogue_image(render_pack(spec, 96), np.random.default_rng([1, 1, index]))
    Image.fromarray(pixels).save(path, format="PNG")
    return path


@dataclass(frozen=True)
class Catalogue:
    specs: list[Any]  # small_catalogue's 10 products and the tricky 11th
    folder: Path  # small_catalogue's
    tricky: Path  # the tricky product's image

    def photo_of(self, index: int, path: Path) -> Path:
        """A copy of product ``index``'s generated catalogue image, as a user would pick a file.
        (The test model has random weights and finds only the same pixels reliably: a shopper
        photo, even a re-encoded copy, need not come first.)"""
        shutil.copyfile(self.folder / "catalog" / f"syn{index:05d}.jpg", path)
        return path


@pytest.fixture(scope="module")
def catalogue(retriever, small_catalogue, tmp_path_factory):
    """The small catalogue plus one product whose title and brand are HTML, extracted and indexed."""
    from manet.tools.synthetic import make_specs

    specs = make_specs(11, seed=1)  # small_catalogue's 10 products, and an 11th for the tricky one
    folder = tmp_path_factory.mktemp("tricky")
    studio_shot(specs[10], 10, folder / "tricky.png")
    (folder / "manifest.csv").write_text("sku,image,title,brand,category,domain\n"
                                         f'TRICKY-1,tricky.png,"{TRICKY.replace(chr(34), chr(34) * 2)}",'
                                         '<i>Brand</i>,bottle,catalog\n', encoding="utf-8")
    retriever.ingest("manifest", small_catalogue)
    retriever.ingest("manifest", folder / "manifest.csv")
    retriever.create_model("tiny", pooling="srmac", **TINY_MODEL)
    retriever.extract("tiny")
    retriever.build_index("tiny")
    return Catalogue(specs, small_catalogue.parent, folder / "tricky.png")


@pytest.fixture(scope="module")
def server(catalogue, retriever):
    from manet.serve.app import create_app
    from manet.serve.runner import ServerThread

    with ServerThread(create_app(retriever.settings, model="tiny")) as running:
        yield running.url


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    browser = DevTools(tmp_path_factory.mktemp("chromium-profile"))
    yield browser
    browser.close()


@pytest.fixture
def browser(chromium):
    """A new tab of the module's Chromium for each test."""
    chromium.open_page()
    yield chromium
    chromium.close_page()


@pytest.fixture
def page(server, browser):
    """The search page, loaded, its model list filled."""
    browser.navigate(server + "/")
    browser.wait_for("document.getElementById('model').dataset.loaded === 'true'", "model list")
    return browser


TILES = "[...document.querySelectorAll('#tiles .tile')]"


def search_with(page: DevTools, photo: Path) -> list[dict[str, Any]]:
    """Pick ``photo`` in the file input (the page searches on its own) and return the tiles."""
    page.evaluate("document.getElementById('tiles').replaceChildren()")
    page.set_file("#photo", photo)
    return page.wait_for(f"""(() => {{
        const tiles = {TILES};
        if (!tiles.length || document.getElementById('tiles').hasAttribute('aria-busy')) return null;
        return tiles.map((t) => ({{sku: t.dataset.sku, brand: t.querySelector('.brand').textContent,
                                  title: t.querySelector('.title').textContent,
                                  score: Number(t.querySelector('.score').textContent),
                                  thumb: t.querySelector('img').alt}}));
    }})()""", "result tiles")


def test_the_picked_photo_finds_its_product(page, catalogue, tmp_path):
    product = catalogue.specs[3]
    assert page.evaluate("[...document.getElementById('model').selectedOptions].map((o) => o.value)") == ["tiny"]
    tiles = search_with(page, catalogue.photo_of(3, tmp_path / "shot.png"))
    assert len(tiles) == 7  # the page's default k
    assert product.sku in [tile["sku"] for tile in tiles]
    assert tiles[0]["sku"] == product.sku
    assert [tile["score"] for tile in tiles] == sorted((tile["score"] for tile in tiles), reverse=True)
    page.wait_for(f"{TILES}.every((t) => t.querySelector('img').complete "
                  "&& t.querySelector('img').naturalWidth > 0)", "loaded thumbnails")
    image = page.screenshot()
    image.save(tmp_path / "search-page.png")  # to look at when it fails
    assert image.size == WINDOW
    assert len(image.getcolors(maxcolors=WINDOW[0] * WINDOW[1])) > 500  # thumbnails and text, not blank
    assert page.script_errors() == []


def test_brand_filter_and_k(page, catalogue, tmp_path):
    product = catalogue.specs[5]
    search_with(page, catalogue.photo_of(5, tmp_path / "shot.png"))
    page.evaluate(f"document.getElementById('brand').value = {json.dumps(product.brand)}; "
                  "document.getElementById('k').value = '3'; "
                  "document.getElementById('tiles').replaceChildren(); "
                  "document.getElementById('submit').click()")
    tiles = page.wait_for(f"{TILES}.length && !document.getElementById('tiles').hasAttribute('aria-busy') "
                          f"&& {TILES}.map((t) => [t.dataset.sku, t.querySelector('.brand').textContent])",
                          "filtered tiles")
    assert 1 <= len(tiles) <= 3
    assert tiles[0][0] == product.sku
    assert {brand for _, brand in tiles} == {product.brand}
    assert product.brand in page.page_lines()["status"]


def test_more_like_this_searches_with_the_stored_image(page, catalogue, tmp_path):
    search_with(page, catalogue.photo_of(2, tmp_path / "shot.png"))
    second = page.evaluate(f"{TILES}[1].dataset.imageId")
    page.evaluate(f"{TILES}[1].querySelector('button').click()")
    # POST /v1/search {"image_id": N}: the stored image finds itself first
    again = page.wait_for(f"!document.getElementById('tiles').hasAttribute('aria-busy') "
                          f"&& {TILES}[0]?.dataset.imageId === {json.dumps(second)} "
                          f"&& {TILES}.map((t) => t.dataset.imageId)", "tiles of the stored image")
    assert len(again) == 7 and len(set(again)) == 7
    assert page.page_lines()["error"] == ""


def test_a_dropped_photo_is_searched(page, catalogue, tmp_path):
    tiles = search_with(page, catalogue.photo_of(6, tmp_path / "shot.png"))
    # Drop a file made in the page (a thumbnail it fetched) on the drop zone, as a drag from the desktop.
    page.evaluate(f"""(async () => {{
        const blob = await (await fetch({TILES}[0].querySelector('img').src)).blob();
        const files = new DataTransfer();
        files.items.add(new File([blob], 'dropped.jpg', {{type: 'image/jpeg'}}));
        document.getElementById('tiles').replaceChildren();
        document.getElementById('drop').dispatchEvent(new DragEvent('drop', {{dataTransfer: files, bubbles: true,
                                                                          cancelable: true}}));
    }})()""")
    again = page.wait_for(f"!document.getElementById('tiles').hasAttribute('aria-busy') && {TILES}.length", "tiles")
    assert again == len(tiles)
    assert page.evaluate("document.getElementById('drop-text').textContent") == "dropped.jpg"
    assert page.page_lines()["error"] == ""


def test_server_strings_stay_text(page, catalogue):
    tiles = search_with(page, catalogue.tricky)
    assert tiles[0]["sku"] == "TRICKY-1"
    assert tiles[0]["title"] == TRICKY and tiles[0]["brand"] == "<i>Brand</i>"
    assert page.evaluate("document.querySelectorAll('#tiles img').length") == len(tiles)  # thumbnails only
    assert page.evaluate("document.querySelectorAll('#tiles b:not(.rank b), #tiles i').length") == 0
    assert page.evaluate("document.body.dataset.xss") is None


def test_a_file_that_is_no_image_shows_the_servers_error(page, tmp_path):
    bad = tmp_path / "not-a-photo.jpg"
    bad.write_text("this is text, not a JPEG")
    page.set_file("#photo", bad)
    error = page.wait_for("!document.getElementById('error').hidden && document.getElementById('error').textContent",
                          "error line")
    assert "image" in error.lower() and not error.startswith("4")  # the server's words, not a status code
    assert page.evaluate(f"{TILES}.length") == 0


def test_the_page_asks_for_the_api_key_when_the_server_wants_one(catalogue, retriever, browser, tmp_path):
    from manet.serve.app import create_app
    from manet.serve.runner import ServerThread

    with ServerThread(create_app(retriever.settings, model="tiny", api_key=API_KEY)) as keyed:
        browser.navigate(keyed.url + "/")
        error = browser.wait_for("!document.getElementById('key-row').hidden "
                                 "&& document.getElementById('error').textContent", "API key field")
        assert "API key" in error
        browser.evaluate(f"const key = document.getElementById('api-key'); key.value = {json.dumps(API_KEY)}; "
                         "key.dispatchEvent(new Event('change'))")
        browser.wait_for("document.getElementById('model').dataset.loaded === 'true'", "model list")
        tiles = search_with(browser, catalogue.photo_of(7, tmp_path / "shot.png"))
        assert tiles[0]["sku"] == catalogue.specs[7].sku
        # Thumbnails need the key too: the page fetches them with it.
        browser.wait_for(f"{TILES}.every((t) => t.querySelector('img').naturalWidth > 0)", "loaded thumbnails")
        assert browser.page_lines()["error"] == ""


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl on PATH")
def test_the_readme_curl_example(server, catalogue, tmp_path):
    """README's "HTTP service" curl command, with this server, a photo and a category it has."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## HTTP service\n", 1)[1].split("\n## ", 1)[0]
    command = next(line for line in section.splitlines() if line.startswith("curl "))
    product = catalogue.specs[4]
    photo = catalogue.photo_of(4, tmp_path / "photo.jpg")
    args = [{"image=@photo.jpg": f"image=@{photo}", "category=Juice": f"category={product.shape}"}.get(arg, arg)
            for arg in shlex.split(command.replace("http://127.0.0.1:8000", server))]
    done = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert (answer["model"], answer["k"]) == ("tiny", 7)
    assert answer["hits"][0]["sku"] == product.sku
    assert all(hit["thumbnail_url"].endswith(f"/v1/images/{hit['image_id']}/thumbnail") for hit in answer["hits"])
