"""Search with a trained backbone: the on-disk feature index, exact and approximate search, matching, a web page."""
