"""Flutterwave v3 (francophone mobile money collections, refunds)."""
