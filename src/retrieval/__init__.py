"""Search with a trained backbone: the on-disk index of image features, exact and approximate search, matching."""
