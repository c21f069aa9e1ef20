"""The retrieval page and its JSON API (FastAPI on uvicorn) over an index opened once: drop or choose an image, or
click one of the index's, and see its nearest indexed images. `retrieve.py serve` runs it.

    GET  /                              the page: static/index.html, app.js, style.css (nothing from elsewhere)
    GET  /static/{file}                 its assets
    GET  /api/health                    model, index size, search, manifest (its local paths cut to file names)
    POST /api/search                    multipart: image (a file), top_k -> the query and its ranked results
    GET  /api/items?offset=&limit=      a page of the index's items (id, path, label)
    GET  /api/items/{id}                one item
    GET  /api/items/{id}/thumbnail      its image, at most THUMBNAIL_SIDE px (JPEG)
    GET  /api/items/{id}/search?top_k=  its nearest items, from its stored features (no model call)

Errors are JSON {"detail": reason}: 400 a body that is not an image, no image, a bad top_k; 404 an id that is not
an item's (or whose file is not inside the index's root); 413 an upload over max_upload_bytes (counted as the body
arrives) or an image of more than MAX_PIXELS; 500 for a failure of ours, its traceback in the server's log only.
Searches run in one model thread (src.retrieval.batching.SearchWorker); the HTTP side stays concurrent.
"""
import asyncio
import functools
import hashlib
import io
import ipaddress
import os
import re
import socket
import time
import warnings
from contextlib import asynccontextmanager

import cv2
import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders, UploadFile
from starlette.middleware.trustedhost import TrustedHostMiddleware

from src.data.decoding import decode_image, load_image
from src.retrieval.batching import SearchWorker
from src.runtime.log import get_logger

