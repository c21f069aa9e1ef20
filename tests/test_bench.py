"""The training benchmark's bookkeeping: variant parsing, the summary and its ratios, the per-operator grouping.

The measurements themselves need PyTorch (a benchmark-only dependency) and minutes of CPU; these tests check
the arithmetic that turns raw step times into the published table, against values worked out by hand.
"""
import numpy as np
import pytest

from bench import bench_train, profile_ops


def test_parse_variant_modifiers():
    spec = bench_train.parse_variant("ms+jemalloc+jit=O1+threads=3+workers=1+env:FOO=bar")
    assert spec["framework"] == "ms" and spec["jemalloc"] == "tuned" and spec["jit"] == "O1"
    assert spec["threads"] == 3 and spec["workers"] == 1 and spec["env"] == {"FOO": "bar"}
    assert bench_train.parse_variant("torch+jemalloc-default+passive")["env"] == {"OMP_WAIT_POLICY": "PASSIVE"}
    with pytest.raises(ValueError, match="must start with 'ms' or 'torch'"):
        bench_train.parse_variant("tf+jemalloc")
    with pytest.raises(ValueError, match="malformed modifier 'jit=O1'"):
        bench_train.parse_variant("torch+jit=O1")  # a MindSpore-only option
    with pytest.raises(ValueError, match="malformed modifier 'threads=two'"):
        bench_train.parse_variant("ms+threads=two")


def _train_result(variant, steps, cpu, config="train64b33"):
    return {"variant": variant, "config": config, "image_size": 64, "batch": 33, "step_times": steps,
            "cycle_times": steps, "cpu_times": cpu}


