"""The demo dataset: an instance-retrieval set cut from the photos bundled with scikit-image.

Every "product" (class) is one region of one photo; its images are views of that region as a
second photographer would take them: another crop and scale, a small rotation, other light and
colour, some blur. As in Stanford Online Products, train and test products are disjoint while
their super-classes are shared: the photo is the super-class, and `test_regions` of each photo's
grid x grid regions (drawn with the seed) are test products, the others training products.
(Regions border each other, so a view can show a strip of a neighbouring product.)
The set is written in SOP's layout (Ebay_train.txt / Ebay_test.txt with the header
`image_id class_id super_class_id path`, images under `<photo>_final/`), so the same list
preparation (src/data/sop_lists.py) and loaders run on it. Deterministic from the seed.
"""
import os

import cv2
import numpy as np

# Photos shipped inside the scikit-image wheel (no download); gray ones are used as 3-channel.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "stereo_motorcycle", "camera", "brick", "grass", "gravel", "moon", "coins", "text", "page", "clock",
          "cell", "colorwheel")
HEADER = "image_id class_id super_class_id path\n"


def load_photo(name):
    """An RGB uint8 photo from skimage.data."""
    try:
        from skimage import data
    except ImportError as err:
        raise ImportError("the demo photos come from scikit-image: pip install -r requirements-demo.txt") from err
    image = getattr(data, name)()
    if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
        image = image[0]
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    image = image[..., :3]
    if image.dtype != np.uint8:
        image = (255 * (image.astype(np.float64) / max(float(image.max()), 1e-9))).astype(np.uint8)
    return np.ascontiguousarray(image)


def product_boxes(height, width, grid):
    """(cx, cy, side) of a grid x grid tiling of the photo's largest centred square area."""
    side = min(height, width) // grid
    top, left = (height - side * grid) // 2, (width - side * grid) // 2
    return [(left + (j + 0.5) * side, top + (i + 0.5) * side, side) for i in range(grid) for j in range(grid)]


def render_view(photo, box, size, rng, rotation=25.0, shift=0.12, zoom=(0.75, 1.15), mirror=False):
    """One view of a product: jittered crop/scale/rotation, colour and brightness change, blur.

    The camera turns by up to `rotation` degrees either way, moves by up to `shift` of the region's
    side and frames `zoom` (low, high) times the region; `mirror` shows the product mirrored. The
    light and colour change is what an untrained backbone is most sensitive to, and what training on
    views can learn to ignore.
    """
    cx, cy, side = box
    scale = size / (side * rng.uniform(*zoom))
    angle = rng.uniform(-rotation, rotation)
    cx += rng.uniform(-shift, shift) * side
    cy += rng.uniform(-shift, shift) * side
    if mirror:
        photo = photo[:, ::-1]
        cx = photo.shape[1] - 1 - cx
    matrix = cv2.getRotationMatrix2D((cx, cy), angle, scale)
    matrix[:, 2] += (size / 2 - cx, size / 2 - cy)
    view = cv2.warpAffine(photo, matrix, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
    hsv = cv2.cvtColor(view, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-8, 8)) % 180
    hsv[..., 1] *= rng.uniform(0.6, 1.4)
    hsv[..., 2] = hsv[..., 2] * rng.uniform(0.65, 1.35) + rng.uniform(-20, 20)
    view = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)
    sigma = rng.uniform(0, 1.2)
    if sigma > 0.3:
        view = cv2.GaussianBlur(view, (0, 0), sigma)
    return view


def make_photo_dataset(root, grid=3, views=5, size=64, seed=0, photos=PHOTOS, test_regions=3, flip=False,
                       **viewpoint):
    """Write the demo set under `root`. `flip`: mirror each view with probability 1/2; `viewpoint`:
    render_view's rotation, shift and zoom.

    Returns {"Ebay_train.txt": (images, products), "Ebay_test.txt": (images, products)}.
    """
    if not 0 <= test_regions <= grid * grid:
        raise ValueError(f"test_regions must be in [0, grid * grid = {grid * grid}], got {test_regions}")
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    rows = {"Ebay_train.txt": [], "Ebay_test.txt": []}
    class_id = 0
    image_id = 0
    for super_id, name in enumerate(photos, start=1):
        photo = load_photo(name)
        folder = f"{name}_final"
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        boxes = product_boxes(photo.shape[0], photo.shape[1], grid)
        test_boxes = set(rng.choice(len(boxes), test_regions, replace=False).tolist())
        for b, box in enumerate(boxes):
            split = "Ebay_test.txt" if b in test_boxes else "Ebay_train.txt"
            class_id += 1
            for v in range(views):
                image_id += 1
                rel = f"{folder}/{class_id}_{v}.JPG"
                mirror = flip and rng.random() < 0.5
                view = render_view(photo, box, size, rng, mirror=mirror, **viewpoint)
                cv2.imwrite(os.path.join(root, rel), cv2.cvtColor(view, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 92])
                rows[split].append(f"{image_id} {class_id} {super_id} {rel}\n")
    summary = {}
    for name, lines in rows.items():
        with open(os.path.join(root, name), "w") as f:
            f.write(HEADER + "".join(lines))
        summary[name] = (len(lines), len(lines) // views)
    return summary


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m src.data.demo_photos",

                                     description="Write the scikit-image photo demo set in SOP's layout.")
    parser.add_argument("--output_path", required=True)
    parser.add_argument("--grid", type=int, default=3, help="products per photo: grid x grid regions")
    parser.add_argument("--test_regions", type=int, default=3, help="regions per photo that are test products")
    parser.add_argument("--views", type=int, default=5, help="images per product")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rotation", type=float, default=25.0, help="views turn by up to this many degrees")
    parser.add_argument("--shift", type=float, default=0.12, help="views move by up to this part of the region")
    parser.add_argument("--zoom", type=float, nargs=2, default=(0.75, 1.15), metavar=("LOW", "HIGH"),
                        help="views frame LOW to HIGH times the region")
    parser.add_argument("--flip", action="store_true", help="mirror half of the views")
    args = parser.parse_args(argv)
    summary = make_photo_dataset(args.output_path, args.grid, args.views, args.size, args.seed,
                                 test_regions=args.test_regions, rotation=args.rotation, shift=args.shift,
                                 zoom=tuple(args.zoom), flip=args.flip)
    for name, (images, classes) in summary.items():
        print(f"{name}: {images} images of {classes} products")


if __name__ == "__main__":
    main()
