"""retrieve.py serve end to end, as its users meet it, on an index of a tiny generated set built with an untrained
ResNet-50: the API (FastAPI's test client) answers as retrieve.py search does; a real browser (headless Chromium,
driven by selenium) uploads a test image to the served page and sees retrieve.py search's first result, clicks an
image of the index and sees the same-label marks; many clients at once each get their own answer; bad flags are
one line. Without Chromium the browser test is skipped, saying so, except under CI=true, where that is a failure
(.ci/run installs it)."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from src.data.demo_data import make_retrieval_dataset
from src.retrieval.client import SearchClient, same_results, served_url
from src.retrieval.index import load_index
from tests.paths import ROOT

pytestmark = pytest.mark.slow
SMALL = ["--image_size", "32", "--eval_batch_size", "16", "--num_parallel_workers", "1"]
TOP_K = 5


def retrieve_py(*args, output=subprocess.PIPE):
    env = dict(os.environ, GLOG_v="3", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "retrieve.py"), *map(str, args)], cwd=ROOT, env=env,
                            stdout=output, stderr=subprocess.STDOUT, text=True)


def finish(proc, expect=0):
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == expect, f"exit {proc.returncode} (expected {expect}) from {proc.args}:\n{out[-4000:]}"
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory, untrained_checkpoint):
    """The train list indexed (labels known); retrieve.py search's answers for 8 test images (not in the index);
    retrieve.py serve on a free loopback port, with its log. Yields (data, index_dir, expected, (host, port))."""
    data = tmp_path_factory.mktemp("data")
    make_retrieval_dataset(str(data))
    out = tmp_path_factory.mktemp("out")
    index_dir = out / "index"
    finish(retrieve_py("index", "--ckpt_path", untrained_checkpoint, "--dataset_path", data, "--list", "train.txt",
                       "--index_dir", index_dir, *SMALL))
    queries = [str(data / line.split()[0]) for line in (data / "test.txt").read_text().splitlines()[::4]][:8]
    search = retrieve_py("search", "--index_dir", index_dir, *queries, "--top_k", TOP_K, "--json", out / "hits.json")
    log_path = out / "serve.log"
    with open(log_path, "w") as log:
        server = retrieve_py("serve", "--index_dir", index_dir, "--port", 0, "--max_batch", 8, output=log)
    try:
        finish(search)
        expected = {q["image"]: q["results"] for q in json.loads((out / "hits.json").read_text())["queries"]}
        address = served_url(log_path, server)
        yield data, index_dir, expected, address, log_path
    finally:
        server.terminate()
        server.wait(30)


def assert_same_results(got, want):
    assert same_results(got, want), f"got {got}\nretrieve.py search: {want}"


def test_the_api_answers_as_retrieve_search_does(site):
    from fastapi.testclient import TestClient

    from src.retrieval.retriever import Retriever
    from src.retrieval.server import create_app

    _, index_dir, expected, _, _ = site
    retriever = Retriever.open(str(index_dir))
    with TestClient(create_app(retriever)) as client:
        health = client.get("/api/health").json()
        assert health["count"] == 48 and health["model"]["backend"] == "mindspore"
        assert health["manifest"]["checkpoint_sha256"] == load_index(str(index_dir)).manifest["checkpoint_sha256"]
        for path, want in expected.items():
            with open(path, "rb") as f:
                answer = client.post("/api/search", files={"image": (os.path.basename(path), f.read())},
                                     data={"top_k": str(TOP_K)}).json()
            assert_same_results(answer["results"], want)
            assert answer["query"] == {"item": None, "label": None}


def test_many_clients_at_once_each_get_their_own_answer(site):
    """8 clients x 10 searches on loopback, each of its own image, against retrieve.py serve: every answer is
    retrieve.py search's for that image (the 16 x 50 run and its timings: bench/bench_serve.py)."""
    _, _, expected, (host, port), log_path = site

    def searches(path):
        client = SearchClient(host, port)
        try:
            return [client.search_file(path, TOP_K) for _ in range(10)]
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        answers = dict(zip(expected, pool.map(searches, expected), strict=True))
    batches = []
    for path, got in answers.items():
        for answer in got:
            assert_same_results(answer["results"], expected[path])
            batches.append(answer["batch"])
    assert max(batches) > 1, "concurrent searches were batched"
    assert "Traceback" not in log_path.read_text()


def test_bad_serve_flags_are_one_line_errors(site):
    _, index_dir, _, (_, port), _ = site
    cases = {"port": (["--port", 70000], r"ValueError: --port must be from 0 to 65535, got 70000"),
             "in use": (["--port", port], rf"ValueError: cannot listen on 127.0.0.1 port {port}: Address already "
                                          r"in use"),
             "batch": (["--max_batch", 0], r"ValueError: --max_batch must be a positive integer, got 0")}
    procs = {name: retrieve_py("serve", "--index_dir", index_dir, *args) for name, (args, _) in cases.items()}
    for name, (_, pattern) in cases.items():
        lines = [line for line in finish(procs[name], expect=1).splitlines() if line.strip()]
        assert " ERROR " in lines[-1] and re.search(pattern, lines[-1]), f"{name}: {lines[-3:]}"
        assert not any("Traceback" in line for line in lines), name


