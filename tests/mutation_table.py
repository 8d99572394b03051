"""Print the per-module table of a finished ``mutmut run`` (run from the repository root).

Each mutant counts once. Killed: a test failed (or the mutant timed out: an endless loop is
caught too). Survived: every test that reaches the function passed. No tests: no fast test
reaches the function at all. Mutants listed in tests/mutation-equivalent.txt are equivalent
(no test can tell them apart from the original) and are left out of the adjusted rate.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

EQUIVALENT = Path(__file__).with_name("mutation-equivalent.txt")
_LINE = re.compile(r"^\s*(pytest_portlease\.(\w+)\.\S+): (.+)$")


def equivalent_names() -> set[str]:
    if not EQUIVALENT.exists():
        return set()
    lines = EQUIVALENT.read_text(encoding="utf-8").splitlines()
    return {line.split()[0] for line in lines if line.strip() and not line.startswith("#")}


def main() -> int:
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all=true"], capture_output=True, text=True, check=True
    ).stdout
    equivalent = equivalent_names()
    counts: defaultdict[str, Counter[str]] = defaultdict(Counter)
    survivors: list[str] = []
    for line in out.splitlines():
        if not (match := _LINE.match(line)):
            continue
        name, module, status = match.groups()
        if status in ("killed", "timeout"):
            status = "killed"
        elif name in equivalent:
            status = "equivalent"
        else:
            survivors.append(f"{name}: {status}")
        counts[module][status] += 1
    print("| module | mutants | killed | survived | no tests | equivalent | kill rate | adjusted |")
    print("|---|---|---|---|---|---|---|---|")
    for module, c in sorted(counts.items()):
        total = sum(c.values())
        killed = c["killed"]
        rest = total - killed - c["equivalent"]
        adjusted = killed / (total - c["equivalent"]) if total > c["equivalent"] else 1.0
        print(
            f"| `{module}` | {total} | {killed} | {c['survived']} | {c['no tests']} | {c['equivalent']} "
            f"| {killed / total:.0%} | {adjusted:.0%} |"
            + (f" ({rest - c['survived'] - c['no tests']} other)" if rest - c["survived"] - c["no tests"] else "")
        )
    if survivors and "-v" in sys.argv:
        print("\n".join(["", "not listed as equivalent:", *survivors]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
