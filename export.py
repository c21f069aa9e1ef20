"""Export the backbone (2048-d feature, inference mode) to MINDIR, ONNX or AIR; ONNX also quantized to int8."""
import src.runtime.env  # noqa: F401  (first: CPU dispatch and BLAS kernel, before numpy and mindspore load)

# isort: split
import os
import tempfile

from src.deploy.calibration import add_calibration_arguments, read_calibration
from src.deploy.export import EXPORT_FORMATS, build_feature_net, check_export_format, export_file_path, export_network
from src.deploy.quantize import TOOLS, calibration_batch, quantize_onnx
from src.losses.registry import LOSS_NAMES
from src.models.resnet import head_options
from src.runtime.cli import add_common_arguments, load_stage_config, make_parser, parse_with_overrides, run
from src.runtime.context import init_context
from src.runtime.log import get_logger

logger = get_logger()


def parse_args(argv=None):
    parser = make_parser("Export the feature network for deployment. The input size is the config's "
                         "image_size (e.g. --image_size 224).")
    add_common_arguments(parser)
    parser.add_argument("--device_id", type=int, default=None, help="device (default $DEVICE_ID or 0)")
    parser.add_argument("--ckpt_file", required=True, help="checkpoint of any stage (its backbone is exported)")
    parser.add_argument("--file_name", default=None,
                        help="output file; the format's suffix is added (default resnet50, or resnet50_int8)")
    parser.add_argument("--file_format", default="MINDIR", type=str.upper, choices=EXPORT_FORMATS,
                        help="AIR needs --device_target Ascend")
    parser.add_argument("--batch_size", type=int, default=1,
                        help="batch of the exported input (not the config's training batch_size)")
    parser.add_argument("--l2_normalize", action="store_true", help="append x / sqrt(sum(x^2) + eps) to the output")
    parser.add_argument("--quantize", default=None, choices=("int8",),
                        help="ONNX only: quantize after training, calibrated on --calibration_list")
    parser.add_argument("--backend", default="openvino", choices=tuple(TOOLS),
                        help="--quantize: the engine the int8 model is for, whose own tool quantizes it (openvino: "
                             "NNCF; onnxruntime: onnxruntime.quantization); either engine runs either file")
    parser.add_argument("--dataset_path", default=None, help="int8: the folder the calibration list is in")
    add_calibration_arguments(parser)
    parser.add_argument("--loss_name", default="triplet", choices=LOSS_NAMES,
                        help="stage whose config supplies image_size")
    return parse_with_overrides(parser, argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_stage_config(args)
    check_export_format(args.file_format, args.device_target)  # refuse AIR before any work
    calibration = None
    if args.quantize:  # the calibration set is checked before the network is built
        if args.file_format != "ONNX":
            raise ValueError(f"--quantize int8 writes an ONNX file: use --file_format ONNX (got {args.file_format})")
        if not args.dataset_path or not os.path.isdir(args.dataset_path):
            raise ValueError(f"--quantize int8 needs --dataset_path, the folder of the calibration images (got "
                             f"{args.dataset_path})")
        calibration = read_calibration(args.dataset_path, args.calibration_list, args.calibration_size,
                                       eval_resize=cfg.eval_resize, what="--quantize int8")
    file_name = args.file_name or ("resnet50_int8" if args.quantize else "resnet50")
    init_context(args.device_target, args.device_id)
    net = build_feature_net(args.ckpt_file, args.l2_normalize, cfg.backbone_padding, head_options(cfg))
    if calibration is None:
        path = export_network(net, file_name, args.file_format, args.batch_size, cfg.image_size)
    else:
        with tempfile.TemporaryDirectory(prefix="metric_learn_export_") as work:
            fp32 = export_network(net, os.path.join(work, "fp32"), "ONNX", args.batch_size, cfg.image_size)
            batches = calibration.batches(calibration_batch(cfg.image_size), cfg.image_size)
            path = quantize_onnx(fp32, os.path.abspath(export_file_path(file_name, "ONNX")), batches,
                                 calibration.key, args.backend)
    shape = f"{args.batch_size}x3x{cfg.image_size}x{cfg.image_size}"
    output = "L2-normalised feature" if args.l2_normalize else "feature"
    what = f"{args.file_format} int8 ({args.backend}'s tool, calibrated on {len(calibration.paths)} images of " \
        f"{calibration.list_file})" if calibration else args.file_format
    logger.info("exported %s (input float32 %s, output %s (%d, %d)) from %s",
                what, shape, output, args.batch_size, net.backbone.out_dim, args.ckpt_file)
    print(f"exported: {path}")


if __name__ == "__main__":
    run(main)
