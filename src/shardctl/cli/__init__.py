"""The ``shardctl`` command line: one module per command family.

``main`` (the click group, with ``run``, ``status``, ``events``, ``config``, ``limiter``,
``sandbox``, ``worker``) lives in :mod:`shardctl.cli.main`; the others register their
commands on it: ``send`` (:mod:`~shardctl.cli.send`), ``keys`` (:mod:`~shardctl.cli.remote`),
``drain``/``restart-workers`` (:mod:`~shardctl.cli.operations`), ``reshard``
(:mod:`~shardctl.cli.reshard`), ``nats`` (:mod:`~shardctl.cli.stream`).  Option types and
the checks made before anything starts are :mod:`~shardctl.cli.params` and
:mod:`~shardctl.cli.preflight`; the displays are :mod:`~shardctl.cli.liveview` and
:mod:`~shardctl.cli.statusview`; the TOML file is :mod:`~shardctl.cli.settings`.
Nothing below ``cli/`` imports it.
"""

from __future__ import annotations

from shardctl.cli.main import exit_code_for, main

__all__ = ["exit_code_for", "main"]
