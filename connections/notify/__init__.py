"""Telling people: the managers' e-mail and the lifecycle webhooks."""
