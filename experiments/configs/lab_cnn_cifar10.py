"""The lab on a CNN on CIFAR-10: section 21's "Bonus: CIFAR-10 -- repeat on CIFAR-10 and compare
conclusions", with the CNN and the MLP of experiments/configs/lab_cnn.py scaled to 32x32x3.

Run (an accelerator; this machine has no copy of CIFAR-10):
  python -m experiments.lab_cnn --config=experiments/configs/lab_cnn_cifar10.py \
      --workdir=checkpoints/lab_cnn_cifar10 --config.data.data_dir=/path/to/cifar-10-batches-bin
  data_dir holds the *binary* version's files (data_batch_1..5.bin, test_batch.bin, read by
  ml_practical/cifar.py without pickle), or their parent, or cifar-10-binary.tar.gz itself;
  empty: $ML_PRACTICAL_DATA_DIR. Without either the run stops at once with one line naming
  data.data_dir.

The ablation's rows 1-8 (experiments/ablation/rows.py) on two networks, same data, optimizer,
epochs, batch, stopping rule and seeds:
  CNN  three stages of two 3x3 convs (32, 64, 128 channels; 32 -> 16 -> 8 pixels, max pools
       between), global average pool, Dense;
  MLP  3072-512-256-10.
45,000 training / 5,000 validation images (the official 50,000 split by data.split_seed), the
10,000 test images; per-channel normalization; Adam 1e-3, batch 128, up to 50 epochs with early
stopping on val/accuracy (patience 10, best weights tested), 5 seeds (vmapped on a GPU: the
seed_mode "auto"). Row 8's augmentation is CIFAR's: random crop with 4-pixel zero padding and
horizontal flips ("flip_crop"), not MNIST's rotations. The rows carry no chapter accuracies here
(the chapter's are MNIST's); the report compares the steps' verdicts with the MLP's and with the
MNIST lab's.

Not measured: no CIFAR-10 and no accelerator on this machine. A flax ResNet-20 step was measured
at ~80 images/s on this 2-core CPU (cifar10_resnet20.py), so this study would take days here.
"""

from experiments.configs import lab_cnn, mnist_mlp
from ml_practical import config


def get_config():
    base = mnist_mlp.get_config()
    with base.unlocked():
        base.model = config.defaults("cnn").model
    cfg = lab_cnn.study_config(base)
    cfg.data.source = "cifar10"
    cfg.data.data_dir = ""           # empty: $ML_PRACTICAL_DATA_DIR
    cfg.data.val_size = 5000
    cfg.data.normalize = "per_channel"
    cfg.model.widths = (32, 64, 128)
    cfg.model.convs_per_stage = 2
    cfg.model.pool = "max"
    cfg.train.num_epochs = 50        # the lab's "50 epochs (or early stopping)"
    cfg.train.batch_size = 128
    cfg.train.eval_batch_size = 1000
    cfg.augment = "flip_crop"        # row 8: RandomCrop(32, padding=4) + RandomHorizontalFlip
    cfg.seeds = 5
    return cfg
