"""The recipe "L2 on the dense layers only, not on embeddings or convolutions" (chapter 17's CTR
case study, where the embedding tables get no L2), as parameter-group rules.

Run:
    python -m experiments.train --config=experiments/configs/recipe_decay_dense_only.py \
        --workdir=checkpoints/recipe_decay_dense_only --config.data.data_dir=../shared/data/mnist

On the MNIST CNN of mnist_cnn.py the only dense layer is the head: coupled L2 1e-4 on its
kernel, nothing on the convs, BatchNorm or biases. The rules are written for any family of the
library: a Dense kernel ("dense_<i>/kernel" in the MLP, "bottom_<i>" / "top_<i>" in the DLRM,
"head/kernel") is decayed, everything else (the DLRM's embedding tables "embed_<j>/embedding"
included) matches ".*" first and gets 0. param_groups.json lists what each leaf got.
experiments/configs/ctr_case.py writes the same recipe for the DLRM the other way round,
decay_mask "all" with the one rule "embed_.*=0".
"""

from experiments.configs import mnist_cnn


def get_config():
    cfg = mnist_cnn.get_config()
    cfg.optim.l2 = 1e-4
    cfg.optim.decay_mask = "all"
    cfg.optim.wd_mults = ("(dense_[0-9]+|bottom_[0-9]+|top_[0-9]+|head)/kernel=1", ".*=0")
    return cfg
