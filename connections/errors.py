"""Every exception type of the connections app, in one place; each carries a message fit to show the person or
caller it is for, and never a secret."""

from typing import Any


class ConnectionActionError(Exception):
    """An action a person asked for could not be done; `message` says why and what to do. The admin and the views
    show it as it is."""

    def __init__(self, message: str, *, return_url: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.return_url = return_url


# --- Calls leaving Control Room (connections.outbound, connections.oauth) ------------------------------------------


class OutboundError(Exception):
    """A call leaving Control Room was refused by the outbound policy, or failed on its way (the proxy, the
    deadline). `message` is a sentence for a person; `permanent`: trying again cannot help."""

    def __init__(
        self, message: str, *, error: str, permanent: bool, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error = error
        self.permanent = permanent
        self.status = status
        self.retry_after = retry_after  # seconds the other side asked us to wait (HTTP 429 with Retry-After)


class ProviderError(OutboundError):
    """A call to a provider (connections.oauth) failed, whether the outbound policy refused it, it never arrived,
    or the provider said no.

    `refresh_token`: a new refresh token the failed answer still carried. The provider has rotated to it, so it
    must be kept even though the rest of the answer was unusable.
    """

    def __init__(
        self, message: str, *, error: str, permanent: bool, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, error=error, permanent=permanent, status=status, retry_after=retry_after)
        self.refresh_token = ""

    @classmethod
    def of(cls, exc: OutboundError) -> "ProviderError":
        """The outbound layer's failure, as a failure of the provider call it happened in."""
        if isinstance(exc, ProviderError):
            return exc
        return cls(
            exc.message, error=exc.error, permanent=exc.permanent, status=exc.status, retry_after=exc.retry_after
        )


class TokenGone(ProviderError):
    """The token was disconnected while someone waited for it or refreshed it."""

    def __init__(self) -> None:
        super().__init__("The token was disconnected meanwhile.", error="disconnected", permanent=True)


class CallInTransaction(RuntimeError):
    """A provider was about to be called while a database transaction was open (a programming error)."""


class DeadlinePassed(Exception):
    """The current call's deadline passed before a connection could be used for it."""


class KeyProblem(ValueError):
    """What is wrong with a private key, in words for a person (never the key)."""


class DeliveryFailed(Exception):
    """A webhook delivery was not taken; `retry`: worth trying again."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.message, self.retry = message, retry


# --- The token endpoint (connections.endpoint) ---------------------------------------------------------------------


class TokenRequestError(Exception):
    """A refusal of the token endpoint: its HTTP status, error code and detail (connections/openapi.yaml)."""

    def __init__(self, status: int, error: str, detail: str, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.retry_after = status, error, detail, retry_after
        self.audited = True  # False: a failed authentication counted rather than recorded (connections.audit.events)


class BotKeyRejected(Exception):
    """The presented key cannot be used; the message says why, in words safe to show the caller."""


# --- Operators' commands -------------------------------------------------------------------------------------------


class ConfigError(Exception):
    """A configuration file that cannot be applied: every problem, each with its place in the file."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class DemoProviderError(Exception):
    """`make demo` could not start its provider or set up its connections; the message says why and what to do."""


class RotationError(Exception):
    """A problem the operator must fix; its text is one complete sentence (or two) without secrets."""


class UndecryptableValue(RotationError):
    def __init__(self, label: str, pk: Any, column: str, *, signature_ok: bool) -> None:
        self.label, self.pk, self.column, self.signature_ok = label, pk, column, signature_ok
        where = f"{label} row id={pk}, column {column}"
        if signature_ok:
            message = (
                f"{where}: the value decrypts under neither CRYPTOGRAPHY_KEY nor any key in "
                "CRYPTOGRAPHY_KEY_PREVIOUS. Set CRYPTOGRAPHY_KEY_PREVIOUS to the key it was encrypted under "
                "(comma-separated, newest first) and run the command again."
            )
        else:
            message = (
                f"{where}: the value's signature does not verify under SECRET_KEY or any key in "
                "SECRET_KEY_FALLBACKS (django-cryptography signs with SECRET_KEY), so it was written under "
                "another SECRET_KEY or the stored bytes are damaged. Add the SECRET_KEY it was written under to "
                "SECRET_KEY_FALLBACKS and run the command again."
            )
        super().__init__(message)
