"""Zero and constant initialization on MNIST (chapter section 12.1.2, "the symmetry catastrophe").

Run:
  python -m experiments.zero_init --config=experiments/configs/zero_init.py \
      --workdir=checkpoints/zero_init --config.data.data_dir=../shared/data/mnist
  (or export ML_PRACTICAL_DATA_DIR=/path/to/mnist-idx and leave data_dir empty)
  One case: --config.only=constant     Another constant: --config.cases.constant.value=0.1

Each case trains the chapter's 784-512-256-10 ReLU MLP (no normalization, Adam 1e-3, batch 128)
for `train.num_epochs` epochs and measures, per hidden layer, the largest difference between two
units' incoming weights (0 = the units are copies of one unit) and the test accuracy against chance.
Expected: see the README's "what we found".
"""

import ml_collections

from experiments.configs import mnist_mlp


def _case(hidden_init, output_init, value=0.0, drop_rate=0.0):
  return ml_collections.ConfigDict({"hidden_init": hidden_init, "output_init": output_init,
                                    "value": value, "drop_rate": drop_rate})


def get_config() -> ml_collections.ConfigDict:
  cfg = mnist_mlp.get_config()
  cfg.model.norm = "none"
  cfg.model.drop_rate = 0.0        # each case sets its own
  cfg.optim.learning_rate = 1e-3   # Adam, the chapter's default
  cfg.optim.clip = "none"
  cfg.optim.l2 = 0.0
  cfg.train.label_smoothing = 0.0
  cfg.train.num_epochs = 2

  # Initializer names of `ml_practical.initializers`; `value` is the constant of "constant".
  cfg.cases = ml_collections.ConfigDict()
  cfg.cases.zeros = _case("zeros", "zeros")                    # the chapter's setting: all W = 0
  cfg.cases.zeros_hidden = _case("zeros", "xavier_normal")     # zero hidden layers, random head
  cfg.cases.constant = _case("constant", "constant", value=0.01)
  cfg.cases.constant_hidden = _case("constant", "xavier_normal", value=0.01)
  cfg.cases.constant_dropout = _case("constant", "constant", value=0.01, drop_rate=0.2)
  cfg.cases.he = _case("he_normal", "xavier_normal")           # the chapter's recipe, reference
  # The cases to run, in this order (a ConfigDict iterates its fields sorted by name).
  cfg.only = "zeros,zeros_hidden,constant,constant_hidden,constant_dropout,he"
  return cfg
