"""Shared command-line pieces: --recall_ks parsing (eval.py and postprocess.py), config overrides."""
import argparse

import pytest

from src.evaluation.metrics import DEFAULT_KS
from src.runtime.cli import (
    add_common_arguments,
    add_recall_ks_argument,
    config_ks,
    load_stage_config,
    make_parser,
    parse_ks,
    parse_with_overrides,
)
from src.runtime.config import load_config


@pytest.mark.parametrize("text, expected", [("1", (1,)), ("1,10", (1, 10)), ("5,1,1000", (5, 1, 1000))])
def test_parse_ks(text, expected):
    assert parse_ks(text) == expected


@pytest.mark.parametrize("text", ["", "0,1", "1,,10", "a", "-1", "1.5"])
def test_parse_ks_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError, match="positive integers separated by commas"):
        parse_ks(text)


def test_recall_ks_argument_default_and_error(capsys):
    parser = argparse.ArgumentParser(prog="postprocess.py")
    add_recall_ks_argument(parser)
    assert parser.parse_args([]).recall_ks is None  # the dataset's (config recall_ks)
    assert parser.parse_args(["--recall_ks", "1,2,4,8"]).recall_ks == (1, 2, 4, 8)
    assert config_ks(load_config("triplet", "CPU").recall_ks) == tuple(DEFAULT_KS)
    with pytest.raises(ValueError, match="recall_ks: expected positive integers"):
        config_ks("1,,2")
    with pytest.raises(SystemExit):
        parser.parse_args(["--recall_ks", "1,x"])
    assert "argument --recall_ks: expected positive integers" in capsys.readouterr().err


def test_the_earlier_cpu_conv_override_still_works(caplog):
    parser = make_parser("test")
    add_common_arguments(parser)
    parser.add_argument("--loss_name", default="triplet")
    caplog.set_level("WARNING", logger="metric_learn")
    for argv, value in ((["--cpu_conv", "onednn"], "native"), (["--cpu_conv=mindspore"], "mindspore")):
        caplog.clear()
        assert load_stage_config(parse_with_overrides(parser, argv)).cpu_kernels == value
        lines = [r.getMessage() for r in caplog.records if "cpu_conv" in r.getMessage()]
        assert len(lines) == 1, lines
        assert lines[0].startswith("override: cpu_conv is now cpu_kernels (onednn -> native, mindspore -> mindspore)")
