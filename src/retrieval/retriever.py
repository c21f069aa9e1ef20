"""An index opened once with what searches it: the checkpoint's embedder (the manifest's preprocessing and backend)
and a searcher (exact or approximate). Query images as paths, bytes or decoded arrays -> ranked hits.

    retriever = Retriever.open("index/")            # loads the index, the model and the searcher once
    hits = retriever.search_files(["query.jpg"], 10)  # [[Hit(rank, id, path, label, similarity), ...]]
    hits = retriever.search_bytes(upload, 10)[0]

retrieve.py search uses it; a server (one process answering many queries) holds one.
"""
from dataclasses import asdict, dataclass

import numpy as np

from src.runtime.log import get_logger

logger = get_logger()


@dataclass(frozen=True)
class Hit:
    """One result: the index's item `id`, its path (relative to the index's root), label (None: not known) and
    cosine similarity to the query; rank 1 is the most similar."""

    rank: int
    id: int
    path: str
    label: object
    similarity: float

    def to_dict(self):
        return asdict(self)


def hits_of(index, similarities, ids):
    """The Hit lists of a search's (similarities, ids) rows over `index` (a RetrievalIndex)."""
    return [[Hit(rank, int(i), index.paths[i], index.label(i), float(s))
             for rank, (s, i) in enumerate(zip(row_sims, row_ids, strict=True), start=1) if i >= 0]
            for row_sims, row_ids in zip(similarities, ids, strict=True)]


class Retriever:
    """A loaded index, its embedder (src.retrieval.embed.Embedder) and its searcher."""

    def __init__(self, index, embedder, searcher):
        self.index = index
        self.embedder = embedder
        self.searcher = searcher

    @classmethod
    def open(cls, index_dir, ckpt_path=None, backend=None, ann="auto", threads=None, device_target="CPU",
             batch_size=None, precision=None):
        """Load the index at `index_dir` (checked), the checkpoint it was built with (`ckpt_path`: where it is now,
        if it moved; another checkpoint is refused), its backend and precision (or `backend`, `precision`) and the
        searcher `ann` asks for."""
        from src.deploy.engines import check_threads
        from src.retrieval.embed import checkpoint_for, open_embedder, query_settings
        from src.retrieval.index import load_index

        threads = check_threads(threads)
        index = load_index(index_dir)
        ckpt = checkpoint_for(index.manifest, ckpt_path)
        settings = query_settings(index.manifest, backend, precision)
        searcher = index.searcher(ann, threads)
        embedder = open_embedder(ckpt, settings, threads, device_target, batch_size)
        return cls(index, embedder, searcher)

    def search_features(self, features, k):
        """Hit lists of query features (rows; L2-normalised here)."""
        similarities, ids = self.searcher.search(np.atleast_2d(features), k)
        return hits_of(self.index, similarities, ids)

    def search_images(self, images, k):
        """Hit lists of decoded HxWx3 uint8 RGB images."""
        return self.search_features(self.embedder.embed_images(list(images)), k)

    def search_files(self, paths, k):
        """Hit lists of image files, each decoded as the index's images were."""
        from src.data.decoding import load_image

        return self.search_images([load_image(path) for path in paths], k)

    def search_bytes(self, data, k, name="upload"):
        """Hit lists (one) of an image file's bytes."""
        from src.data.decoding import decode_image

        return self.search_images([decode_image(data, name)], k)
