"""One module per message kind: commands (collect), polls, requests (rpc)."""
