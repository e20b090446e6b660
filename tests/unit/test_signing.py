"""Signing and verifying records without a broker: keys on disk, the signature header,
forgeries, bad key files failing at construction, the sender's headers, the archive's
headers and the audit's provenance accounting."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from flarestream.consumers.archive_files import iter_rows, open_writer, row_headers, to_row
from flarestream.consumers.loop import LoopConfig
from flarestream.consumers.provenance import ProvenanceAudit, render_provenance
from flarestream.consumers.sink import Delivered
from flarestream.deploy import free_port
from flarestream.errors import ConfigError, DeliveryError
from flarestream.producer import AnalyticsSender
from flarestream.producer import sender as sender_module
from flarestream.schemas import AnalyticsDataType, Record, default_codec
from flarestream.signing import (
    ENV_SIGNING_KEY,
    SIGNATURE_HEADER,
    PublicKeys,
    SigningKey,
    Verdict,
    write_key_pair,
)


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    for site in ("site-a", "site-b"):
        write_key_pair(tmp_path / "keys", site)
    return tmp_path / "keys"


def record_bytes(site: str, seq: int = 0) -> bytes:
    r = Record(site, "job", "0123456789abcdef", seq, 1_700_000_000_000, "loss",
               AnalyticsDataType.SCALAR, 0.5, step=seq)  # fmt: skip
    return default_codec().encode(r)


def signed(key: SigningKey, value: bytes) -> list[tuple[str, bytes | None]]:
    return [(SIGNATURE_HEADER, key.sign(value))]


# -- keys on disk ------------------------------------------------------------------------
def test_generated_private_key_is_owner_only_and_its_public_key_verifies(keydir: Path) -> None:
    private = keydir / "site-a.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = SigningKey.load(private)
    keys = PublicKeys.load(keydir)
    assert keys.sites == ["site-a", "site-b"]
    assert keys.fingerprints("site-a") == [key.fingerprint]
    value = record_bytes("site-a")
    assert keys.check("site-a", value, signed(key, value)) is Verdict.VERIFIED
    assert len(key.sign(value)) == 64


def test_generate_refuses_to_replace_a_key_without_force(keydir: Path) -> None:
    before = (keydir / "site-a.key").read_bytes()
    with pytest.raises(ConfigError, match="exists"):
        write_key_pair(keydir, "site-a")
    assert (keydir / "site-a.key").read_bytes() == before
    write_key_pair(keydir, "site-a", force=True)
    assert (keydir / "site-a.key").read_bytes() != before


@pytest.mark.parametrize("site", ["../evil", "a/b", "a\\b", ".hidden", "bell\x07", "", " "])
def test_site_names_that_are_no_file_name_are_refused(tmp_path: Path, site: str) -> None:
    with pytest.raises(ConfigError):
        write_key_pair(tmp_path, site)
    assert not any(tmp_path.iterdir())


def test_json_keys_file_verifies_like_the_directory(keydir: Path, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps(PublicKeys.load(keydir).to_json()))
    keys = PublicKeys.load(keys_file)
    key = SigningKey.load(keydir / "site-b.key")
    value = record_bytes("site-b")
    assert keys.check("site-b", value, signed(key, value)) is Verdict.VERIFIED
    single = {"site-b": base64.b64encode(key.public_bytes).decode()}  # one key as a string
    keys_file.write_text(json.dumps(single))
    assert PublicKeys.load(keys_file).check("site-b", value, signed(key, value)) is Verdict.VERIFIED


def test_a_site_with_two_public_keys_verifies_either_while_it_rotates(keydir: Path) -> None:
    old = SigningKey.load(keydir / "site-a.key")
    new = SigningKey.generate()
    with open(keydir / "site-a.pub", "ab") as fo:
        fo.write(b"# the new key\n" + new.public_pem())
    keys = PublicKeys.load(keydir)
    value = record_bytes("site-a")
    assert len(keys.fingerprints("site-a")) == 2
    for k in (old, new):
        assert keys.check("site-a", value, signed(k, value)) is Verdict.VERIFIED


# -- verdicts ----------------------------------------------------------------------------
def test_record_signed_by_a_claiming_b_fails_and_the_reason_names_a(keydir: Path) -> None:
    keys = PublicKeys.load(keydir)
    a = SigningKey.load(keydir / "site-a.key")
    forged = record_bytes("site-b")
    headers = signed(a, forged)
    verdict = keys.check("site-b", forged, headers)
    assert verdict is Verdict.BAD_SIGNATURE
    reason = keys.explain(verdict, "site-b", forged, headers)
    assert reason.startswith("signature does not verify for site 'site-b'")
    assert "key of site 'site-a'" in reason
    assert keys.signer_of(forged, headers) == "site-a"


def test_altered_record_no_longer_verifies(keydir: Path) -> None:
    keys = PublicKeys.load(keydir)
    a = SigningKey.load(keydir / "site-a.key")
    value = record_bytes("site-a", seq=1)
    headers = signed(a, value)
    altered = record_bytes("site-a", seq=2)
    assert keys.check("site-a", altered, headers) is Verdict.BAD_SIGNATURE
    assert "altered" in keys.explain(Verdict.BAD_SIGNATURE, "site-a", altered, headers)


def test_unsigned_unknown_and_malformed_signatures_each_fail(keydir: Path) -> None:
    keys = PublicKeys.load(keydir)
    a = SigningKey.load(keydir / "site-a.key")
    value = record_bytes("site-a")
    sig = a.sign(value)
    assert keys.check("site-a", value, None) is Verdict.UNSIGNED
    assert keys.check("site-a", value, [("other", b"x")]) is Verdict.UNSIGNED
    assert "unsigned" in keys.explain(Verdict.UNSIGNED, "site-a", value, None)
    stranger = record_bytes("site-z")
    z = SigningKey.generate()
    assert keys.check("site-z", stranger, signed(z, stranger)) is Verdict.UNKNOWN_SIGNER
    assert "unknown signer" in keys.explain(Verdict.UNKNOWN_SIGNER, "site-z", stranger, None)
    for bad in (
        [(SIGNATURE_HEADER, sig), (SIGNATURE_HEADER, sig)],  # doubled: which one counts?
        [(SIGNATURE_HEADER, sig[:63])],
        [(SIGNATURE_HEADER, None)],
    ):
        assert keys.check("site-a", value, bad) is Verdict.BAD_SIGNATURE
        assert "must appear once" in keys.explain(Verdict.BAD_SIGNATURE, "site-a", value, bad)
    assert keys.check("site-a", value, {SIGNATURE_HEADER: sig}) is Verdict.VERIFIED


def test_signature_covers_a_domain_prefix_not_the_bare_value(keydir: Path) -> None:
    """A signature the same key made over the bare bytes (another protocol) is refused."""
    keys = PublicKeys.load(keydir)
    raw_key = serialization.load_pem_private_key((keydir / "site-a.key").read_bytes(), None)
    value = record_bytes("site-a")
    bare = raw_key.sign(value)  # type: ignore[union-attr,call-arg]
    assert keys.check("site-a", value, [(SIGNATURE_HEADER, bare)]) is Verdict.BAD_SIGNATURE


# -- bad key files fail at construction --------------------------------------------------
def _ec_pem(private: bool) -> bytes:
    k = ec.generate_private_key(ec.SECP256R1())
    if private:
        return k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    return k.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "No such file"),
        (b"not a key", "not a PEM private key"),
        (b"PUBLIC", "is a public key"),
        (b"EC", "not an Ed25519 private key"),
        (b"ENCRYPTED", "is encrypted"),
    ],
)
def test_sender_with_a_bad_signing_key_fails_at_construction(
    tmp_path: Path, keydir: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "bad.key"
    if content == b"PUBLIC":
        path.write_bytes((keydir / "site-a.pub").read_bytes())
    elif content == b"EC":
        path.write_bytes(_ec_pem(private=True))
    elif content == b"ENCRYPTED":
        key = SigningKey.generate()._key
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"pw"),
            )
        )
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        AnalyticsSender(site="site-a", job_id="j", bootstrap_servers="127.0.0.1:1",
                        signing_key=path)  # fmt: skip


def test_key_directory_without_the_sites_key_fails_at_construction(keydir: Path) -> None:
    with pytest.raises(ConfigError, match=r"site-c\.key"):
        AnalyticsSender(site="site-c", job_id="j", bootstrap_servers="127.0.0.1:1",
                        signing_key=keydir)  # fmt: skip


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (None, "No such file"),
        (lambda p: p.mkdir(), "holds no <site>.pub"),
        (lambda p: p.write_text("{"), "not JSON"),
        (lambda p: p.write_text("[]"), "must be a JSON object"),
        (lambda p: p.write_text('{"s": "***"}'), "not base64"),
        (lambda p: p.write_text('{"s": "AAAA"}'), "not a raw 32-byte"),
        (lambda p: p.write_text('{"a/b": "AAAA"}'), "path separator"),
        (lambda p: (p.mkdir(), (p / "s.pub").write_bytes(_ec_pem(False))), "not an Ed25519"),
        (lambda p: (p.mkdir(), (p / "s.pub").write_text("hello")), "holds no PEM"),
    ],
)
def test_bad_public_keys_fail_when_the_loop_config_is_made(
    tmp_path: Path, write: Any, message: str
) -> None:
    path = tmp_path / "keys"
    if write is not None:
        write(path)
    with pytest.raises(ConfigError, match=message):
        LoopConfig(bootstrap_servers="127.0.0.1:1", verify_keys=path)


# -- the sender --------------------------------------------------------------------------
class RecordingProducer:
    """Stands in for confluent-kafka's Producer: keeps what produce() was given."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes, Any]] = []

    def produce(self, topic: str, value: bytes, key: bytes, headers: Any = None) -> None:
        self.sent.append((value, key, headers))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = -1) -> int:
        return 0

    def __len__(self) -> int:
        return 0


