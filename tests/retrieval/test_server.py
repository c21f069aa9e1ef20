"""The retrieval page's app (src/retrieval/server.py) over a small index, the network a stand-in
(tests/retrieval/stub.py): its answers equal the Retriever's, and every bad request is a 4xx with a reason (never a
file outside the index, never a traceback) after which the server goes on answering. Also once over a real socket
(uvicorn in a thread), as the page and src.retrieval.client reach it. tests/test_serve.py runs retrieve.py serve
with the real network and a browser."""
import asyncio
import dataclasses
import http.client
import logging
import os
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from src.data.decoding import load_image
from src.data.demo_data import make_retrieval_dataset
from src.data.image_list import read_image_list
from src.retrieval.client import SearchClient, ServerError
from src.retrieval.index import build_index, load_index
from src.retrieval.retriever import Retriever
from src.retrieval.search import ExactSearch
from src.retrieval.server import (
    FORM_SLACK,
    MAX_PIXELS,
    create_app,
    host_names,
    is_loopback,
    listen_socket,
    thumbnail_jpeg,
)
from tests.retrieval.stub import SETTINGS, PixelEmbedder

LIMIT = 200_000  # the upload limit of these tests' app


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_retrieval_dataset(str(tmp_path_factory.mktemp("data")), num_classes=6, per_class=4,
                                  test_per_class=3, size=32)


@pytest.fixture(scope="module")
def retriever(data, tmp_path_factory):
    """The train list indexed (labels known); the test list's images are not in it."""
    folder = str(tmp_path_factory.mktemp("index") / "idx")
    build_index(folder, read_image_list(os.path.join(data, "train.txt"), data), PixelEmbedder(), SETTINGS,
                hash_workers=2)
    index = load_index(folder)
    return Retriever(index, PixelEmbedder(), ExactSearch(index.features))


@pytest.fixture(scope="module")
def client(retriever):
    with TestClient(create_app(retriever, max_upload_bytes=LIMIT)) as client:  # closes the model thread after
        yield client


def held_out(data):
    return [os.path.join(data, line.split()[0]) for line in open(os.path.join(data, "test.txt")).read().splitlines()]


def upload(client, path=None, top_k=None, data=None, name=None):
    with open(path, "rb") as f:
        content = f.read() if data is None else data
    fields = {} if top_k is None else {"top_k": str(top_k)}
    return client.post("/api/search", files={"image": (name or os.path.basename(path), content)}, data=fields)


def assert_results_equal(results, hits):
    assert [r["id"] for r in results] == [h.id for h in hits]
    assert [r["rank"] for r in results] == list(range(1, len(hits) + 1))
    assert [(r["path"], r["label"]) for r in results] == [(h.path, h.label) for h in hits]
    np.testing.assert_allclose([r["similarity"] for r in results], [h.similarity for h in hits], atol=1e-6)


def test_health_describes_the_model_and_the_index_without_local_paths(client, retriever):
    health = client.get("/api/health").json()
    index = retriever.index
    assert health["status"] == "ok" and health["count"] == len(index) == 24 and health["labels"] is True
    assert health["search"] == "exact search over 24 items" and health["feature_dim"] == index.features.shape[1]
    assert health["model"]["checkpoint"] == "stub.ckpt" and health["model"]["image_size"] == 32
    manifest = health["manifest"]
    assert manifest["count"] == 24 and "files" not in manifest
    assert manifest["root"] == os.path.basename(index.root) and manifest["sources"] == ["train.txt"]
    assert index.root not in str(health)


def test_an_indexed_image_finds_itself_first_and_results_are_marked_by_label(client, retriever, data):
    index = retriever.index
    i = 9
    answer = upload(client, index.full_path(i), top_k=6).json()
    assert answer["query"]["item"]["id"] == i and answer["query"]["label"] == index.label(i)  # found by its bytes
    results = answer["results"]
    assert_results_equal(results, retriever.search_files([index.full_path(i)], 6)[0])
    assert results[0]["id"] == i and results[0]["is_query"] and not any(r["is_query"] for r in results[1:])
    assert [r["same_label"] for r in results] == [r["label"] == index.label(i) for r in results]
    assert all(r["thumbnail"] == f"/api/items/{r['id']}/thumbnail" for r in results)
    assert answer["top_k"] == 6 and answer["batch"] == 1 and answer["search"] == "exact search over 24 items"
    assert 0 <= answer["time_ms"]["search"] <= answer["time_ms"]["total"]


