"""The audit's vocabulary: a claim of the ledger, a check of it, and what the check found.

The ledger (experiments/audit/claims.md, a copy of the chapter review's claims ledger) lists each
testable claim of the chapter with an id, a section, a kind (a: exact computation, b: property
that fits a unit test, c: experiment at MNIST scale, d: needs data or compute we do not have, a
proxy is given, e: not testable) and a pass criterion. Every claim has exactly one registered
check (`checks.REGISTRY`), one of:

  * `quick`: a function that computes the claim's quantity with this library in seconds on a CPU
    (the audit command runs it every time; tests/test_audit.py runs every one of them);
  * `study`: reads a study's results.json from the studies directory and states the measured
    value with its 95 % CI; without that results.json the finding is "not run" with the command
    that produces it;
  * `untestable`: a claim of kind e (or one this machine cannot test), with the reason and the
    proxy, if any, that another check uses.

A check returns a `Finding`. The verdict is decided by the check's own criterion (the ledger's,
or a stated stricter one), never tuned to agree with the chapter.
"""

from __future__ import annotations

import dataclasses
import pathlib
import json
from collections.abc import Callable, Mapping
from typing import Any

# The verdicts AUDIT.md uses. "not run": a study check whose results.json is absent.
VERDICTS = ("confirmed", "refuted", "partly", "inconclusive", "not testable here", "not run")


@dataclasses.dataclass(frozen=True)
class Finding:
    """What one check found.

    Attributes:
      verdict: one of VERDICTS, against the chapter's claim.
      measured: the measured value(s) in words and numbers, with the CI where there is one
        ("Var(ReLU z)/σ² = 0.3408 (theory 0.3408)").
      ran: what was run, in one line ("1e6 N(0,1) draws through jax.nn.relu").
      ci: (low, high) of the main measured quantity, if it has one.
      artefact: where the evidence lives: a test node id, a results.json path, a module.
      note: anything a reader must know (a caveat, the chapter's error, "newly testable: ...").
    """

    verdict: str
    measured: str
    ran: str
    ci: tuple[float, float] | None = None
    artefact: str = ""
    note: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r}: expected one of {VERDICTS}")


@dataclasses.dataclass(frozen=True)
class Context:
    """What a check may read: the studies' workdirs and the seed of its own random draws."""

    studies: pathlib.Path
    seed: int = 0

    def results(self, study_dir: str) -> dict[str, Any] | None:
        """<studies>/<study_dir>/results.json, or None when it is absent."""
        path = self.studies / study_dir / "results.json"
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def path(self, study_dir: str) -> str:
        return str(self.studies / study_dir / "results.json")


@dataclasses.dataclass(frozen=True)
class Check:
    """The registered check of one claim.

    Attributes:
      claim_id: the ledger id ("INIT-13").
      how: "quick", "study" or "untestable".
      fn: Context -> Finding (None for an untestable claim).
      reason: for an untestable claim, why, and the proxy used elsewhere.
      test: the pytest node id(s) that pin the same property in the test suite, if any.
      reviewer_wrong: why this check's verdict differs from the ledger reviewer's own quick
        numpy result (its ✓ / ✗ / ~), when it does; "" when they agree. tests/test_audit.py
        asserts agreement unless this is given, and then asserts the disagreement.
    """

    claim_id: str
    how: str
    fn: Callable[[Context], Finding] | None = None
    reason: str = ""
    test: str = ""
    reviewer_wrong: str = ""
    study_dir: str = ""
    study_fn: Callable[[Context], Finding] | None = None

    def run(self, ctx: Context) -> Finding:
        """The finding. A quick check with a study (`Registry.superseded_by`) reports the
        study's finding when <studies>/<study_dir>/results.json exists, and its own proxy
        otherwise (the proxy stays a test either way)."""
        if self.how == "untestable":
            return Finding("not testable here", "-", "-", note=self.reason)
        if self.study_fn is not None and ctx.studies is not None \
                and ctx.results(self.study_dir) is not None:
            return self.study_fn(ctx)
        return self.fn(ctx)


class Registry:
    """Claim id -> Check; registering an id twice is an error (one check per claim)."""

    def __init__(self):
        self.checks: dict[str, Check] = {}

    def _add(self, check: Check) -> None:
        if check.claim_id in self.checks:
            raise ValueError(f"claim {check.claim_id}: registered twice")
        self.checks[check.claim_id] = check

    def quick(self, claim_id: str, *, test: str = "", reviewer_wrong: str = ""):
        def wrap(fn):
            self._add(Check(claim_id, "quick", fn, test=test, reviewer_wrong=reviewer_wrong))
            return fn
        return wrap

    def study(self, claim_id: str, *, test: str = "", reviewer_wrong: str = ""):
        def wrap(fn):
            self._add(Check(claim_id, "study", fn, test=test, reviewer_wrong=reviewer_wrong))
            return fn
        return wrap

    def untestable(self, claim_id: str, reason: str) -> None:
        self._add(Check(claim_id, "untestable", reason=reason))

    def superseded_by(self, claim_id: str, study_dir: str,
                      fn: Callable[[Context], Finding]) -> None:
        """A study at the claim's own scale measures what the registered quick check of
        `claim_id` proxies: the audit reports `fn`'s finding once the study has run."""
        check = self.checks.get(claim_id)
        if check is None or check.how != "quick":
            raise ValueError(f"claim {claim_id}: superseded_by needs a registered quick check")
        self.checks[claim_id] = dataclasses.replace(check, study_dir=study_dir, study_fn=fn)

    def replace_with_study(self, claim_id: str, fn: Callable[[Context], Finding], *,
                           test: str = "") -> None:
        """The claim's check becomes the study check `fn` (a claim that was untestable before
        the library could run its study)."""
        if claim_id not in self.checks:
            raise ValueError(f"claim {claim_id}: not registered")
        self.checks[claim_id] = Check(claim_id, "study", fn, test=test)


def not_run(study_dir: str, command: str, ctx: Context) -> Finding:
    """The finding of a study check whose results.json is absent."""
    return Finding("not run", "-", f"needs {ctx.path(study_dir)}", note=f"run: {command}")


def verdict_of(passed: bool, *, partly: bool = False) -> str:
    """"confirmed" when the criterion passes, "partly" when it passes only in part, else "refuted"."""
    return "confirmed" if passed else ("partly" if partly else "refuted")


def ci_text(low: float, high: float, digits: int = 4) -> str:
    return f"95 % CI [{low:.{digits}g}, {high:.{digits}g}]"


def as_mapping(findings: Mapping[str, Finding]) -> dict[str, dict[str, Any]]:
    return {k: dataclasses.asdict(v) for k, v in findings.items()}


# The one registry every checks module adds to (experiments/audit/checks/__init__.py imports them).
REGISTRY = Registry()
