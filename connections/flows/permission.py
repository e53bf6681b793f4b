"""Whether a person may authorize a connection now: asked when a flow starts, and again when it completes, since
the connection (its grant, its token type, whether it is on) or the person's roles may have changed while the
provider waited for them. One rule for the authorization code and the device code alike."""

from django.contrib.auth.models import User

from connections import selectors
from connections.models import Connection


def authorization_refusal(
    connection: Connection, user: User | None, *, device: bool, for_user: bool | None = None
) -> str:
    """Why `user` may not authorize `connection` by this flow (the device code, or the authorization code), in
    words; "" when they may. `for_user`: whether the flow began for the user's own token (None when it is only
    starting), which must still be what the connection gives."""
    reasons = []
    if not connection.is_enabled:
        reasons.append("it is disabled")
    if device and not connection.uses_device_code:
        reasons.append("it does not use the Device Code grant")
    if not device and not connection.uses_authorization_code:
        reasons.append(
            f"it uses the {connection.get_grant_type_display()} grant, which needs nobody to authorize it (use Save "
            "and test connection)"
        )
    if for_user is not None and for_user != connection.is_user_specific:
        reasons.append("its token type changed")
    if user is None or not selectors.user_may_authorize(user, connection):
        who = user.get_username() if user is not None else "the person who started it"
        reasons.append(f"{who} may not authorize it")
    return "; ".join(reasons)