def test_an_image_from_outside_the_index_is_searched_without_label_marks(client, retriever, data):
    query = held_out(data)[4]
    answer = upload(client, query).json()
    assert answer["query"] == {"item": None, "label": None}
    assert_results_equal(answer["results"], retriever.search_files([query], 10)[0])  # top_k: 10 by default
    assert all(r["same_label"] is None and not r["is_query"] for r in answer["results"])


def test_an_item_of_the_index_is_searched_with_its_stored_features(client, retriever):
    index = retriever.index
    answer = client.get("/api/items/13/search", params={"top_k": 24}).json()
    assert_results_equal(answer["results"], retriever.search_features(index.features[13], 24)[0])
    assert answer["query"]["item"] == {"id": 13, "path": index.paths[13], "label": index.label(13),
                                       "thumbnail": "/api/items/13/thumbnail"}
    assert sum(r["same_label"] for r in answer["results"]) == int(np.sum(index.labels == index.labels[13]))


def test_items_come_in_pages_with_their_thumbnails(client, retriever):
    index = retriever.index
    page = client.get("/api/items", params={"offset": 20, "limit": 10}).json()
    assert page["count"] == 24 and page["offset"] == 20 and [item["id"] for item in page["items"]] == [20, 21, 22, 23]
    assert client.get("/api/items/3").json() == {"id": 3, "path": index.paths[3], "label": index.label(3),
                                                 "thumbnail": "/api/items/3/thumbnail"}
    response = client.get("/api/items/3/thumbnail")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    thumb = cv2.cvtColor(cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    original = load_image(index.full_path(3))
    assert thumb.shape == original.shape and np.abs(thumb.astype(int) - original).mean() < 12  # JPEG of it


def test_a_thumbnail_is_at_most_256_px(tmp_path):
    path = str(tmp_path / "wide.png")
    cv2.imwrite(path, np.full((300, 900, 3), 200, np.uint8))
    thumb = cv2.imdecode(np.frombuffer(thumbnail_jpeg(path), np.uint8), cv2.IMREAD_COLOR)
    assert thumb.shape == (85, 256, 3)


def test_the_page_is_served_with_its_assets_and_fetches_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text and "/static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for asset in ("app.js", "style.css"):
        response = client.get(f"/static/{asset}")
        assert response.status_code == 200 and len(response.text) > 1000
        assert "http://" not in response.text and "https://" not in response.text and "@import" not in response.text
    assert "http" not in page.text.replace('http-equiv', '')


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width, height):
    """A small PNG that says it is width x height (8-bit RGB): its first rows of pixels, then the end. A real bomb
    holds them all, a few MB of zlib for gigabytes of pixels; the header is what gives it away."""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\0" * (3 * width + 1) * 4)) + png_chunk(b"IEND", b""))


def multipart(parts):
    """A multipart body by hand: [(name, filename or None, bytes)] -> (body, headers)."""
    body = b"".join(f'--b\r\ncontent-disposition: form-data; name="{name}"'.encode()
                    + (f'; filename="{filename}"'.encode() if filename else b"") + b"\r\n\r\n" + value + b"\r\n"
                    for name, filename, value in parts) + b"--b--\r\n"
    return body, {"content-type": "multipart/form-data; boundary=b"}


