"""A client of the retrieval server (retrieve.py serve, src/retrieval/server.py) on the standard library alone: one
keep-alive connection, an image searched as the page sends it (multipart POST /api/search). The load bench and the
tests use it; so can a script.

    client = SearchClient("127.0.0.1", 8080)
    answer = client.search_file("query.jpg", top_k=10)   # the JSON answer: answer["results"][0]["path"], ...
"""
import http.client
import json
import os
import re
import time
import uuid

# The line retrieve.py serve logs once it listens (src.retrieval.server.serve).
SERVED_AT = re.compile(r"serving .* at http://(\[[^\]]+\]|[^:/ ]+):([0-9]+)/ ; Ctrl-C stops")


class ServerError(Exception):
    """An answer other than 200: its status and the server's reason."""

    def __init__(self, status, detail):
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


def multipart_body(fields, files):
    """(body, content type) of a multipart/form-data form: `fields` {name: text}, `files` {name: (filename, bytes)}."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\ncontent-disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\ncontent-disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f'content-type: application/octet-stream\r\n\r\n'.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class SearchClient:
    """The server's API at host:port over one connection (opened again if the server closed it)."""

    def __init__(self, host="127.0.0.1", port=8080, timeout=60.0):
        self.host, self.port, self.timeout = host.strip("[]"), int(port), timeout
        self.connection = None

    def request(self, method, path, body=None, headers=None):
        """(status, body bytes) of one request."""
        for attempt in (1, 2):
            if self.connection is None:
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.connection.request(method, path, body=body, headers=headers or {})
                response = self.connection.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()  # a keep-alive connection the server had closed: once more on a new one
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(self, method, path, body=None, headers=None):
        """The JSON answer of one request; ServerError for a status other than 200."""
        status, data = self.request(method, path, body, headers)
        try:
            answer = json.loads(data)
        except ValueError:
            answer = {"detail": data[:200].decode("utf-8", "replace")}
        if status != 200:
            raise ServerError(status, answer.get("detail") if isinstance(answer, dict) else answer)
        return answer

    def health(self):
        return self.json("GET", "/api/health")

    def search_bytes(self, data, top_k=10, name="query.png"):
        """The answer to an image file's bytes: {"query", "results": [{rank, id, path, label, similarity, ...}],
        "time_ms", ...}."""
        body, content_type = multipart_body({"top_k": str(top_k)}, {"image": (name, data)})
        return self.json("POST", "/api/search", body, {"content-type": content_type})

    def search_file(self, path, top_k=10):
        with open(path, "rb") as f:
            return self.search_bytes(f.read(), top_k, os.path.basename(path))

    def close(self):
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def same_results(got, want, atol=1e-4):
    """Whether two answers' results (JSON: rank, id, similarity, ...) to one query are the same: the same ranks and
    similarities (to `atol`: the server embeds queries in batches of other sizes than a single search does), and the
    same ids, of which two at equal similarity may come in either order."""
    if [g["rank"] for g in got] != [w["rank"] for w in want]:
        return False
    ids = {w["id"] for w in want}
    return all(abs(g["similarity"] - w["similarity"]) <= atol and (g["id"] == w["id"] or g["id"] in ids)
               for g, w in zip(got, want, strict=True))


def served_url(log_path, process, timeout=300.0):
    """(host, port) from the log of a starting `retrieve.py serve` (its output going to `log_path`) once it
    listens and has warmed up; RuntimeError with the log's end if `process` exits or `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        found = SERVED_AT.search(text)
        if found:
            return found.group(1).strip("[]"), int(found.group(2))
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}) before serving:\n{text[-3000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"the server did not say where it serves within {timeout:.0f} s:\n{text[-3000:]}")
