"""src/runtime/env.py: oneDNN's CPU dispatch and OpenBLAS's kernel, chosen once per process, the user's value kept."""
import os
import subprocess
import sys

import pytest

from src.data.demo_data import make_retrieval_dataset
from src.runtime import env as runtime_env
from tests.paths import ROOT

AVX512 = frozenset({"fma", "avx", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"})
AVX512_BF16 = AVX512 | {"avx512_bf16"}
AVX2 = frozenset({"fma", "avx", "avx2"})
CHOSEN_VARS = (*runtime_env.ONEDNN_VARS, runtime_env.BLAS_VAR, runtime_env.MARKER)


def configured(environ, flags, machine="x86_64"):
    env = dict(environ)
    messages = runtime_env.configure(env, flags, machine)
    return env, messages


def test_avx512_cpu_caps_onednn_at_avx2_and_names_the_blas_kernel():
    env, messages = configured({}, AVX512_BF16)
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert env["OPENBLAS_CORETYPE"] == "Cooperlake"
    assert set(env[runtime_env.MARKER].split(",")) == {"ONEDNN_MAX_CPU_ISA", "OPENBLAS_CORETYPE"}
    assert "reference kernels" in messages[0]
    assert configured({}, AVX512)[0]["OPENBLAS_CORETYPE"] == "SkylakeX"


def test_avx2_cpu_and_other_architectures_keep_the_libraries_defaults():
    for flags, machine in ((AVX2, "x86_64"), (AVX512, "aarch64"), (frozenset(), "x86_64")):
        env, messages = configured({}, flags, machine)
        assert "ONEDNN_MAX_CPU_ISA" not in env and runtime_env.MARKER not in env, (flags, machine)
        assert "default" in messages[0]
    assert "OPENBLAS_CORETYPE" not in configured({}, AVX2)[0]


@pytest.mark.parametrize("name", runtime_env.ONEDNN_VARS)
def test_a_value_the_user_set_always_wins(name):
    env, messages = configured({name: "AVX512_CORE", "OPENBLAS_CORETYPE": "Haswell"}, AVX512_BF16)
    assert env[name] == "AVX512_CORE"
    assert [n for n in runtime_env.ONEDNN_VARS if n in env] == [name]  # ONEDNN_ would override DNNL_
    assert env["OPENBLAS_CORETYPE"] == "Haswell"
    assert runtime_env.MARKER not in env
    assert f"{name}=AVX512_CORE set by the user" in messages[0]
    assert "set by the user" in messages[1]


def test_a_child_process_tells_inherited_choices_from_the_users():
    parent, _ = configured({}, AVX512_BF16)
    child, messages = configured(parent, AVX512_BF16)
    assert child == parent and "set by the user" not in messages[0]
    # A user value set in the child's environment after ours still wins, and ours is withdrawn.
    child, messages = configured(dict(parent, DNNL_MAX_CPU_ISA="AVX512_CORE"), AVX512_BF16)
    assert "ONEDNN_MAX_CPU_ISA" not in child and child["DNNL_MAX_CPU_ISA"] == "AVX512_CORE"
    assert child[runtime_env.MARKER] == "OPENBLAS_CORETYPE"
    # On a CPU that needs no setting, an inherited one of ours is removed.
    child, _ = configured(parent, AVX2)
    assert not any(name in child for name in CHOSEN_VARS)


def test_onednn_uncapped_lifts_our_cap_only_inside_the_block():
    ours, _ = configured({}, AVX512_BF16)
    before = dict(ours)
    with runtime_env.onednn_uncapped(ours):
        assert "ONEDNN_MAX_CPU_ISA" not in ours and ours["OPENBLAS_CORETYPE"] == "Cooperlake"
    assert ours == before
    users, _ = configured({"ONEDNN_MAX_CPU_ISA": "AVX2"}, AVX512_BF16)
    with runtime_env.onednn_uncapped(users):
        assert users["ONEDNN_MAX_CPU_ISA"] == "AVX2"  # the user's cap stays
    with pytest.raises(KeyError), runtime_env.onednn_uncapped(ours):
        raise KeyError("an error inside the block")
    assert ours == before


def test_cpu_flags_reads_the_first_processor(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert runtime_env.cpu_flags(str(info)) == {"fpu", "avx2", "fma"}
    assert runtime_env.cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_cpu_model_reads_the_first_processor(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU @ 2.0GHz \nflags\t: fpu\n\nmodel name\t: Other\n")
    assert runtime_env.cpu_model(str(info)) == "Some CPU @ 2.0GHz"
    assert runtime_env.cpu_model(str(tmp_path / "missing")) == "unknown"


def test_weak_blas_kernel_warns_naming_the_variable():
    text = runtime_env.blas_kernel_warning("Prescott", AVX512_BF16, {})
    assert "OPENBLAS_CORETYPE=Cooperlake" in text and "'Prescott'" in text
    assert "OPENBLAS_CORETYPE=Haswell" in runtime_env.blas_kernel_warning("Nehalem", AVX2, {})
    assert runtime_env.blas_kernel_warning("SkylakeX", AVX512_BF16, {}) is None
    assert runtime_env.blas_kernel_warning("Zen", AVX2, {}) is None
    assert runtime_env.blas_kernel_warning("Haswell", AVX512, {"OPENBLAS_CORETYPE": "Haswell"}) is None


def test_this_process_blas_kernel_fits_this_cpu():
    flags = runtime_env.cpu_flags()
    if runtime_env.blas_kernel_for(flags) is None or os.environ.get(runtime_env.BLAS_VAR) and \
            runtime_env.BLAS_VAR not in os.environ.get(runtime_env.MARKER, ""):
        pytest.skip("no AVX2 on this CPU, or OPENBLAS_CORETYPE set by the environment")
    kernels = runtime_env.numpy_blas_kernels()
    assert kernels, "numpy's OpenBLAS is not visible to threadpoolctl"
    for kernel in kernels:
        assert runtime_env.blas_kernel_warning(kernel, flags, {}) is None, kernel


def test_onednn_verbose_parsing_and_reference_names():
    text = ("onednn_verbose,v1,info,oneDNN v3.10.1 (commit N/A)\n"
            "onednn_verbose,v1,primitive,exec,cpu,convolution,jit_uni_ncsp:conv+ref:any,forward_training,"
            "src:f32::blocked:abcd::f0,,alg:convolution_direct,mb8_ic64oc64_ih32oh32kh3sh1,1.5\n"
            "onednn_verbose,v1,primitive,exec,cpu,convolution,x64:gemm:jit,backward_data,src,,alg,mb8,0.1\n"
            "onednn_verbose,primitive,exec,cpu,pooling,simple_nchw:any,forward_training,src,,alg,mb8,0.1\n"
            "onednn_verbose,v1,primitive,create:cache_miss,cpu,convolution,ref:any,forward_training,src,,a,mb,0\n")
    found = runtime_env.onednn_primitives(text)
    assert found == {("convolution", "jit_uni_ncsp:conv+ref:any", "forward_training"): 1,
                     ("convolution", "x64:gemm:jit", "backward_data"): 1,
                     ("pooling", "simple_nchw:any", "forward_training"): 1}
    refs = [impl for impl in ("ref:any", "jit_uni_ncsp:conv+ref:any", "ref_int8:any", "x64:gemm:jit",
                              "brg_conv_fwd:avx512_core+prefer", "ncsp_bnorm:any") if
            runtime_env.is_reference_implementation(impl)]
    assert refs == ["ref:any", "jit_uni_ncsp:conv+ref:any", "ref_int8:any"]


@pytest.mark.slow
def test_training_and_extraction_run_no_reference_onednn_kernel(tmp_path):
    """train.py (one triplet epoch) and eval.py in subprocesses with ONEDNN_VERBOSE=1 and no dispatch variable
    set: every oneDNN primitive they execute must be a JIT/optimised one, on any x86 CPU."""
    data = make_retrieval_dataset(str(tmp_path / "data"), num_classes=4, per_class=3, test_per_class=2)
    env = {k: v for k, v in os.environ.items() if k not in CHOSEN_VARS}
    env.update(ONEDNN_VERBOSE="1", GLOG_v="3", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    small = ["--image_size", "32", "--hflip", "false", "--num_parallel_workers", "1", "--eval_batch_size", "6"]
    runs = {
        "train": [os.path.join(ROOT, "train.py"), "--loss_name", "triplet", "--dataset_path", data,
                  "--train_list", "train.txt", "--output_dir", str(tmp_path / "out"), "--batch_size", "6",
                  "--epoch_size", "1", "--save_checkpoint", "false", *small],
        "eval": [os.path.join(ROOT, "eval.py"), "--random_init", "--dataset_path", data, "--eval_list", "test.txt",
                 *small],
    }
    for what, args in runs.items():
        proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{what}: exit {proc.returncode}\n{(proc.stdout + proc.stderr)[-3000:]}"
        executed = runtime_env.onednn_primitives(proc.stdout + proc.stderr)
        kinds = {kind for kind, _, _ in executed}
        assert "convolution" in kinds, f"{what}: no oneDNN convolution seen in the verbose output"
        if what == "train":
            assert {prop for kind, _, prop in executed if kind == "convolution"} >= {"backward_data",
                                                                                       "backward_weights"}
        reference = {key: n for key, n in executed.items() if runtime_env.is_reference_implementation(key[1])}
        assert not reference, f"{what} ran oneDNN reference kernels (kind, implementation, pass: calls): {reference}"