def bad_requests(image):
    """name -> (request kwargs, status, what the reason says)."""
    big = image + b"\0" * LIMIT
    return {
        "not an image": (dict(files={"image": ("notes.png", b"not an image at all")}), 400,
                         "cannot decode image: notes.png (not an image"),
        "an empty file": (dict(files={"image": ("empty.jpg", b"")}), 400, "cannot decode image: empty.jpg"),
        "no image": (dict(data={"top_k": "3"}), 400, "no image: send the image file as the multipart/form-data "
                                                     "field 'image'"),
        "not a form": (dict(json={"image": "x"}), 400, "no image"),
        "two files": (dict(files=[("image", ("a.png", image)), ("image", ("b.png", image))]), 400,
                      "Too many files"),
        "top_k 0": (dict(files={"image": ("q.png", image)}, data={"top_k": "0"}), 400,
                    "top_k must be an integer from 1 to 100, got '0'"),
        "top_k 101": (dict(files={"image": ("q.png", image)}, data={"top_k": "101"}), 400,
                      "top_k must be an integer from 1 to 100, got '101'"),
        "top_k text": (dict(files={"image": ("q.png", image)}, data={"top_k": "ten"}), 400,
                       "top_k must be an integer from 1 to 100, got 'ten'"),
        "top_k twice signed": (dict(files={"image": ("q.png", image)}, data={"top_k": "--5"}), 400,
                               "top_k must be an integer"),
        "too large": (dict(files={"image": ("big.png", big)}), 413,
                      "MB, this server's limit (retrieve.py serve --max_upload_mb)"),
        "a decompression bomb": (dict(files={"image": ("bomb.png", png_bomb(9000, 9000))}), 413,
                                 f"bomb.png has more than {MAX_PIXELS // 10 ** 6} megapixels, the most this server "
                                 f"searches (9000 x 9000)"),
        "a bigger bomb": (dict(files={"image": ("bomb.png", png_bomb(20000, 20000))}), 413,  # over Pillow's limit too
                          f"bomb.png has more than {MAX_PIXELS // 10 ** 6} megapixels"),
    }


def test_every_bad_search_is_a_4xx_with_its_reason_and_the_server_goes_on(client, retriever):
    image = open(retriever.index.full_path(0), "rb").read()
    for name, (request, status, reason) in bad_requests(image).items():
        response = client.post("/api/search", **request)
        assert response.status_code == status, f"{name}: {response.status_code} {response.text}"
        assert reason in response.json()["detail"], f"{name}: {response.json()}"
        assert "Traceback" not in response.text
        assert client.get("/api/items/0/search").status_code == 200, name


def test_a_large_upload_is_refused_as_it_arrives_not_after(client):
    """Sent in chunks without a Content-Length, the body is counted as it comes: the app stops reading it early. (The
    test client reads a whole body before the app sees it: the app is called here as uvicorn calls it.)"""
    body, headers = multipart([("image", "big.png", b"\0" * (4 * LIMIT))])
    chunks = [body[start:start + 16384] for start in range(0, len(body), 16384)]
    taken, sent = [], []

    async def receive():
        taken.append(len(taken))
        return {"type": "http.request", "body": chunks[taken[-1]], "more_body": len(taken) < len(chunks)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/search", "raw_path": b"/api/search", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"content-type", headers["content-type"].encode()),
                         (b"transfer-encoding", b"chunked")], "client": ("127.0.0.1", 5000),
             "server": ("testserver", 80)}
    asyncio.run(client.app(scope, receive, send))
    assert sent[0]["status"] == 413 and b"larger than" in sent[1]["body"]
    assert len(taken) <= (LIMIT + FORM_SLACK) // 16384 + 2 < len(chunks) // 2  # the rest was never read
    response = client.post("/api/search", content=body, headers=headers)  # with a Content-Length: before reading
    assert response.status_code == 413


BAD_IDS = ["24", "-1", "abc", "1e3", "\u0663", "0x1", " 1", "99999999999999999999", "..%2F..%2F..%2Fetc%2Fpasswd",
           "%2Fetc%2Fpasswd"]


@pytest.mark.parametrize("route", ["/api/items/{}", "/api/items/{}/thumbnail", "/api/items/{}/search"])
def test_an_id_that_is_not_an_items_is_a_404(client, route):
    for bad in BAD_IDS:
        response = client.get(route.format(bad))
        assert response.status_code == 404, f"{bad!r}: {response.status_code} {response.text}"
        assert "root:" not in response.text and "Traceback" not in response.text
    assert client.get(route.format("23")).status_code == 200


@pytest.mark.parametrize("path", ["/static/..%2F..%2Fserver.py", "/static/%2e%2e/server.py", "/static/../server.py",
                                  "/static/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd", "/static/%2Fetc%2Fpasswd",
                                  "/static/", "/static", "/server.py", "/etc/passwd"])
