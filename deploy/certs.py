"""Test certificates for the local secure broker: a private CA and the certificates
it signs, written as PEM files. Needs the ``cryptography`` package (the
``flarestream[security]`` extra).

Guarantees:

- Keys are EC P-256, unencrypted PKCS#8 PEM, written with mode 0600 before any
  byte of the key is written (never readable by others, not even briefly).
- A server certificate names its hosts as subject alternative names (IP addresses
  as IP entries), so clients that verify host names (librdkafka and Java do by
  default) accept it for ``127.0.0.1``.
- A client certificate's subject is ``CN=<name>`` and nothing else, so the broker's
  principal mapping rule turns it into ``User:<name>``.
- Validity is explicit: ``not_before``/``not_after`` may be given, e.g. in the past
  to make an expired certificate for a test.

These certificates are for development and tests on one machine; a production
deployment takes its certificates from its own PKI.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flarestream.deploy.access import write_private
from flarestream.errors import ConfigError

DEFAULT_DAYS = 365
CA_CERT, CA_KEY = "ca.pem", "ca.key"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key as files, and the CA certificate that signed it."""

    name: str
    cert: Path  # the leaf certificate (PEM)
    key: Path  # its private key (PKCS#8 PEM, mode 0600)
    ca: Path  # the issuing CA's certificate (PEM)

    def chain_pem(self) -> str:
        """The leaf certificate followed by the CA certificate (PEM text)."""
        return self.cert.read_text() + self.ca.read_text()

    def key_pem(self) -> str:
        """The private key (PEM text): a secret, never print it."""
        return self.key.read_text()


class CertificateAuthority:
    """A self-signed CA kept as ``ca.pem`` + ``ca.key`` in one directory."""

    def __init__(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey):
        self.directory = Path(directory)
        self.certificate = cert
        self._key = key

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT

    @classmethod
    def create(
        cls, directory: Path, name: str = "flarestream test CA", days: int = DEFAULT_DAYS
    ) -> CertificateAuthority:
        """A new CA in ``directory`` (replacing one that was there)."""
        directory = Path(directory)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                critical=True,  # digital signature, certificate and CRL signing only
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        write_private(directory / CA_KEY, _key_pem(key))
        (directory / CA_CERT).write_bytes(_cert_pem(cert))
        return cls(directory, cert, key)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """The CA kept in ``directory``; :class:`ConfigError` if it is missing or broken."""
        directory = Path(directory)
        try:
            cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
            key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"no usable CA in {directory}: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"the CA key in {directory} is not an EC key")
        return cls(directory, cert, key)

    @classmethod
    def open(cls, directory: Path) -> CertificateAuthority:
        """The CA in ``directory``, created there first if there is none."""
        if (Path(directory) / CA_CERT).is_file():
            return cls.load(directory)
        return cls.create(directory)

    def issue(
        self,
        name: str,
        directory: Path | None = None,
        *,
        hosts: Sequence[str] = (),
        client: bool = True,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        days: int = DEFAULT_DAYS,
    ) -> Issued:
        """A certificate with subject ``CN=name`` signed by this CA, written as
        ``<directory>/<name>.pem`` and ``<name>.key`` (directory: the CA's).

        ``hosts`` (DNS names or IP addresses) make it a server certificate as well;
        ``client`` allows TLS client authentication. ``not_before``/``not_after``
        default to 5 minutes ago and ``days`` from now.
        """
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"certificate name {name!r} is not a plain file name")
        directory = Path(directory) if directory is not None else self.directory
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        start = not_before or now - dt.timedelta(minutes=5)
        end = not_after or now + dt.timedelta(days=days)
        if end <= start:
            raise ConfigError(f"certificate {name!r} would end ({end}) before it starts ({start})")
        usages = ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else []) + (
            [ExtendedKeyUsageOID.SERVER_AUTH] if hosts else []
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), False
            )
        )
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(h) for h in hosts]), critical=False
            )
        cert = builder.sign(self._key, hashes.SHA256())
        key_path = write_private(directory / f"{name}.key", _key_pem(key))
        cert_path = directory / f"{name}.pem"
        cert_path.write_bytes(_cert_pem(cert))
        return Issued(name, cert_path, key_path, self.cert_path)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def certificate_validity(path: Path) -> tuple[dt.datetime, dt.datetime]:
    """(not before, not after) of the first certificate in the PEM file ``path``, UTC."""
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    return cert.not_valid_before_utc, cert.not_valid_after_utc
