"""The only code that talks to providers: the OAuth client (requests-oauthlib), reading its answers, signed assertions,
discovery."""
