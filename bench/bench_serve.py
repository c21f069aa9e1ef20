"""The retrieval page's server under load: searches/s and p50/p99 latency at 1, 4 and 16 concurrent clients
against `retrieve.py serve` on the demo's index, every answer checked against `retrieve.py search`'s for its image.

Usage: python bench/bench_serve.py [--ckpt_path CKPT] [--clients 1 4 16] [--searches 50] [--max_batch 16 1]
           [--work_dir bench_serve_output] [--output bench/results/serve_results.md]

The index is the demo's (scripts/run_demo.sh): its photo set's 570 test images at 32 px, indexed with
`retrieve.py index --list test.txt`, from --ckpt_path (default: an untrained ResNet-50, seed 1, written once;
weights do not change the time a search takes). Each client is a thread of this process with its own keep-alive
connection (src.retrieval.client.SearchClient) uploading one of 16 of the test images (client i: image i mod 16)
--searches times, as the page does (multipart POST /api/search, top_k 10); all start together. Latency: from the
upload's first byte to the whole answer. Clients and server share the machine's cores, as a page's users on one
machine would. For each --max_batch a server is started (the searches a batch may take together; 1: one at a
time), the model warmed up before timing, 2 searches a client first untimed.
"""
import _bootstrap  # noqa: F401  (first: the repository on sys.path, src.runtime.env before numpy loads)

# isort: split
import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from bench.common import ROOT, build_photo_set, child_env, log, machine_and_date, write_report
from src.retrieval.client import SearchClient, same_results, served_url

OUTPUT = os.path.join(ROOT, "bench", "results", "serve_results.md")
DEMO_DATA = {"grid": 4, "test_regions": 3, "views": 10, "size": 32, "rotation": 180.0, "flip": True}  # run_demo.sh's
QUERIES = 16
TOP_K = 10
WARM_SEARCHES = 2


def retrieve_py(args, output=subprocess.PIPE):
    """retrieve.py with `args` as a child process, its output to `output` (an open file, or piped)."""
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "retrieve.py"), *map(str, args)], env=child_env(),
                            stdout=output, stderr=subprocess.STDOUT, text=True)


def finished(proc, what):
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{(out or '')[-4000:]}")
    return out


def untrained_checkpoint(path):
    """An untrained ResNet-50's checkpoint (seed 1) at `path`, written once."""
    if not os.path.exists(path):
        partial = os.path.splitext(path)[0] + ".partial.ckpt"  # MindSpore adds .ckpt to a name without it
        code = (f"import src.runtime.env; import mindspore as ms; from src.models.resnet import ResNet50; "
                f"ms.set_seed(1); ms.save_checkpoint(ResNet50(), {partial!r})")
        subprocess.run([sys.executable, "-c", code], env=child_env(), check=True)
        os.replace(partial, path)
    return path


def run_level(host, port, clients, searches, queries, expected):
    """`clients` threads, each `searches` timed uploads of its image after WARM_SEARCHES untimed ones: {clients,
    searches, seconds, per_s, p50_ms, p99_ms, mean_batch, wrong}."""
    began = []
    start_together = threading.Barrier(clients, action=lambda: began.append(time.perf_counter()))

    def client(number):
        path = queries[number % len(queries)]
        with open(path, "rb") as f:
            data = f.read()
        connection = SearchClient(host, port)
        try:
            for _ in range(WARM_SEARCHES):
                connection.search_bytes(data, TOP_K, os.path.basename(path))
            start_together.wait()
            times, batches, wrong = [], [], 0
            for _ in range(searches):
                start = time.perf_counter()
                answer = connection.search_bytes(data, TOP_K, os.path.basename(path))
                times.append(time.perf_counter() - start)
                batches.append(answer["batch"])
                wrong += not same_results(answer["results"], expected[path])
            return times, batches, wrong, time.perf_counter()
        finally:
            connection.close()

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    times = np.concatenate([r[0] for r in results])
    seconds = max(r[3] for r in results) - began[0]  # from all clients ready to the last answer
    return {"clients": clients, "searches": int(len(times)), "seconds": seconds,
            "per_s": len(times) / seconds, "p50_ms": float(np.percentile(times, 50) * 1e3),
            "p99_ms": float(np.percentile(times, 99) * 1e3),
            "mean_batch": float(np.mean(np.concatenate([r[1] for r in results]))),
            "wrong": int(sum(r[2] for r in results))}


