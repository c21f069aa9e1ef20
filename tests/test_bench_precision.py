"""The precision benchmark's arithmetic: the change from fp32 with its paired interval, the cosines, the targets;
and the float32 peak's ResNet-50 cost, against the figure torchvision publishes."""
import numpy as np
import pytest

from bench import bench_precision, cpu_peak


def unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_resnet50_macs_match_torchvisions_published_cost():
    # torchvision's ResNet50_Weights lists 4.09 GFLOPS (multiply-accumulates) at 224 px, the 2048 x 1000
    # classifier (0.002 G) included; a 64 px image has (64 / 224)^2 of the work, up to the rounding of odd sides
    assert cpu_peak.resnet50_macs(224) / 1e9 == pytest.approx(4.09 - 0.002, abs=0.005)
    assert cpu_peak.resnet50_macs(64) / cpu_peak.resnet50_macs(224) == pytest.approx((64 / 224) ** 2, rel=0.02)


def test_the_change_from_fp32_is_measured_query_by_query():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 4)
    centres = unit(rng.standard_normal((10, 16)))
    fp32 = unit(centres[labels] + 0.3 * rng.standard_normal((40, 16)))
    same = fp32 + 1e-7
    worse = unit(fp32 + 2.0 * rng.standard_normal((40, 16)))
    runs = {("openvino", "fp32"): fp32, ("openvino", "bf16"): same, ("openvino", "int8"): worse}
    rows = bench_precision.compare({key: (features, labels, 1.0) for key, features in runs.items()})
    assert set(rows) == {"openvino fp32", "openvino bf16", "openvino int8"}
    assert "change" not in rows["openvino fp32"]
    bf16, int8 = rows["openvino bf16"], rows["openvino int8"]
    assert bf16["change"]["recall@1"][0] == 0 and bf16["met"] and bf16["cosine"][0] == pytest.approx(1, abs=1e-5)
    assert int8["change"]["map@r"][0] < -0.005 and not int8["met"] and int8["cosine"][0] < 0.9
    low, high = int8["change"]["map@r"][1:]
    assert low <= int8["change"]["map@r"][0] <= high
    table = bench_precision.format_table(rows, "t", "python bench/bench_precision.py")
    assert "| openvino int8 |" in table and "**no**" in table and "| reference | reference |" in table


def test_a_variant_is_engine_colon_precision():
    assert bench_precision.parse_variant("onnxruntime:int8") == ("onnxruntime", "int8")
    for bad in ("onnxruntime-int8", "mindspore:fp32", "openvino:fp16"):
        with pytest.raises(Exception, match="a variant is ENGINE:PRECISION"):
            bench_precision.parse_variant(bad)


def test_a_report_keeps_one_section_per_title(tmp_path):
    path = tmp_path / "r.md"
    assert bench_precision.merge_section(str(path), "### a\n\nfirst") == "### a\n\nfirst"
    path.write_text("### a\n\nfirst\n\n### b\n\nsecond\n")
    assert bench_precision.merge_section(str(path), "### a\n\nnew") == "### a\n\nnew\n\n### b\n\nsecond"
    assert bench_precision.merge_section(str(path), "### c\n\nthird") == \
        "### a\n\nfirst\n\n### b\n\nsecond\n\n### c\n\nthird"
