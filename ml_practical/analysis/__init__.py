"""Analyses of runs and models, each a module of its own (imported by name, nothing re-exported):

  curves        bias-variance verdict from loss curves (`diagnose`)
  seeds         seed statistics: mean, sample std, paired differences
  activations   per-layer activation / gradient statistics from what models sow
  symmetry      how far apart a layer's units are (zero / constant initialization)
  propagation   signal propagation through depth: measured, and the mean-field prediction
  calibration   NLL, Brier, ECE, AUROC, selective-prediction accuracy
  support       support recovery of sparse weight vectors
"""
