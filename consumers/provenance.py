"""Provenance accounting for ``flarestream audit --verify-keys`` (no Kafka, no files).

Per source (topic or archive) and claimed site: records whose signature verifies
under that site's public key, unsigned records, records with a bad signature
(signed with another key, altered, or a malformed header) and records claiming a
site that has no known key. Every record that does not verify is a problem; the
first ``max_listed`` are named with where they are, the site they claim and, when a
known site's key made the signature, that site (a record forged by site A claiming
site B names A). The counts are exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TextIO

from flarestream.consumers.sink import Delivered
from flarestream.signing import PublicKeys, Verdict


@dataclass
class SiteProvenance:
    """Signature checks of one claimed site in one source."""

    source: str
    site: str
    verified: int = 0
    unsigned: int = 0
    bad_signature: int = 0
    unknown_signer: int = 0

    @property
    def failed(self) -> int:
        return self.unsigned + self.bad_signature + self.unknown_signer


class ProvenanceAudit:
    """Feed :meth:`observe` every decoded record of every source."""

    def __init__(self, keys: PublicKeys, max_listed: int = 1000) -> None:
        self.keys = keys
        self.max_listed = max_listed
        self.sites: dict[tuple[str, str], SiteProvenance] = {}
        self.failures: list[dict[str, Any]] = []

    def observe(self, source: str, d: Delivered, where: str) -> Verdict:
        site = d.record.site
        verdict = self.keys.check(site, d.raw, d.headers)
        counts = self.sites.get((source, site))
        if counts is None:
            counts = self.sites[(source, site)] = SiteProvenance(source, site)
        setattr(counts, verdict.value, getattr(counts, verdict.value) + 1)
        if verdict is not Verdict.VERIFIED and len(self.failures) < self.max_listed:
            self.failures.append(
                {
                    "source": source,
                    "where": where,
                    "site": site,
                    "record_id": d.record.record_id,
                    "verdict": verdict.value,
                    "signed_by": self.keys.signer_of(d.raw, d.headers),
                    "reason": self.keys.explain(verdict, site, d.raw, d.headers),
                }
            )
        return verdict

    def failed(self, source: str) -> int:
        return sum(s.failed for s in self.sites.values() if s.source == source)

    def report(self) -> dict[str, Any]:
        """The JSON section: the keys used, counts per source and site, failures."""
        return {
            "keys": self.keys.source,
            "known_sites": self.keys.sites,
            "sites": [
                {
                    "source": s.source,
                    "site": s.site,
                    "verified": s.verified,
                    "unsigned": s.unsigned,
                    "bad_signature": s.bad_signature,
                    "unknown_signer": s.unknown_signer,
                }
                for s in sorted(self.sites.values(), key=lambda s: (s.source != "topic", s.site))
            ],
            "failures": self.failures,
        }


def render_provenance(section: dict[str, Any], out: TextIO, shown: int = 20) -> None:
    """The provenance table and the records that failed, for the audit's text report."""
    print(
        f"\nProvenance (signatures checked against {section['keys']}: "
        f"{len(section['known_sites'])} known sites)",
        file=out,
    )
    header = ("SOURCE", "SITE", "VERIFIED", "UNSIGNED", "BAD-SIGNATURE", "UNKNOWN-SIGNER")
    keys = ("source", "site", "verified", "unsigned", "bad_signature", "unknown_signer")
    rows = [header] + [tuple(str(s[k]) for k in keys) for s in section["sites"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        line = "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
        print(f"  {line}".rstrip(), file=out)
    failures = section["failures"]
    if failures:
        print(f"\nRecords whose provenance fails ({len(failures)} listed)", file=out)
        for f in failures[:shown]:
            print(
                f"  {f['source']}: {f['where']}: record {f['record_id']}: {f['reason']}", file=out
            )
        if len(failures) > shown:
            print(f"  ... {len(failures) - shown} more in the JSON report (--json FILE)", file=out)