def test_summary_medians_and_ratio_to_the_fastest_torch_variant():
    results = [
        _train_result("ms", [1.0, 1.2, 1.1], [2.0, 2.0, 2.2]),
        _train_result("ms", [1.3, 0.9, 1.4], [2.1, 2.3, 2.4]),  # second round
        _train_result("torch", [0.9, 0.8, 1.0], [1.8, 1.6, 1.7]),
        _train_result("torch+jemalloc", [0.7, 0.6, 0.8], [1.5, 1.2, 1.4]),
    ]
    variants = ["ms", "torch", "torch+jemalloc"]
    summary = bench_train.summarize(results, ["train64b33"], variants)["train64b33"]
    assert summary["ms"]["median_s"] == pytest.approx(np.median([1.0, 1.2, 1.1, 1.3, 0.9, 1.4]))  # 1.15
    assert summary["ms"]["round_medians"] == pytest.approx([1.1, 1.3])
    assert summary["ms"]["min_s"] == pytest.approx(0.9)
    assert summary["ms"]["runs"] == 2
    table = bench_train.format_tables({"train64b33": summary}, variants)
    row = next(line for line in table.splitlines() if line.startswith("| train 64²"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # median table: ms 1.15 s against the faster torch variant (jemalloc, 0.7 s) -> 1.64
    assert cells[1].startswith("1.15 s (1.10–1.30)") and cells[3].startswith("0.70 s")
    assert cells[-1] == f"{1.15 / 0.7:.2f}"


def test_eval_rows_report_images_per_second():
    result = {"variant": "ms", "config": "eval224b32", "image_size": 224, "batch": 32, "cycle_times": [2.0, 4.0],
              "cpu_times": [3.0, 3.0], "images": 64, "total_s": 8.0}
    summary = bench_train.summarize([result], ["eval224b32"], ["ms"])
    assert summary["eval224b32"]["ms"]["end_to_end_images_s"] == [8.0]
    table = bench_train.format_tables(summary, ["ms"])
    assert "| extract 224², batch 32 | 10.7 img/s |" in table  # 32 images / median 3.0 s


def test_the_best_backend_is_compared_with_the_best_torch_variant():
    assert bench_train.parse_variant("ms+openvino+threads=2")["engine"] == "openvino"
    with pytest.raises(ValueError, match="malformed modifier 'onnxruntime'"):
        bench_train.parse_variant("torch+onnxruntime")
    results = [{"variant": v, "config": "eval64b32", "image_size": 64, "batch": 32, "cycle_times": [t, t],
                "cpu_times": [t, t], "images": 64, "total_s": 2 * t}
               for v, t in (("ms", 0.4), ("ms+onnxruntime", 0.1), ("ms+openvino", 0.16), ("torch", 0.2))]
    variants = ["ms", "ms+onnxruntime", "ms+openvino", "torch"]
    table = bench_train.format_tables(bench_train.summarize(results, ["eval64b32"], variants), variants)
    head = next(line for line in table.splitlines() if line.startswith("| configuration"))
    row = next(line for line in table.splitlines() if line.startswith("| extract 64²"))
    cells = dict(zip([c.strip() for c in head.strip("|").split("|")], [c.strip() for c in row.strip("|").split("|")],
                     strict=True))
    assert cells["ms / best torch"] == "2.00" and cells["ms+openvino / best torch"] == "0.80"
    assert cells["best backend / best torch"] == "0.50 (ms+onnxruntime)"


def test_operator_kinds_partition_the_profiled_time():
    ms_ops = {"Conv2D": 300.0, "Conv2DBackpropInput": 400.0, "Conv2DBackpropFilter": 330.0,
              "Custom:OneDnnConv2d": 30.0, "Custom:OneDnnConv2d grad": 40.0, "BatchNorm": 7.0,
              "Custom:CpuBatchNorm2d": 6.0, "Custom:CpuBatchNorm2d grad": 12.0, "BatchNormGrad": 2.0,
              "Custom:CpuMaxPool2d": 1.0, "Custom:CpuMaxPool2d grad": 0.5, "MaxPoolGrad": 2.0,
              "ReLU": 10.0, "ReluGrad": 15.0, "ApplyMomentum": 40.0, "AddN": 20.0, "Mul": 9.0, "Custom:?": 4.0,
              "Tile": 5.0}
    kinds = profile_ops.by_kind({"per_op_ms": ms_ops}, "ms")
    assert kinds["convolution forward + backward"] == 1100.0  # MindSpore's Conv2D ops and cpu_kernels native's
    assert kinds["batch norm forward"] == 13.0 and kinds["batch norm backward"] == 14.0
    assert kinds["max pool forward + backward"] == 3.5
    assert kinds["ReLU forward + backward"] == 25.0 and kinds["optimizer (momentum, weight decay)"] == 73.0
    assert kinds["everything else"] == 5.0
    assert sum(kinds.values()) == pytest.approx(sum(ms_ops.values()))
    torch_kinds = profile_ops.by_kind({"per_op_ms": {"aten::convolution_backward": 500.0,
                                                     "aten::mkldnn_convolution": 200.0, "aten::empty": 3.0}}, "torch")
    assert torch_kinds["convolution forward + backward"] == 700.0 and torch_kinds["everything else"] == 3.0


def test_custom_kernels_are_named_by_their_cell():
    root = "Default/network-WithLossCell/_backbone-ResNet50/layer1-SequentialCell/0-Bottleneck"
    assert profile_ops.custom_op_kind("Custom", f"{root}/conv2-OneDnnConv2d/Custom-op7") == "Custom:OneDnnConv2d"
    assert (profile_ops.custom_op_kind("Custom", f"Gradients/{root}/bn1-CpuBatchNorm2d/Grad_Custom/Custom-op30")
            == "Custom:CpuBatchNorm2d grad")
    assert (profile_ops.custom_op_kind("Custom", f"{root}/down_sample_layer-SequentialCell/1-CpuBatchNorm2d/"
                                                 "Custom-op9") == "Custom:CpuBatchNorm2d")
    assert profile_ops.custom_op_kind("ReLU", f"{root}/relu-ReLU/ReLU-op3") == "ReLU"
    assert profile_ops.custom_op_kind("Custom", "Default/Custom-op0") == "Custom:?"  # the fused momentum update


def test_the_precision_table_compares_the_fastest_of_each_precision(monkeypatch):
    assert bench_train.parse_variant("ms+openvino+precision=int8")["precision"] == "int8"
    with pytest.raises(ValueError, match=r"\+precision=bf16 needs an engine"):
        bench_train.parse_variant("ms+precision=bf16")
    monkeypatch.setattr(bench_train, "fp32_peak_gflops", lambda: (100.0, "a made-up CPU"))
    monkeypatch.setattr(bench_train, "peak_images_per_second", lambda size: 40.0)
    results = [{"variant": v, "config": "eval224b32", "image_size": 224, "batch": 32, "cycle_times": [t, t],
                "cpu_times": [t, t], "images": 64, "total_s": 2 * t}
               for v, t in (("ms", 3.2), ("ms+openvino", 1.6), ("ms+onnxruntime", 2.0),
                            ("ms+openvino+precision=bf16", 0.8), ("ms+openvino+precision=int8", 0.4),
                            ("ms+onnxruntime+precision=int8", 0.5), ("torch", 1.28))]
    variants = [r["variant"] for r in results]
    table = bench_train.precision_table(bench_train.summarize(results, ["eval224b32"], variants), variants)
    rows = [line for line in table.splitlines() if line.startswith("| extract")]
    # fastest fp32: openvino, 20 img/s; torch 25 img/s; peak 40 img/s
    assert rows == ["| extract 224², batch 32 | fp32 | ms+openvino | 20.0 | 1.00 | 0.80 | 0.50 |",
                    "| extract 224², batch 32 | bf16 | ms+openvino+precision=bf16 | 40.0 | 2.00 | 1.60 | 1.00 |",
                    "| extract 224², batch 32 | int8 | ms+openvino+precision=int8 | 80.0 | 4.00 | 3.20 | 2.00 |"]
    assert "a made-up CPU = 100.0 GFLOP/s" in table
    assert bench_train.precision_table(bench_train.summarize(results[:3], ["eval224b32"], variants[:3]),
                                       variants[:3]) == ""
