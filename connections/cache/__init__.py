"""The token endpoint's answers from memory, and the writes that invalidate them."""
