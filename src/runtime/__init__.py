"""Process plumbing shared by every entry point: CPU/BLAS env, config, CLI, device context, logging, atomic files."""
