"""bench/bench_retrieval.py on a small gallery: its generator has the structure it claims, and a run writes the table
with its targets (the measured run itself is bench/results/retrieval_results.md)."""
import numpy as np
import pytest

from bench import bench_retrieval


def test_the_gallery_is_category_product_photo_and_repeatable():
    a = np.concatenate(list(bench_retrieval.clustered_chunks(2048, 256)))
    b = np.concatenate(list(bench_retrieval.clustered_chunks(2048, 256)))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    sim = a @ a.T
    index = np.arange(len(a))
    product, category = index // 8, index // 1024
    same_product = (product[:, None] == product[None]) & ~np.eye(len(a), dtype=bool)
    same_category = (category[:, None] == category[None]) & (product[:, None] != product[None])
    assert sim[same_product].mean() == pytest.approx(0.89, abs=0.03)
    assert sim[same_category].mean() == pytest.approx(0.66, abs=0.03)
    assert abs(sim[category[:, None] != category[None]].mean()) < 0.05


def test_a_small_run_writes_the_table_and_the_targets(tmp_path):
    pytest.importorskip("faiss")
    output = tmp_path / "retrieval.md"
    bench_retrieval.main(["--sizes", "3000", "--dims", "64", "--build_images", "0", "--output", str(output)])
    text = output.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| 3,000 | 64 |"))
    assert len(row.split("|")) == 15
    assert "exact <= 1.2x faiss flat's time at every size:" in text and "exact's top-10 ids equal faiss flat's: True" \
        in text
    assert "with AVX-512" in text or "AVX2" in text or "cores" in text
