"""The loss comparison's protocol: the validation split of the training classes, the choice of candidates, the table,
and a --quick run in which no test class reaches the hyper-parameter selection."""
import json
import os
import re
import subprocess
import sys

import pytest

from bench import bench_losses
from tests.paths import ROOT


def test_split_classes_is_a_seeded_partition():
    ids = [str(i) for i in range(1, 41)] * 3
    fit, val = bench_losses.split_classes(ids)
    assert len(val) == 10 and len(fit) == 30
    assert not set(fit) & set(val) and set(fit) | set(val) == set(ids)
    assert (fit, val) == bench_losses.split_classes(ids)  # seeded
    assert val != bench_losses.split_classes(ids, seed=1)[1]
    with pytest.raises(ValueError, match="cannot be split"):
        bench_losses.split_classes(["1", "2", "3"])


def _write_list(path, entries):
    path.write_text("".join(f"p/{class_id}_{view}.jpg {class_id}\n" for class_id, view in entries))


def test_write_split_holds_training_images_only_and_refuses_shared_class_ids(tmp_path):
    _write_list(tmp_path / "train.txt", [(c, v) for c in range(1, 13) for v in range(3)])
    _write_list(tmp_path / "test.txt", [(c, v) for c in range(13, 17) for v in range(3)])
    split = bench_losses.write_split(str(tmp_path))
    fit, val = (bench_losses.list_lines(str(tmp_path / name)) for name in ("fit.txt", "val.txt"))
    assert {c for c, _ in fit} == set(split["fit.txt"]) and {c for c, _ in val} == set(split["val.txt"])
    assert len(fit) + len(val) == 36 and len(val) == 3 * 3  # every training image in one of them
    _write_list(tmp_path / "test.txt", [(12, 0), (13, 0)])
    with pytest.raises(ValueError, match="validation split would hold test classes"):
        bench_losses.write_split(str(tmp_path))


def test_best_candidate_by_map_then_recall():
    results = [{"map@r": 0.20, "recall@1": 0.5}, {"map@r": 0.25, "recall@1": 0.4}, {"map@r": 0.25, "recall@1": 0.45}]
    assert bench_losses.best_candidate(results) == 2
    assert bench_losses.best_candidate(results[:2] + [dict(results[1])]) == 1  # a full tie: the first listed


def test_markdown_reports_mean_and_sample_std_over_seeds():
    runs = [{"recall@1": r, "map@r": m, "candidate": "--lr_max 0.01", "seconds": 10.0}
            for r, m in ((0.5, 0.2), (0.6, 0.3))]
    table = bench_losses.markdown("h", {"raw": {"recall@1": 0.3, "map@r": 0.1}},
                                  {"softmax": runs[:1]}, {"softmax": runs}, [1, 2])
    row = next(line for line in table.splitlines() if line.startswith("| softmax | --lr_max"))
    assert "0.5500 +- 0.0707" in row and "0.2500 +- 0.0707" in row  # std with ddof=1: 0.1 / sqrt(2)


@pytest.mark.slow
def test_quick_run_selects_on_training_classes_only(tmp_path):
    out = tmp_path / "losses"
    report = tmp_path / "losses.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_losses.py"), "--quick", "--losses",
                           "quadruplet", "--output-dir", str(out), "--json", str(report)],
                          capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = out / "data"
    test_classes = {c for c, _ in bench_losses.list_lines(str(data / "test.txt"))}
    train_classes = {c for c, _ in bench_losses.list_lines(str(data / "train.txt"))}
    commands = [json.loads((out / "select" / name / "command.json").read_text())
                for name in os.listdir(out / "select")]
    assert commands
    for command in commands:
        for name in (command["train_list"], command["eval_list"]):
            classes = {c for c, _ in bench_losses.list_lines(str(data / name))}
            assert classes and classes <= train_classes and not classes & test_classes, name
        args = command["args"]
        assert args[args.index("--train_list") + 1] == "fit.txt" and args[args.index("--eval_list") + 1] == "val.txt"
        # The start they fine-tune was itself trained on the fit classes only.
        assert os.path.dirname(os.path.dirname(args[args.index("--ckpt_path") + 1])) == str(out / "start")
    start_log = (out / "start" / "train.log").read_text()
    assert "fit.txt" in start_log and "test.txt" not in start_log
    result = json.loads(report.read_text())
    final = result["finals"]["quadruplet"][0]
    assert final["train_list"] == "train.txt" and final["eval_list"] == "test.txt"
    assert 0.0 <= final["recall@1"] <= 1.0
    # The report's numbers are the runs' own: each baseline what its tool printed on the test classes, the final
    # run's what its training logged after its last epoch.
    raw = next(name for name in result["baselines"] if name.startswith("raw pixels"))
    logs = {raw: "raw_pixels.log", "untrained backbone": "untrained.log",
            "the start (softmax on the fit classes)": "start_eval.log"}
    assert set(result["baselines"]) == set(logs)
    for name, log in logs.items():
        text = (out / log).read_text()
        printed = float(re.search(r"^eval_recall: ([0-9.]+)$", text, re.M).group(1))
        assert result["baselines"][name]["recall@1"] == printed, name
    for log in ("untrained.log", "start_eval.log"):
        assert f"eval data: {data / 'test.txt'}," in (out / log).read_text(), log
    logged = re.findall(r"epoch: \d+ eval_recall: ([0-9.]+) \(MAP@R ([0-9.]+)",
                        (out / final["name"] / "train.log").read_text())
    assert (final["recall@1"], final["map@r"]) == tuple(map(float, logged[-1]))
    assert set(result["split"]["val.txt"]) <= train_classes
