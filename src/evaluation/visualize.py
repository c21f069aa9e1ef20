"""A picture of retrieval results: query images, each followed by its nearest neighbours.

Each row is one query (framed grey) and its top-k gallery images in order (framed green when
the neighbour has the query's class, red when not), with the neighbour's squared L2 distance
to the query on L2-normalised features (0 = same direction, 4 = opposite; equal to
2 - 2 * cosine similarity) written on it. Retrieval is leave-one-out as in src/evaluation/metrics.py: the
query is not its own neighbour, and exact ties go to the lower index.
"""
import os
from dataclasses import dataclass

import cv2
import numpy as np

from src.evaluation.metrics import unit_rows
from src.runtime.atomic_file import write_atomic

# RGB frame colours.
SAME_CLASS = (0, 170, 0)
OTHER_CLASS = (220, 0, 0)
QUERY = (150, 150, 150)
UNKNOWN_CLASS = (70, 110, 200)  # a neighbour of a query whose class is not known
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class GridLayout:
    """Pixel geometry of the picture: rows of (query, gap, k neighbours) under a caption strip."""

    rows: int
    top_k: int
    tile: int = 64       # image side inside a frame
    border: int = 3      # frame thickness
    spacing: int = 4     # between cells and around the picture
    query_gap: int = 12  # extra space between the query and its first neighbour
    caption: int = 18    # height of the caption strip on top

    @property
    def cell(self):
        """Side of a framed image."""
        return self.tile + 2 * self.border

    @property
    def width(self):
        return self.spacing + (self.top_k + 1) * (self.cell + self.spacing) + self.query_gap

    @property
    def height(self):
        return self.caption + self.spacing + self.rows * (self.cell + self.spacing)

    def cell_origin(self, row, column):
        """(y, x) of the top-left pixel of a framed image; column 0 is the query, 1..k the neighbours."""
        y = self.caption + self.spacing + row * (self.cell + self.spacing)
        x = self.spacing + column * (self.cell + self.spacing) + (self.query_gap if column else 0)
        return y, x


def choose_queries(num_items, num_queries=6, seed=0):
    """Indices of `num_queries` distinct items (all if there are fewer), drawn with `seed`, sorted."""
    if num_items < 1:
        raise ValueError(f"need at least one item to choose queries from, got {num_items}")
    count = min(int(num_queries), num_items)
    return np.sort(np.random.default_rng(seed).choice(num_items, size=count, replace=False))


def nearest_neighbours(features, query_indices, top_k=5, normalize=True):
    """Leave-one-out top-k of each query among all items.

    Returns (indices (Q, k) int64, squared L2 distances (Q, k) float32) on L2-normalised rows,
    nearest first, exact ties to the lower index; k is clipped to the N - 1 other items.
    normalize=False: the rows already are (l2_normalize_rows's output) and are used as given.
    """
    x = unit_rows(features, "features", normalize)
    query_indices = np.asarray(query_indices, np.int64).reshape(-1)
    if len(x) < 2:
        raise ValueError(f"leave-one-out retrieval needs at least 2 items, got {len(x)}")
    if query_indices.size and (query_indices.min() < 0 or query_indices.max() >= len(x)):
        raise ValueError(f"query indices must be in [0, {len(x)}), got {query_indices.tolist()}")
    k = min(int(top_k), len(x) - 1)
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    similarity = x[query_indices] @ x.T
    similarity[np.arange(len(query_indices)), query_indices] = -np.inf  # not its own neighbour
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    nearest = np.take_along_axis(similarity, order, axis=1)
    # |a - b|^2 = 2 - 2 a.b for unit vectors; clipped at 0 against rounding.
    return order, np.maximum(2.0 - 2.0 * nearest, 0.0).astype(np.float32)


def _fit_tile(image, side):
    """An RGB uint8 image scaled to fit side x side (aspect kept), centred on white."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"images must be HxWx3 uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    height, width = image.shape[:2]
    scale = side / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    tile = np.full((side, side, 3), BACKGROUND, np.uint8)
    top, left = (side - new_h) // 2, (side - new_w) // 2
    tile[top:top + new_h, left:left + new_w] = resized
    return tile


def _label_tile(tile, text):
    """Write `text` in white on a dark strip along the bottom of the tile (in place)."""
    scale, thickness = 0.35, 1
    (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, scale, thickness)
    strip = text_h + baseline + 3
    tile[-strip:] = (tile[-strip:] * 0.35).astype(np.uint8)
    x = max(1, (tile.shape[1] - text_w) // 2)
    cv2.putText(tile, text, (x, tile.shape[0] - baseline - 1), _FONT, scale, (255, 255, 255), thickness,
                cv2.LINE_AA)


def _put_caption(canvas, layout, text):
    """`text` in the caption strip, shrunk to the picture's width."""
    scale = 0.38
    width = cv2.getTextSize(text, _FONT, scale, 1)[0][0]
    if width > layout.width - 2 * layout.spacing:
        scale *= (layout.width - 2 * layout.spacing) / width
    cv2.putText(canvas, text, (layout.spacing, layout.caption - 5), _FONT, scale, TEXT, 1, cv2.LINE_AA)


