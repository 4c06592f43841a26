"""Artifact folders: the manifest that describes and verifies them (``manifest``), and ``registry``, which opens
any artifact kind (virtual tokens, SPRING+ tokens with their LoRA, PRAG and Poly-PRAG adapters) for a base model
without the trainer.

Example:
    >>> from spring_core.artifacts.registry import load_spring_model
    >>> sm = load_spring_model("smollm2-135m", "runs/spring-plus")       # LoRA merged, tokens loaded  # doctest: +SKIP
"""
