"""Synthetic sequence-classification tasks with a known rule, generated offline and seeded.

A Transformer needs sequences; this machine has no text corpus worth the name and no internet, so
the tasks are generated, each with a rule a small Transformer can learn and a bag-of-words model
partly cannot:

  "retrieval"  key-value lookup (the associative-recall task of the Transformer literature, e.g.
               Ba et al. 2016 "Using Fast Weights", Olsson et al. 2022): n pairs
               (key_1, value_1) ... (key_n, value_n) of distinct keys, a separator, then a query
               key equal to one of them; the label is the class of the value paired with it.
               Attention from the query to its key solves it; counting tokens does not.
  "majority"   the class whose marker token occurs most often among distractors (strictly most:
               ties are not generated). Counting solves it: a bag-of-words baseline.

Lengths vary per example (n pairs in [min_pairs, max_pairs], or a length in [min_len, max_len]),
and sequences are right-padded with `PAD` = 0 to the task's longest, so a batch mixes lengths:
the variable-length condition of the chapter's 12.5.1.

Token ids: 0 padding, 1 separator, 2 .. 2 + K - 1 the class tokens (values / markers), the rest
keys or distractors. Inputs are float32 ids (a `data.Dataset` holds floating inputs; ids are
exact), labels int32 in [0, K).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ml_practical.data import Dataset

PAD, SEP, FIRST_CLASS_TOKEN = 0, 1, 2
RULES = ("majority", "retrieval")

__all__ = ["PAD", "RULES", "SEP", "SequenceSpec", "load_sequences", "make_sequences"]


@dataclasses.dataclass(frozen=True)
class SequenceSpec:
    """What to generate.

    Attributes:
      rule: "retrieval" or "majority" (module docstring).
      num_classes: K, the classes (value / marker tokens).
      vocab_size: ids in [0, vocab_size); retrieval needs vocab_size - 2 - K >= max_pairs keys.
      min_pairs, max_pairs: retrieval: pairs per sequence (length 2 n + 2).
      min_len, max_len: majority: sequence length before padding.
      tight: majority: a runner-up class with exactly one occurrence fewer than the label's
        (otherwise the others' counts are uniform below it).
    """

    rule: str = "retrieval"
    num_classes: int = 4
    vocab_size: int = 32
    min_pairs: int = 3
    max_pairs: int = 8
    min_len: int = 8
    max_len: int = 24
    tight: bool = False

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"sequences.rule: unknown {self.rule!r}; expected one of {list(RULES)}")
        if self.num_classes < 2:
            raise ValueError(f"sequences.num_classes: {self.num_classes}; expected >= 2")
        free = self.vocab_size - FIRST_CLASS_TOKEN - self.num_classes
        if self.rule == "retrieval":
            if not 1 <= self.min_pairs <= self.max_pairs:
                raise ValueError(f"sequences.min_pairs / max_pairs: {self.min_pairs} / "
                                 f"{self.max_pairs}; expected 1 <= min_pairs <= max_pairs")
            if free < self.max_pairs:
                raise ValueError(f"sequences.vocab_size: {self.vocab_size} leaves {free} key "
                                 f"tokens for up to {self.max_pairs} distinct keys per sequence")
        else:
            if not 2 <= self.min_len <= self.max_len:
                raise ValueError(f"sequences.min_len / max_len: {self.min_len} / {self.max_len}; "
                                 "expected 2 <= min_len <= max_len")
            if free < 1:
                raise ValueError(f"sequences.vocab_size: {self.vocab_size} leaves no distractor "
                                 "token")

    @property
    def length(self) -> int:
        """The padded length of every sequence."""
        return 2 * self.max_pairs + 2 if self.rule == "retrieval" else self.max_len


def _retrieval(spec: SequenceSpec, n: int, rng: np.random.Generator):
    x = np.full((n, spec.length), PAD, np.int64)
    y = rng.integers(0, spec.num_classes, n)
    first_key = FIRST_CLASS_TOKEN + spec.num_classes
    num_keys = spec.vocab_size - first_key
    pairs = rng.integers(spec.min_pairs, spec.max_pairs + 1, n)
    for i in range(n):
        p = pairs[i]
        keys = first_key + rng.choice(num_keys, size=p, replace=False)
        values = rng.integers(0, spec.num_classes, p)
        q = rng.integers(p)
        values[q] = y[i]  # the queried pair carries the label; the others are random classes
        x[i, 0:2 * p:2] = keys
        x[i, 1:2 * p:2] = FIRST_CLASS_TOKEN + values
        x[i, 2 * p] = SEP
        x[i, 2 * p + 1] = keys[q]
    return x, y


def _majority(spec: SequenceSpec, n: int, rng: np.random.Generator):
    x = np.full((n, spec.length), PAD, np.int64)
    y = rng.integers(0, spec.num_classes, n)
    first_distractor = FIRST_CLASS_TOKEN + spec.num_classes
    lengths = rng.integers(spec.min_len, spec.max_len + 1, n)
    for i in range(n):
        length = lengths[i]
        top = rng.integers(1, max(2, length // 3) + 1)  # the label's count
        counts = rng.integers(0, top, spec.num_classes)  # every other class strictly fewer
        if spec.tight and top > 1:
            # The runner-up one short of the label: the count must be exact, not approximate.
            counts[rng.choice([k for k in range(spec.num_classes) if k != y[i]])] = top - 1
        counts[y[i]] = top
        while counts.sum() > length:  # short sequences: thin the others, keep the label's
            j = int(np.argmax(np.where(np.arange(spec.num_classes) == y[i], -1, counts)))
            counts[j] -= 1
        tokens = np.concatenate([np.full(c, FIRST_CLASS_TOKEN + k) for k, c in enumerate(counts)])
        fill = rng.integers(first_distractor, spec.vocab_size, length - len(tokens))
        seq = rng.permutation(np.concatenate([tokens, fill]))
        x[i, :length] = seq
    return x, y


def make_sequences(spec: SequenceSpec, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` examples of `spec`'s task from `seed`: (float32 ids (n, spec.length), int32 labels)."""
    rng = np.random.default_rng(seed)
    x, y = (_retrieval if spec.rule == "retrieval" else _majority)(spec, n, rng)
    return x.astype(np.float32), y.astype(np.int32)


def load_sequences(spec: SequenceSpec, num_train: int, num_val: int, num_test: int,
                   seed: int = 0) -> Dataset:
    """A `data.Dataset` of the task: three independent draws (seeds derived from `seed`), so the
    splits share no generator state; `norm_stats` stay (0, 1) (ids are not normalized)."""
    seeds = np.random.SeedSequence(seed).spawn(3)
    parts = [make_sequences(spec, n, int(s.generate_state(1)[0]))
             for n, s in zip((num_train, num_val, num_test), seeds)]
    (tx, ty), (vx, vy), (sx, sy) = parts
    return Dataset(train_x=tx, train_y=ty, val_x=vx, val_y=vy, test_x=sx, test_y=sy,
                   num_classes=spec.num_classes, name=f"sequences-{spec.rule}")
