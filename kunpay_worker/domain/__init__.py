"""Pure rules: no I/O here, everything tested with tables."""
