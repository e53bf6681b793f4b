"""manage.py rotate_encryption_key: every secret re-encrypted under the current CRYPTOGRAPHY_KEY, nothing lost.

"Key B" is the current key of the test settings. Data under an old key A (or an unknown key C) is written by the
ORM itself — bulk_create through django-cryptography's own field code — while each encrypted field's FernetBytes
is temporarily replaced by one for that key, built like connections.ops.key_rotation builds previous keys. Swapping
settings.CRYPTOGRAPHY_KEY would not do: django-cryptography derives its key once, and every field captured it
when the models were imported.
"""

import io
import os
import pickle
from contextlib import contextmanager

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.core.management import call_command, load_command_class
from django.core.management.base import CommandError
from django.db import connection as db_connection
from django.db import connections as db_connections
from django.utils import timezone
from django_cryptography.core.signing import FernetSigner
from django_cryptography.utils.crypto import FernetBytes, InvalidToken

from connections.errors import RotationError
from connections.models import AuthorizationRequest, Connection, DeviceAuthorization, OAuthToken, WebhookEndpoint
from connections.ops import key_rotation
from connections.ops.key_rotation import derive_key, encrypted_tables, fernet_for, rotate_encryption_key
from providers.models import Provider

pytestmark = pytest.mark.django_db

KEY_A = "old-key-A-0123456789abcdefghijklmnopqrstuvwxyz"
KEY_C = "unknown-key-C-zyxwvutsrqponmlkjihgfedcba9876543210"
MARKER = "PLAINTEXT-MARKER"  # in every secret, so the raw bytes can be searched for any plaintext

ROLLOVER_FIELDS = ("next_client_secret", "previous_client_secret", "next_private_key", "previous_private_key")
FIELDS = {
    Connection: ("client_secret", "private_key", *ROLLOVER_FIELDS),
    OAuthToken: ("access_token", "refresh_token", "id_token", "extra"),
    AuthorizationRequest: ("code_verifier",),
    DeviceAuthorization: ("device_code",),
    WebhookEndpoint: ("secret",),
}


def secret(kind: str, number: int) -> str:
    return f"{kind}-{number}-{MARKER}-{'x' * (number % 40)}"


@contextmanager
def written_under(monkeypatch, raw_key: str | None = None, *, signing_key: str | None = None):
    """Inside, the ORM encrypts (and decrypts) every encrypted field under another key, as if configured so."""
    with monkeypatch.context() as patch:
        for table in encrypted_tables():
            for column in table.columns:
                current = column._fernet
                key = derive_key(raw_key) if raw_key else current.key
                signer = FernetSigner(signing_key) if signing_key else current.signer
                patch.setattr(column, "_fernet", FernetBytes(key, signer))
        yield


def make_rows(count: int, *, start: int = 0, requests: int = 0) -> dict[tuple, str]:
    """`count` connections, each with a shared token, and `requests` authorization requests, all through the
    ORM's bulk_create (real django-cryptography ciphertexts); returns {(model, pk, field): plaintext}."""
    provider = Provider.objects.get(slug="custom")
    numbers = range(start, start + count)
    connections = Connection.objects.bulk_create(
        Connection(
            name=f"Rotation {n}",
            slug=f"rotation-{n}",
            provider=provider,
            client_id=f"client-{n}",
            client_secret=secret("client", n),
            private_key=secret("key", n),
            **{name: secret(name, n) for name in ROLLOVER_FIELDS},
        )
        for n in numbers
    )
    tokens = OAuthToken.objects.bulk_create(
        OAuthToken(
            connection=connection,
            access_token=secret("access", n),
            refresh_token=secret("refresh", n),
            id_token=secret("id", n) if n % 3 else "",
            extra={"instance_url": secret("extra", n)},
        )
        for n, connection in zip(numbers, connections, strict=True)
    )
    expected = {}
    for n, connection, token in zip(numbers, connections, tokens, strict=True):
        expected[(Connection, connection.pk, "client_secret")] = secret("client", n)
        expected[(Connection, connection.pk, "private_key")] = secret("key", n)
        expected.update({(Connection, connection.pk, name): secret(name, n) for name in ROLLOVER_FIELDS})
        expected[(OAuthToken, token.pk, "access_token")] = secret("access", n)
        expected[(OAuthToken, token.pk, "refresh_token")] = secret("refresh", n)
        expected[(OAuthToken, token.pk, "id_token")] = secret("id", n) if n % 3 else ""
        expected[(OAuthToken, token.pk, "extra")] = {"instance_url": secret("extra", n)}
    if requests:
        user = User.objects.get_or_create(username="rotation-user")[0]
        made = AuthorizationRequest.objects.bulk_create(
            AuthorizationRequest(
                state_digest=f"state-{start}-{n}",
                session_digest="s",
                connection=connections[n],
                user=user,
                for_user=False,
                code_verifier=secret("verifier", n),
                return_url="/",
                expires_at=timezone.now(),
            )
            for n in range(requests)
        )
        expected.update(
            {(AuthorizationRequest, r.pk, "code_verifier"): secret("verifier", n) for n, r in enumerate(made)}
        )
    return expected


