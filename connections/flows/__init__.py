"""How a person authorizes a connection: the authorization code and device code flows, and their failed attempts."""
