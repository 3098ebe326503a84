"""ResNet-56 on CIFAR-10, the standard recipe (He et al. 2016, section 4.2): SGD with momentum
0.9, learning rate 0.1, batch 128, weight decay 5e-4 on the kernels (coupled, torch's
`weight_decay`), random crop with 4-pixel zero padding and horizontal flips, per-channel
normalization, 200 epochs with a cosine decay. The paper reports 6.97 % test error (93.03 %).

Run (an accelerator: a flax ResNet-20 step was measured at ~80 images/s on a 2-core CPU;
ResNet-56 is ~3x that per image):
    python -m experiments.train --config=experiments/configs/cifar10_resnet56.py \
        --workdir=checkpoints/cifar10_resnet56 --config.data.data_dir=/path/to/cifar-10-batches-bin

data_dir holds the *binary* version's files (data_batch_1..5.bin, test_batch.bin), or is the
official cifar-10-binary.tar.gz itself; TFDS users: --config.data.source=tfds
--config.data.tfds_name=cifar10 where it is prepared. Not measured here: this machine has no copy
of CIFAR-10 and no GPU.
"""

from experiments.configs import cifar10_resnet20


def get_config():
    """cifar10_resnet20's recipe with depth 56 (nothing else differs)."""
    cfg = cifar10_resnet20.get_config()
    cfg.model.depth = 56
    return cfg