logger = get_logger()

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
FORM_SLACK = 64 * 1024  # the form's boundaries, headers and top_k around the image: the body limit is this more
MAX_PIXELS = 50_000_000  # a small file can decode into gigabytes (a "decompression bomb"): refused before decoding
MAX_TOP_K = 100
DEFAULT_TOP_K = 10
PAGE_LIMIT = 200  # items per /api/items page, at most
THUMBNAIL_SIDE = 256
THUMBNAIL_CACHE = 4096  # thumbnails kept in memory (a 256 px JPEG is ~20 KB)
# Connections served at once; more get 503 at once. Each may hold an upload of up to max_upload_bytes in memory.
MAX_CONNECTIONS = 64
SECURITY_HEADERS = {
    # the page's own files only: no inline script, nothing fetched from elsewhere, not framed by another site
    "content-security-policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


# ---------------------------------------------------------------------------------------------------------------
# Input checks: each failure is an HTTPException with a reason

def parse_int(text, name, low, high):
    """`text` (a query or form value) as an int in [low, high]; 400 naming `name` otherwise."""
    value = str(text).strip()
    if not re.fullmatch(r"-?[0-9]{1,12}", value) or not low <= int(value) <= high:
        raise HTTPException(400, f"{name} must be an integer from {low} to {high}, got {str(text)[:40]!r}")
    return int(value)


def parse_item(index, text):
    """The item id `text` names in `index`; 404 for anything else (not a number, out of range)."""
    if not (re.fullmatch(r"[0-9]{1,12}", text) and int(text) < len(index)):
        raise HTTPException(404, f"no item {text[:40]!r} in this index (its ids are 0 to {len(index) - 1})")
    return int(text)


def item_file(index, i):
    """The image file of item i, if it is inside the index's root; 404 otherwise (a paths.txt edited to point
    outside it, a symbolic link leading out) or when the file is not there any more."""
    root = os.path.realpath(index.root)
    path = os.path.realpath(os.path.join(root, index.paths[i]))
    if not path.startswith(root + os.sep):
        raise HTTPException(404, f"item {i}'s image is outside the index's root: not served")
    if not os.path.isfile(path):
        raise HTTPException(404, f"item {i}'s image {index.paths[i]} is not in the index's root any more")
    return path


def decode_upload(data, name):
    """An uploaded file's bytes -> HxWx3 uint8 RGB; 413 if it would decode to more than MAX_PIXELS, 400 if it does
    not decode."""
    from PIL import Image, UnidentifiedImageError

    too_many = f"{name} has more than {MAX_PIXELS // 1_000_000} megapixels, the most this server searches"
    try:  # reads the header only: the size before any pixel is decoded
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            width, height = Image.open(io.BytesIO(data)).size
    except Image.DecompressionBombError:  # Pillow's own limit, above ours
        raise HTTPException(413, too_many) from None
    except (UnidentifiedImageError, OSError, ValueError):
        width = height = 0  # a format Pillow does not know: OpenCV's own limit (2^30 pixels) applies
    if width * height > MAX_PIXELS:
        raise HTTPException(413, f"{too_many} ({width} x {height})")
    try:
        return decode_image(data, name)
    except (ValueError, cv2.error) as err:
        reason = err if isinstance(err, ValueError) else f"cannot decode image: {name}"
        raise HTTPException(400, f"{reason} (not an image, or a format OpenCV cannot read)") from None


class UploadTooLarge(Exception):
    pass


def limited_receive(receive, limit):
    """`receive` that raises UploadTooLarge as soon as the body it has passed on exceeds `limit` bytes."""
    received = 0

    async def receive_limited():
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise UploadTooLarge
        return message

    return receive_limited


# ---------------------------------------------------------------------------------------------------------------
# What the index answers with

class GalleryHashes:
    """Finds the indexed item whose file has the same bytes as an upload (the index keeps each file's SHA-256): a
    query that came from the gallery has a label to compare with. Sorted digests: 32 bytes an item."""

    def __init__(self, hashes):
        self.digests = np.array([bytes.fromhex(h) for h in hashes], dtype="S32")
        self.order = np.argsort(self.digests, kind="stable")
        self.sorted = self.digests[self.order]

    def find(self, data):
        """The id of the first item whose file is `data`, or None."""
        digest = np.array(hashlib.sha256(data).digest(), dtype="S32")
        position = int(np.searchsorted(self.sorted, digest))
        if position < len(self.sorted) and self.sorted[position] == digest:
            return int(self.order[position])
        return None


def item_json(index, i):
    return {"id": i, "path": index.paths[i], "label": index.label(i), "thumbnail": f"/api/items/{i}/thumbnail"}


def public_manifest(manifest):
    """The manifest without its per-file hashes, its local paths cut to their last part: a page served beyond
    this machine does not tell where things are on it."""
    out = {key: value for key, value in manifest.items() if key != "files"}
    for key in ("checkpoint", "root"):
        if isinstance(out.get(key), str):
            out[key] = os.path.basename(out[key].rstrip("/"))
    out["sources"] = [os.path.basename(path) for path in out.get("sources", [])]
    return out


def results_json(index, hits, query_id, query_label):
    """Hits as the page shows them: each with its thumbnail, whether it is the query itself, and whether it has the
    query's label (None when either label is unknown)."""
    out = []
    for hit in hits:
        row = dict(hit.to_dict(), thumbnail=f"/api/items/{hit.id}/thumbnail", is_query=hit.id == query_id)
        row["same_label"] = None if query_label is None or hit.label is None else hit.label == query_label
        out.append(row)
    return out


def thumbnail_jpeg(path, side=THUMBNAIL_SIDE):
    """An image file as JPEG bytes, its longer side at most `side` px."""
    image = load_image(path)
    scale = side / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
    if not ok:
        raise ValueError(f"cannot encode a thumbnail of {path}")
    return encoded.tobytes()


# ---------------------------------------------------------------------------------------------------------------
# The app

class GuardedResponses:
    """ASGI middleware: SECURITY_HEADERS on every response; an exception that escaped a route goes to the log with
    its traceback, and the client gets a 500 with a short reason (never the traceback)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_guarded(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        try:
            await self.app(scope, receive, send_guarded)
        except Exception:
            logger.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if not started:  # else the response is cut short: the client sees the connection close
                await JSONResponse({"detail": "internal error (the server's log has the details)"}, 500)(
                    scope, receive, send_guarded)


def create_app(retriever, max_upload_bytes=MAX_UPLOAD_BYTES, max_batch=16, allowed_hosts=None):
    """The app over `retriever` (a src.retrieval.retriever.Retriever, or anything with its index, embedder,
    searcher and search_features). allowed_hosts: the Host headers answered (None: any); the model thread is
    app.state.worker (warm it up before serving)."""
    index = retriever.index
    worker = SearchWorker(retriever, max_batch)
    hashes = GalleryHashes(index.hashes)
    body_limit = int(max_upload_bytes) + FORM_SLACK
    too_large = HTTPException(413, f"the upload is larger than {max_upload_bytes / 2 ** 20:g} MB, this server's "
                                   f"limit (retrieve.py serve --max_upload_mb)")

    @functools.lru_cache(maxsize=THUMBNAIL_CACHE)
    def thumbnail(i):
        return thumbnail_jpeg(item_file(index, i))

    @asynccontextmanager
    async def lifespan(app):
        yield
        await run_in_threadpool(worker.close)

    # No /docs: FastAPI's would fetch its scripts from the internet.
    app = FastAPI(title="metric_learn retrieval", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.worker = worker
    app.add_middleware(GuardedResponses)
    if allowed_hosts is not None:  # answers no page that a rebinding DNS name points at this machine
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(RequestValidationError)
    async def bad_request(request, err):
        reasons = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in err.errors())
        return JSONResponse({"detail": reasons or "bad request"}, 400)

    async def search(k, query_id, query_label, started, **query):
        hits, timing = await asyncio.wrap_future(worker.submit(k, **query))
        return {"query": {"item": None if query_id is None else item_json(index, query_id), "label": query_label},
                "top_k": k, "results": results_json(index, hits, query_id, query_label),
                "search": retriever.searcher.describe(), "batch": timing.batch,
                "time_ms": {"queued": round(timing.queued * 1e3, 2), "search": round(timing.searched * 1e3, 2),
                            "total": round((time.perf_counter() - started) * 1e3, 2)}}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(os.path.join(STATIC, "index.html"), headers={"cache-control": "no-cache"})

    @app.get("/api/health")
    async def health():
        manifest = index.manifest
        return {"status": "ok", "count": len(index), "feature_dim": int(index.features.shape[1]),
                "labels": index.has_labels, "search": retriever.searcher.describe(),
                "model": {"checkpoint": os.path.basename(manifest["checkpoint"]),
                          "checkpoint_sha256": manifest["checkpoint_sha256"], "backbone": manifest["backbone"],
                          "image_size": manifest["image_size"], "eval_resize": manifest["eval_resize"],
                          "backend": retriever.embedder.settings["backend"]},
                "max_upload_bytes": int(max_upload_bytes), "max_top_k": MAX_TOP_K, "default_top_k": DEFAULT_TOP_K,
                "manifest": public_manifest(manifest)}

    @app.post("/api/search")
    async def search_upload(request: Request):
        started = time.perf_counter()
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > body_limit:  # refused before a byte of the body is read
            raise too_large
        limited = Request(request.scope, limited_receive(request.receive, body_limit))
        try:
            async with limited.form(max_files=1, max_fields=8, max_part_size=64 * 1024) as form:
                upload = form.get("image")
                top_k = form.get("top_k", request.query_params.get("top_k", DEFAULT_TOP_K))
                if not isinstance(upload, UploadFile):
                    raise HTTPException(400, "no image: send the image file as the multipart/form-data field "
                                             "'image'")
                name = os.path.basename(upload.filename or "") or "the upload"
                data = await upload.read()
        except UploadTooLarge:
            raise too_large from None
        if len(data) > max_upload_bytes:
            raise too_large
        k = parse_int(top_k, "top_k", 1, MAX_TOP_K)
        image = await run_in_threadpool(decode_upload, data, name)
        query_id = await run_in_threadpool(hashes.find, data)
        label = None if query_id is None else index.label(query_id)
        return await search(k, query_id, label, started, image=image)

    @app.get("/api/items")
    async def items(offset: str = "0", limit: str = "48"):
        start = parse_int(offset, "offset", 0, max(len(index) - 1, 0))
        count = parse_int(limit, "limit", 1, PAGE_LIMIT)
        return {"count": len(index), "offset": start,
                "items": [item_json(index, i) for i in range(start, min(start + count, len(index)))]}

    @app.get("/api/items/{item_id}")
    async def item(item_id: str):
        return item_json(index, parse_item(index, item_id))

    @app.get("/api/items/{item_id}/thumbnail")
    def item_thumbnail(item_id: str):  # a thread of the pool: decoding a file blocks
        i = parse_item(index, item_id)
        try:
            jpeg = thumbnail(i)
        except ValueError:  # the file changed since it was indexed
            raise HTTPException(404, f"item {i}'s image {index.paths[i]} does not decode any more") from None
        return Response(jpeg, media_type="image/jpeg", headers={"cache-control": "max-age=3600"})

    @app.get("/api/items/{item_id}/search")
    async def item_search(item_id: str, top_k: str = str(DEFAULT_TOP_K)):
        started = time.perf_counter()
        i = parse_item(index, item_id)
        k = parse_int(top_k, "top_k", 1, MAX_TOP_K)
        return await search(k, i, index.label(i), started, features=index.features[i])

    return app


# ---------------------------------------------------------------------------------------------------------------
# Serving

def is_loopback(host):
    """True for localhost and the loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_names(host):
    """The Host header names of a server listening on loopback `host` (IPv6 ones in brackets, as headers have
    them)."""
    return sorted({"localhost", "127.0.0.1", "[::1]", f"[{host}]" if ":" in host else host})


def listen_socket(host, port):
    """A TCP socket bound to (host, port) and listening (port 0: a free one); ValueError naming what failed."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise ValueError(f"--host {host}: {err.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise ValueError(f"cannot listen on {host} port {port}: {err.strerror}") from None
    return sock


def serve(retriever, host="127.0.0.1", port=8080, max_upload_bytes=MAX_UPLOAD_BYTES, max_batch=16):
    """Serve the page over `retriever` until interrupted (Ctrl-C, SIGTERM): the port taken and the model warmed up
    first, then one log line saying where (src.retrieval.client.served_url reads it); a warning if `host` is not a
    loopback address."""
    import uvicorn

    loopback = is_loopback(host)
    allowed = host_names(host) if loopback else None
    sock = listen_socket(host, port)  # first: a port in use stops us before the warm-up
    app = create_app(retriever, max_upload_bytes, max_batch, allowed)
    app.state.worker.warm_up()
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    logger.info("serving %s (%d images) at http://%s:%d/ ; Ctrl-C stops", retriever.index.folder,
                len(retriever.index), shown, bound)
    if not loopback:
        logger.warning("--host %s is not a loopback address: every machine that can reach this one may search the "
                       "index and see its images", host)
    config = uvicorn.Config(app, log_config=None, timeout_keep_alive=5, limit_concurrency=MAX_CONNECTIONS,
                            server_header=False)
    uvicorn.Server(config).run(sockets=[sock])
