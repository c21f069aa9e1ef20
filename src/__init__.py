"""metric_learn: deep metric learning for image retrieval on MindSpore."""
# Process-wide settings (oneDNN dispatch, OpenBLAS kernel, glog) before anything loads numpy or mindspore.
import src.runtime.env  # noqa: F401
