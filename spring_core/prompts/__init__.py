"""Prompts: the layouts and context formats (``layouts``), where the block goes in a finished prompt
(``placement``), and the catalogue of RAG templates the trainer and the tests use (``templates``).
"""
