"""Our own CPU kernels for training (convolution, BatchNorm + ReLU, max pool, momentum) and the cells that run them.

The one switch is config key `cpu_kernels`: `native` (the default) or `mindspore`. The time each kernel saves:
bench/results/train_results.md.

What each replaces, and why
  conv.py, conv.cc            OneDnnConv2d for nn.Conv2d (Conv2D and its two gradients). MindSpore 2.10's CPU
                              Conv2D hands oneDNN plain NCHW tensors, so oneDNN runs a GEMM-based kernel, on
                              AVX-512 CPUs a reference one; asked for "any" layout, the same oneDNN picks the direct
                              JIT kernels on blocked layouts that PyTorch gets. Three AOT custom ops reorder the
                              tensors in, run that kernel and reorder the result back.
  batchnorm.py, batchnorm.cc  CpuBatchNorm2d for nn.BatchNorm2d (BatchNorm, BatchNormGrad) and the ReLU after it,
                              in training with batch statistics: MindSpore's CPU BatchNormGrad took twice PyTorch's
                              time, and each ReLU is one more pass over the tensor each way. The moving statistics
                              are updated in place, because an Assign of each (106 in ResNet-50) took graph
                              compilation 4-5 s on CPU. In inference, or frozen, it is nn.BatchNorm2d's own.
  maxpool.py, maxpool.cc      CpuMaxPool2d for nn.MaxPool2d (MaxPool, MaxPoolGrad), which took 3x PyTorch's time.
  momentum.py, momentum.cc    FusedMomentum for nn.Momentum (ApplyMomentum with its weight-decay and loss-scale
                              Mul / AddN): 2-4 kernels per parameter become one kernel for all parameters, equal
                              to nn.Momentum's update bit for bit.
  onednn_api.h, thread_pool.h the part of oneDNN's C API conv.cc calls (no oneDNN headers needed); the thread pool
                              the kernels share.
  build.py                    builds the library and resolves the choice (`resolve`).
  layers.py                   the layer classes a network is built with for that choice (`network_layers`:
                              src/models asks here); src/training/optimizer.py picks FusedMomentum by it.
Each cell keeps its MindSpore counterpart's parameters, names and checkpoints.

When it is built: at the first use in a process, all .cc files into one library, cpu_kernels-<hash>.so, with the
system's C++ compiler (g++ or CXX, about 2 s), in cpu_kernels/ of the cache folder (METRIC_LEARN_CACHE, else
~/.cache/metric_learn), beside a private copy of MindSpore's libdnnl.so.3 (with a CPU dispatch of its own:
build.py). Both are named by a hash of what they are built from, so later runs, other venvs and concurrent
processes reuse them.

How it falls back: `resolve` gives MindSpore's own ops (nn.Conv2d, nn.BatchNorm2d + nn.ReLU, nn.MaxPool2d,
nn.Momentum) with `cpu_kernels: mindspore`, when the device is not CPU, and where the library cannot be built (no
C++ compiler, no libdnnl.so.3 in MindSpore, not Linux x86-64), the last with one warning saying why.

Who never sees it: GPU and Ascend runs, and every export (export.py's MindIR / ONNX / AIR, and the ONNX that
eval.py's onnxruntime / openvino backends extract with) is built with MindSpore's ops.
"""
