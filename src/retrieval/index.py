"""The on-disk retrieval index: image features with their paths, content hashes and labels, and a manifest saying how
the features were made. Built atomically, loaded with validation.

    <index_dir>/manifest.json   format, checkpoint (path, SHA-256), backbone settings, image size, eval resize,
                                feature dimension, backend, count, labels, image root, sources, creation time, the
                                approximate index's settings and measured recall, and each file's SHA-256
    <index_dir>/features.npy    float32 (count, dim), rows L2-normalised
    <index_dir>/paths.txt       each image's path relative to the manifest's root ('/'-separated), one a line
    <index_dir>/hashes.txt      the SHA-256 of each image file's bytes, one a line
    <index_dir>/labels.npy      int64 (count,): class ids from a list, UNKNOWN_LABEL where none is known
    <index_dir>/ivf.faiss       the approximate index (src.retrieval.search.IvfSearch), when one was built

A build writes a new folder beside the index (`.<name>.<random>.building`, the features filled in as they are
extracted) and renames it onto the index only when complete (src.runtime.atomic_file.atomic_path), so a build that
is interrupted, even by kill -9, leaves the previous index as it was. Builds of one index take a lock
(`.<name>.lock` beside it); a build clears the leftovers of killed ones first.
"""
import contextlib
import datetime
import fcntl
import glob
import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from src.data.decoding import IMAGE_SUFFIXES
from src.data.image_list import ImageList
from src.runtime.atomic_file import atomic_path
from src.runtime.log import Progress, get_logger

logger = get_logger()

FORMAT = "metric_learn-retrieval-index/1"
MANIFEST, FEATURES, PATHS, HASHES, LABELS, ANN = (
    "manifest.json", "features.npy", "paths.txt", "hashes.txt", "labels.npy", "ivf.faiss")
UNKNOWN_LABEL = np.iinfo(np.int64).min
BUILDING, OLD = ".building", ".old"  # suffixes of a build's folder and of the index it replaces (atomic_path)
EXTRACT_CHUNK = 4096  # images per extraction call: the features reach the disk in steps, not all in memory
# What must be equal for features to be comparable: the index's and a query's, or an index and what --add adds.
EMBEDDING_KEYS = ("checkpoint_sha256", "image_size", "eval_resize", "backbone")


@dataclass
class RetrievalIndex:
    """A loaded index (load_index). features: float32 (count, dim), rows L2-normalised."""

    folder: str
    manifest: dict
    features: np.ndarray
    paths: list
    hashes: list
    labels: np.ndarray

    def __len__(self):
        return len(self.paths)

    @property
    def root(self):
        return self.manifest["root"]

    @property
    def has_labels(self):
        return bool(self.manifest["labels"])

    def full_path(self, i):
        return os.path.join(self.root, self.paths[i])

    def label(self, i):
        """The label of item i, or None when it is not known."""
        value = int(self.labels[i])
        return None if value == UNKNOWN_LABEL else value

    @property
    def ann_path(self):
        """The stored approximate index, or None."""
        return os.path.join(self.folder, ANN) if self.manifest.get("ann") else None

    def searcher(self, ann="auto", threads=None):
        """What searches this index for --ann `ann`: "exact"; "faiss": the stored approximate index, or one built
        now (logged) when there is none; "auto": the stored one if there is one, else exact search."""
        from src.retrieval.search import RECALL_K, ExactSearch, IvfSearch, check_ann, import_faiss

        check_ann(ann)
        found = self.ann_path
        if ann == "faiss" or (ann == "auto" and found):
            import_faiss()
            if found:
                stored = self.manifest["ann"]
                searcher = IvfSearch.load(found, stored.get(f"recall_at_{RECALL_K}"), threads)
                searcher.index.nprobe = int(stored["nprobe"])
            else:
                logger.info("%s holds no approximate index (built with --ann exact, or below the auto size): "
                            "building one now", self.folder)
                searcher = IvfSearch.build(self.features, num_threads=threads)
        else:
            searcher = ExactSearch(self.features, num_threads=threads)
        logger.info("search: %s", searcher.describe())
        return searcher


