"""The chapter's CTR recipe (Meta DLRM, section 17; InMobi, section 16) on a synthetic click log.

Run:
  python -m experiments.ctr_case --config=experiments/configs/ctr_case.py \
      --workdir=checkpoints/ctr_case
  Fewer rows: --config.only=recipe,no_clip     Fewer seeds: --config.seeds=2

Sized for a 2-core CPU (about 3 minutes): a 30,000-example log with 4 tables of 400/200/100/50
rows, 4 dense features, embedding dim 8, at most 10 epochs; 11 rows x 10 seeds. The full setting
for an accelerator is experiments/configs/ctr_case_full.py.

The recipe (the "recipe" row; every other row of experiments/ctr_case/rows.py changes one thing):
- model: `models.dlrm.DLRM`, dot interaction, bottom MLP 4-32-8, top MLP 32-16-1;
  embeddings U(±1/√d) ("embedding_uniform", the chapter's; the reference code's U(±√(1/rows))
  is a row), He-normal hidden kernels, Xavier head; LayerNorm in the top MLP (the Meta choice:
  model-parallel batches are small), no bottom norm; Dropout 0.1 after each top hidden layer,
  none on the embeddings (embed_drop_rate 0);
- optimizer: Adam lr 3e-3, constant (the chapter names no optimizer for DLRM; 3e-3 because a
  pilot at 1e-3 was far from converged in the epoch budget), coupled L2 1e-5 with decay_mask "all" and the
  rule wd_mults ("embed_.*=0",): the rule, not the mask, is what keeps the embeddings out
  (the "embed_decay" row drops the rule);
- clipping by global norm, tau = 1.0 (Meta's value; InMobi's 5.0 is not used);
- early stopping: patience 5 on the validation AUC (mode "max"; the InMobi table's "Patience=5 on
  AUC-ROC"), the best epoch restored and tested. The AUC comes from the study's ValCTR hook;
  with a 10-epoch budget, patience 5 stops a run whose best epoch is 5 or earlier (a 1-seed
  pilot peaked around epoch 4-5: the ids start to be memorized);
- the per-table gradient monitor (`table_monitor.TableGradMonitor`, alert at 10x a table's
  running average) logged per epoch, and the raw global norm per epoch (ClipStats);
- batch 128; task "binary" (sigmoid cross-entropy on one logit); no label smoothing (InMobi's
  0.05 is not part of the Meta recipe).
Measured (2-core CPU): 110 runs in 3 min 13 s from an empty workdir (each run 1-4 s after
compilation); a rerun reads every run back. Test AUC, mean [95 % CI] over 10 seeds
(Bayes-optimal 0.8268): recipe 0.7139 [0.7076, 0.7202]; LN b32 0.7166, BN b32 0.7049; LN b512
0.6998, BN b512 0.6799; U(±√(1/rows)) 0.7156; N(0, 1) 0.6833; decay on embeddings 0.7164; no
clip 0.7123; log order clip 0.7091 / no clip 0.7089. Paired Δ AUC (Holm over the family): LN -
BN b32 +0.0117 [+0.0042, +0.0192]; BN - LN b512 -0.0200 [-0.0328, -0.0071]; recipe - rows-init
-0.0017 [-0.0051, +0.0018]; recipe - N(0, 1) +0.0306 [+0.0223, +0.0390]; recipe - embed decay
-0.0025 [-0.0060, +0.0011]; clip - no clip +0.0016 [-0.0032, +0.0063] (shuffled), +0.0002
[-0.0033, +0.0036] (log order). (3 seeds, the first version's default, left every BN/LN
interval straddling 0; 10 are cheap here.)

- data: `clicks.click_splits`, chronological 70 / 10 / 20 % train / val / test; 3 viral ids in
  table 0 with bursts covering 2 % of the log, all in the first half (train). One log for every
  row and seed; seed s fixes init and batch order.
"""

from experiments.ctr_case.main import CTRCaseStudy
from ml_practical import config


def get_config():
    cfg = config.defaults("dlrm", study=CTRCaseStudy)
    cfg.seeds = 10
    cfg.only = ""
    cfg.val_fraction = 0.1
    cfg.test_fraction = 0.2
    cfg.alert_factor = 10.0
    c = cfg.clicks
    c.num_dense = 4
    c.table_sizes = (400, 200, 100, 50)
    c.num_examples = 30_000
    c.num_viral = 3
    c.viral_share = 0.02
    c.viral_effect = 3.0
    c.seed = 0

    cfg.data.source = "arrays"
    m = cfg.model
    m.num_dense = c.num_dense            # the study sets both from cfg.clicks anyway
    m.table_sizes = c.table_sizes
    m.embed_dim = 8
    m.bottom_widths = (32, 8)
    m.top_widths = (32, 16)
    m.interaction = "dot"
    m.embed_init = "embedding_uniform"
    m.hidden_init = "he_normal"
    m.output_init = "xavier_normal"
    m.norm = "layer"
    m.bottom_norm = "none"
    m.drop_rate = 0.1
    m.embed_drop_rate = 0.0

    o = cfg.optim
    o.name = "adam"
    o.learning_rate = 3e-3
    o.schedule = "constant"
    o.l2 = 1e-5
    o.decay_mask = "all"
    o.wd_mults = ("embed_.*=0",)
    o.clip = "global_norm"
    o.clip_value = 1.0

    t = cfg.train
    t.task = "binary"
    t.num_epochs = 10
    t.batch_size = 128
    t.eval_batch_size = 2000
    t.progress = "never"

    es = cfg.early_stopping
    es.monitor = "val/auc"
    es.mode = "max"
    es.patience = 5
    cfg.checkpoint.every = 0
    return cfg
