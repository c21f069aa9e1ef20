"""The fine-tuning variants: each changes what its name says and nothing else of the recipe, and train.py accepts
it; the table's change is measured from the softmax start."""

import pytest

import train
from bench import bench_finetune
from src.runtime.cli import load_stage_config


def _config(name):
    _, loss, epochs, options = bench_finetune.VARIANTS[name]
    args = train.parse_args(["--loss_name", loss, "--dataset_path", "data", *options])
    return load_stage_config(args)


def test_with_option_replaces_or_appends():
    assert bench_finetune.with_option(["--a", "1", "--b", "2"], "--a", "3") == ["--a", "3", "--b", "2"]
    assert bench_finetune.with_option(["--a", "1"], "--c", "4") == ["--a", "1", "--c", "4"]


@pytest.mark.parametrize("name, changed", [
    ("quadruplet-batch-lr0.01", {"mining": "batch", "lr_max": 0.01}),
    ("quadruplet-anchor-lr0.01", {"lr_max": 0.01}),
    ("quadruplet-anchor-frozen-bn", {"freeze_bn": True}),
    ("quadruplet-anchor-k2", {"samples_each_class": 2}),
])
def test_each_quadruplet_variant_differs_from_the_recipe_in_its_keys_only(name, changed):
    recipe, variant = _config(bench_finetune.learning.RECIPE), _config(name)
    assert recipe["mining"] == "anchor" and recipe["lr_max"] == 0.03 and recipe["samples_each_class"] == 5
    differing = {key for key in set(recipe) | set(variant) if recipe.get(key) != variant.get(key)}
    assert differing == set(changed)
    assert all(variant[key] == value for key, value in changed.items())


def test_every_variant_is_a_valid_stage():
    for name in bench_finetune.VARIANTS:
        cfg = _config(name)
        assert cfg["batch_size"] == 60, name  # the same batch size: the same images per step


def test_markdown_change_is_from_the_start():
    def rows(*recalls):
        return [{"recall_at_1": f"{r:.4f}", "map_at_r": f"{r / 2:.4f}"} for r in recalls]

    table = bench_finetune.markdown("h", rows(0.4, 0.5), {"v": ("q", rows(0.45, 0.53))})
    assert "Recall@1 0.5000, MAP@R 0.2500" in table
    assert "| v | q | 0.4500, 0.5300 | 0.2650 | +0.0300 | +0.0150 |" in table
