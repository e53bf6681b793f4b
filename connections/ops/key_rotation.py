"""Re-encrypt every django-cryptography column under the current CRYPTOGRAPHY_KEY (`manage.py rotate_encryption_key`).

What django-cryptography (django-cryptography-5 2.0.3) writes for an `encrypt(...)` field, and so what this module
reads and writes, byte for byte:

    0x80 | 8-byte big-endian timestamp | 16-byte IV | AES-CBC(PKCS7(pickle.dumps(value))) | HMAC-SHA256 of all before

- The AES key is not CRYPTOGRAPHY_KEY itself: django_cryptography.conf derives it once, when the app loads, with
  PBKDF2-HMAC(CRYPTOGRAPHY_DIGEST, salt CRYPTOGRAPHY_SALT, 30000 iterations), and overwrites
  settings.CRYPTOGRAPHY_KEY with the derived bytes. Every encrypted field captured its FernetBytes (`field._fernet`)
  at import time, so `field._fernet` *is* the current key as far as the ORM is concerned: we encrypt with it and
  compare against it, and never touch settings or django-cryptography's module state. Previous keys are derived
  here the same way (`derive_key`) into separate FernetBytes objects (`fernet_for`).
- The HMAC key is Django's SECRET_KEY (FernetSigner's default), not CRYPTOGRAPHY_KEY. So the MAC says nothing
  about which CRYPTOGRAPHY_KEY a value was written under: decrypting with a wrong CRYPTOGRAPHY_KEY passes the MAC
  and yields AES garbage, which has valid PKCS7 padding about once in 256 tries. A value therefore only counts as
  decrypted under a key when the plaintext is also a well-formed pickle (`_is_pickle`), which garbage practically
  never is. Values signed under a SECRET_KEY_FALLBACKS key are accepted and re-signed with SECRET_KEY.

The rotation works on raw column bytes, in primary-key batches, each batch's writes in one short transaction,
with one conditional UPDATE per row (WHERE each rewritten column still holds the bytes read), so a value that a
token refresh replaced meanwhile is never overwritten with stale data: that row is read again in a later pass.
"""

import io
import pickle
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from django.apps import apps
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, models, router, transaction
from django.db.models import F, Value
from django.db.models.expressions import ExpressionWrapper
from django.utils.encoding import force_bytes
from django_cryptography.core.signing import BadSignature, FernetSigner
from django_cryptography.fields import EncryptedMixin
from django_cryptography.utils.crypto import FernetBytes, InvalidToken

from connections.errors import RotationError, UndecryptableValue

# Hard-coded in django_cryptography.conf.CryptographyConf.configure (salt, digest and backend are settings).
PBKDF2_ITERATIONS = 30000
DEFAULT_BATCH_SIZE = 500
# Rows whose conditional UPDATE lost to a concurrent write are re-read this many times before giving up.
MAX_RETRY_PASSES = 5

_HEADER = struct.Struct(">cQ")  # FernetSigner: version byte, timestamp


@dataclass
class TableProgress:
    label: str
    total: int
    dry_run: bool = False
    processed: int = 0
    reencrypted: int = 0
    current: int = 0
    vanished: int = 0
    batches: int = 0

    def __str__(self) -> str:
        verb = "would be re-encrypted" if self.dry_run else "re-encrypted"
        text = f"{self.label}: {self.processed}/{max(self.total, self.processed)} ({self.reencrypted} {verb}, "
        text += f"{self.current} already current"
        if self.vanished:
            text += f", {self.vanished} deleted meanwhile"
        return text + ")"


@dataclass(frozen=True)
class EncryptedTable:
    model: type[models.Model]
    columns: tuple[EncryptedMixin, ...]

    @property
    def label(self) -> str:
        return self.model._meta.label


