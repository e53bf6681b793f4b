"""The token endpoint: bot keys, the one read, issuing, the middleware that answers from memory, the view."""
