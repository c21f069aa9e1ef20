"""metric_learn: deep metric learning for image retrieval on MindSpore."""
