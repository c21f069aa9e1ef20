"""Configuration: YAML files in src/configs/, per-device overrides, then `key=value` overrides.

Resolution order: common.yaml -> <stage>.yaml (may add keys) -> device_overrides of both for the
chosen device -> common.yaml's dataset_defaults for the `dataset` key (the keys the stage has) ->
command-line overrides. Only the first two may introduce keys; anything later
naming an unknown key, or giving a value of the wrong type, is an error. A key renamed since an earlier version
(RENAMED_KEYS) is still read, at every step, under its new name, with one deprecation line: a config.yaml saved
by an earlier run loads, and its old command-line override works.
"""
import os

import yaml

from src.runtime.atomic_file import atomic_path
from src.runtime.log import get_logger

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
COMMON_FILE = os.path.join(CONFIG_DIR, "common.yaml")
DEVICES = ("Ascend", "GPU", "CPU")
OVERRIDES_KEY = "device_overrides"
DATASET_KEY = "dataset_defaults"
DEFAULT_RECALL_KS = "1,10,100,1000"
# Earlier name -> (name, {earlier value: value}).
RENAMED_KEYS = {"cpu_conv": ("cpu_kernels", {"onednn": "native", "mindspore": "mindspore"})}


def dataset_defaults():
    """{dataset: {key: value}} of common.yaml's dataset_defaults (the benchmarks' class_num and recall_ks)."""
    return {name: dict(values or {}) for name, values in (_read_yaml(COMMON_FILE).get(DATASET_KEY) or {}).items()}


class ConfigError(ValueError):
    """A configuration file or override is invalid."""


class Config(dict):
    """A dict whose keys can also be read as attributes (cfg.batch_size)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None


def stage_config_path(loss_name):
    return os.path.join(CONFIG_DIR, f"{loss_name}.yaml")


def _read_yaml(path):
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
    return data


def _check_type(key, old, new, origin):
    if isinstance(old, bool) or isinstance(new, bool):
        ok = isinstance(old, bool) and isinstance(new, bool)
    elif isinstance(old, float):
        if isinstance(new, str):  # PyYAML reads "1e-3" (no dot) as a string
            try:
                new = float(new)
            except ValueError:
                pass
        ok = isinstance(new, (int, float))
        new = float(new) if ok else new
    else:
        ok = isinstance(new, type(old))
    if not ok:
        raise ConfigError(f"{origin}: {key} must be {type(old).__name__} (like {old!r}), got {new!r}")
    return new


def _renamed(updates, origin):
    """`updates` with every key of RENAMED_KEYS under its new name and value, each logged as deprecated."""
    result = {}
    for key, value in updates.items():
        if key not in RENAMED_KEYS:
            result[key] = value
            continue
        new_key, values = RENAMED_KEYS[key]
        if new_key in updates:
            raise ConfigError(f"{origin}: {key} is the earlier name of {new_key}; give {new_key} only")
        result[new_key] = values.get(value, value)
        mapping = ", ".join(f"{old} -> {new}" for old, new in values.items())
        get_logger().warning("%s: %s is now %s (%s): %s: %s read as %s: %s", origin, key, new_key, mapping, key,
                             value, new_key, result[new_key])
    return result


def _apply(cfg, updates, origin, allow_new):
    updates = _renamed(updates, origin)
    for key, value in updates.items():
        if key not in cfg:
            if not allow_new:
                known = ", ".join(sorted(cfg))
                raise ConfigError(f"{origin}: unknown key {key!r}; known keys: {known}")
            cfg[key] = value
        else:
            cfg[key] = _check_type(key, cfg[key], value, origin)


def parse_overrides(items):
    """Turn ["batch_size=8", "hflip=false"] into a dict; values are parsed as YAML scalars."""
    result = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            result[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: cannot parse the value: {err}") from err
    return result


def load_config(loss_name=None, device_target="Ascend", config_path=None, overrides=None):
    """Resolve the configuration for a stage and device.

    loss_name picks src/configs/<loss_name>.yaml unless config_path is given; when both are given
    they must agree. overrides: a dict, or a list of "key=value" strings.
    """
    if device_target not in DEVICES:
        raise ConfigError(f"unknown device_target {device_target!r}; expected one of {', '.join(DEVICES)}")
    if config_path is None:
        if loss_name is None:
            raise ConfigError("either loss_name or config_path is needed")
        config_path = stage_config_path(loss_name)
        if not os.path.isfile(config_path):
            stages = sorted(f[:-5] for f in os.listdir(CONFIG_DIR)
                            if f.endswith(".yaml") and f != "common.yaml")
            raise ConfigError(f"unknown loss_name {loss_name!r}; expected one of {', '.join(stages)}")
    common, stage = _read_yaml(COMMON_FILE), _read_yaml(config_path)
    common = dict(common)
    dataset_defaults = common.pop(DATASET_KEY, None) or {}
    cfg = Config()
    device_updates = []
    for path, data in ((COMMON_FILE, common), (config_path, stage)):
        data = dict(data)
        per_device = data.pop(OVERRIDES_KEY, None) or {}
        unknown_devices = set(per_device) - set(DEVICES)
        if unknown_devices:
            raise ConfigError(f"{path}: {OVERRIDES_KEY} names unknown device(s) {sorted(unknown_devices)}")
        _apply(cfg, data, path, allow_new=True)
        origin = f"{path} ({OVERRIDES_KEY}.{device_target})"
        device_updates.append((origin, per_device.get(device_target) or {}))
    for origin, updates in device_updates:
        _apply(cfg, updates, origin, allow_new=False)
    if "loss_name" not in cfg:
        raise ConfigError(f"{config_path}: no loss_name")
    if loss_name is not None and cfg.loss_name != loss_name:
        raise ConfigError(f"{config_path} is a config for loss_name={cfg.loss_name!r}, not {loss_name!r}")
    updates = (overrides if isinstance(overrides, dict) else parse_overrides(overrides)) if overrides else {}
    if "loss_name" in updates:
        raise ConfigError("loss_name cannot be overridden; choose the stage with --loss_name")
    if "dataset" in cfg:
        dataset = str(updates.get("dataset", cfg["dataset"]))
        if dataset not in dataset_defaults:
            raise ConfigError(f"unknown dataset {dataset!r}; expected one of {', '.join(sorted(dataset_defaults))}")
        own = {k: v for k, v in (dataset_defaults[dataset] or {}).items() if k in cfg}
        _apply(cfg, own, f"{COMMON_FILE} ({DATASET_KEY}.{dataset})", allow_new=False)
    if updates:
        _apply(cfg, updates, "override", allow_new=False)
    cfg["device_target"] = device_target
    cfg["config_file"] = os.path.abspath(config_path)
    return cfg


def save_config(cfg, path):
    """Write the resolved config as YAML, atomically (a reader never sees half a file); creates the folder."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(dict(cfg), f, sort_keys=True)
