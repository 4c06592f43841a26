"""The decoding modes of ``SpringModel.generate(mode=...)``, defined apart from the code that runs them.

``concat`` reads every passage in one prompt (``SpringModel``); the marginal modes read the passages one by one
and mix them (``spring_core.decoding``). This module imports nothing, so every layer can name the modes.

Example:
    >>> from spring_core.modes import MODES
    >>> MODES[0]
    'concat'
"""

from __future__ import annotations

MODES = ("concat", "rag-token", "rag-sequence", "rag-sequence-fast")
"""``SpringModel.generate(mode=...)``: one prompt with every passage, or marginal decoding over passages."""

MARGINAL_MODES = MODES[1:]