def _put_cell(canvas, layout, row, column, tile, colour):
    y, x = layout.cell_origin(row, column)
    canvas[y:y + layout.cell, x:x + layout.cell] = colour
    b = layout.border
    canvas[y + b:y + b + layout.tile, x + b:x + b + layout.tile] = tile


def draw_retrievals(features, labels, images, root=None, num_queries=6, top_k=5, seed=0, tile=64, normalize=True):
    """The retrieval picture as an RGB uint8 array (layout: `GridLayout(rows, top_k, tile)`).

    Args:
        features: (N, d) features (normalised here unless normalize=False: already L2-normalised).
        labels: (N,) class labels; a neighbour is "right" (green) when its label is the query's.
        images: N items, each an HxWx3 uint8 RGB array or an image path (relative to `root`).
            Only the queries and their neighbours are read.
        num_queries, seed: how many queries, drawn by `choose_queries`.
        top_k: neighbours per query (clipped to N - 1).
    """
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(features) or len(images) != len(features):
        raise ValueError(f"features, labels and images must have one entry per item, got {len(features)}, "
                         f"{len(labels)} and {len(images)}")
    queries = choose_queries(len(labels), num_queries, seed)
    neighbours, distances = nearest_neighbours(features, queries, top_k, normalize)

    def read(index):
        return read_image(images[index], root)

    rows = [(read(query), [(read(index), f"{distance:.2f}", SAME_CLASS if labels[index] == labels[query]
                            else OTHER_CLASS) for index, distance in zip(neighbours[row], distances[row], strict=True)])
            for row, query in enumerate(queries)]
    return draw_rows(rows, "query | top-{k}, squared L2 distance; green: same class, red: other", tile)


def read_image(item, root=None):
    """An item of a picture: an HxWx3 uint8 RGB array as it is, or an image path (relative to `root`) decoded."""
    if isinstance(item, (str, os.PathLike)):
        from src.data.decoding import load_image  # imports MindSpore's dataset module; only needed for paths

        return load_image(os.path.join(root, item) if root else item)
    return item


def draw_rows(rows, caption, tile=64):
    """A picture of rows `(query image, [(neighbour image, text, frame colour), ...])` under `caption` (its "{k}"
    becomes the number of neighbours a row holds at most): the query framed grey, each neighbour framed in its
    colour with its text written on it."""
    layout = GridLayout(rows=len(rows), top_k=max((len(hits) for _, hits in rows), default=0), tile=int(tile))
    canvas = np.full((layout.height, layout.width, 3), BACKGROUND, np.uint8)
    _put_caption(canvas, layout, caption.format(k=layout.top_k))
    for row, (query, hits) in enumerate(rows):
        query_tile = _fit_tile(query, layout.tile)
        _label_tile(query_tile, "query")
        _put_cell(canvas, layout, row, 0, query_tile, QUERY)
        for column, (image, text, colour) in enumerate(hits, start=1):
            neighbour_tile = _fit_tile(image, layout.tile)
            _label_tile(neighbour_tile, text)
            _put_cell(canvas, layout, row, column, neighbour_tile, colour)
    return canvas


def save_image(path, image):
    """Write an RGB uint8 image (PNG, JPEG, ... by the suffix) atomically; creates the folder."""
    suffix = os.path.splitext(path)[1].lower()
    if not suffix:
        raise ValueError(f"{path}: no file suffix (such as .png) to choose the image format from")
    params = [cv2.IMWRITE_PNG_COMPRESSION, 9] if suffix == ".png" else []
    try:
        ok, data = cv2.imencode(suffix, cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR), params)
    except cv2.error:
        ok = False
    if not ok:
        raise ValueError(f"{path}: OpenCV cannot write images of type {suffix!r}")
    write_atomic(path, data.tobytes())
