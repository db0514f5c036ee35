"""The ``shardctl`` command line: the edge where errors become exit codes."""

from __future__ import annotations

import click

from shardctl._version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shardctl")
def main() -> None:
    """Run and operate a Discord gateway shard cluster."""


# -- sandbox command (owned by the sandbox work) ------------------------------------------


# -- limiter command (owned by the limiter work) ------------------------------------------
