"""The stdlib client's helpers: its multipart form, comparing two answers up to ties, and reading where a starting
server listens."""
import asyncio
import subprocess
import sys

import pytest
from starlette.datastructures import Headers
from starlette.formparsers import MultiPartParser

from src.retrieval.client import multipart_body, same_results, served_url


def results(*pairs):
    return [{"rank": rank, "id": i, "similarity": s} for rank, (i, s) in enumerate(pairs, start=1)]


def test_same_results_allows_reordered_ties_and_float_noise_only():
    want = results((4, 0.9), (7, 0.8), (2, 0.8), (5, 0.1))
    assert same_results(results((4, 0.90002), (7, 0.8), (2, 0.8), (5, 0.1)), want)
    assert same_results(results((4, 0.9), (2, 0.8), (7, 0.8), (5, 0.1)), want)  # a tie in the other order
    assert not same_results(results((4, 0.9), (7, 0.8), (2, 0.8), (6, 0.1)), want)  # another item
    assert not same_results(results((4, 0.9), (7, 0.8), (2, 0.8), (5, 0.2)), want)
    assert not same_results(results((4, 0.9), (7, 0.8), (2, 0.8)), want)


def test_served_url_reads_the_line_the_server_logs(tmp_path):
    log = tmp_path / "serve.log"
    log.write_text("12:00:00 INFO metric_learn: model warmed up for batches of 1 in 0.1 s\n"
                   "12:00:00 INFO metric_learn: serving /x/index (3 images) at http://[::1]:41234/ ; Ctrl-C stops\n")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert served_url(log, sleeper, timeout=5) == ("::1", 41234)
    finally:
        sleeper.kill()
        sleeper.wait()
    log.write_text("ERROR ValueError: cannot listen on 127.0.0.1 port 80: Permission denied\n")
    done = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    done.wait()
    with pytest.raises(RuntimeError, match=r"the server exited \(1\) before serving:\n.*Permission denied"):
        served_url(log, done, timeout=5)


def test_a_form_by_hand_parses_as_a_form():
    body, content_type = multipart_body({"top_k": "7"}, {"image": ("q.png", b"\x89PNG bytes\r\n--")})

    async def parse():
        async def stream():
            yield body

        return await MultiPartParser(Headers({"content-type": content_type}), stream()).parse()

    form = asyncio.run(parse())
    assert form["top_k"] == "7" and form["image"].filename == "q.png"
    assert asyncio.run(form["image"].read()) == b"\x89PNG bytes\r\n--"
