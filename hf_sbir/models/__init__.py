"""Model families: one folder each (configuration_*.py / modeling_*.py)."""
