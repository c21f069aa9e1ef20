"""The data side: image lists of each benchmark, decoding, transforms, batch samplers, the input pipeline, demo data."""
