"""Retrieval evaluation: feature extraction, Recall@K / MAP@R / R-precision, no-learning baselines, pictures."""
