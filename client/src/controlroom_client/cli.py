"""controlroom-token SLUG: prints a valid access token for shell and RPA steps (CONTROLROOM_URL, CONTROLROOM_KEY)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from controlroom_client._version import __version__
from controlroom_client.client import DEFAULT_MIN_VALIDITY, KEY_ENV, URL_ENV, ControlRoom
from controlroom_client.errors import (
    ERRORS_BY_CODE,
    ConfigurationError,
    ControlRoomError,
    ControlRoomUnavailable,
    ControlRoomUnreachable,
    InvalidResponse,
)

PROG = "controlroom-token"
INTERRUPTED = 130


def _exit_codes() -> str:
    rows = [(0, "the token was printed"), (1, "another error"), (2, "wrong arguments")]
    classes: list[type[ControlRoomError]] = [
        ConfigurationError,
        ControlRoomUnreachable,
        InvalidResponse,
        ControlRoomUnavailable,
        *ERRORS_BY_CODE.values(),
    ]
    for cls in classes:
        rows.append((cls.exit_code, cls.code or ""))
    return "\n".join(f"  {code:>3}  {what}" for code, what in sorted(rows))


def _seconds(value: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise argparse.ArgumentTypeError(f"must be whole seconds, 0 or more, not {value!r}")
    return int(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Print a valid access token for a Control Room connection (the token alone, on stdout).",
        epilog=(
            f"environment:\n  {URL_ENV}  Control Room's address, e.g. https://controlroom.example\n"
            f"  {KEY_ENV}  the bot key (crk_...)\n\nexit codes:\n{_exit_codes()}\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("slug", help="the connection's slug, as shown in the admin (e.g. salesforce-prod)")
    parser.add_argument(
        "--min-validity",
        type=_seconds,
        default=DEFAULT_MIN_VALIDITY,
        metavar="SECONDS",
        help=f"refresh first if the token expires sooner (default {DEFAULT_MIN_VALIDITY})",
    )
    parser.add_argument("--force-refresh", action="store_true", help="refresh at the provider now")
    parser.add_argument(
        "--json", action="store_true", help="print the whole answer as JSON (access_token, expires_at, scope...)"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with ControlRoom() as client:
            token = client.get_token(args.slug, min_validity=args.min_validity, force_refresh=args.force_refresh)
    except ControlRoomError as exc:
        print(f"{PROG}: {' '.join(str(exc).split())}", file=sys.stderr)  # one line, for a log
        return exc.exit_code
    except KeyboardInterrupt:
        return INTERRUPTED
    print(json.dumps(token.as_dict()) if args.json else token.access_token)
    return 0
