"""``python -m pytest_portlease``: the ``portlease`` console script."""

from __future__ import annotations

from .cli import main_exit

if __name__ == "__main__":
    main_exit()