def test_nothing_but_the_pages_assets_is_served_from_the_disk(client, path):
    response = client.get(path)
    assert response.status_code == 404, f"{path}: {response.status_code}"
    assert "import" not in response.text and "root:" not in response.text


@pytest.mark.parametrize("page", [{"offset": "-1"}, {"offset": "24"}, {"limit": "0"}, {"limit": "201"},
                                  {"limit": "x"}])
def test_a_bad_page_of_items_is_a_400(client, page):
    response = client.get("/api/items", params=page)
    assert response.status_code == 400 and "must be an integer from" in response.json()["detail"]


def test_item_files_outside_the_index_root_are_not_served(tmp_path, retriever):
    """An index whose paths.txt was edited, or whose root holds a link, to reach files outside it."""
    root, outside = tmp_path / "root", tmp_path / "outside.png"
    root.mkdir()
    for path in (root / "in.png", outside):
        cv2.imwrite(str(path), np.full((8, 8, 3), 90, np.uint8))
    os.symlink(outside, root / "link.png")
    os.symlink("/etc/passwd", root / "passwd.png")
    paths = ["in.png", "link.png", "../outside.png", str(outside), "passwd.png", "gone.png"]
    index = dataclasses.replace(retriever.index, manifest=dict(retriever.index.manifest, root=str(root)),
                                paths=paths, features=retriever.index.features[:len(paths)],
                                labels=retriever.index.labels[:len(paths)], hashes=retriever.index.hashes[:len(paths)])
    with TestClient(create_app(Retriever(index, PixelEmbedder(), ExactSearch(index.features)))) as client:
        assert client.get("/api/items/0/thumbnail").status_code == 200
        for i, why in enumerate(["outside the index's root"] * 4 + ["not in the index's root any more"], start=1):
            response = client.get(f"/api/items/{i}/thumbnail")
            assert response.status_code == 404 and why in response.json()["detail"], (i, response.text)


class FailingEmbedder(PixelEmbedder):
    def embed_images(self, images):
        raise RuntimeError("the secret inner workings")


def test_a_failure_of_ours_is_a_500_with_a_short_reason_in_the_response_and_the_traceback_in_the_log(
        retriever, caplog):
    broken = Retriever(retriever.index, FailingEmbedder(), retriever.searcher)
    with TestClient(create_app(broken)) as client, caplog.at_level(logging.ERROR, logger="metric_learn"):
        response = upload(client, retriever.index.full_path(0))
        assert response.status_code == 500
        assert response.json() == {"detail": "internal error (the server's log has the details)"}
        assert client.get("/api/items/2/search").status_code == 200  # searches without the model go on
    failed = [record for record in caplog.records if "POST /api/search failed" in record.getMessage()]
    assert len(failed) == 1 and "the secret inner workings" in str(failed[0].exc_info[1])


