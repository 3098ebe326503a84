"""Cost of SAM and ASAM in the train step against the plain step, interleaved in one process so
that load drifts hit every variant alike.

Run:  python -m benchmarks.sam [--batch_size=128] [--steps=4] [--rounds=3]

Model: the MNIST CNN of experiments/configs/mnist_cnn.py (16-32-64 channels, two 3x3 convs a
stage, BatchNorm before the ReLU, the faster CPU lowerings), on random 28x28 images, Adam.
Variants, all on the same batch of `batch_size` rows:

  plain   one forward/backward
  sam     `optim.sam_rho = 0.05`: forward/backward at w, then at w + rho g / ||g||
  asam    `optim.sam_rho = 0.5, optim.sam_adaptive = True`: the same two passes, T = |w| + 0.01

SAM's second pass is a whole forward/backward, so its step costs up to 2x the plain step's (a
ratio down to 0.5; the optimizer update runs once); the perturbation itself is a few elementwise
passes over the parameters.
Each compiled call is `steps` unrolled steps (`train.unroll`, as the CNN configs run on CPU; a
convolution inside a rolled scan is ~25x slower on XLA:CPU). Prints samples/s and the ratio to
plain per variant (best of `rounds` timed rounds each); the last line is JSON.
"""

from benchmarks import _cnn_steps
from ml_practical import train


def main():
    args = _cnn_steps.arguments(__doc__.splitlines()[0])
    variants = {"plain": ({}, {}), "sam": ({}, {"sam": train.SAM(0.05)}),
                "asam": ({}, {"sam": train.SAM(0.5, adaptive=True, eta=0.01)})}
    _cnn_steps.report(_cnn_steps.time_variants(variants, args), args)


if __name__ == "__main__":
    main()
