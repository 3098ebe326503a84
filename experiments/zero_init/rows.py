"""The cases of the zero-initialization study, as dotted overrides of the study config.

An initializer spec "constant" without arguments stands for `constant(<the study's constant>)`
(`--config.constant=0.1` changes every constant case).
"""

CASES = {
    # The chapter's setting: every weight 0.
    "zeros": {"model.hidden_init": "zeros", "model.output_init": "zeros", "model.drop_rate": 0.0},
    # Zero hidden layers, a random head.
    "zeros_hidden": {"model.hidden_init": "zeros", "model.output_init": "xavier_normal",
                     "model.drop_rate": 0.0},
    "constant": {"model.hidden_init": "constant", "model.output_init": "constant",
                 "model.drop_rate": 0.0},
    "constant_hidden": {"model.hidden_init": "constant", "model.output_init": "xavier_normal",
                        "model.drop_rate": 0.0},
    # Dropout draws a different mask per unit: does it break the symmetry?
    "constant_dropout": {"model.hidden_init": "constant", "model.output_init": "constant",
                         "model.drop_rate": 0.2},
    # The chapter's recipe, for reference.
    "he": {"model.hidden_init": "he_normal", "model.output_init": "xavier_normal",
           "model.drop_rate": 0.0},
}

# The comparisons the report states (case, against), each on test accuracy, paired by seed (seed s
# gives both cases the same batch order and dropout keys, and the reference its init key). Every
# zero / constant case is compared with the random-init reference: does the symmetric start cost
# accuracy? And dropout with the same constant start without it: does dropout's per-unit mask
# break the symmetry enough to train? Holm's adjustment is over these comparisons (the ones whose
# two cases ran).
COMPARISONS = (
    ("zeros", "he"),
    ("zeros_hidden", "he"),
    ("constant", "he"),
    ("constant_hidden", "he"),
    ("constant_dropout", "he"),
    ("constant_dropout", "constant"),
)