def raw_values() -> dict[tuple, bytes]:
    """Every encrypted column as stored, read with plain SQL (no ORM converters)."""
    values = {}
    quote = db_connection.ops.quote_name
    with db_connection.cursor() as cursor:
        for model, names in FIELDS.items():
            columns = [model._meta.get_field(name).column for name in names]
            cursor.execute(f"SELECT id, {', '.join(map(quote, columns))} FROM {quote(model._meta.db_table)}")  # noqa: S608
            for pk, *raws in cursor.fetchall():
                values.update({(model, pk, name): bytes(raw) for name, raw in zip(names, raws, strict=True)})
    return values


def orm_values() -> dict[tuple, str]:
    """Every encrypted column as the ORM reads it, under the current key."""
    values = {}
    for model, names in FIELDS.items():
        for pk, *plain in model.objects.values_list("pk", *names):
            values.update({(model, pk, name): value for name, value in zip(names, plain, strict=True)})
    return values


def decrypts_under(fernet: FernetBytes, raw: bytes, plaintext: str) -> bool:
    try:
        return pickle.loads(fernet.decrypt(raw)) == plaintext  # noqa: S301 - our own test ciphertexts
    except Exception:  # noqa: BLE001 - a wrong key passes the padding check 1 time in 256, and unpickling that
        # garbage can fail in any way (OverflowError, KeyError, ...): each means "not this key", as in _is_pickle
        return False


def current_fernet(model, name: str) -> FernetBytes:
    return model._meta.get_field(name)._fernet


def assert_no_plaintext(raw: dict[tuple, bytes]) -> None:
    assert raw
    assert not [key for key, value in raw.items() if MARKER.encode() in value]


def run(*args: str, **options) -> str:
    out = io.StringIO()
    call_command("rotate_encryption_key", *args, stdout=out, **options)
    return out.getvalue()


def test_the_module_derives_keys_exactly_as_django_cryptography_does():
    derived = derive_key(os.environ["CRYPTOGRAPHY_KEY"])
    assert derived == django_settings.CRYPTOGRAPHY_KEY  # appconf replaced the setting with the derived key
    assert all(column._fernet.key == derived for table in encrypted_tables() for column in table.columns)
    assert {table.label: [c.name for c in table.columns] for table in encrypted_tables()} == {
        model._meta.label: list(names) for model, names in FIELDS.items()
    }


def test_rotation_from_a_previous_key_loses_nothing(monkeypatch, settings):
    with written_under(monkeypatch, KEY_A):
        expected = make_rows(600, requests=30)
    expected.update(make_rows(400, start=600, requests=0))  # already under the current key B
    before = raw_values()
    assert_no_plaintext(before)
    old = fernet_for(KEY_A)
    under_a = {key for key, raw in before.items() if decrypts_under(old, raw, expected[key])}
    # per row: client secret, private key, the four of a rollover, access, refresh, id token, extra
    assert len(under_a) == 600 * (6 + len(ROLLOVER_FIELDS)) + 30

    settings.CRYPTOGRAPHY_KEY_PREVIOUS = [KEY_A]
    output = run()

    assert "connections.AuthorizationRequest: 30/30 (30 re-encrypted, 0 already current)" in output
    assert "connections.Connection: 1000/1000 (600 re-encrypted, 400 already current)" in output
    assert "connections.OAuthToken: 1000/1000 (600 re-encrypted, 400 already current)" in output
    assert orm_values() == expected
    after = raw_values()
    assert_no_plaintext(after)
    for key, raw in after.items():
        assert decrypts_under(current_fernet(key[0], key[2]), raw, expected[key])
        if key in under_a:
            assert raw != before[key]
            assert raw[1:9] == before[key][1:9]  # the original timestamp is kept
        else:
            assert raw == before[key]  # already current: not rewritten

    # A second run finds everything current and writes nothing.
    output = run()
    assert "connections.OAuthToken: 1000/1000 (0 re-encrypted, 1000 already current)" in output
    assert "already under CRYPTOGRAPHY_KEY" in output
    assert raw_values() == after