# ---------------------------------------------------------------------------------------------------------------
# In a browser

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("/usr/lib/chromium/chromedriver",)  # where Debian's chromium-driver puts it, besides /usr/bin


def browser_or_skip():
    """(chromium, chromedriver, selenium's webdriver module); a skip naming what is missing, a failure under CI."""
    missing = []
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
        missing.append("selenium (pip install -r requirements-dev.txt)")
    chromium = next(filter(None, map(shutil.which, BROWSERS)), None)
    driver = shutil.which("chromedriver") or next((path for path in DRIVERS if os.path.isfile(path)), None)
    if chromium is None:
        missing.append("a Chromium browser (apt-get install chromium)")
    if driver is None:
        missing.append("chromedriver (apt-get install chromium-driver)")
    if missing:
        reason = "no real-browser test: " + ", ".join(missing) + " not found"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI installs Chromium (.ci/run) and must run this test")
        pytest.skip(reason)
    return chromium, driver, webdriver


@pytest.mark.parametrize("ci", ["true", ""])
def test_without_chromium_the_browser_test_skips_saying_why_but_fails_under_ci(monkeypatch, ci):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(sys.modules[__name__], "DRIVERS", ())
    monkeypatch.setenv("CI", ci)
    outcome = pytest.fail.Exception if ci == "true" else pytest.skip.Exception
    with pytest.raises(outcome, match=r"no real-browser test: a Chromium browser \(apt-get install chromium\), "
                                      r"chromedriver \(apt-get install chromium-driver\) not found"):
        browser_or_skip()


@pytest.fixture(scope="module")
def browser(site):
    chromium, driver_path, webdriver = browser_or_skip()
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)  # no Selenium Manager: no download
    yield driver
    driver.quit()


def test_the_page_in_a_browser(site, browser, tmp_path):
    """Upload a test image: the first result is retrieve.py search's; click an image of the index: the query is
    its own first result and every other is marked by its label; a file that is not an image: the reason shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    data, index_dir, expected, (host, port), _ = site
    index = load_index(str(index_dir))
    started = time.monotonic()
    wait = WebDriverWait(browser, 30)
    browser.get(f"http://{host}:{port}/")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery li img")) == min(len(index), 48))
    status = browser.find_element(By.ID, "status")

    def search_done():
        wait.until(lambda d: status.get_attribute("data-state") in ("done", "error"))
        return browser.find_elements(By.CSS_SELECTOR, "#results .result")

    query, want = next(iter(expected.items()))
    browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(query)
    cards = search_done()
    assert status.get_attribute("data-state") == "done", browser.find_element(By.ID, "error").text
    assert len(cards) == 10  # the page's default top-k
    first = cards[0]
    assert int(first.get_attribute("data-id")) == want[0]["id"] and first.get_attribute("data-path") == want[0]["path"]
    assert first.find_element(By.CSS_SELECTOR, ".similarity").text == f"{want[0]['similarity']:.3f}"
    assert "label is unknown" in browser.find_element(By.ID, "summary").text
    assert browser.find_element(By.ID, "query-image").get_attribute("naturalWidth") == "32"  # the query is shown
    browser.save_screenshot(str(tmp_path / "upload.png"))

    item = 21
    browser.find_element(By.CSS_SELECTOR, f'#gallery li[data-id="{item}"]').click()
    wait.until(lambda d: d.find_element(By.ID, "query-caption").text.startswith(f"item {item}:"))
    cards = search_done()
    assert [int(card.get_attribute("data-id")) for card in cards][:1] == [item]
    marks = [card.get_attribute("class").split()[1] for card in cards]
    labels = [index.label(int(card.get_attribute("data-id"))) for card in cards]
    assert marks == ["self"] + ["same" if label == index.label(item) else "other" for label in labels[1:]]
    same = marks.count("same")
    assert browser.find_element(By.ID, "summary").text.startswith(f"{same} of the 9 other results share the "
                                                                  f"query's label {index.label(item)}.")
    assert all(card.find_element(By.TAG_NAME, "img").get_attribute("naturalWidth") != "0" for card in cards)
    browser.save_screenshot(str(tmp_path / "item.png"))

    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(notes))
    search_done()
    assert status.get_attribute("data-state") == "error"
    assert browser.find_element(By.ID, "error").text == ("400: cannot decode image: notes.png (not an image, or a "
                                                         "format OpenCV cannot read)")
    problems = [entry["message"] for entry in browser.get_log("browser")
                if entry["level"] == "SEVERE" and "/api/search - Failed to load resource" not in entry["message"]]
    assert problems == []  # no script error, nothing the content security policy blocked
    assert (tmp_path / "upload.png").stat().st_size > 10_000
    assert time.monotonic() - started < 60
