"""Sealed at rest: every store on the device is encrypted under a key the device holds.

A phone is lost, backed up, rooted or handed in for repair; its SQLite files must then read
as noise. Each store (context, memory, controls, outbox) keeps what it must query on in
clear (row ids, timestamps, keyed tags) and everything else sealed, row by row:

* **master key** — held by a :class:`KeyProvider`, never by a store. On this machine
  :class:`FileKeyProvider` keeps it in a mode-0600 file beside the stores; on a phone the
  Android Keystore or the iOS Keychain plugs in behind the same three members (the key then
  never leaves secure hardware: the provider only wraps and unwraps data keys).
* **data keys** — one random AES-256 key per store and *scope* (a day of recordings, by
  default), wrapped by the master key and kept in the store's ``_sealing_keys`` table.
  Forgetting a scope deletes its wrapped key (crypto-shredding): any copy of its rows left
  behind — a backup, a flash page not yet erased, an old WAL frame — can no longer be read.
* **rows** — AES-256-GCM (from ``cryptography``) under the row's data key, a fresh random
  96-bit nonce per seal, and the row's identity (store, table, row id, field, data key id) as
  associated data, so a sealed value moved to another row or another store fails to open.
* **tags** — HMAC-SHA256 under a per-store random tag key, for lookups by equality (an
  outbox dedupe key) without storing the value.

Each store's ``_sealing_meta`` records which master key sealed it (its public key id) and a
verifier wrapped by that key. Opening a store checks it:

* the key matches: the store opens;
* the key differs and the store was sealed *before* the device's key was made: the key it
  was sealed under is gone (a key file deleted, a keystore reset), so nothing in it can ever
  be read again; the store is wiped and starts empty, with a warning in the log — never a
  crash;
* the key differs and the store is younger than the key: it was sealed under some other
  key that exists (another device's file, a wrong keystore alias): :class:`WrongKeyError`.
  Nothing is read, nothing is wiped.

A file from before sealing (plaintext tables, no ``_sealing_meta``) is wiped the same way
on first open: it holds clear text that must not stay. Reading a row that fails to
authenticate raises :class:`SealedDataError`; no partial data is ever returned.

How a store forgets for real: ``PRAGMA secure_delete=ON`` (SQLite overwrites deleted
content with zeros), the shredded data keys, and a WAL checkpoint that truncates the
write-ahead log (:meth:`Vault.purge`), with a ``VACUUM`` after large purges.

:data:`UNSEALED` is for benchmarks only (``sotto bench edge`` times both): the same tables
and code paths with the plaintext in the ciphertext columns.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import sqlite3
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from privacy.errors import SottoError

log = logging.getLogger(__name__)

PRIVATE_MODE = 0o600
"""A device's database files (and their WAL/SHM side files) are readable by their owner only."""

_SIDE_FILES = ("-wal", "-shm", "-journal")
_NONCE = 12
_KEY_BYTES = 32
_SEALED_V1 = b"\x01"
_UNSEALED_V0 = b"\x00"
_ROW_AAD = b"sotto/seal/row/v1\x00"
_WRAP_AAD = b"sotto/seal/wrap/v1\x00"
_VERIFIER = b"sotto/seal/verifier/v1"
_TAG_SCOPE = "_tag"

_META_SCHEMA = """
CREATE TABLE IF NOT EXISTS _sealing_meta (
    name TEXT NOT NULL PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS _sealing_keys (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    scope TEXT NOT NULL UNIQUE,  -- "day:2026-12-02", "_tag", ...
    wrapped BLOB NOT NULL,  -- the data key, wrapped by the master key
    created_at FLOAT NOT NULL
);
"""


class SealingError(SottoError):
    """A sealed store cannot be opened or read. The message names the store, never data."""


class WrongKeyError(SealingError):
    """The store was sealed under another master key than the one the device holds."""


class SealedDataError(SealingError):
    """A sealed value failed to authenticate (tampered, moved, or its data key is gone)."""


