"""For operators: health, metrics, log context, encryption key rotation."""
