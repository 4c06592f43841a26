"""The model side of the runtime: loading and the model pool (``loading``), the input layer (``inputs``) with its
healing cache (``healing``), the virtual-token table (``tokens``) and the ``SpringModel`` facade (``spring_model``).

Import from the modules, or the common names from ``spring_core`` itself.
"""
