"""The chapter's signal-propagation demo (section 13.1), its tanh version, and coding question C2.

Run:
  python -m experiments.signal_propagation --config=experiments/configs/signal_propagation.py \
      --workdir=checkpoints/signal_propagation

Synthetic inputs (no data files). Writes results.json, results.md, variance_relu.png,
variance_tanh.png, c2_variance.png, c2_hist_he_normal.png and c2_hist_xavier_normal.png.

Seeds are independent draws of the weights (keys 0 .. seeds-1) on the chapter's fixed inputs;
results.md compares, with a 95 % CI over the draws and Holm's adjustment over the study, each
measured per-layer variance factor with the mean-field theory and the chapter's printed variances
with the draws (experiments/signal_propagation/main.py says how).
Expected: the README's "what we found" (He holds the ReLU activation variance at ~0.68 per
layer, Xavier halves it per layer, N(0, 0.01^2) divides it by ~39 per layer). Wall time with 10
draws: 43-109 s on the shared 2-core CPU under load (33 s of CPU time).
"""

from experiments.signal_propagation.main import SignalStudy
from ml_practical import config

def get_config():
    cfg = config.study_defaults(SignalStudy)
    cfg.seeds = 10                   # network draws, keys 0..seeds-1 (each init: the same N(0, 1))
    cfg.input_seed = 42              # np.random.seed(42); np.random.randn(1000, 512), as the chapter
    cfg.num_samples = 1000
    cfg.width = 512                  # input features and every layer's width
    cfg.depth = 10
    cfg.inits = "normal,xavier_normal,he_normal"   # "normal" is the chapter's N(0, 0.01^2)
    cfg.activations = "relu,tanh"    # relu: the chapter's demo; tanh: the same stack with tanh
    cfg.deep_depth = 20              # coding question C2: a 20-layer ReLU network ...
    cfg.deep_inits = "he_normal,xavier_normal"     # ... He vs Xavier, histograms per layer
    cfg.bins = 50                    # histogram bins (non-zero activations; zeros are counted apart)
    return cfg
