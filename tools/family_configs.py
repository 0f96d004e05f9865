"""The diffusers configs of the family fixtures, shared by tools/make_family_fixtures.py (FLUX.2,
Qwen-Image / Wan 2.1) and tools/make_wan22_fixtures.py (Wan 2.2, Qwen-Image 2.1), small and full size.

The small models are narrow (the Wan-family ones keep the real block structure; FLUX.2's has one
layer per block instead of two); FLUX2_FULL and QWEN_FULL are the real sizes. Key order matters:
make_wan22_fixtures.py writes WAN22 and QWEN21 into its READMEs as they are.
"""

from __future__ import annotations

FLUX2 = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    # 32 groups, as every real FLUX.2 VAE: BFL's ae.safetensors comes without a
    # config.json, so a loader must assume them.
    block_out_channels=[32, 32, 32, 64],
    decoder_block_out_channels=None,
    layers_per_block=1,
    act_fn="silu",
    latent_channels=32,
    norm_num_groups=32,
    sample_size=1024,
    use_quant_conv=True,
    use_post_quant_conv=True,
    mid_block_add_attention=True,
    batch_norm_eps=1e-4,
    batch_norm_momentum=0.1,
    patch_size=[2, 2],
)
# The "small decoder" variant: narrower decoder, same encoder.
FLUX2_SMALL_DECODER = dict(FLUX2, decoder_block_out_channels=[32, 32, 32, 32])


def wan_arch(z_dim: int, dim_mult: list, temperal_downsample: list, decoder_base_dim: int | None = None) -> dict:
    """The architecture arguments every Wan-family class shares (AutoencoderKLWan,
    AutoencoderKLQwenImage, AutoencoderKLQwenImage21), in their signatures' order, at base_dim 4
    (and decoder_base_dim, for the residual ones) and 2 residual blocks per level, as the real VAEs."""
    widths = dict(base_dim=4) if decoder_base_dim is None else dict(base_dim=4, decoder_base_dim=decoder_base_dim)
    return dict(
        widths,
        z_dim=z_dim,
        dim_mult=dim_mult,
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=temperal_downsample,
        dropout=0.0,
    )


# Shared by the Qwen-Image and Wan 2.1 configs (latents_mean / latents_std are added, seeded).
QWEN_ARCH = wan_arch(16, [1, 2, 4, 4], [False, True, True])
QWEN_EXTRA = dict(input_channels=3)
WAN_EXTRA = dict(
    decoder_base_dim=None,
    is_residual=False,
    in_channels=3,
    out_channels=3,
    patch_size=None,
    scale_factor_temporal=4,
    scale_factor_spatial=8,
)

# Wan 2.2 TI2V: residual blocks, 48 channels, the image patched 2x2 into 12 channels (16x in all).
WAN22 = dict(
    wan_arch(48, [1, 2, 4, 4], [False, True, True], decoder_base_dim=5),
    is_residual=True,
    in_channels=12,
    out_channels=12,
    patch_size=2,
    scale_factor_temporal=4,
    scale_factor_spatial=16,
)
# Qwen-Image 2.1: residual blocks, 64 channels, RGBA, five levels (16x), 2D convolutions.
QWEN21 = dict(
    wan_arch(64, [1, 2, 4, 8, 8], [False, True, True, True], decoder_base_dim=5),
    is_residual=True,
    in_channels=4,
    out_channels=4,
)

# The real sizes (--full-size): diffusers' defaults for each class, i.e. the FLUX.2 and Qwen-Image VAEs.
FLUX2_FULL = dict(FLUX2, block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32)
QWEN_FULL = dict(QWEN_ARCH, **QWEN_EXTRA, base_dim=96)  # latents_mean / latents_std: the class defaults
