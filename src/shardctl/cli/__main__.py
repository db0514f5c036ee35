"""``python -m shardctl.cli``: the same as the ``shardctl`` script."""

from __future__ import annotations

from shardctl.cli.main import main

if __name__ == "__main__":
    main()
