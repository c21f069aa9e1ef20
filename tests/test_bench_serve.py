"""bench/bench_serve.py's report: a row per (max_batch, clients) with its rate, latencies and checked answers (the
measured run itself is bench/results/serve_results.md)."""
from bench import bench_serve


def test_the_report_has_a_row_per_level_and_says_where_it_ran():
    rows = [{"max_batch": 16, "clients": 16, "searches": 800, "seconds": 4.0, "per_s": 200.0, "p50_ms": 75.2,
             "p99_ms": 140.6, "mean_batch": 14.03, "wrong": 0},
            {"max_batch": 1, "clients": 4, "searches": 200, "seconds": 8.0, "per_s": 25.0, "p50_ms": 150.0,
             "p99_ms": 170.0, "mean_batch": 1.0, "wrong": 2}]
    text = bench_serve.report(rows, {"argv": "--searches 50", "count": 570, "checkpoint": "untrained (seed 1)",
                                    "load": 2.7})
    assert "| 16 | 16 | 800 | 200.0 | 75 | 141 | 14.0 | 800/800 |" in text
    assert "| 1 | 4 | 200 | 25.0 | 150 | 170 | 1.0 | 198/200 |" in text
    assert "`python bench/bench_serve.py --searches 50` (the machine shared with other work: load average 2.7 " in text
    assert "570 images" in text
    assert "AVX-512" in text and "cores" in text
