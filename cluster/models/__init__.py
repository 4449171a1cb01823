"""Model additions on top of mlx-lm, one file per architecture."""
