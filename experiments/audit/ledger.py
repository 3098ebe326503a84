"""Reads the claims ledger (experiments/audit/claims.md): one `Claim` per table row.

The ledger is a copy of the chapter review's claims ledger (../shared/claims.md when this project
was written); its rows are markdown table lines `| ID | Section | Claim | Kind | Check | Status |`
under numbered section headings. The "Status" column holds the reviewer's own quick numpy result
where there is one: ✓ agrees with the chapter, ✗ disagrees, ~ partly.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

LEDGER = pathlib.Path(__file__).with_name("claims.md")
_ID = re.compile(r"^[A-Z]+-\d+$")


@dataclasses.dataclass(frozen=True)
class Claim:
    claim_id: str
    section: str
    claim: str
    kind: str
    criterion: str
    status: str
    group: str  # the ledger's section heading ("3. Dropout ...")

    @property
    def reviewer_symbol(self) -> str | None:
        """✓ / ✗ / ~ when the status holds exactly one of them, else None (mixed or absent)."""
        found = {s for s in "✓✗~" if s in self.status}
        return found.pop() if len(found) == 1 else None


def _cells(line: str) -> list[str]:
    # Split on pipes that are table separators (the text uses "abs(x)", never a bare pipe).
    return [c.strip() for c in line.strip().strip("|").split("|")]


def read(path: pathlib.Path | str = LEDGER) -> list[Claim]:
    """Every claim row of the ledger, in its order.

    Raises:
      ValueError: a row with a malformed id or a wrong number of cells (naming the line), or an
        id that appears twice.
    """
    claims, seen, group = [], set(), ""
    for n, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
        if line.startswith("## "):
            group = line[3:].strip()
        if not line.startswith("| ") or line.startswith("| ID ") or line.startswith("|---"):
            continue
        cells = _cells(line)
        if not _ID.match(cells[0]):
            continue
        if len(cells) != 6:
            raise ValueError(f"{path}:{n}: claim {cells[0]} has {len(cells)} cells; expected 6")
        if cells[0] in seen:
            raise ValueError(f"{path}:{n}: claim {cells[0]} appears twice")
        seen.add(cells[0])
        claims.append(Claim(*cells, group=group))
    return claims