@runtime_checkable
class KeyProvider(Protocol):
    """Where the device's master key lives. It wraps and unwraps data keys; it never hands
    the master key out, so a hardware keystore fits behind it.

    ``key_id`` is a public label of the master key (stores record it, for messages);
    ``created_at`` is when the key was made (POSIX seconds): a store sealed before that under
    another key was sealed under a key that is gone."""

    @property
    def key_id(self) -> str: ...

    @property
    def created_at(self) -> float: ...

    def wrap(self, key: bytes, context: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes: ...


class _AeadKeyProvider:
    """Wrapping with AES-256-GCM under a master key held in this process's memory."""

    def __init__(self, master: bytes, key_id: str, created_at: float) -> None:
        self._aead = AESGCM(master)
        self._key_id = key_id
        self._created_at = created_at

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def created_at(self) -> float:
        return self._created_at

    def wrap(self, key: bytes, context: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, key, _WRAP_AAD + context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        try:
            return self._aead.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], _WRAP_AAD + context)
        except (InvalidTag, ValueError):
            raise WrongKeyError("a data key does not unwrap under this master key") from None


class EphemeralKeyProvider(_AeadKeyProvider):
    """A random master key in RAM only: for in-memory stores and tests."""

    def __init__(self) -> None:
        super().__init__(AESGCM.generate_key(256), secrets.token_hex(8), time.time())

    def __repr__(self) -> str:
        return f"EphemeralKeyProvider(key_id={self.key_id!r})"


_KEY_MAGIC = b"SOTTO-DEVICE-KEY-V1\n"
_KEY_ID_BYTES = 8
_KEY_HEAD = struct.Struct(f">{_KEY_ID_BYTES}sd")  # key id, created_at
_KEY_FILE_BYTES = len(_KEY_MAGIC) + _KEY_HEAD.size + _KEY_BYTES


class FileKeyProvider(_AeadKeyProvider):
    """The master key in a file readable by its owner only (mode 0600), created if missing.

    Format: a magic line, an 8-byte public key id, the creation time (a big-endian double),
    the 32-byte key. Creation is atomic (written to a temporary file, then linked into place
    only if no key appeared meanwhile), so stores opened at once agree on one key. A key file
    with group or other permission bits is tightened to 0600 (and logged); one that is
    unreadable as a key (truncated, corrupt) counts as lost: a new key replaces it, and the
    stores sealed under the old one reset.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        super().__init__(*self._load_or_create())

    def __repr__(self) -> str:
        return f"FileKeyProvider(path={str(self.path)!r}, key_id={self.key_id!r})"

    def _load_or_create(self) -> tuple[bytes, str, float]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raw = None
        if raw is not None:
            if len(raw) == _KEY_FILE_BYTES and raw.startswith(_KEY_MAGIC):
                _restrict(self.path, warn=True)
                key_id, created_at = _KEY_HEAD.unpack_from(raw, len(_KEY_MAGIC))
                return raw[-_KEY_BYTES:], key_id.hex(), created_at
            log.warning("device key file %s is not a key; replacing it (stores reset)", self.path)
            self.path.unlink()
        else:
            log.info("no device key at %s; creating one", self.path)
        return self._create()

    def _create(self) -> tuple[bytes, str, float]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        master, key_id, created_at = (
            AESGCM.generate_key(256),
            os.urandom(_KEY_ID_BYTES),
            time.time(),
        )
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
        try:
            os.write(fd, _KEY_MAGIC + _KEY_HEAD.pack(key_id, created_at) + master)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, self.path)  # fails if another opener created the key meanwhile
        except FileExistsError:
            os.unlink(tmp)
            return self._load_or_create()
        os.unlink(tmp)
        return master, key_id.hex(), created_at


class Unsealed:
    """No encryption at all: the baseline ``sotto bench edge`` compares sealed stores with.
    Never for a device (a file it writes is wiped when opened with a real key)."""

    def __repr__(self) -> str:
        return "UNSEALED"


UNSEALED = Unsealed()
Keys = KeyProvider | Unsealed


def default_keys(db_path: Path) -> FileKeyProvider:
    """The key a store uses when given none: ``device.key`` beside its file."""
    return FileKeyProvider(db_path.parent / "device.key")


# --- files ------------------------------------------------------------------------------------


def _restrict(path: Path, *, warn: bool = False) -> None:
    """Drop group/other permissions from ``path`` if it exists (older files were 0644)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    # PermissionError: not our file, nothing we can fix here; SQLite then decides access.
    if mode & 0o077:
        if warn:
            log.warning("%s was readable by others (mode %o); now 0600", path, mode & 0o777)
        with suppress(PermissionError):
            path.chmod(PRIVATE_MODE)


