"""Named sizes of the hybrid network. ``B`` is the MiM paper's backbone (about 21 M encoder
parameters); ``S`` fits a 24 GB GPU at 128^3; ``T`` (tiny) exists for CPU tests and the demo."""

PRESETS = {
    "T": dict(stem_channels=8, conv_channels=(8, 16, 32), conv_depths=(1, 1, 1), embed_dim=48, depth=2,
              num_heads=1, n_conv_per_stage_decoder=1, dw_kernel_size=3),
    "S": dict(stem_channels=16, conv_channels=(32, 64, 128), conv_depths=(2, 2, 2), embed_dim=192, depth=8,
              num_heads=4, n_conv_per_stage_decoder=2),
    "B": dict(stem_channels=32, conv_channels=(48, 96, 192), conv_depths=(2, 2, 2), embed_dim=384, depth=11,
              num_heads=8, n_conv_per_stage_decoder=2),
}


def preset_kwargs(name: str) -> dict:
    """The constructor keywords of ``MiMHybridUNet`` for a preset, as plain JSON-able values."""
    if name not in PRESETS:
        raise ValueError(f"unknown encoder preset {name!r}; choose one of {sorted(PRESETS)}")
    return {"preset": name, **{k: list(v) if isinstance(v, tuple) else v for k, v in PRESETS[name].items()}}
