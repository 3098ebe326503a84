"""Parameter groups: weight-decay and learning-rate multipliers, and freezing, by path rules.

A parameter's path is its keys in the params tree joined by "/" ("conv_0/kernel", "norm_3/scale",
"head/bias"). Three config fields of `optim` (`config.OptimConfig`) select leaves by path, in the
style of big_vision's `wd_mults` / `lr_mults` and `optax.multi_transform` freezing:

  wd_mults  rules "REGEX=MULT": the coefficient of coupled L2 (`l2`) and decoupled decay
            (`weight_decay`) on a leaf is the base coefficient times MULT of the first rule whose
            REGEX matches the whole path (`re.fullmatch`). A leaf no rule matches keeps
            `decay_mask`'s choice (1 for the leaves it selects, 0 for the others).
  lr_mults  rules "REGEX=MULT": the leaf's update is scaled by MULT (first match; 1 when none
            matches): a learning rate of MULT x the schedule's for that leaf.
  freeze    regexes: the leaves they match do not train. Their gradient is replaced by zeros
            before anything else in the chain, so they take no part in clipping's global norm,
            the penalties or the optimizer's moments, and their update is zero (the decoupled
            decay too): `optax.multi_transform` with `optax.set_to_zero`.

A rule that matches no parameter is a config error (`check`), since a misspelt path would
otherwise leave every leaf as it was without a word. With all three empty the optimizer is the
one built before this module existed, transform for transform.

The chapter's recipes as rules: "no decay on BN gamma/beta and biases" is `decay_mask="all"` with
wd_mults=("norm_.*=0", ".*/bias=0") (or the default `decay_mask="kernels"`); "L2 on dense layers
only, not on embeddings" is wd_mults=("(dense|head).*/kernel=1", ".*=0").
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import jax

from ml_practical.fields import ConfigError
from ml_practical.losses import path_names

PyTree = Any


def leaf_path(path) -> str:
    """A jax key path as "a/b/c" (an nnx Variable's trailing "value" dropped: `losses.path_names`)."""
    return "/".join(path_names(path))


def paths(params: PyTree) -> list[str]:
    """The path of every leaf of `params`, in tree order."""
    return [leaf_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


@dataclasses.dataclass(frozen=True)
class Rule:
    pattern: str
    mult: float

    def matches(self, path: str) -> bool:
        return re.fullmatch(self.pattern, path) is not None


def parse_rules(rules: Sequence[str], field: str) -> tuple[Rule, ...]:
    """ "REGEX=MULT" strings as Rules; one ConfigError line naming `field` for a bad one."""
    out = []
    for i, text in enumerate(rules):
        pattern, sep, mult = str(text).rpartition("=")
        if not sep or not pattern:
            raise ConfigError(f"{field}[{i}]: {text!r}; expected 'REGEX=MULT', e.g. "
                              "'.*/bias=0'")
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"{field}[{i}]: {pattern!r} is not a regular expression "
                              f"({e})") from None
        try:
            value = float(mult)
        except ValueError:
            raise ConfigError(f"{field}[{i}]: multiplier {mult!r} of {text!r}; expected a "
                              "number >= 0") from None
        if not value >= 0:
            raise ConfigError(f"{field}[{i}]: multiplier {value!r}; expected a number >= 0")
        out.append(Rule(pattern, value))
    return tuple(out)


def parse_freeze(patterns: Sequence[str], field: str = "optim.freeze") -> tuple[Rule, ...]:
    """Regexes of frozen leaves (as Rules of multiplier 0)."""
    out = []
    for i, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"{field}[{i}]: {pattern!r} is not a regular expression "
                              f"({e})") from None
        out.append(Rule(str(pattern), 0.0))
    return tuple(out)


def _first(rules: Sequence[Rule], path: str) -> Rule | None:
    return next((r for r in rules if r.matches(path)), None)


@dataclasses.dataclass(frozen=True)
class Groups:
    """The resolved rules of one optim section; every function of params is static in the paths.

    Attributes:
      wd_rules, lr_rules, frozen: parsed `wd_mults`, `lr_mults`, `freeze`.
      decay_default: `decay_mask` as a function params -> bool pytree (the leaves no wd rule
        matches).
    """

    wd_rules: tuple[Rule, ...] = ()
    lr_rules: tuple[Rule, ...] = ()
    frozen: tuple[Rule, ...] = ()
    decay_default: Any = None

    @property
    def active(self) -> bool:
        return bool(self.wd_rules or self.lr_rules or self.frozen)

    def is_frozen(self, params: PyTree) -> PyTree:
        return _map_paths(lambda p: _first(self.frozen, p) is not None, params)

    def decay_mults(self, params: PyTree) -> PyTree:
        default = self.decay_default(params)

        def mult(path, on):
            rule = _first(self.wd_rules, path)
            return rule.mult if rule is not None else (1.0 if on else 0.0)

        flat, treedef = jax.tree_util.tree_flatten_with_path(params)
        ons = jax.tree.leaves(default)
        return jax.tree_util.tree_unflatten(
            treedef, [mult(leaf_path(p), bool(on)) for (p, _), on in zip(flat, ons)])

    def lr_mults(self, params: PyTree) -> PyTree:
        return _map_paths(lambda p: (r.mult if (r := _first(self.lr_rules, p)) else 1.0), params)

    def check(self, params: PyTree) -> None:
        """ConfigError naming the first rule that matches no leaf of `params`."""
        names = paths(params)
        for field, rules in (("optim.wd_mults", self.wd_rules), ("optim.lr_mults", self.lr_rules),
                             ("optim.freeze", self.frozen)):
            for i, rule in enumerate(rules):
                if not any(rule.matches(p) for p in names):
                    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
                    raise ConfigError(f"{field}[{i}]: {rule.pattern!r} matches no parameter; "
                                      f"the parameters are {shown}")

    def describe(self, params: PyTree, *, clip: str = "none") -> dict[str, Any]:
        """Per leaf: its decay multiplier, lr multiplier, frozen, clipped (run file)."""
        frozen = jax.tree.leaves(self.is_frozen(params))
        decay = jax.tree.leaves(self.decay_mults(params))
        lr = jax.tree.leaves(self.lr_mults(params))
        leaves = {}
        for name, f, d, m in zip(paths(params), frozen, decay, lr):
            leaves[name] = {"frozen": bool(f), "decay_mult": 0.0 if f else float(d),
                            "lr_mult": 0.0 if f else float(m),
                            "clipped": clip != "none" and not f}
        return leaves


def _map_paths(fn, params: PyTree) -> PyTree:
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    return jax.tree_util.tree_unflatten(treedef, [fn(leaf_path(p)) for p, _ in flat])


def summary_line(leaves: dict[str, dict[str, Any]]) -> str:
    """One log line: how many leaves are decayed, lr-scaled, frozen and clipped."""
    n = len(leaves)
    decayed = sum(v["decay_mult"] > 0 for v in leaves.values())
    scaled = sum(not v["frozen"] and v["lr_mult"] != 1.0 for v in leaves.values())
    frozen = sum(v["frozen"] for v in leaves.values())
    clipped = sum(v["clipped"] for v in leaves.values())
    return (f"parameter groups: {n} leaves; decayed {decayed}, lr-scaled {scaled}, "
            f"frozen {frozen}, clipped {clipped} (param_groups.json)")