def connect_private(path: Path, schema: str) -> sqlite3.Connection:
    """Open (creating with mode 0600 if missing) the SQLite file ``path`` and apply ``schema``.

    Why each setting:

    - the file is created by :func:`os.open` with mode 0600 before SQLite touches it, so no
      byte is ever written to a world-readable file; SQLite creates the WAL and SHM side files
      with the main file's mode, and any side file left by an older version is tightened too;
    - ``secure_delete``: deleted rows are overwritten with zeros, not left in free pages;
    - WAL with ``synchronous=FULL``: a committed transaction survives a power cut, which is
      what "commit before send" relies on;
    - ``isolation_level=None``: the stores issue ``BEGIN IMMEDIATE``/``COMMIT`` themselves,
      so a read-then-write (dedupe check, then insert) holds the write lock throughout;
    - ``check_same_thread=False``: the objects are shared across threads (a fleet pumps from
      a background thread); callers serialize access with their own lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_MODE)
    os.close(fd)
    _restrict(path)
    for suffix in _SIDE_FILES:
        _restrict(path.with_name(path.name + suffix))
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        _apply(conn, schema)
    except BaseException:
        conn.close()
        raise
    for suffix in _SIDE_FILES:  # created by the first transaction; belt and braces
        _restrict(path.with_name(path.name + suffix))
    return conn


def _apply(conn: sqlite3.Connection, schema: str) -> None:
    statements = [s for s in schema.split(";") if s.strip()]
    if not statements:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in statements:
            conn.execute(statement)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def open_sealed(
    path: str | Path,
    schema: str,
    *,
    store: str,
    keys: Keys | None,
    legacy: Callable[[sqlite3.Connection], list[Any]] | None = None,
) -> tuple[sqlite3.Connection, Vault, list[Any]]:
    """Open a store's file (:func:`connect_private`), check or set up its sealing, then apply
    ``schema``. ``keys`` None means :func:`default_keys`. ``":memory:"`` stays in RAM.

    A store sealed under a lost key is wiped first (logged); a store sealed under another,
    existing key raises :class:`WrongKeyError`. A file from before sealing is read with
    ``legacy`` (when given), then wiped: the rows it returned come back as the third value,
    for the store to seal again."""
    if keys is None:
        keys = EphemeralKeyProvider() if str(path) == ":memory:" else default_keys(Path(path))
    if str(path) == ":memory:":
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA secure_delete=ON")
    else:
        conn = connect_private(Path(path), "")
    try:
        carried = _check(conn, store, keys, str(path), legacy)
        _apply(conn, _META_SCHEMA + schema)
        vault = Vault(conn, store, keys)
    except BaseException:
        conn.close()
        raise
    return conn, vault, carried


def _meta(conn: sqlite3.Connection) -> dict[str, bytes] | None:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "_sealing_meta" not in tables:
        return None
    return {n: bytes(v) for n, v in conn.execute("SELECT name, value FROM _sealing_meta")}


def _check(
    conn: sqlite3.Connection,
    store: str,
    keys: Keys,
    where: str,
    legacy: Callable[[sqlite3.Connection], list[Any]] | None,
) -> list[Any]:
    meta = _meta(conn)
    user_tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    if meta is None or "mode" not in meta:
        if not user_tables:
            return []
        carried = legacy(conn) if legacy is not None else []
        _wipe(
            conn, f"{store} store at {where} is from before sealing: {len(carried)} rows resealed"
        )
        return carried
    if isinstance(keys, Unsealed):
        if meta["mode"] != b"unsealed":
            raise WrongKeyError(f"{store} store at {where} is sealed; no key given")
        return []
    if meta["mode"] != b"sealed":
        _wipe(conn, f"{store} store at {where} was written unsealed")
        return []
    try:
        ok = keys.unwrap(meta["verifier"], _context(store, "_verifier")) == _VERIFIER
    except WrongKeyError:
        ok = False
    if ok:
        return []
    sealed_by = meta.get("key_id", b"?").decode(errors="replace")
    (sealed_at,) = struct.unpack(">d", meta.get("sealed_at", struct.pack(">d", 0.0)))
    if sealed_at < keys.created_at:
        _wipe(
            conn,
            f"{store} store at {where} was sealed under device key {sealed_by}, which is "
            f"lost (the device's key {keys.key_id} is newer than the store)",
        )
        return []
    raise WrongKeyError(
        f"{store} store at {where} is sealed under device key {sealed_by}, "
        f"not {keys.key_id}; nothing was read"
    )


def _wipe(conn: sqlite3.Connection, reason: str) -> None:
    """Drop every table (zeroed: secure_delete), compact the file and empty the WAL."""
    log.warning("%s; the file is wiped", reason)
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table in tables:
            conn.execute(f'DROP TABLE "{table}"')
        with suppress(sqlite3.OperationalError):  # only there if a table used AUTOINCREMENT
            conn.execute("DELETE FROM sqlite_sequence")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _context(store: str, scope: str) -> bytes:
    return f"{store}\x00{scope}".encode()


# --- the vault ----------------------------------------------------------------------------------


class Vault:
    """The sealing of one open store: its data keys, row sealing, tags and purging.

    Made by :func:`open_sealed`. Its methods run inside the caller's transaction; use
    :meth:`write` for the transactions that seal (a rolled-back transaction then also drops
    the data keys it created from the vault's cache). Not thread-safe by itself: the stores
    call it under their own lock.
    """

    def __init__(self, conn: sqlite3.Connection, store: str, keys: Keys) -> None:
        self._conn = conn
        self.store = store
        self._keys = keys
        self.sealed = not isinstance(keys, Unsealed)
        self._aeads: dict[int, AESGCM] = {}
        self._created: list[int] = []
        self._tag_key = b""
        self._init_meta()

    def __repr__(self) -> str:
        return f"Vault(store={self.store!r}, sealed={self.sealed})"

    def _init_meta(self) -> None:
        with self.write():  # under the write lock: two openers of a new file agree
            if "mode" not in (_meta(self._conn) or {}):
                rows: list[tuple[str, bytes]] = [
                    ("mode", b"sealed" if self.sealed else b"unsealed")
                ]
                if isinstance(self._keys, KeyProvider):
                    verifier = self._keys.wrap(_VERIFIER, _context(self.store, "_verifier"))
                    rows += [
                        ("key_id", self._keys.key_id.encode()),
                        ("sealed_at", struct.pack(">d", time.time())),
                        ("verifier", verifier),
                    ]
                self._conn.executemany(
                    "INSERT INTO _sealing_meta (name, value) VALUES (?, ?)", rows
                )
            if self.sealed:
                self._tag_key = self._data_key(_TAG_SCOPE)[1]

    # --- transactions ----------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), rolled back on error."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            for key_id in self._created:
                self._aeads.pop(key_id, None)
            self._created.clear()
            raise
        self._conn.execute("COMMIT")
        self._created.clear()

    # --- data keys ---------------------------------------------------------------------------

    def _data_key(self, scope: str) -> tuple[int, bytes]:
        """The data key of ``scope`` (created and wrapped if new): its id and its bytes for
        the tag key; row keys are cached as AEAD objects only."""
        assert isinstance(self._keys, KeyProvider)
        row = self._conn.execute(
            "SELECT id, wrapped FROM _sealing_keys WHERE scope = ?", (scope,)
        ).fetchone()
        if row is not None:
            return int(row[0]), self._keys.unwrap(bytes(row[1]), _context(self.store, scope))
        key = AESGCM.generate_key(256)
        cur = self._conn.execute(
            "INSERT INTO _sealing_keys (scope, wrapped, created_at) VALUES (?, ?, "
            "CAST(strftime('%s', 'now') AS FLOAT))",
            (scope, self._keys.wrap(key, _context(self.store, scope))),
        )
        assert cur.lastrowid is not None
        key_id = int(cur.lastrowid)
        self._created.append(key_id)
        return key_id, key

    def _key_for(self, scope: str) -> int:
        """The id of ``scope``'s data key, created if the scope has none. Looked up in the
        file every time (one indexed read), not cached: another process (``sotto device
        forget``) may have shredded it meanwhile, and a row sealed under a shredded key
        could never be read."""
        row = self._conn.execute(
            "SELECT id FROM _sealing_keys WHERE scope = ?", (scope,)
        ).fetchone()
        if row is not None and int(row[0]) in self._aeads:
            return int(row[0])
        key_id, key = self._data_key(scope)
        self._aeads[key_id] = AESGCM(key)
        return key_id

    def _aead(self, key_id: int) -> AESGCM:
        aead = self._aeads.get(key_id)
        if aead is None:
            assert isinstance(self._keys, KeyProvider)
            row = self._conn.execute(
                "SELECT scope, wrapped FROM _sealing_keys WHERE id = ?", (key_id,)
            ).fetchone()
            if row is None:
                raise SealedDataError(f"{self.store}: data key {key_id} is gone (shredded)")
            key = self._keys.unwrap(bytes(row[1]), _context(self.store, row[0]))
            aead = self._aeads[key_id] = AESGCM(key)
        return aead

    # --- sealing -----------------------------------------------------------------------------

    def seal(
        self, table: str, row_id: int, data: bytes, *, scope: str, field: str = "row"
    ) -> tuple[int, bytes]:
        """Seal ``data`` for ``table`` row ``row_id`` under ``scope``'s data key; returns the
        data key id (store it with the row, for shredding) and the sealed bytes."""
        if not self.sealed:
            return 0, _UNSEALED_V0 + data
        key_id = self._key_for(scope)
        nonce = os.urandom(_NONCE)
        aad = self._aad(table, row_id, field, key_id)
        return key_id, _SEALED_V1 + nonce + self._aead(key_id).encrypt(nonce, data, aad)

    def open(
        self, table: str, row_id: int, key_id: int, blob: bytes, *, field: str = "row"
    ) -> bytes:
        """The data sealed for this row; :class:`SealedDataError` if it does not authenticate."""
        blob = bytes(blob)
        if not self.sealed:
            if blob[:1] != _UNSEALED_V0:
                raise SealedDataError(f"{self.store}: a sealed value in an unsealed store")
            return blob[1:]
        if blob[:1] != _SEALED_V1 or len(blob) < 1 + _NONCE + 16:
            raise SealedDataError(f"{self.store}.{table}: a value that is not sealed")
        aad = self._aad(table, row_id, field, key_id)
        try:
            return self._aead(key_id).decrypt(blob[1 : 1 + _NONCE], blob[1 + _NONCE :], aad)
        except InvalidTag:
            raise SealedDataError(
                f"{self.store}.{table} row {row_id} does not authenticate"
            ) from None

    def _aad(self, table: str, row_id: int, field: str, key_id: int) -> bytes:
        return _ROW_AAD + f"{self.store}\x00{table}\x00{row_id}\x00{field}\x00{key_id}".encode()

    def tag(self, value: str) -> bytes:
        """A keyed 16-byte tag of ``value`` for equality lookups (the value itself when
        unsealed)."""
        if not self.sealed:
            return value.encode()
        return hmac.new(self._tag_key, value.encode(), hashlib.sha256).digest()[:16]

    # --- forgetting --------------------------------------------------------------------------

    def shred_unused(self, used: Sequence[tuple[str, str]]) -> int:
        """Delete the data keys no row references any more (``used``: ``(table, column)`` pairs
        holding data key ids, best indexed); returns how many. Call inside a write
        transaction."""
        if not self.sealed:
            return 0
        unused = "".join(
            f' AND NOT EXISTS (SELECT 1 FROM "{t}" WHERE "{c}" = _sealing_keys.id)' for t, c in used
        )
        gone = self._conn.execute(
            f"SELECT id, scope FROM _sealing_keys WHERE scope != ?{unused}", (_TAG_SCOPE,)
        ).fetchall()
        if gone:
            self._conn.executemany(
                "DELETE FROM _sealing_keys WHERE id = ?", [(i,) for i, _ in gone]
            )
            for key_id, _ in gone:
                self._aeads.pop(int(key_id), None)
        return len(gone)

    def purge(self, *, vacuum: bool = False) -> None:
        """After deletes: fold the WAL into the file and truncate it (its frames hold the
        deleted rows' old pages), optionally ``VACUUM`` first. Outside any transaction."""
        if vacuum:
            self._conn.execute("VACUUM")
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


# --- payloads -----------------------------------------------------------------------------------


def pack(*fields: bytes | None) -> bytes:
    """Length-prefixed fields (None kept distinct from empty), for sealing several values as
    one.

    >>> unpack(pack(b"a", None, b""))
    [b'a', None, b'']
    """
    out = bytearray()
    for f in fields:
        if f is None:
            out += b"\x00"
        else:
            out += b"\x01" + struct.pack(">I", len(f)) + f
    return bytes(out)


def unpack(data: bytes) -> list[bytes | None]:
    fields: list[bytes | None] = []
    at = 0
    while at < len(data):
        if data[at] == 0:
            fields.append(None)
            at += 1
            continue
        (n,) = struct.unpack_from(">I", data, at + 1)
        fields.append(bytes(data[at + 5 : at + 5 + n]))
        at += 5 + n
    return fields