@dataclass
class Keyring:
    """The previous CRYPTOGRAPHY_KEYs (derived) and signers for SECRET_KEY_FALLBACKS, tried after the current."""

    previous_keys: tuple[bytes, ...] = ()
    fallback_signers: tuple[FernetSigner, ...] = ()
    _cache: dict = field(default_factory=dict, repr=False)

    def candidates(self, column: EncryptedMixin) -> list[tuple[FernetSigner, list[FernetBytes]]]:
        """Per signer, the column's own (SECRET_KEY) first, the FernetBytes to try, the column's own first."""
        found = self._cache.get(id(column))
        if found is None:
            current: FernetBytes = column._fernet
            found = [(current.signer, [current] + [FernetBytes(key, current.signer) for key in self.previous_keys])]
            for signer in self.fallback_signers:
                found.append((signer, [FernetBytes(key, signer) for key in (current.key, *self.previous_keys)]))
            self._cache[id(column)] = found
        return found


class _CryptographySettings(Protocol):
    """The settings django_cryptography.conf (a django-appconf AppConf) adds to django.conf.settings when it loads,
    with its defaults: django-stubs knows only those of controlroom.settings."""

    CRYPTOGRAPHY_DIGEST: hashes.HashAlgorithm
    CRYPTOGRAPHY_SALT: bytes  # its configure_salt makes bytes of the setting
    CRYPTOGRAPHY_BACKEND: Any


def derive_key(raw_key: str | bytes) -> bytes:
    """The AES key django-cryptography derives from a CRYPTOGRAPHY_KEY value (same KDF, salt, digest, rounds)."""
    conf = cast(_CryptographySettings, settings)
    digest = conf.CRYPTOGRAPHY_DIGEST
    kdf = PBKDF2HMAC(
        algorithm=digest,
        length=digest.digest_size,
        salt=force_bytes(conf.CRYPTOGRAPHY_SALT),
        iterations=PBKDF2_ITERATIONS,
        backend=conf.CRYPTOGRAPHY_BACKEND,
    )
    return kdf.derive(force_bytes(raw_key))


def fernet_for(raw_key: str | bytes, *, signing_key: str | bytes | None = None) -> FernetBytes:
    """A FernetBytes for another CRYPTOGRAPHY_KEY (signed with SECRET_KEY unless told), built without global state."""
    return FernetBytes(derive_key(raw_key), FernetSigner(signing_key or settings.SECRET_KEY))


def _as_list(value: str | bytes | Iterable[str | bytes] | None) -> list[str | bytes]:
    """A setting of keys, given as one key or as a list of them."""
    if not value:
        return []
    if isinstance(value, str | bytes):
        return [value]
    return [key for key in value if key]


def encrypted_tables(using: str = DEFAULT_DB_ALIAS) -> list[EncryptedTable]:
    """Every managed model with django-cryptography columns of its own (a parent's are rotated on the parent)."""
    tables = []
    for model in apps.get_models():
        meta = model._meta
        if meta.proxy or not meta.managed or not router.allow_migrate_model(using, model):
            continue
        columns = tuple(f for f in meta.local_concrete_fields if isinstance(f, EncryptedMixin))
        if columns:
            tables.append(EncryptedTable(model, columns))
    return sorted(tables, key=lambda table: table.label)


def build_keyring(tables: Sequence[EncryptedTable]) -> Keyring:
    """Derive the previous keys; refuse a current key that is also listed as previous (see the command's help)."""
    current_keys = {force_bytes(column._fernet.key) for table in tables for column in table.columns}
    current_keys.add(force_bytes(settings.CRYPTOGRAPHY_KEY))  # already the derived key (appconf replaced it)
    previous: list[bytes] = []
    for position, raw in enumerate(_as_list(getattr(settings, "CRYPTOGRAPHY_KEY_PREVIOUS", [])), start=1):
        derived = derive_key(raw)
        if derived in current_keys:
            raise RotationError(
                f"CRYPTOGRAPHY_KEY_PREVIOUS entry {position} is the current CRYPTOGRAPHY_KEY: list only the keys you "
                "are rotating away from (if you meant to rotate, set CRYPTOGRAPHY_KEY to the new key first)."
            )
        if derived not in previous:
            previous.append(derived)
    fallbacks = []
    for raw in _as_list(getattr(settings, "SECRET_KEY_FALLBACKS", [])):
        if force_bytes(raw) != force_bytes(settings.SECRET_KEY):
            fallbacks.append(FernetSigner(raw))
    return Keyring(tuple(previous), tuple(fallbacks))


