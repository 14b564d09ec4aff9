"""Tools for working on Anting on one's own machine: never part of a running service.

``anting run`` (what ``make run`` runs: a local broker, the topics, the catalog, the
four services supervised, Prometheus, a demo subscription and receiver), the local
KRaft broker launcher behind ``anting kafka`` and the test suite, and the helpers the
tests and benchmarks share.

The runtime packages (``shared``, the wire contract, and ``services``) never import
this package at module level; only the ``anting run`` and ``anting kafka`` commands
import it, inside their functions. The production image copies ``shared/`` and
``services/`` alone, so it does not contain this package, and every other ``anting``
command works without it (tests/stack/test_layers.py holds the line).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["REPO_ROOT", "STATE_DIR"]

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The checkout these tools run from: they need its ``kafka/``, ``ops/`` and samples."""

STATE_DIR = REPO_ROOT / ".local"
"""Local runtime state (the local broker's and Prometheus' data), git-ignored."""
