"""What the CPU could do at most in float32, and what one ResNet-50 image costs: the yardstick of extraction speed.

    fp32_peak_gflops()      # cores x clock x float32 FLOPs per cycle of the widest vector unit
    resnet50_macs(224)      # multiply-accumulates of one image's features (4.09 G at 224 px)

The peak assumes two FMA units of the CPU's widest vectors per core (AVX-512: 2 x 16 lanes x 2 FLOPs = 64 FLOPs
per cycle; AVX2: 32), the clock /proc/cpuinfo reports (a virtual machine's nominal clock; turbo not counted). An
int8 or bf16 engine can run above it: its units do more than 64 of its operations per cycle (VNNI, AMX).
"""
import math
import os

from src.runtime import env as runtime_env

STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # (width, blocks); each block's output is 4 x width
EXPANSION = 4


def _conv(size, cin, cout, kernel):
    return size * size * cin * cout * kernel * kernel


def resnet50_macs(image_size):
    """Multiply-accumulates of the ResNet-50 v1.5 backbone on one image (convolutions; "same" padding, so a stride 2
    layer's output side is ceil(side / 2)); BatchNorm, ReLU, additions and pooling are not counted."""
    side = math.ceil(image_size / 2)
    macs = _conv(side, 3, 64, 7)
    side = math.ceil(side / 2)  # max pooling
    cin = 64
    for stage, (width, blocks) in enumerate(STAGES):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            out = math.ceil(side / stride)
            macs += _conv(side, cin, width, 1) + _conv(out, width, width, 3) + _conv(out, width, EXPANSION * width, 1)
            if block == 0:
                macs += _conv(out, cin, EXPANSION * width, 1)
            cin, side = EXPANSION * width, out
    return macs


def cpu_mhz():
    """The clock /proc/cpuinfo reports for the first CPU (MHz), None where it says nothing."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":")[1])
    except OSError:
        pass
    return None


def fp32_peak_gflops(cores=None):
    """(GFLOP/s, how it was computed) of float32 at peak on `cores` (default: every core), None if the clock is
    unknown."""
    cores = cores or os.cpu_count()
    mhz = cpu_mhz()
    if mhz is None:
        return None, "clock unknown"
    lanes = 16 if runtime_env.has_avx512(runtime_env.cpu_flags()) else 8
    per_cycle = 2 * lanes * 2
    gflops = cores * mhz / 1000 * per_cycle
    return gflops, f"{cores} cores x {mhz / 1000:.2f} GHz x {per_cycle} FLOPs/cycle (2 FMA units x {lanes} lanes)"


def peak_images_per_second(image_size, cores=None):
    """Images per second of the ResNet-50 backbone at the float32 peak (2 FLOPs per multiply-accumulate)."""
    gflops, _ = fp32_peak_gflops(cores)
    return None if gflops is None else gflops * 1e9 / (2 * resnet50_macs(image_size))
