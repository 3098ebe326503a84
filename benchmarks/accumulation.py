"""Cost of gradient accumulation and ghost BatchNorm against the plain step, interleaved in one
process so that load drifts hit every variant alike.

Run:  python -m benchmarks.accumulation [--batch_size=128] [--steps=4] [--rounds=3]

Model: the MNIST CNN of experiments/configs/mnist_cnn.py (16-32-64 channels, two 3x3 convs a
stage, BatchNorm before the ReLU, the faster CPU lowerings), on random 28x28 images. Variants, all
on the same gradient batch of `batch_size` rows:

  plain       one forward/backward over the batch (BN over the batch)
  ghost_g     `model.ghost_batch_size = g` (BN over blocks of g rows; one forward/backward)
  accum_k     `train.grad_accum_steps = k` (k micro-batches in a scan; BN over each)

Each compiled call is `steps` unrolled steps, the micro-batch scan unrolled too (`train.unroll`,
as the CNN configs run on CPU; a convolution inside a rolled scan is ~25x slower on XLA:CPU).
Prints samples/s and the ratio to plain per variant; the last line is JSON.
"""

from benchmarks import _cnn_steps


def main():
    args = _cnn_steps.arguments(__doc__.splitlines()[0])
    variants = {"plain": ({}, {}), "ghost_32": ({"ghost_batch_size": 32}, {}),
                "ghost_8": ({"ghost_batch_size": 8}, {}), "accum_4": ({}, {"grad_accum_steps": 4})}
    _cnn_steps.report(_cnn_steps.time_variants(variants, args), args)


if __name__ == "__main__":
    main()