class Interrupted(Exception):
    pass


def test_an_interrupted_rotation_resumes_where_it_stopped(monkeypatch, settings):
    with written_under(monkeypatch, KEY_A):
        expected = make_rows(1000)
    settings.CRYPTOGRAPHY_KEY_PREVIOUS = [KEY_A]

    def stop_after_three_batches(state):
        if state.label == "connections.Connection" and state.batches == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        rotate_encryption_key(batch_size=100, progress=stop_after_three_batches)

    halfway = raw_values()
    connection_pks = sorted({pk for model, pk, _ in expected if model is Connection})
    old = fernet_for(KEY_A)
    for key, raw in halfway.items():
        done = key[0] is Connection and key[1] in connection_pks[:300]
        fernet = current_fernet(key[0], key[2]) if done else old
        assert decrypts_under(fernet, raw, expected[key]), key

    output = run("--batch-size", "100")
    assert "connections.Connection: 300/1000 (0 re-encrypted, 300 already current)" in output
    assert "connections.Connection: 1000/1000 (700 re-encrypted, 300 already current)" in output
    assert "connections.OAuthToken: 1000/1000 (1000 re-encrypted, 0 already current)" in output
    assert orm_values() == expected
    assert_no_plaintext(raw_values())


def test_a_value_changed_during_rotation_is_not_overwritten(monkeypatch, settings):
    with written_under(monkeypatch, KEY_A):
        expected = make_rows(20)
    settings.CRYPTOGRAPHY_KEY_PREVIOUS = [KEY_A]
    victim = min(pk for model, pk, _ in expected if model is OAuthToken)
    plan_batch = key_rotation._plan_batch

    def plan_then_refresh(table, rows, keyring):
        plan = plan_batch(table, rows, keyring)
        if table.model is OAuthToken and not refreshed:
            # A token refresh commits a new access token between the rotation's read and its write.
            OAuthToken.objects.filter(pk=victim).update(access_token="refreshed-" + MARKER)
            refreshed.append(victim)
        return plan

    refreshed: list[int] = []
    monkeypatch.setattr(key_rotation, "_plan_batch", plan_then_refresh)
    output = run("--batch-size", "5", "--no-color")

    assert refreshed == [victim]
    expected[(OAuthToken, victim, "access_token")] = "refreshed-" + MARKER
    assert orm_values() == expected  # the refreshed token survived; its other columns were rotated next pass
    assert "connections.OAuthToken: 20/20 (20 re-encrypted, 0 already current)" in output
    assert_no_plaintext(raw_values())


def test_a_value_under_an_unknown_key_stops_with_one_clear_error_and_changes_nothing(monkeypatch, settings):
    with written_under(monkeypatch, KEY_A):
        make_rows(30, requests=5)
    with written_under(monkeypatch, KEY_C):
        expected_c = make_rows(3, start=30)
    make_rows(10, start=40)
    before = raw_values()
    settings.CRYPTOGRAPHY_KEY_PREVIOUS = [KEY_A]
    bad = min(pk for model, pk, _ in expected_c if model is Connection)

    with pytest.raises(CommandError) as raised:
        run()
    message = str(raised.value)
    assert f"connections.Connection row id={bad}, column client_secret" in message
    assert "Set CRYPTOGRAPHY_KEY_PREVIOUS to the key it was encrypted under" in message
    assert "Nothing was re-encrypted." in message
    assert "\n" not in message and MARKER not in message
    assert raw_values() == before

    with pytest.raises(CommandError, match=f"row id={bad}"):
        run("--dry-run")
    assert raw_values() == before


