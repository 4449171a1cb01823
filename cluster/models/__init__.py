"""Model additions on top of mlx-lm (one file per architecture) and the checkpoint formats
they load: FP8 with block scales, per-rank splits, the MTP layer out of a checkpoint."""
