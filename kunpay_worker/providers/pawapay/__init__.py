"""PawaPay (v2): deposits, payouts, refunds and provider prediction for MTN and Orange numbers."""
