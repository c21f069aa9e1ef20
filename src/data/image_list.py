"""Image lists: "path label" files parsed into paths, contiguous labels and the line each entry came from."""
import os
import re
from dataclasses import dataclass

import numpy as np

_LABEL = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class ImageList:
    """A parsed "path label" list. labels are contiguous 0..C-1; class_ids[label] is the id in the file."""

    root: str
    list_file: str
    paths: tuple
    labels: np.ndarray
    class_ids: np.ndarray
    line_numbers: np.ndarray

    def __len__(self):
        return len(self.paths)

    @property
    def num_classes(self):
        return len(self.class_ids)

    @property
    def ids(self):
        """Each entry's class id as written in the file (labels are positions in class_ids)."""
        return self.class_ids[self.labels]

    def full_path(self, index):
        return os.path.join(self.root, self.paths[index])

    def where(self, index):
        """`list_file:line` of an entry, for error messages."""
        return f"{self.list_file}:{self.line_numbers[index]}"

    def subset(self, indices):
        """The entries at `indices`; the label mapping (class_ids) is kept as it is."""
        indices = np.asarray(indices, np.int64)
        return ImageList(self.root, self.list_file, tuple(self.paths[i] for i in indices),
                         self.labels[indices], self.class_ids, self.line_numbers[indices])


def read_image_list(list_file, root=None):
    """Parse a list of "relative/path class_id" lines (paths relative to `root`, default: the list's folder).

    Blank lines and a leading `image_id ...` header line are skipped. Class ids may be any integers;
    they are mapped to contiguous labels in increasing id order. Raises ValueError naming
    `file:line` for a malformed line or a non-integer label, and for a list without entries.
    """
    root = os.path.dirname(os.path.abspath(list_file)) if root is None else root
    paths, ids, lines = [], [], []
    first = True
    with open(list_file, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if first and fields[0] == "image_id":
                first = False
                continue
            first = False
            if len(fields) != 2:
                raise ValueError(f"{list_file}:{number}: expected 'path label', got {len(fields)} fields: "
                                 f"{line.strip()!r}")
            if not _LABEL.fullmatch(fields[1]):
                raise ValueError(f"{list_file}:{number}: label {fields[1]!r} is not an integer")
            paths.append(fields[0])
            ids.append(int(fields[1]))
            lines.append(number)
    if not paths:
        raise ValueError(f"{list_file}: the list holds no images")
    class_ids, labels = np.unique(np.array(ids, np.int64), return_inverse=True)
    return ImageList(root, list_file, tuple(paths), labels.astype(np.int32), class_ids,
                     np.array(lines, np.int64))
