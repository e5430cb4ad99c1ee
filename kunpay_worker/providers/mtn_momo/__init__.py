"""MTN MoMo Open API (collection)."""
