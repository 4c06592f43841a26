"""The ``spring-rag`` command (``spring_cli.main``): runtime commands (``runtime``), training and evaluation
(``training``), parametric RAG (``parametric``), and how refused writes are reported (``refusals``).

Example:
    >>> from spring_cli import main
    >>> main(["info", "smollm2-135m-squad"])        # prints the bundled artifact's manifest
    {...
      "kind": "virtual-tokens",
    ...}
    0
"""

from spring_cli.main import main

__all__ = ["main"]
