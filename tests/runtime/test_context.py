"""The run context's CPU threads: set through MindSpore 2.10's threads_num, which its CPU kernels read."""
import os
import subprocess
import sys

from tests.paths import ROOT

# In a fresh process: MindSpore takes the setting once per process, and this test's worker must keep its own.
CHECK = """
import src.runtime.env
from mindspore._c_expression import RuntimeConf
from src.runtime.context import set_cpu_threads
conf = RuntimeConf.get_instance()
print("before", conf.is_op_threads_num_configured())
set_cpu_threads(1)
print("after", conf.is_op_threads_num_configured())
set_cpu_threads(1)
try:
    set_cpu_threads(2)
except ValueError as err:
    print("refused:", err)
"""


def test_cpu_threads_reach_mindspores_kernel_setting_once_per_process():
    """set_context(runtime_num_threads) no longer changes the kernels' threads in 2.10 (measured; see
    set_cpu_threads), so the setting must land in RuntimeConf's op threads; asking again for the same number is
    harmless, another number is refused with both numbers named (MindSpore itself would raise a RuntimeError)."""
    proc = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT, GLOG_v="3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["before False", "after True"]
    assert lines[2] == ("refused: MindSpore's CPU threads are set to 1 in this process already and cannot change "
                        "to 2")
    assert "runtime_num_threads" not in proc.stderr  # no deprecated setting on the way


SECOND_SETUP = """
import src.runtime.env
import mindspore as ms
import numpy as np
from src.runtime.context import init_context
init_context("CPU")
ms.ops.add(ms.Tensor(np.ones(2)), ms.Tensor(np.ones(2)))  # the runtime starts
init_context("CPU")  # a second set-up on the same device, as a server opening an index after a search does
print("second set-up on the running device: ok")
init_context("CPU", device_id=3)
"""


def test_a_second_set_up_on_the_running_device_passes_and_another_device_is_refused():
    """MindSpore refuses set_device once its runtime has started; the same device again is no change (a process that
    opens a second Retriever, or a test after another on its worker), another one is still an error."""
    proc = subprocess.run([sys.executable, "-c", SECOND_SETUP], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT, GLOG_v="3"))
    assert "second set-up on the running device: ok" in proc.stdout, proc.stderr[-2000:]
    assert proc.returncode != 0 and "can not be modified" in proc.stderr
