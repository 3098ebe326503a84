"""The grid of the BatchNorm x initialization study, as data.

A cell is (optimizer, norm, init); its training config is the study config with the three axis
values below and the seed (`main.cell_config`). Seed s gives every cell the same batch order and
the same init key (the small / Xavier / He cells scale the same N(0, 1) draws of each kernel), so
the cells of one seed are paired.
"""

# The convolutions' initializer (`ml_practical.initializers.get` specs). The head is Xavier in
# every cell (the config's `model.output_init`), so only the hidden init differs.
INITS = {
    "small": "normal",          # N(0, 0.01^2), the chapter's "small random" (initializers.normal)
    "xavier": "xavier_normal",  # N(0, 2 / (fan_in + fan_out))
    "he": "he_normal",          # N(0, 2 / fan_in)
    # LSUV (Mishkin & Matas 2016): after the config's own init, every conv kernel is re-drawn
    # orthogonally and rescaled to unit output variance on a batch of training images
    # (`main.LSUVInit`, `ml_practical.lsuv`); the head is left as it is.
    "lsuv": "lsuv",
}

NORMS = {"bn": "batch", "none": "none"}  # model.norm; BatchNorm before the ReLU, no conv bias

# optimizer -> optim.name; the learning rate is the study's lr_<optimizer>, one for every init
# and norm.
OPTIMIZERS = {"sgd": "momentum", "adam": "adam"}

# What a run is measured by: steps until the running mean of the per-step training loss falls
# to `target_loss`, or until that of the per-step training accuracy reaches `target_accuracy`
# (the claims ledger's "steps to 97 % train accuracy").
MEASURES = {"loss": ("loss", "target_loss", "below"),
            "accuracy": ("accuracy", "target_accuracy", "above")}

# The family of comparisons (Holm's adjustment is over all of them that can be formed):
#   speed/<measure>/<optimizer>: log steps of small + BN minus log steps of He + BN, per seed
#     (> 0: He reaches the target first; exp(Δ) is how many times faster). BN-12 (c) and the
#     chapter's Sec 18 "He init + BN together converge significantly faster than BN + random
#     init".
#   sensitivity/loss/<optimizer>: the spread of log steps over the inits without a norm minus
#     with BN, per seed, where a cell's spread is log(slowest init's steps / fastest init's)
#     (> 0: BN makes the steps depend less on the init). The chapter's 12.4.4 (3) "reduces
#     sensitivity to initialization" and Sec 18 "BN makes training more robust to
#     initialization".
SPEED = ("small", "he")          # (slow candidate, fast candidate) of the speed comparisons
SPEED_NORM = "bn"
SPEED_MEASURES = ("loss", "accuracy")
SENSITIVITY = ("none", "bn")     # (norm expected more sensitive, norm expected less)
SENSITIVITY_MEASURES = ("loss",)

# The claims ledger's criterion for BN-12 (c): He is at least this many times faster.
LEDGER_SPEEDUP = 1.5


def cell_name(optimizer: str, norm: str, init: str) -> str:
    return f"{optimizer}/{norm}/{init}"
