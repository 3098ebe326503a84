"""Cost of the augmentation policies inside the step, against the plain step.

Run:  python -m benchmarks.augment_policy [--batch_size=128] [--steps=4] [--rounds=3]

The MNIST CNN (benchmarks/_cnn_steps.py), Adam 1e-3; variants, interleaved: plain, the
library's `shift_rotate` (a single affine per image), TrivialAugment (one op per image) and
RandAugment with 2 ops at magnitude 0.5 (`ml_practical.augment_policy`). Under `vmap` a policy's
per-image `lax.switch` becomes a select over every op, so each image pays for all eleven ops;
this measures what that costs. Prints samples/s and the ratio to plain; the last line is JSON.
"""

from benchmarks import _cnn_steps
from ml_practical import augment

MNIST_STATS = (0.1307, 0.3081)  # the (mean, std) the policies un-normalize with


def main():
    args = _cnn_steps.arguments(__doc__.splitlines()[0])
    variants = {"plain": ({}, {})}
    for name in ("shift_rotate", "trivial_augment", "rand_augment"):
        variants[name] = ({}, {"augment_fn": augment.get(name, MNIST_STATS, magnitude=0.5,
                                                         num_ops=2)})
    _cnn_steps.report(_cnn_steps.time_variants(variants, args), args)


if __name__ == "__main__":
    main()