def test_without_the_check_pass_only_the_failing_batch_is_left_unwritten(monkeypatch, settings):
    with written_under(monkeypatch, KEY_A):
        expected = make_rows(10)
    with written_under(monkeypatch, KEY_C):
        make_rows(1, start=10)
    settings.CRYPTOGRAPHY_KEY_PREVIOUS = [KEY_A]
    before = raw_values()

    with pytest.raises(RotationError, match="Nothing was written for this batch"):
        rotate_encryption_key(batch_size=4, check_first=False)

    after = raw_values()
    connection_pks = sorted({pk for model, pk, _ in before if model is Connection})
    for pk in connection_pks[:8]:  # the first two batches were committed, under the current key
        key = (Connection, pk, "client_secret")
        assert decrypts_under(current_fernet(Connection, "client_secret"), after[key], expected[key])
    for pk in connection_pks[8:]:  # the third batch (with the bad value) was not written at all
        assert after[(Connection, pk, "client_secret")] == before[(Connection, pk, "client_secret")]
    assert all(after[key] == raw for key, raw in before.items() if key[0] is not Connection)


def test_values_signed_under_an_old_secret_key_need_it_in_secret_key_fallbacks(monkeypatch, settings):
    with written_under(monkeypatch, signing_key="old-django-secret-key-for-signing"):
        expected = make_rows(5)
    before = raw_values()

    with pytest.raises(CommandError, match="SECRET_KEY_FALLBACKS") as raised:
        run()
    assert "signature does not verify under SECRET_KEY" in str(raised.value)
    assert raw_values() == before

    settings.SECRET_KEY_FALLBACKS = ["old-django-secret-key-for-signing"]
    assert "connections.OAuthToken: 5/5 (5 re-encrypted, 0 already current)" in run()
    assert orm_values() == expected


def test_dry_run_counts_and_writes_nothing(monkeypatch, settings):
    with written_under(monkeypatch, KEY_A):
        make_rows(7)
    make_rows(3, start=7)
    before = raw_values()
    settings.CRYPTOGRAPHY_KEY_PREVIOUS = [KEY_A]
    output = run("--dry-run", "--batch-size", "4")
    assert "connections.OAuthToken: 4/10 (4 would be re-encrypted, 0 already current)" in output
    assert "connections.OAuthToken: 10/10 (7 would be re-encrypted, 3 already current)" in output
    assert "Dry run: 14 row(s) would be re-encrypted, 6 already current." in output
    assert raw_values() == before


def test_the_current_key_listed_as_previous_is_refused_in_one_sentence(monkeypatch, settings, capsys):
    make_rows(2)
    before = raw_values()
    settings.CRYPTOGRAPHY_KEY_PREVIOUS = [KEY_A, os.environ["CRYPTOGRAPHY_KEY"]]
    # From the command line (as manage.py runs it): a message and exit code 1, no traceback.
    monkeypatch.setattr(db_connections, "close_all", lambda: None)  # keep the test's transaction usable
    command = load_command_class("connections", "rotate_encryption_key")
    with pytest.raises(SystemExit) as exited:
        command.run_from_argv(["manage.py", "rotate_encryption_key"])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("CommandError: CRYPTOGRAPHY_KEY_PREVIOUS entry 2 is the current CRYPTOGRAPHY_KEY")
    assert "Traceback" not in err
    assert raw_values() == before


def test_batch_size_must_be_positive():
    with pytest.raises(CommandError, match="--batch-size must be 1 or more"):
        run("--batch-size", "0")


def test_wrong_key_garbage_is_never_taken_for_a_value():
    """The MAC is keyed by SECRET_KEY, not CRYPTOGRAPHY_KEY: a wrong CRYPTOGRAPHY_KEY passes it and AES yields
    garbage that has valid padding about once in 256. Such garbage must never count as decrypted."""
    column = OAuthToken._meta.get_field("access_token")
    old, current = fernet_for(KEY_A), column._fernet
    padding_valid = 0
    for number in range(5000):
        raw = old.encrypt(pickle.dumps(secret("access", number)))
        try:
            garbage = current.decrypt(raw)
        except InvalidToken:
            continue
        padding_valid += 1
        assert not key_rotation._is_pickle(garbage)
    assert padding_valid > 0  # expected about 20; the chance of none is about 1e-8