def report(rows, setup):
    """The results file: what was measured, then a row per (max_batch, clients)."""
    command = " ".join(["python bench/bench_serve.py", setup["argv"]]).strip()
    lines = [f"# The retrieval page's server under load ({machine_and_date()})", "",
             f"Command: `{command}` (the machine shared with other work: load average {setup['load']:.1f} when it "
             f"started)", "",
             f"Index: the demo's, {setup['count']} images at 32 px (scripts/run_demo.sh's photo set, its test list), "
             f"2048-d, exact search; checkpoint {setup['checkpoint']}. Each client uploads one of {QUERIES} of its "
             f"images (top_k {TOP_K}) over its own keep-alive connection; clients and server share the cores. "
             f"Every answer was compared with `retrieve.py search`'s for its image.", "",
             "| max_batch | clients | searches | searches/s | p50 ms | p99 ms | mean batch | answers correct |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        correct = f"{row['searches'] - row['wrong']}/{row['searches']}"
        lines.append(f"| {row['max_batch']} | {row['clients']} | {row['searches']} | {row['per_s']:.1f} | "
                     f"{row['p50_ms']:.0f} | {row['p99_ms']:.0f} | {row['mean_batch']:.1f} | {correct} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_path", default=None, help="checkpoint to index with (default: an untrained one)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--searches", type=int, default=50, help="timed searches per client")
    parser.add_argument("--max_batch", type=int, nargs="+", default=[16, 1],
                        help="a server per value (retrieve.py serve --max_batch)")
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "bench_serve_output"),
                        help="the photo set, the checkpoint, the index and the servers' logs (kept for a re-run)")
    parser.add_argument("--output", default=OUTPUT)
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    work = os.path.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    data = os.path.join(work, "data")
    log("bench_serve", f"the demo's photo set in {data}")
    build_photo_set(data, **DEMO_DATA)
    ckpt = os.path.abspath(args.ckpt_path) if args.ckpt_path else untrained_checkpoint(
        os.path.join(work, "untrained_seed1.ckpt"))
    index_dir = os.path.join(work, "index")
    log("bench_serve", f"indexing the test list with {ckpt}")
    finished(retrieve_py(["index", "--ckpt_path", ckpt, "--dataset_path", data, "--list", "test.txt",
                          "--index_dir", index_dir, "--image_size", DEMO_DATA["size"], "--eval_batch_size", 64]),
             "retrieve.py index")
    with open(os.path.join(data, "test.txt")) as f:
        listed = [line.split()[0] for line in f.read().splitlines()]
    queries = [os.path.join(data, listed[i]) for i in np.linspace(0, len(listed) - 1, QUERIES).astype(int)]
    hits = os.path.join(work, "hits.json")
    finished(retrieve_py(["search", "--index_dir", index_dir, *queries, "--top_k", TOP_K, "--json", hits]),
             "retrieve.py search")
    with open(hits) as f:
        expected = {q["image"]: q["results"] for q in json.load(f)["queries"]}
    rows = []
    for max_batch in args.max_batch:
        log_path = os.path.join(work, f"serve_max_batch{max_batch}.log")
        with open(log_path, "w") as server_log:
            server = retrieve_py(["serve", "--index_dir", index_dir, "--port", 0, "--max_batch", max_batch],
                                 server_log)
        try:
            host, port = served_url(log_path, server)
            for clients in args.clients:
                row = dict(run_level(host, port, clients, args.searches, queries, expected), max_batch=max_batch)
                log("bench_serve", f"max_batch {max_batch}, {clients} clients: {row['per_s']:.1f} searches/s, p50 "
                                   f"{row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms, mean batch "
                                   f"{row['mean_batch']:.1f}, {row['wrong']} wrong answers")
                rows.append(row)
        finally:
            server.terminate()
            server.wait(30)
    setup = {"argv": " ".join(argv if argv is not None else sys.argv[1:]), "count": len(listed), "load": load,
             "checkpoint": "untrained (seed 1)" if not args.ckpt_path else os.path.basename(ckpt)}
    write_report(args.output, report(rows, setup))
    log("bench_serve", f"written {args.output}")
    wrong = sum(row["wrong"] for row in rows)
    if wrong:
        raise SystemExit(f"{wrong} answers differed from retrieve.py search's")


if __name__ == "__main__":
    main()
