"""Provider backends: one package per API, each a client (HTTP) and pure transformers."""
