"""Record provenance: each site signs its records with Ed25519; consumers verify.

The wire contract (records stay byte for byte what they were, so every reader that
ignores headers keeps working):

- The sender signs ``SIGNED_PREFIX + value``, where ``value`` is the message value
  exactly as produced (the Avro single-object encoded record, which names the site).
  The prefix separates these signatures from anything else the same key might sign.
- The 64-byte signature travels in the Kafka header ``flarestream.sig``; exactly one
  such header per message. Another algorithm would get another header name.
- A consumer looks up the public keys of the site the record CLAIMS
  (``record.site``) and accepts the record only when the signature verifies under
  one of them (a site may have several keys while it rotates). A record that site A
  signed but that claims site B fails under B's keys: that is a forgery, and
  :meth:`PublicKeys.explain` names A when A's key verifies it.

Keys: a site's private key is a PEM (PKCS#8, unencrypted) file ``<site>.key``; public
keys reach consumers as a directory of ``<site>.pub`` PEM files (one or more keys
each) or a JSON file ``{"<site>": "<base64 raw key>" | ["...", ...]}``. Loading
checks everything at once and raises :class:`ConfigError` naming the file and what
to do, so a bad key stops a process at start, before any record is sent or written.

Needs the ``cryptography`` package (``pip install 'flarestream[signing]'``), imported
only when a key is loaded or made. Imports no Kafka client.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from flarestream.errors import ConfigError
from flarestream.schemas.record import UNSAFE_NAME_CHARS

log = logging.getLogger("flarestream.signing")

SIGNATURE_HEADER = "flarestream.sig"
SIGNATURE_SIZE = 64
ALGORITHM = "ed25519"
SIGNED_PREFIX = b"flarestream.record.v1\x00"
ENV_SIGNING_KEY = "FLARESTREAM_SIGNING_KEY"
PRIVATE_SUFFIX, PUBLIC_SUFFIX = ".key", ".pub"
EXTRA = "pip install 'flarestream[signing]'"

_PEM_PUBLIC = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)
# as confluent-kafka gives and takes them: a list of (name, value) or a dict
Headers = Union[Sequence[tuple[str, object]], Mapping[str, object], None]  # noqa: UP007


def crypto() -> Any:
    """``cryptography``'s Ed25519 module, or ConfigError naming the extra."""
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise ConfigError(f"signing and verifying records need cryptography: {EXTRA}") from None
    return ed25519


def check_site(site: object) -> str:
    """A site name that is safe as a key file name: ConfigError otherwise."""
    if not isinstance(site, str) or not site.strip():
        raise ConfigError(f"site must be a non-empty string, got {site!r}")
    if UNSAFE_NAME_CHARS.search(site) or site.startswith("."):
        raise ConfigError(
            f"site {site!r} contains a path separator or control character, or starts "
            "with '.'; key files are named after the site"
        )
    return site


def fingerprint(raw_public: bytes) -> str:
    """A short, stable name of a public key: ``ed25519:`` + 16 hex digits of its SHA-256."""
    return f"{ALGORITHM}:{hashlib.sha256(raw_public).hexdigest()[:16]}"


def _raw(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    raw: bytes = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw


class SigningKey:
    """One site's private key. :meth:`sign` returns the 64-byte header value."""

    def __init__(self, private_key: Any, source: str = "(in memory)") -> None:
        if not isinstance(private_key, crypto().Ed25519PrivateKey):
            raise ConfigError(f"{source}: not an Ed25519 private key")
        self._key = private_key
        self._sign = private_key.sign
        self.source = source
        self.public_bytes = _raw(private_key.public_key())

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(crypto().Ed25519PrivateKey.generate(), "(generated)")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SigningKey:
        """Read a PEM private key; ConfigError when it is missing, unreadable, encrypted
        or not Ed25519."""
        crypto()
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization

        where = os.fspath(path)
        try:
            data = Path(where).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"signing key {where}: {exc.strerror or exc}; make one with `flarestream keys "
                "generate --site SITE --out DIR`"
            ) from None
        if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
            raise ConfigError(f"signing key {where} is a public key; give the site's .key file")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise ConfigError(
                f"signing key {where} is encrypted; a site signs unattended, so keep it "
                "unencrypted and readable only by the site's user (mode 0600)"
            ) from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ConfigError(f"signing key {where} is not a PEM private key ({exc})") from None
        if os.name == "posix" and os.stat(where).st_mode & 0o077:
            log.warning("signing key %s is readable by other users; chmod 600 it", where)
        return cls(key, where)

    def sign(self, value: bytes) -> bytes:
        """The signature of one message value (see the module doc)."""
        signature: bytes = self._sign(SIGNED_PREFIX + value)
        return signature

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_bytes)

    def private_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        pem: bytes = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return pem

    def public_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        pem: bytes = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem

    def __repr__(self) -> str:
        return f"SigningKey({self.fingerprint}, from {self.source})"


