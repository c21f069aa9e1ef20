"""Image transforms, HxWx3 uint8 RGB in, 3xSxS float32 out: the training augmentation and the evaluation resize.

They are plain OpenCV/numpy functions (not mindspore.dataset.vision ops): their randomness comes from the
generator they are given (src/data/dataset.py seeds it from the sampler's per-sample key), and the evaluation
transform can be checked against an independent OpenCV reference.

Evaluation default: resize the short side to `image_size`, then crop the centre square (`resize="crop"`, keeps
the aspect ratio); `"squash"` resizes to image_size x image_size like the seed did.
"""
import cv2
import numpy as np

EVAL_RESIZE_MODES = ("crop", "squash")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
INTERPOLATION = cv2.INTER_CUBIC


def normalize_chw(image):
    """ImageNet mean/std normalisation of an RGB uint8 image, HWC -> CHW float32."""
    # Transposing the uint8 image first and working in place is ~4x faster than the float HWC way.
    chw = np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32)
    chw -= IMAGENET_MEAN[:, None, None]
    chw /= IMAGENET_STD[:, None, None]
    return chw


def random_resized_crop_box(height, width, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts=10):
    """(top, left, h, w) of a random crop covering `scale` of the area with aspect ratio in `ratio`.

    Falls back to the largest centred crop with the closest allowed ratio when 10 draws miss.
    """
    area = height * width
    log_ratio = (np.log(ratio[0]), np.log(ratio[1]))
    for _ in range(attempts):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = np.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(np.sqrt(target * aspect)))
        h = int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_transform(image, size, rng, hflip=True, crop_scale_min=0.08):
    """RandomResizedCrop(size, scale (crop_scale_min, 1), ratio (3/4, 4/3), bicubic), random h-flip, normalise."""
    top, left, h, w = random_resized_crop_box(image.shape[0], image.shape[1], rng, scale=(crop_scale_min, 1.0))
    crop = cv2.resize(image[top:top + h, left:left + w], (size, size), interpolation=INTERPOLATION)
    if hflip and rng.random() < 0.5:
        crop = crop[:, ::-1]
    return normalize_chw(crop)


def eval_transform(image, size, resize="crop"):
    """"crop": short side to `size`, then the centre size x size; "squash": straight to size x size."""
    if resize == "squash":
        return normalize_chw(cv2.resize(image, (size, size), interpolation=INTERPOLATION))
    if resize != "crop":
        raise ValueError(f"eval_resize must be one of {EVAL_RESIZE_MODES}, got {resize!r}")
    height, width = image.shape[:2]
    scale = size / min(height, width)
    new_h = max(size, int(round(height * scale)))
    new_w = max(size, int(round(width * scale)))
    resized = cv2.resize(image, (new_w, new_h), interpolation=INTERPOLATION)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return normalize_chw(resized[top:top + size, left:left + size])
