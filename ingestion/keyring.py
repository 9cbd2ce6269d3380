"""Load the keys the validator needs, and notice when an operator rotates or retires one.

This region's key set and private keys come from its ``keyset_dir``; other regions' *public*
key sets are read only to name the owner of a foreign key id (``key_region_mismatch``). A
region whose key set is not on this host is simply unknown here. ``sotto keys rotate`` and
``retire`` rewrite ``keyset.json`` atomically, so watching its mtime is enough to reload.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from backend import keystore
from ingestion.validator import Keyring
from privacy.errors import ConfigError
from privacy.policy import RegionPolicy

log = structlog.get_logger(__name__)


def load_keyring(policy: RegionPolicy, region: str) -> Keyring:
    own = policy.region(region)
    keyset = keystore.load_keyset(own.keyset_dir)
    owners = {k.key_id: region for k in keyset.keys}
    for name, other in policy.regions.items():
        if name == region:
            continue
        try:
            foreign = keystore.load_keyset(other.keyset_dir)
        except ConfigError:
            continue
        for k in foreign.keys:
            owners.setdefault(k.key_id, name)
    return Keyring(keyset=keyset, private=keystore.load_private_keys(own.keyset_dir), owners=owners)


class KeyWatcher:
    """Reloads the keyring when any region's ``keyset.json`` changes (cheap ``stat`` per batch)."""

    def __init__(self, policy: RegionPolicy, region: str) -> None:
        self._policy = policy
        self._region = region
        self._paths = [Path(r.keyset_dir) / "keyset.json" for r in policy.regions.values()]
        self._stamp = self._stamps()
        self.keyring = load_keyring(policy, region)

    def _stamps(self) -> tuple[tuple[int, int, int], ...]:
        # keyset.json is replaced atomically, so a new inode is the reliable signal
        out = []
        for p in self._paths:
            try:
                st = os.stat(p)
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((-1, -1, -1))
        return tuple(out)

    def changed(self) -> bool:
        """Reload if a key set changed; True when the keyring is new."""
        stamp = self._stamps()
        if stamp == self._stamp:
            return False
        self.keyring = load_keyring(self._policy, self._region)
        self._stamp = stamp
        log.info(
            "keyring_reloaded",
            region=self._region,
            keys={k.key_id: k.status.value for k in self.keyring.keyset.keys},
        )
        return True