def write_key_pair(directory: str | os.PathLike[str], site: str, force: bool = False) -> SigningKey:
    """Make a key pair for ``site``: ``<dir>/<site>.key`` (mode 0600) and ``<site>.pub``.
    Refuses to replace an existing key unless ``force`` (records it signed would no
    longer verify)."""
    check_site(site)
    out = Path(directory)
    private, public = out / f"{site}{PRIVATE_SUFFIX}", out / f"{site}{PUBLIC_SUFFIX}"
    if not force and (private.exists() or public.exists()):
        raise ConfigError(f"{private} or {public} exists; keep it, or replace it with --force")
    key = SigningKey.generate()
    try:
        out.mkdir(parents=True, exist_ok=True)
        private.unlink(missing_ok=True)
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fo:
            fo.write(key.private_pem())
        public.write_bytes(key.public_pem())
    except OSError as exc:
        raise ConfigError(f"cannot write keys to {out}: {exc.strerror or exc}") from None
    key.source = str(private)
    return key


def resolve_signing_key(spec: object, site: str) -> SigningKey | None:
    """The key a sender of ``site`` signs with, or None (no signing).

    ``spec``: a :class:`SigningKey`, an Ed25519 private key object, a path to a key
    file, or a directory holding ``<site>.key`` (one directory can serve every site
    of a simulation). None reads ``FLARESTREAM_SIGNING_KEY`` (a file or directory
    again); unset or empty means no signing. False: no signing, whatever the
    environment says."""
    if spec is False:
        return None
    if spec is None:
        spec = os.environ.get(ENV_SIGNING_KEY) or None
        if spec is None:
            return None
    if isinstance(spec, SigningKey):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        if path.is_dir():
            path = path / f"{check_site(site)}{PRIVATE_SUFFIX}"
        return SigningKey.load(path)
    return SigningKey(spec)


class Verdict(enum.Enum):
    """What checking one record's signature found."""

    VERIFIED = "verified"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_SIGNER = "unknown_signer"


def signature_in(headers: Headers) -> bytes | None:
    """The one well-formed signature header, or None: absent, doubled, null or of the
    wrong size (callers tell absent from malformed with :func:`has_signature_header`)."""
    found: object = None
    count = 0
    for name, value in _items(headers):
        if name == SIGNATURE_HEADER:
            count += 1
            found = value
    if count != 1 or not isinstance(found, bytes) or len(found) != SIGNATURE_SIZE:
        return None
    return found


def has_signature_header(headers: Headers) -> bool:
    return any(name == SIGNATURE_HEADER for name, _ in _items(headers))


def _items(headers: Headers) -> Iterable[tuple[str, object]]:
    if headers is None:
        return ()
    return headers.items() if isinstance(headers, Mapping) else headers


