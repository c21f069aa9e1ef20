"""Config resolution: the seed's values per stage and device, CPU variants, overrides, errors."""
import pytest
import yaml

from src.runtime.config import ConfigError, load_config, parse_overrides, save_config


@pytest.mark.parametrize("device", ["Ascend", "GPU", "CPU"])
def test_softmax_stage_has_the_seed_values(device):
    cfg = load_config("softmax", device)
    assert (cfg.class_num, cfg.batch_size, cfg.epoch_size) == (5184, 80, 30)
    assert (cfg.lr_decay_mode, cfg.lr_init, cfg.lr_end, cfg.lr_max) == ("steps", 0.01, 0.0001, 0.3)
    assert (cfg.momentum, cfg.weight_decay, cfg.warmup_epochs) == (0.9, 0.0001, 0)
    assert (cfg.save_checkpoint, cfg.save_checkpoint_epochs, cfg.keep_checkpoint_max) == (True, 10, 1)
    assert cfg.label_smooth_factor == 0.1


@pytest.mark.parametrize("loss", ["triplet", "quadruplet"])
def test_metric_stages_on_ascend_have_the_seed_values(loss):
    cfg = load_config(loss, "Ascend")
    assert (cfg.batch_size, cfg.epoch_size, cfg.lr_decay_mode, cfg.lr_max) == (60, 30, "const", 0.0001)
    assert (cfg.loss_scale, cfg.amp_level, cfg.margin) == (1024, "O2", 0.1)


def test_gpu_variants_follow_the_seed_gpu_runs():
    t, q = load_config("triplet", "GPU"), load_config("quadruplet", "GPU")
    assert (t.batch_size, t.epoch_size) == (9, 4)
    assert (q.batch_size, q.epoch_size, q.lr_max, q.samples_each_class) == (20, 40, 0.0001, 2)


@pytest.mark.parametrize("loss", ["softmax", "arcmargin", "triplet", "quadruplet"])
def test_cpu_variant_is_fp32_without_loss_scaling(loss):
    cfg = load_config(loss, "CPU")
    assert (cfg.amp_level, cfg.loss_scale, cfg.device_target) == ("O0", 1, "CPU")
    assert cfg.batch_size == load_config(loss, "Ascend").batch_size


def test_overrides_are_typed_and_unknown_keys_rejected():
    cfg = load_config("triplet", "CPU", overrides=["batch_size=12", "lr_max=1e-3", "hflip=false",
                                                   "momentum=1"])
    assert (cfg.batch_size, cfg.lr_max, cfg.hflip, cfg.momentum) == (12, 0.001, False, 1.0)
    assert isinstance(cfg.momentum, float)
    with pytest.raises(ConfigError, match="unknown key 'batchsize'"):
        load_config("triplet", "CPU", overrides=["batchsize=12"])
    with pytest.raises(ConfigError, match="unknown key 'class_num'"):
        load_config("triplet", "CPU", overrides={"class_num": 10})  # not a triplet-stage key
    with pytest.raises(ConfigError, match="batch_size must be int"):
        load_config("triplet", "CPU", overrides=["batch_size=abc"])
    with pytest.raises(ConfigError, match="hflip must be bool"):
        load_config("triplet", "CPU", overrides=["hflip=1"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides(["batch_size"])
    with pytest.raises(ConfigError, match="loss_name cannot be overridden"):
        load_config("triplet", "CPU", overrides=["loss_name=softmax"])


def test_unknown_stage_device_and_mismatched_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown loss_name 'contrastive'"):
        load_config("contrastive", "CPU")
    with pytest.raises(ConfigError, match="unknown device_target 'TPU'"):
        load_config("triplet", "TPU")
    user = tmp_path / "mine.yaml"
    user.write_text("loss_name: quadruplet\nsamples_each_class: 4\nbatch_size: 16\n")
    cfg = load_config(None, "CPU", config_path=str(user))
    assert (cfg.loss_name, cfg.samples_each_class, cfg.batch_size) == ("quadruplet", 4, 16)
    with pytest.raises(ConfigError, match="not 'triplet'"):
        load_config("triplet", "CPU", config_path=str(user))
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss_name: triplet\ndevice_overrides:\n  CPU:\n    bogus: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*unknown key 'bogus'"):
        load_config(None, "CPU", config_path=str(bad))
    broken = tmp_path / "broken.yaml"
    broken.write_text("loss_name: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(None, "CPU", config_path=str(broken))


def test_save_config_round_trips(tmp_path):
    cfg = load_config("quadruplet", "CPU", overrides=["batch_size=8"])
    path = tmp_path / "out" / "config.yaml"
    save_config(cfg, str(path))
    assert yaml.safe_load(path.read_text()) == dict(cfg)
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temporary left behind


def test_a_config_saved_with_cpu_conv_loads_as_cpu_kernels(tmp_path, caplog):
    """A config.yaml saved by a run before cpu_kernels (`cpu_conv: onednn`) loads, so --resume of that run works."""
    old = dict(load_config("triplet", "CPU"))
    del old["cpu_kernels"]
    old["cpu_conv"] = "onednn"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old))
    with caplog.at_level("WARNING", logger="metric_learn"):
        cfg = load_config("triplet", "CPU", config_path=str(path))
    assert cfg.cpu_kernels == "native" and "cpu_conv" not in cfg
    lines = [r.getMessage() for r in caplog.records if "cpu_conv" in r.getMessage()]
    assert len(lines) == 1
    assert "cpu_conv is now cpu_kernels (onednn -> native, mindspore -> mindspore)" in lines[0]
    assert str(path) in lines[0]
    old["cpu_conv"] = "mindspore"
    path.write_text(yaml.safe_dump(old))
    assert load_config("triplet", "CPU", config_path=str(path)).cpu_kernels == "mindspore"


def test_cpu_conv_and_cpu_kernels_together_are_refused():
    with pytest.raises(ConfigError, match="cpu_conv is the earlier name of cpu_kernels"):
        load_config("triplet", "CPU", overrides=["cpu_conv=onednn", "cpu_kernels=native"])


def test_a_failed_save_config_keeps_the_previous_file(tmp_path):
    path = tmp_path / "config.yaml"
    save_config({"batch_size": 8}, str(path))
    before = path.read_bytes()
    with pytest.raises(yaml.representer.RepresenterError):
        save_config({"a": 1, "b": object()}, str(path))  # safe_dump raises on the object
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
