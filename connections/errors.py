"""The error an action a person asked for raises: the admin and the views show its message as it is."""


class ConnectionActionError(Exception):
    """An action a person asked for could not be done; `message` says why and what to do."""

    def __init__(self, message: str, *, return_url: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.return_url = return_url
