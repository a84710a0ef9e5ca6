"""The command lines of the guide (docs/**/*.md) and the README, as argument lists."""

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted((REPO / "docs").rglob("*.md")) + [REPO / "README.md"]
FENCE = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def commands(page: Path) -> list[list[str]]:
    """Every command of every ```bash block, in order: continuation lines joined, comments dropped,
    ``a && b`` split into a and b."""
    found = []
    for block in FENCE.findall(page.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            current: list[str] = []
            for token in tokens + ["&&"]:
                if token in ("&&", ";"):
                    if current:
                        found.append(current)
                    current = []
                else:
                    current.append(token)
    return found