class PublicKeys:
    """The public keys of every known site: what consumers verify records against."""

    def __init__(self, keys: Mapping[str, Iterable[bytes]], source: str = "(in memory)") -> None:
        """``keys``: site -> raw 32-byte Ed25519 public keys."""
        ed = crypto()
        from cryptography.exceptions import InvalidSignature

        self._invalid = InvalidSignature
        self.source = source
        self._keys: dict[str, tuple[Any, ...]] = {}
        self._raw: dict[str, tuple[bytes, ...]] = {}
        for site, raws in keys.items():
            raws = tuple(raws)
            try:
                self._keys[site] = tuple(ed.Ed25519PublicKey.from_public_bytes(r) for r in raws)
            except ValueError:
                raise ConfigError(
                    f"{source}: a key of site {site!r} is not a raw 32-byte Ed25519 public key"
                ) from None
            self._raw[site] = raws

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PublicKeys:
        """From a directory of ``<site>.pub`` files or a JSON keys file (see the module
        doc); ConfigError when missing, empty or malformed."""
        where = os.fspath(path)
        p = Path(where)
        if p.is_dir():
            return cls(_read_directory(p), where)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"keys {where}: {exc.strerror or exc}; give a directory of <site>.pub files "
                "or a JSON keys file (`flarestream keys list DIR --json` writes one)"
            ) from None
        return cls(_parse_json(data, where), where)

    @property
    def sites(self) -> list[str]:
        return sorted(self._keys)

    def fingerprints(self, site: str) -> list[str]:
        return [fingerprint(r) for r in self._raw.get(site, ())]

    def to_json(self) -> dict[str, list[str]]:
        """The JSON keys file format: base64 raw keys per site."""
        return {s: [base64.b64encode(r).decode("ascii") for r in self._raw[s]] for s in self.sites}

    def check(self, site: str, value: bytes, headers: Headers) -> Verdict:
        """Whether the record ``value``, claiming ``site``, is signed by that site."""
        signature = signature_in(headers)
        if signature is None:
            return Verdict.BAD_SIGNATURE if has_signature_header(headers) else Verdict.UNSIGNED
        keys = self._keys.get(site)
        if keys is None:
            return Verdict.UNKNOWN_SIGNER
        signed = SIGNED_PREFIX + value
        for key in keys:
            try:
                key.verify(signature, signed)
            except self._invalid:
                continue
            return Verdict.VERIFIED
        return Verdict.BAD_SIGNATURE

    def signer_of(self, value: bytes, headers: Headers) -> str | None:
        """The site whose key made the signature, if any known key did (tries every
        key: for explaining failures, not for the hot path)."""
        signature = signature_in(headers)
        if signature is None:
            return None
        signed = SIGNED_PREFIX + value
        for site, keys in self._keys.items():
            for key in keys:
                try:
                    key.verify(signature, signed)
                except self._invalid:
                    continue
                return site
        return None

    def explain(self, verdict: Verdict, site: str, value: bytes, headers: Headers) -> str:
        """One line for a dead letter or an audit: what is wrong and who signed."""
        if verdict is Verdict.UNSIGNED:
            return (
                f"unsigned: the record claims site {site!r} but has no {SIGNATURE_HEADER} "
                "header, and signatures are required"
            )
        if verdict is Verdict.UNKNOWN_SIGNER:
            return (
                f"unknown signer: no public key for site {site!r} in {self.source}; add "
                f"{site}{PUBLIC_SUFFIX} if the site is genuine"
            )
        if verdict is Verdict.BAD_SIGNATURE:
            if signature_in(headers) is None:
                return (
                    f"signature does not verify for site {site!r}: the {SIGNATURE_HEADER} "
                    f"header must appear once and hold {SIGNATURE_SIZE} bytes"
                )
            signer = self.signer_of(value, headers)
            if signer is not None and signer != site:
                return (
                    f"signature does not verify for site {site!r}: it was signed with the key "
                    f"of site {signer!r} (a record of {signer!r} claiming to be {site!r})"
                )
            return (
                f"signature does not verify for site {site!r}: signed with another key, or "
                "the record was altered"
            )
        return "verified"

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"PublicKeys({len(self._keys)} sites from {self.source})"


def load_public_keys(spec: PublicKeys | str | os.PathLike[str] | None) -> PublicKeys | None:
    """``spec`` as :class:`PublicKeys` (loaded from a path), or None."""
    if spec is None or isinstance(spec, PublicKeys):
        return spec
    return PublicKeys.load(spec)


def _read_directory(directory: Path) -> dict[str, list[bytes]]:
    ed = crypto()
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    keys: dict[str, list[bytes]] = {}
    for path in sorted(directory.glob(f"*{PUBLIC_SUFFIX}")):
        site = path.name[: -len(PUBLIC_SUFFIX)]
        try:
            check_site(site)
            blocks = _PEM_PUBLIC.findall(path.read_bytes())
        except OSError as exc:
            raise ConfigError(f"public key {path}: {exc.strerror or exc}") from None
        if not blocks:
            raise ConfigError(f"public key {path} holds no PEM public key")
        for block in blocks:
            try:
                key = serialization.load_pem_public_key(block)
            except (ValueError, UnsupportedAlgorithm) as exc:
                raise ConfigError(f"public key {path} is unreadable ({exc})") from None
            if not isinstance(key, ed.Ed25519PublicKey):
                raise ConfigError(f"public key {path} is not an Ed25519 key")
            keys.setdefault(site, []).append(_raw(key))
    if not keys:
        raise ConfigError(
            f"keys directory {directory} holds no <site>{PUBLIC_SUFFIX} file; copy each "
            "site's public key there (`flarestream keys generate` makes them)"
        )
    return keys


def _parse_json(data: bytes, where: str) -> dict[str, list[bytes]]:
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise ConfigError(f"keys file {where} is not JSON ({exc})") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f'keys file {where} must be a JSON object {{"site": "base64 key"}}')
    keys: dict[str, list[bytes]] = {}
    for site, value in raw.items():
        check_site(site)
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ConfigError(f"keys file {where}: site {site!r} needs a base64 key or a list")
        try:
            keys[site] = [base64.b64decode(t, validate=True) for t in texts]
        except ValueError:
            raise ConfigError(f"keys file {where}: a key of site {site!r} is not base64") from None
    return keys