def _recording_sender(**kwargs: Any) -> tuple[AnalyticsSender, RecordingProducer]:
    sender = AnalyticsSender(job_id="j", bootstrap_servers=f"127.0.0.1:{free_port()}", **kwargs)
    real = sender._producer
    with contextlib.suppress(DeliveryError):
        real.flush(0)
    fake = RecordingProducer()
    sender._producer = fake  # type: ignore[assignment]
    return sender, fake


def test_signing_sender_puts_a_verifying_signature_on_every_record(keydir: Path) -> None:
    sender, fake = _recording_sender(site="site-a", signing_key=keydir / "site-a.key")
    assert sender._fastpath is None  # the C path sends no headers: signed records skip it
    sender.add_scalar("loss", 0.25, global_step=1)
    sender.add_text("note", "hello", global_step=1)
    sender.add("acc", 0.9, AnalyticsDataType.METRIC, global_step=1)
    keys = PublicKeys.load(keydir)
    assert len(fake.sent) == 3
    for value, key, headers in fake.sent:
        assert key == b"site-a" and [h[0] for h in headers] == [SIGNATURE_HEADER]
        assert default_codec().decode(value).site == "site-a"
        assert keys.check("site-a", value, headers) is Verdict.VERIFIED


def test_sender_finds_its_key_in_a_directory_or_the_environment(
    keydir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sender, fake = _recording_sender(site="site-b", signing_key=str(keydir))
    assert sender.signing_key is not None
    assert sender.signing_key.source == str(keydir / "site-b.key")
    monkeypatch.setenv(ENV_SIGNING_KEY, str(keydir))
    from_env, fake = _recording_sender(site="site-a")
    from_env.add_scalar("loss", 1.0, global_step=0)
    value, _, headers = fake.sent[0]
    assert PublicKeys.load(keydir).check("site-a", value, headers) is Verdict.VERIFIED
    unsigned, _ = _recording_sender(site="site-a", signing_key=False)  # the env is ignored
    assert unsigned.signing_key is None
    assert (unsigned._fastpath is not None) == (sender_module._fastsend is not None)


def test_sender_without_a_key_sends_no_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_SIGNING_KEY, raising=False)
    sender, fake = _recording_sender(site="site-a")
    assert sender.signing_key is None
    sender.add_text("note", "hello", global_step=1)
    assert fake.sent[0][2] is None


