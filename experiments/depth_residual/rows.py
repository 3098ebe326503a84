"""The rows of the depth and residual study, as data: which network, which norm, which start.

Every row is a network family and the model fields it changes; the depth is the grid's other
axis. The ResNet rows are `models.ResNet` variant "cifar" (depth 6n+2: a stem conv, three stages
of n basic blocks, the head); a "plain" row is `models.CNN` with the same three stages of 2n
3x3 convs each (the same widths, the same stride-2 downsampling at the start of stages 2 and 3)
and no shortcuts: 6n convs and the head, the ResNet of the same n without its stem conv and its
skip connections (`main.plain_model`).
"""

ROWS = {
    # The reference: He et al. 2016's ResNet, He init, BatchNorm after every conv.
    "he_bn": {"family": "resnet", "model": {"residual": "standard", "norm": "batch"}},
    # Goyal et al. 2017: the last BatchNorm of each branch starts with gamma = 0.
    "zero_gamma": {"family": "resnet", "model": {"residual": "zero_gamma", "norm": "batch"}},
    # Zhang et al. 2019: no normalization, rescaled branches, last conv and head at 0.
    "fixup": {"family": "resnet", "model": {"residual": "fixup", "norm": "none"}},
    # De & Smith 2020: no normalization, a scalar gate at 0 on each branch.
    "skipinit": {"family": "resnet", "model": {"residual": "skipinit", "norm": "none"}},
    # The control: the same ResNet and He init with the norm removed and nothing in its place.
    "he_nonorm": {"family": "resnet", "model": {"residual": "standard", "norm": "none"}},
    # No shortcuts (He et al.'s "plain" nets), with and without BatchNorm.
    "plain_bn": {"family": "cnn", "model": {"norm": "batch"}},
    "plain_nonorm": {"family": "cnn", "model": {"norm": "none"}},
}

LABELS = {
    "he_bn": "ResNet, He + BN",
    "zero_gamma": "ResNet, He + BN, zero-γ",
    "fixup": "ResNet, Fixup (no norm)",
    "skipinit": "ResNet, SkipInit (no norm)",
    "he_nonorm": "ResNet, He, no norm",
    "plain_bn": "plain CNN, He + BN",
    "plain_nonorm": "plain CNN, He, no norm",
}

# Compared at every depth where both rows ran (row, against), on test accuracy, paired by seed:
# each way of training without a norm (and zero-γ) against He + BN; plain against residual with
# the same norm. Holm's adjustment is over the comparisons of one depth (one table).
COMPARISONS = (
    ("fixup", "he_bn"),
    ("skipinit", "he_bn"),
    ("zero_gamma", "he_bn"),
    ("he_nonorm", "he_bn"),
    ("plain_bn", "he_bn"),
    ("plain_nonorm", "he_nonorm"),
)

# Depth itself (the degradation problem, He et al. 2016 section 4.1): these rows at each deeper
# depth against the same row at the shallowest depth it ran, paired by seed (the same batch
# order). Holm over this table.
DEPTH_ROWS = ("he_bn", "fixup", "plain_bn", "plain_nonorm")
