"""Orange Money Cameroon merchant payment ("mp") API: init → payToken, pay, payment status."""
