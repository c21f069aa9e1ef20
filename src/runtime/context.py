"""MindSpore run context: graph mode, device choice, the data-parallel group, and the CPU kernels' threads."""
import os

import mindspore as ms

from src.runtime.config import DEVICES
from src.runtime.devices import set_device


def init_context(device_target, device_id=None, distributed=False):
    """Set graph mode and the device; join the data-parallel group when `distributed`.

    device_id defaults to $DEVICE_ID (else 0) for standalone runs; distributed runs take the
    device of their local rank (set by msrun / the launcher). Returns (rank, group_size).
    """
    if device_target not in DEVICES:
        raise ValueError(f"unknown device_target {device_target!r}; expected one of {', '.join(DEVICES)}")
    ms.set_context(mode=ms.GRAPH_MODE)
    if not distributed:
        if device_id is None:
            device_id = int(os.environ.get("DEVICE_ID", "0"))
        set_device(device_target, int(device_id))
        return 0, 1
    from mindspore.communication import get_group_size, get_rank, init

    # No device id: under msrun (or a rank table) each process is given the device of its local rank.
    set_device(device_target)
    init()
    group_size = get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=group_size)
    return get_rank(), group_size


_cpu_threads = {"set": None}


def set_cpu_threads(threads):
    """The number of threads MindSpore's CPU kernels use, once per process (MindSpore refuses a second setting).

    MindSpore 2.10 takes it from device_context.cpu.op_tuning.threads_num. Its deprecated predecessor,
    set_context(runtime_num_threads=N), is still accepted (with a deprecation warning) but no longer changes them:
    an elementwise graph on 2 cores ran as fast with runtime_num_threads=1 as without it (15.9 s), and 18% slower
    with threads_num(1). Asking again for the same number is a no-op; another number is a ValueError."""
    threads = int(threads)
    if _cpu_threads["set"] is not None:
        if _cpu_threads["set"] != threads:
            raise ValueError(f"MindSpore's CPU threads are set to {_cpu_threads['set']} in this process already "
                             f"and cannot change to {threads}")
        return
    from mindspore.device_context.cpu import op_tuning

    op_tuning.threads_num(threads)
    _cpu_threads["set"] = threads
