"""Choosing the device: `ms.set_device`, with one readable error where the device's libraries are missing.

MindSpore 2.10's wheel carries a plugin per device (lib/plugin/libmindspore_gpu.so.<CUDA version>,
libmindspore_ascend.so.<n>); a plugin whose libraries (CUDA and cuDNN, or the CANN toolkit and driver) the
dynamic loader cannot find is not loaded, and `set_device` then raises "Unsupported device target ..." with
MindSpore's diagnostics and a C++ source location. Here that becomes DeviceUnavailableError: which device was
asked for and which libraries are missing (read with `ldd` from the plugin itself).
"""
import glob
import os
import re
import subprocess

PLUGINS = {"GPU": "libmindspore_gpu.so.*", "Ascend": "libmindspore_ascend.so.*"}
WHAT_TO_INSTALL = {
    "GPU": "CUDA 11.1 or 11.6 with cuDNN 8 (the CUDA versions its GPU plugins are built for; docs/devices.md "
           "'GPU')",
    "Ascend": "the Ascend driver and CANN toolkit, then source CANN's set_env.sh (docs/devices.md 'Ascend')",
}
_UNSUPPORTED = "Unsupported device target"
_NOT_FOUND = re.compile(r"^\s*(\S+) => not found", re.M)
_CANNOT_OPEN = re.compile(r"(\S+\.so[.\d]*): cannot open shared object file")


class DeviceUnavailableError(RuntimeError):
    """The device asked for cannot be used by this MindSpore on this machine."""


def plugin_files(device_target, package_dir=None):
    """The wheel's plugin libraries for a device, sorted by name (CUDA 11.1 before 11.6)."""
    if package_dir is None:
        import mindspore

        package_dir = os.path.dirname(mindspore.__file__)
    pattern = PLUGINS.get(device_target)
    return sorted(glob.glob(os.path.join(package_dir, "lib", "plugin", pattern))) if pattern else []


def missing_libraries(plugin):
    """Libraries `plugin` needs that the dynamic loader cannot find (by `ldd`), in ldd's order; [] if ldd fails."""
    try:
        out = subprocess.run(["ldd", plugin], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return list(dict.fromkeys(_NOT_FOUND.findall(out)))


def unavailable_message(device_target, mindspore_message, plugins, missing_of):
    """The one-line explanation: device asked for, libraries missing, what to install.

    `missing_of(plugin)` lists a plugin's missing libraries; of several plugins (one per CUDA version) the one
    missing the fewest is reported (the newest on a tie). Without plugins or ldd's answer, the libraries
    MindSpore's own loader message names are used.
    """
    found = [(plugin, missing_of(plugin)) for plugin in plugins]
    found = [(plugin, libs) for plugin, libs in found if libs]
    if found:
        plugin, libs = min(reversed(found), key=lambda item: len(item[1]))
        source = f"needed by MindSpore's {os.path.basename(plugin)}"
    else:
        libs = list(dict.fromkeys(_CANNOT_OPEN.findall(mindspore_message)))
        source = "named by MindSpore's loader"
    import mindspore

    what = f"{', '.join(libs)} not found ({source})" if libs else "its libraries are not loaded"
    return (f"--device_target {device_target}: MindSpore {mindspore.__version__} cannot use {device_target} on "
            f"this machine: {what}; install {WHAT_TO_INSTALL.get(device_target, 'its libraries')}")


def set_device(device_target, device_id=None):
    """`ms.set_device(device_target[, device_id])`; DeviceUnavailableError if this machine lacks the device."""
    import mindspore as ms

    try:
        if device_id is None:
            ms.set_device(device_target)
        else:
            ms.set_device(device_target, int(device_id))
    except RuntimeError as err:
        if _already_running_on(ms, err, device_target, device_id):
            return  # a second set-up in one process (a server opening another index, a test after another)
        if _UNSUPPORTED not in str(err) or device_target == "CPU":
            raise
        message = unavailable_message(device_target, str(err), plugin_files(device_target), missing_libraries)
        raise DeviceUnavailableError(message) from None


def _already_running_on(ms, err, device_target, device_id):
    """Whether MindSpore refused a set_device because its runtime already runs on that very device."""
    if "runtime has been initialized" not in str(err) or ms.get_context("device_target") != device_target:
        return False
    return device_id is None or int(ms.get_context("device_id")) == int(device_id)