def test_on_loopback_other_host_names_are_refused(retriever):
    """A page elsewhere whose DNS name is rebound to 127.0.0.1 cannot read the API."""
    assert host_names("::1") == ["127.0.0.1", "[::1]", "localhost"]
    app = create_app(retriever, allowed_hosts=host_names("127.0.0.2"))
    with TestClient(app, base_url="http://attacker.example") as client:
        assert client.get("/api/health").status_code == 400
    for base in ("http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080", "http://127.0.0.2"):
        with TestClient(app, base_url=base) as client:
            assert client.get("/api/health").status_code == 200, base


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.3.2.1", True), ("::1", True),
                                                ("localhost", True), ("0.0.0.0", False), ("::", False),
                                                ("192.168.1.5", False), ("example.com", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_a_port_in_use_is_a_one_line_error():
    taken = listen_socket("127.0.0.1", 0)
    try:
        with pytest.raises(ValueError, match=rf"cannot listen on 127.0.0.1 port {taken.getsockname()[1]}: "
                                             r"Address already in use"):
            listen_socket("127.0.0.1", taken.getsockname()[1]).close()
    finally:
        taken.close()
    with pytest.raises(ValueError, match="--host no-such-host.invalid: "):
        listen_socket("no-such-host.invalid", 0)


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("0.0.0.0", False)])
def test_serve_warms_up_then_says_where_it_listens_and_warns_off_loopback(retriever, monkeypatch, caplog, host,
                                                                          loopback):
    import uvicorn

    from src.retrieval import server

    served = {}
    # the socket is always a loopback one here: a test opens nothing to the network
    monkeypatch.setattr(server, "listen_socket", lambda _host, _port: listen_socket("127.0.0.1", 0))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: served.update(app=self.config.app,
                                                                                   sockets=sockets))
    with caplog.at_level(logging.INFO, logger="metric_learn"):
        server.serve(retriever, host, 0)
    app, (sock,) = served["app"], served["sockets"]
    app.state.worker.close()
    port = sock.getsockname()[1]
    sock.close()
    messages = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert messages[0][1].startswith("model warmed up for batches of 1, 2, 4, 8, 16 in ")
    assert messages[1] == ("INFO", f"serving {retriever.index.folder} (24 images) at http://{host}:{port}/ ; "
                                   f"Ctrl-C stops")
    warnings = [message for level, message in messages if level == "WARNING"]
    assert warnings == ([] if loopback else ["--host 0.0.0.0 is not a loopback address: every machine that can "
                                             "reach this one may search the index and see its images"])
    hosts_checked = any(m.cls.__name__ == "TrustedHostMiddleware" for m in app.user_middleware)
    assert hosts_checked is loopback


# ---------------------------------------------------------------------------------------------------------------
# Over a real socket

@pytest.fixture(scope="module")
def live(retriever):
    """The app on uvicorn on a free loopback port, in a thread of this process: (host, port)."""
    import uvicorn

    sock = listen_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(retriever, max_upload_bytes=LIMIT), log_config=None,
                                           access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    client = SearchClient("127.0.0.1", sock.getsockname()[1])
    for _ in range(200):
        try:
            client.health()
            break
        except OSError:
            threading.Event().wait(0.05)
    yield "127.0.0.1", sock.getsockname()[1]
    server.should_exit = True
    thread.join(10)


def raw_get(host, port, path):
    """A GET of `path` exactly as written (no client normalising its dots)."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    connection.putrequest("GET", path, skip_accept_encoding=True)
    connection.endheaders()
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, body


def test_over_a_socket_dotted_paths_are_404s_and_large_uploads_413s(live, retriever):
    host, port = live
    for path in ("/api/items/../../../../etc/passwd", "/static/../../../../../../etc/passwd",
                 "/static/../server.py", "/api/items/0/../../../etc/passwd", "/../../etc/passwd"):
        status, body = raw_get(host, port, path)
        assert status == 404 and b"root:" not in body and b"import" not in body, path
    client = SearchClient(host, port)
    with pytest.raises(ServerError) as refused:
        client.search_bytes(b"\0" * (3 * LIMIT))
    assert refused.value.status == 413
    with pytest.raises(ServerError) as refused:
        client.search_bytes(b"GIF89a no more")
    assert refused.value.status == 400 and "cannot decode image: query.png" in refused.value.detail
    assert client.health()["count"] == 24  # and it goes on


def test_many_clients_at_once_each_get_their_own_answers(live, retriever, data):
    """8 clients x 10 searches, each of its own image; every answer is the one the Retriever gives that image."""
    host, port = live
    queries = held_out(data)[:8]
    expected = {path: [h.id for h in hits] for path, hits in zip(queries, retriever.search_files(queries, 5),
                                                                  strict=True)}

    def searches(path):
        client = SearchClient(host, port)
        got = [[r["id"] for r in client.search_file(path, top_k=5)["results"]] for _ in range(10)]
        client.close()
        return got

    with ThreadPoolExecutor(8) as pool:
        answers = dict(zip(queries, pool.map(searches, queries), strict=True))
    for path, got in answers.items():
        assert got == [expected[path]] * 10, path


def test_the_static_folder_holds_only_the_page():
    from src.retrieval import server

    assert sorted(os.listdir(server.STATIC)) == ["app.js", "index.html", "style.css"]
