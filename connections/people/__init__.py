"""People: sign-in with the company's identity provider (OpenID Connect), roles from its groups, sessions that end
with the provider's, and managers asking a role's members to authorize a connection."""