# -- the archive keeps headers -----------------------------------------------------------
@pytest.mark.parametrize("fmt", ["avro", "parquet"])
def test_archive_rows_keep_the_signature_header(keydir: Path, tmp_path: Path, fmt: str) -> None:
    a = SigningKey.load(keydir / "site-a.key")
    value = record_bytes("site-a")
    headers = ((SIGNATURE_HEADER, a.sign(value)), ("empty", None))
    d = Delivered("t", 0, 5, 1, value, default_codec().decode(value), b"site-a", headers)
    path = str(tmp_path / f"f.{fmt}")
    writer = open_writer(fmt, "null" if fmt == "avro" else "none", path, {})
    row = to_row(d)
    writer.append(row, 200)
    writer.finish()
    with open(path, "rb") as fo:
        (back,) = list(iter_rows(fmt, fo))
    assert row_headers(back) == headers
    assert PublicKeys.load(keydir).check("site-a", back["message"], row_headers(back)) is (
        Verdict.VERIFIED
    )


def test_rows_of_archives_written_before_headers_have_none() -> None:
    assert row_headers({"message": b""}) == ()


# -- provenance accounting ---------------------------------------------------------------
def test_provenance_counts_per_site_and_names_the_forged_record(keydir: Path) -> None:
    keys = PublicKeys.load(keydir)
    a = SigningKey.load(keydir / "site-a.key")
    audit = ProvenanceAudit(keys)
    codec = default_codec()

    def deliver(site: str, offset: int, key: SigningKey | None) -> Delivered:
        value = record_bytes(site, offset)
        headers = tuple(signed(key, value)) if key else ()
        return Delivered("t", 0, offset, 1, value, codec.decode(value), None, headers)

    audit.observe("topic", deliver("site-a", 0, a), "t[0]@0")
    audit.observe("topic", deliver("site-b", 1, a), "t[0]@1")  # forged
    audit.observe("topic", deliver("site-b", 2, None), "t[0]@2")
    audit.observe("archive", deliver("site-c", 3, a), "t[0]@3 in f")
    report = audit.report()
    rows = {(s["source"], s["site"]): s for s in report["sites"]}
    assert rows[("topic", "site-a")]["verified"] == 1
    assert rows[("topic", "site-b")]["bad_signature"] == 1
    assert rows[("topic", "site-b")]["unsigned"] == 1
    assert rows[("archive", "site-c")]["unknown_signer"] == 1
    assert audit.failed("topic") == 2 and audit.failed("archive") == 1
    forged = report["failures"][0]
    assert (forged["where"], forged["site"], forged["signed_by"]) == ("t[0]@1", "site-b", "site-a")
    out = io.StringIO()
    render_provenance(report, out)
    assert "t[0]@1" in out.getvalue() and "key of site 'site-a'" in out.getvalue()


# -- the command -------------------------------------------------------------------------
def test_keys_command_generates_and_lists_a_json_keys_file(run_cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "k"
    result = run_cli("keys", "generate", "--site", "s1", "--site", "s2", "--out", str(out))
    assert result.rc == 0, result.err
    assert sorted(os.listdir(out)) == ["s1.key", "s1.pub", "s2.key", "s2.pub"]
    listed = run_cli("keys", "list", str(out), "--json")
    (tmp_path / "keys.json").write_text(listed.out)
    assert PublicKeys.load(tmp_path / "keys.json").sites == ["s1", "s2"]
    again = run_cli("keys", "generate", "--site", "s1", "--out", str(out))
    assert again.rc == 2 and "exists" in again.err
    bad = run_cli("keys", "generate", "--site", "ok", "--site", "a/b", "--out", str(out))
    assert bad.rc == 2 and "path separator" in bad.err and not (out / "ok.key").exists()