class _ValueOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain values only (str, bytes, numbers, containers, a few stdlib value types): no code runs."""

    ALLOWED = {
        "datetime": {"datetime", "date", "time", "timedelta", "timezone"},
        "decimal": {"Decimal"},
        "uuid": {"UUID"},
        "builtins": {"set", "frozenset", "bytearray", "complex"},
        "_codecs": {"encode"},  # protocol 2 pickles bytes this way
        "collections": {"OrderedDict"},
    }

    def find_class(self, module: str, name: str) -> Any:
        if name in self.ALLOWED.get(module, ()):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a plain value")


def _is_pickle(data: bytes) -> bool:
    """Whether a decryption result is a complete pickle (so the key was right), not padding-valid AES garbage."""
    if len(data) < 3 or data[0] != 0x80 or not 2 <= data[1] <= pickle.HIGHEST_PROTOCOL or data[-1:] != pickle.STOP:
        return False
    stream = io.BytesIO(data)
    try:
        _ValueOnlyUnpickler(stream).load()
    except Exception:  # noqa: BLE001 - garbage can fail in any way the unpickler can; all mean "not this key"
        return False
    return stream.tell() == len(data)


def _reencrypt(raw: bytes, column: EncryptedMixin, keyring: Keyring, label: str, pk: Any) -> bytes | None:
    """None when `raw` is already under the current keys; else the same plaintext and timestamp, encrypted by
    the column's own FernetBytes exactly as the ORM would. Raises UndecryptableValue when no key fits."""
    signature_ok = False
    for signer_index, (signer, fernets) in enumerate(keyring.candidates(column)):
        try:
            signer.unsign(raw)
        except BadSignature:
            continue
        signature_ok = True
        for key_index, fernet in enumerate(fernets):
            try:
                plaintext = fernet.decrypt(raw)
            except (InvalidToken, BadSignature, ValueError):
                continue
            if not _is_pickle(plaintext):
                continue
            if signer_index == 0 and key_index == 0:
                return None
            timestamp = _HEADER.unpack_from(raw)[1]  # kept, so a field's ttl means what it meant
            new = column._fernet.encrypt_at_time(plaintext, timestamp)
            if column._fernet.decrypt(new) != plaintext:  # cannot happen; never write what would not read back
                raise RotationError(f"{label} row id={pk}, column {column.name}: re-encryption did not read back.")
            return new
    raise UndecryptableValue(label, pk, column.name, signature_ok=signature_ok)


def _raw(column: EncryptedMixin) -> ExpressionWrapper:
    # The same column typed as a plain BinaryField: the SQL is unchanged ("table"."column"), but the ORM applies
    # BinaryField's (no-op) converters instead of the encrypted field's from_db_value, so values_list() yields
    # the stored ciphertext and filter() can compare it (the encrypted field itself only supports isnull).
    return ExpressionWrapper(F(column.attname), output_field=models.BinaryField())


def _aliases(table: EncryptedTable) -> dict[str, ExpressionWrapper]:
    return {f"_raw_{column.attname}": _raw(column) for column in table.columns}


def _plan_batch(
    table: EncryptedTable, rows: Iterable[tuple], keyring: Keyring
) -> tuple[list[tuple[Any, dict[str, tuple[bytes, bytes]]]], int]:
    """From (pk, raw...) rows: the rows to rewrite as (pk, {attname: (old, new)}), and how many are current.
    Raises before anything is written when a value fits no key."""
    plan, current = [], 0
    for pk, *raws in rows:
        changes = {}
        for column, raw in zip(table.columns, raws, strict=True):
            if raw is None:
                continue
            raw = bytes(raw)
            new = _reencrypt(raw, column, keyring, table.label, pk)
            if new is not None:
                changes[column.attname] = (raw, new)
        if changes:
            plan.append((pk, changes))
        else:
            current += 1
    return plan, current


