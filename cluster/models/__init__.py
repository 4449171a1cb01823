"""Model additions on top of mlx-lm (one file per architecture) and the checkpoint formats
they load: FP8 with block scales, per-rank splits, the MTP layer out of a checkpoint."""


def swap_class(module, old: type, new: type) -> int:
    """Give every submodule of exactly type `old` the type `new` (a subclass that changes only
    how it computes, not its parameters); returns how many changed."""
    switched = 0
    for _, child in module.named_modules():
        if type(child) is old:
            child.__class__ = new
            switched += 1
    return switched
