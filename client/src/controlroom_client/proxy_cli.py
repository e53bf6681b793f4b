"""controlroom-proxy SLUG METHOD PATH: calls a connection's API through Control Room's proxy and writes the API's
answer body to stdout (CONTROLROOM_URL, CONTROLROOM_KEY); the bot never holds the token."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from controlroom_client._version import __version__
from controlroom_client.client import KEY_ENV, URL_ENV, ControlRoom
from controlroom_client.errors import ControlRoomError, ControlRoomUnreachable, error_from_response
from controlroom_client.proxy import ERROR_HEADER

PROG = "controlroom-proxy"
INTERRUPTED = 130
API_ERROR = 8  # the API answered 4xx or 5xx (its body is still written)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Call a connection's API through Control Room (the token is added there) and write the answer's "
        "body to stdout.",
        epilog=f"environment:\n  {URL_ENV}  Control Room's address\n  {KEY_ENV}  the bot key (crk_...)\n\n"
        f"exit codes: 0 the API answered 1xx-3xx, {API_ERROR} it answered 4xx/5xx, others as controlroom-token's "
        "for Control Room's own refusals",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("slug", help="the connection's slug, e.g. salesforce-prod")
    parser.add_argument("method", help="GET, POST, PUT, PATCH, DELETE ...")
    parser.add_argument("path", help="the API path with its query, e.g. services/data or 'v1.0/me?$select=id'")
    parser.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'", help="a header")
    parser.add_argument("-d", "--data", metavar="FILE", help="send this file as the body ('-': stdin)")
    parser.add_argument("-i", "--include", action="store_true", help="write the status and headers to stderr")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _headers(given: list[str]) -> dict[str, str]:
    headers = {}
    for item in given:
        name, colon, value = item.partition(":")
        if not colon or not name.strip():
            raise SystemExit(f"{PROG}: a header is 'Name: value', not {item!r}")
        headers[name.strip()] = value.strip()
    return headers


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    headers = _headers(args.header)
    body = None
    try:
        if args.data:
            body = sys.stdin.buffer if args.data == "-" else open(args.data, "rb")
        with ControlRoom() as client, client.session(args.slug) as session:
            try:
                response = session.request(args.method.upper(), args.path, data=body, headers=headers, stream=True)
            except OSError as exc:  # requests' errors are OSErrors: the message names no header
                raise ControlRoomUnreachable(f"Cannot reach Control Room at {client.url}: {exc}") from None
            with response:
                if response.headers.get(ERROR_HEADER):
                    raise error_from_response(response)
                if args.include:
                    print(f"HTTP {response.status_code} {response.reason}", file=sys.stderr)
                    for name, value in response.headers.items():
                        print(f"{name}: {value}", file=sys.stderr)
                for chunk in response.iter_content(64 * 1024):
                    sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                return API_ERROR if response.status_code >= 400 else 0
    except ControlRoomError as exc:
        print(f"{PROG}: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return INTERRUPTED
    finally:
        if body is not None and body is not sys.stdin.buffer:
            body.close()


if __name__ == "__main__":
    sys.exit(main())
