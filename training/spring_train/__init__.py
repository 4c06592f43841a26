"""spring-rag training side: trainers for virtual tokens and baselines, and the ``spring-rag`` command line."""