def file_sha256(path, chunk=8 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_files(paths, num_workers=4, what="hashing images"):
    """SHA-256 of each file's bytes, in order (hashlib releases the GIL: threads read in parallel)."""
    progress = Progress(len(paths), what, logger, interval=30.0)
    hashes = []
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        for digest in pool.map(file_sha256, paths, chunksize=16):
            hashes.append(digest)
            progress.update()
    return hashes


# ---------------------------------------------------------------------------------------------------------------
# What to index

def folder_images(image_dir):
    """An ImageList (labels unknown) of every image under `image_dir`, walked recursively, sorted by path: the files
    whose suffix is one of IMAGE_SUFFIXES, hidden files and folders skipped. ValueError if there are none."""
    if not os.path.isdir(image_dir):
        raise NotADirectoryError(f"--image_dir {image_dir} is not a folder")
    found = []
    for folder, dirs, files in os.walk(image_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                found.append(os.path.relpath(os.path.join(folder, name), image_dir).replace(os.sep, "/"))
    found.sort()
    if not found:
        raise ValueError(f"--image_dir {image_dir} holds no images (looked for {' '.join(IMAGE_SUFFIXES)}, in every "
                         f"subfolder)")
    return ImageList(os.path.abspath(image_dir), os.path.abspath(image_dir), tuple(found),
                     np.zeros(len(found), np.int32), np.array([UNKNOWN_LABEL], np.int64),
                     np.arange(1, len(found) + 1, dtype=np.int64))


def list_has_labels(images):
    return not (len(images.class_ids) == 1 and images.class_ids[0] == UNKNOWN_LABEL)


def relative_to_root(images, root):
    """The images' paths relative to `root` ('/'-separated); ValueError naming the first one outside it."""
    root = os.path.abspath(root)
    out = []
    for i in range(len(images)):
        rel = os.path.relpath(os.path.abspath(images.full_path(i)), root)
        if rel == ".." or rel.startswith(".." + os.sep):
            raise ValueError(f"{images.full_path(i)} (listed at {images.where(i)}) is outside the index's image "
                             f"root {root}: index it in an index of its own")
        out.append(rel.replace(os.sep, "/"))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Loading

class BrokenIndexError(ValueError):
    """An index folder that is missing, incomplete or damaged."""


def _broken(folder, what):
    return BrokenIndexError(f"{folder}: {what}: not a complete index (an interrupted copy, or a damaged file?); "
                            f"rebuild it with retrieve.py index")


def read_manifest(folder):
    """The manifest of the index in `folder`; FileNotFoundError / ValueError naming what is missing or wrong."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--index_dir {folder}: no index there (build one with retrieve.py index)")
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise _broken(folder, f"{MANIFEST} is missing")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        raise _broken(folder, f"{MANIFEST} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise _broken(folder, f"{MANIFEST} is not a {FORMAT} manifest (format {found!r})")
    return manifest


def load_index(folder, verify=True):
    """Read and check an index: every file the manifest lists is there with its SHA-256 (verify=False: sizes and
    shapes only), the arrays have the manifest's count and dimension and the features are finite."""
    manifest = read_manifest(folder)
    files = manifest.get("files", {})
    for name in (FEATURES, PATHS, HASHES, LABELS):
        if name not in files:
            raise _broken(folder, f"the manifest lists no {name}")
    for name, digest in files.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise _broken(folder, f"{name} is missing")
        if verify and file_sha256(path) != digest:
            raise _broken(folder, f"{name} is corrupt (its SHA-256 differs from the manifest's)")
    count, dim = int(manifest["count"]), int(manifest["feature_dim"])
    try:
        features = np.load(os.path.join(folder, FEATURES), allow_pickle=False)
        labels = np.load(os.path.join(folder, LABELS), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise _broken(folder, f"{FEATURES} or {LABELS} does not read as a numpy array ({err})") from None
    if features.shape != (count, dim) or features.dtype != np.float32:
        raise _broken(folder, f"{FEATURES} holds {features.dtype} {features.shape}, the manifest says float32 "
                              f"({count}, {dim})")
    if labels.shape != (count,) or labels.dtype != np.int64:
        raise _broken(folder, f"{LABELS} holds {labels.dtype} {labels.shape}, expected int64 ({count},)")
    if not np.isfinite(features).all():
        raise _broken(folder, f"{FEATURES} holds NaN or Inf values")
    paths, hashes = (_read_lines(os.path.join(folder, name)) for name in (PATHS, HASHES))
    if len(paths) != count or len(hashes) != count:
        raise _broken(folder, f"{PATHS} has {len(paths)} lines and {HASHES} {len(hashes)}, the manifest says {count}")
    return RetrievalIndex(os.path.abspath(folder), manifest, features, paths, hashes, labels)


def _read_lines(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return text.split("\n")[:-1] if text else []


def _write_lines(path, lines):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(line + "\n" for line in lines))


def check_same_embedding(manifest, settings, what, folder):
    """ValueError naming the first of EMBEDDING_KEYS in which `settings` (what `what` would use) differ from the
    index's manifest."""
    for key in EMBEDDING_KEYS:
        ours, theirs = settings.get(key), manifest.get(key)
        if ours != theirs:
            name = {"checkpoint_sha256": "checkpoint (SHA-256)"}.get(key, key)
            raise ValueError(f"{what} has {name} {ours}, the index {folder} was built with {theirs} "
                             f"(checkpoint {manifest.get('checkpoint')}): its features would not be comparable; "
                             f"use the index's settings, or build a new index")


# ---------------------------------------------------------------------------------------------------------------
# Building

@contextlib.contextmanager
def build_lock(folder):
    """Hold `.<name>.lock` beside the index for one build; ValueError if another build holds it. The lock goes
    with its process, so a killed build leaves no lock behind."""
    folder = os.path.abspath(folder)
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    with open(os.path.join(parent, f".{os.path.basename(folder)}.lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"--index_dir {folder}: another build of this index is running") from None
        yield


def clear_leftovers(folder):
    """Remove what killed builds left beside the index (their `.building` folders); if the index itself is missing
    and a replaced one (`.old`) remains, the build was killed between its two renames: put that one back. Call it
    holding build_lock. Returns the number of folders removed."""
    folder = os.path.abspath(folder)
    pattern = os.path.join(os.path.dirname(folder), "." + glob.escape(os.path.basename(folder)) + ".*")
    old = sorted((path for path in glob.glob(pattern) if path.endswith(OLD)), key=os.path.getmtime)
    if old and not os.path.lexists(folder):
        os.replace(old.pop(), folder)
        logger.warning("%s: restored the index a killed build had moved aside", folder)
    stale = [path for path in glob.glob(pattern) if path.endswith((BUILDING, OLD)) and os.path.isdir(path)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    if stale:
        logger.info("%s: removed %d folder(s) left by interrupted builds", folder, len(stale))
    return len(stale)


def build_index(folder, images, embedder, manifest, add=False, ann=None, chunk=EXTRACT_CHUNK, hash_workers=4):
    """Write the index of `images` (an ImageList) at `folder`, atomically; with `add`, the index there plus those of
    `images` that it lacks (by path and content hash; an image whose file changed is extracted again).

    embedder: `embed_list(ImageList) -> features (n, dim) float32, L2-normalised`.
    manifest: the settings to record (checkpoint, checkpoint_sha256, backbone, image_size, eval_resize, backend,
        ...); count, feature_dim, labels, root, sources, created and files are filled in here.
    ann: None, or `ann(features) -> searcher or None`: the approximate index to store (save(path), settings()).
    Returns the number of images extracted.
    """
    folder = os.path.abspath(folder)
    with build_lock(folder):
        clear_leftovers(folder)
        old = None
        if add and os.path.exists(folder):
            old = load_index(folder)
            check_same_embedding(old.manifest, manifest, "this build", folder)
        elif add:
            logger.info("%s: no index there yet; building it", folder)
        root = old.root if old is not None else os.path.abspath(images.root)
        paths = relative_to_root(images, root)
        hashes = hash_files([images.full_path(i) for i in range(len(images))], hash_workers)
        keep, new = _plan(old, paths, hashes)
        if old is not None and not len(new):
            logger.info("%s: all %d images are in the index already; nothing to add", folder, len(images))
            return 0
        new_images = images.subset(new)
        labelled = list_has_labels(images)
        with atomic_path(folder, suffix=BUILDING, folder=True) as building:
            kept = len(keep)
            count = kept + len(new)
            dim = old.features.shape[1] if old is not None else None
            features = None
            progress = Progress(len(new), "index build", logger)
            for start in range(0, len(new), chunk):
                part = embedder.embed_list(new_images.subset(np.arange(start, min(start + chunk, len(new)))))
                if features is None:
                    dim = dim or part.shape[1]
                    features = np.lib.format.open_memmap(os.path.join(building, FEATURES), "w+", np.float32,
                                                         (count, dim))
                    if kept:
                        features[:kept] = old.features[keep]
                if part.shape[1] != dim:
                    raise ValueError(f"the backbone gives {part.shape[1]}-d features, the index holds {dim}-d ones")
                features[kept + start:kept + start + len(part)] = part
                progress.update(len(part))
            features.flush()
            new_labels = (new_images.ids.astype(np.int64) if labelled
                          else np.full(len(new), UNKNOWN_LABEL, np.int64))
            labels = np.concatenate([old.labels[keep], new_labels]) if old is not None else new_labels
            np.save(os.path.join(building, LABELS), labels)
            _write_lines(os.path.join(building, PATHS), ([old.paths[i] for i in keep] if old else [])
                         + [paths[i] for i in new])
            _write_lines(os.path.join(building, HASHES), ([old.hashes[i] for i in keep] if old else [])
                         + [hashes[i] for i in new])
            record = dict({"format": FORMAT}, **manifest, count=count, feature_dim=int(dim), root=root,
                          labels=bool(labelled or (old is not None and old.has_labels)),
                          sources=(old.manifest["sources"] if old else []) + [os.path.abspath(images.list_file)],
                          created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                          ann=None)
            searcher = ann(np.load(os.path.join(building, FEATURES), mmap_mode="r")) if ann else None
            if searcher is not None:
                searcher.save(os.path.join(building, ANN))
                record["ann"] = searcher.settings()
            del features
            record["files"] = {name: file_sha256(os.path.join(building, name))
                               for name in (FEATURES, PATHS, HASHES, LABELS, ANN)
                               if os.path.isfile(os.path.join(building, name))}
            with open(os.path.join(building, MANIFEST), "w", encoding="utf-8") as f:
                json.dump(record, f, indent=1)
        logger.info("%s: %d images indexed (%d extracted now, %d kept), %d-d features", folder, count, len(new), kept,
                    dim)
        return len(new)


def _plan(old, paths, hashes):
    """(old rows to keep, new image positions to extract): an image is in the index when its path and content hash
    are; an old row whose path comes again with other content is replaced; repeated images are taken once."""
    have = set() if old is None else set(zip(old.paths, old.hashes, strict=True))
    changed = set()
    new, seen = [], set()
    for i, key in enumerate(zip(paths, hashes, strict=True)):
        if key in have or key in seen:
            continue
        seen.add(key)
        new.append(i)
        changed.add(key[0])
    keep = [] if old is None else [i for i, path in enumerate(old.paths) if path not in changed]
    if old is not None and len(keep) < len(old.paths):
        logger.info("%d indexed image(s) changed on disk: extracted again", len(old.paths) - len(keep))
    return np.asarray(keep, np.int64), np.asarray(new, np.int64)
