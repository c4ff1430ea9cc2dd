"""Workflows that chain the stages (docs/design.md section 1): ``run`` (``pipeline``), ``sweep``, ``iterate``,
``demo``."""