def _write_batch(table: EncryptedTable, plan: list, using: str) -> list:
    """One conditional UPDATE per row, all in one transaction; returns the pks whose bytes changed meanwhile."""
    conflicted = []
    manager = table.model._base_manager.db_manager(using)
    with transaction.atomic(using=using):
        for pk, changes in plan:
            still = {f"_raw_{attname}": old for attname, (old, _) in changes.items()}
            aliases = {name: expr for name, expr in _aliases(table).items() if name in still}
            new_values = {
                attname: Value(new, output_field=models.BinaryField()) for attname, (_, new) in changes.items()
            }
            updated = manager.filter(pk=pk).alias(**aliases).filter(**still).update(**new_values)
            if not updated:
                conflicted.append(pk)
    return conflicted


def _rotate_table(
    table: EncryptedTable,
    keyring: Keyring,
    *,
    batch_size: int,
    dry_run: bool,
    using: str,
    progress: Callable[[TableProgress], None] | None,
) -> TableProgress:
    manager = table.model._base_manager.db_manager(using)
    pk_name = table.model._meta.pk.attname
    names = list(_aliases(table))
    state = TableProgress(table.label, total=manager.count(), dry_run=dry_run)

    def batch(rows: list[tuple]) -> list:
        plan, current = _plan_batch(table, rows, keyring)
        conflicted = [] if dry_run else _write_batch(table, plan, using)
        state.current += current
        state.reencrypted += len(plan) - len(conflicted)
        state.processed += len(rows) - len(conflicted)
        state.batches += 1
        if progress:
            progress(state)
        return conflicted

    def select():
        return manager.annotate(**_aliases(table)).order_by(pk_name)

    retry: list = []
    last = None
    while True:
        queryset = select() if last is None else select().filter(pk__gt=last)
        rows = list(queryset.values_list(pk_name, *names)[:batch_size])
        if not rows:
            break
        retry += batch(rows)
        if len(rows) < batch_size:
            break
        last = rows[-1][0]

    if progress and not state.batches:  # an empty table: report it once all the same
        progress(state)

    for _ in range(MAX_RETRY_PASSES):
        if not retry:
            break
        pending, retry = retry, []
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            rows = list(select().filter(pk__in=chunk).values_list(pk_name, *names))
            state.vanished += len(chunk) - len(rows)
            state.total -= len(chunk) - len(rows)
            if rows:
                retry += batch(rows)
    if retry:
        raise RotationError(
            f"{table.label}: {len(retry)} row(s) kept changing while being re-encrypted (ids {sorted(retry)[:10]}); "
            "run the command again."
        )
    return state


def rotate_encryption_key(
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
    check_first: bool = True,
    using: str = DEFAULT_DB_ALIAS,
    progress: Callable[[TableProgress], None] | None = None,
    tables: Sequence[EncryptedTable] | None = None,
) -> list[TableProgress]:
    """Re-encrypt every encrypted column of every row under the current key; returns per-table counts.

    With `check_first` (the command always does), a read-only pass over every table first makes sure every value
    decrypts under some key, so a missing key stops the run before anything is written. `progress` is called after
    each batch of the writing pass (after its transaction committed); an exception it raises stops the run there,
    like an interruption would, and a later run continues. Raises RotationError for a configuration problem or a
    value that fits no key.
    """
    if batch_size < 1:
        raise RotationError("--batch-size must be 1 or more.")
    tables = list(encrypted_tables(using) if tables is None else tables)
    keyring = build_keyring(tables)
    if check_first and not dry_run:
        try:
            for table in tables:
                _rotate_table(table, keyring, batch_size=batch_size, dry_run=True, using=using, progress=None)
        except UndecryptableValue as error:
            raise RotationError(f"{error} Nothing was re-encrypted.") from None
    try:
        return [
            _rotate_table(table, keyring, batch_size=batch_size, dry_run=dry_run, using=using, progress=progress)
            for table in tables
        ]
    except UndecryptableValue as error:
        if dry_run:
            raise
        # Only without check_first, or when a bad value was written while this ran.
        raise RotationError(
            f"{error} Nothing was written for this batch; the batches before it stay rotated."
        ) from None
