"""Image decoding into HxWx3 uint8 RGB, and finding or dropping the listed files that are missing or do not decode."""
import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from src.runtime.log import Progress, get_logger

logger = get_logger()
_BAD_PATHS_SHOWN = 5


# File types OpenCV's imread decodes in every build (a folder walk, retrieve.py index --image_dir, looks for these).
IMAGE_SUFFIXES = (".bmp", ".dib", ".jpeg", ".jpg", ".jpe", ".jp2", ".png", ".webp", ".pbm", ".pgm", ".ppm", ".pxm",
                  ".pnm", ".sr", ".ras", ".tiff", ".tif")
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


def load_image(path, where=None):
    """Decode an image file into an HxWx3 uint8 RGB array.

    Grayscale and palette images become 3 channels, alpha is dropped, 16-bit images are scaled to
    8 bits; EXIF orientation is applied. A missing or undecodable file raises FileNotFoundError /
    ValueError naming the path and `where` (the list's file:line).
    """
    if not os.path.isfile(path):
        raise image_not_found(path, where)
    # ANYDEPTH keeps 16 bits, ANYCOLOR keeps grayscale as one channel; unlike IMREAD_UNCHANGED
    # both still apply the EXIF orientation.
    return _to_rgb(cv2.imread(path, _DECODE_FLAGS), path, where)


def decode_image(data, name="image"):
    """load_image for the bytes of an image file (an upload): the same decoding and conversion; ValueError naming
    `name` if they do not decode."""
    buffer = np.frombuffer(bytes(data), np.uint8)
    return _to_rgb(cv2.imdecode(buffer, _DECODE_FLAGS) if buffer.size else None, name)


def _to_rgb(image, path, where=None):
    """An image as OpenCV decoded it (None: it did not) -> HxWx3 uint8 RGB."""
    listed = f" (listed at {where})" if where else ""
    if image is None or image.size == 0:
        raise ValueError(f"cannot decode image: {path}{listed}")
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"unsupported pixel type {image.dtype}: {path}{listed}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels in (1, 2):  # gray (+ alpha)
        return cv2.cvtColor(np.ascontiguousarray(image[:, :, 0]), cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_not_found(path, where=None, more=""):
    """The error of a listed image that is not there: its path, `where` (the list's file:line), then `more`."""
    listed = f" (listed at {where})" if where else ""
    return FileNotFoundError(f"image not found: {path}{listed}{more}")


def check_files_exist(images):
    """`images` if every listed file exists; else FileNotFoundError naming the first missing one with its list
    line (load_image's message) and how many more are missing. One stat per image (0.19 s for 59,551 files, SOP's
    training images): a missing file stops the run before it compiles, not when an epoch, maybe hours in, reaches
    it. Files that exist but do not decode are still found as they are read (or up front with skip_bad)."""
    missing = [i for i in range(len(images)) if not os.path.isfile(images.full_path(i))]
    if missing:
        first = missing[0]
        more = f"; {len(missing) - 1} more of its {len(images)} images are missing too" if len(missing) > 1 else ""
        raise image_not_found(images.full_path(first), images.where(first), more)
    return images


def find_bad_images(images, num_workers=2, progress_what="checking images"):
    """[(index, reason)] for every entry of `images` that is missing or does not decode."""
    def check(index):
        try:
            load_image(images.full_path(index), images.where(index))
        except (OSError, ValueError, cv2.error) as error:
            return index, str(error)
        return None

    progress = Progress(len(images), progress_what, logger, interval=30.0)
    bad = []
    # cv2.imread releases the GIL, so threads decode in parallel.
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        for result in pool.map(check, range(len(images)), chunksize=64):
            progress.update()
            if result is not None:
                bad.append(result)
    return bad


def drop_bad_images(images, num_workers=2):
    """`images` without its missing/undecodable files; logs how many were dropped and the first few."""
    bad = find_bad_images(images, num_workers)
    if not bad:
        return images
    for _, reason in bad[:_BAD_PATHS_SHOWN]:
        logger.warning("skipping %s", reason)
    more = f" (first {_BAD_PATHS_SHOWN} shown)" if len(bad) > _BAD_PATHS_SHOWN else ""
    logger.warning("skip_bad: dropped %d of %d images of %s%s", len(bad), len(images), images.list_file, more)
    if len(bad) == len(images):
        raise ValueError(f"{images.list_file}: none of its {len(images)} images can be decoded")
    keep = np.setdiff1d(np.arange(len(images)), [index for index, _ in bad])
    return images.subset(keep)
