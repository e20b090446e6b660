"""``flarestream keys``: make the sites' signing keys and show what consumers trust.

::

    flarestream keys generate --site site-1 --site site-2 --out keys/
    flarestream keys list keys/                    # site and key fingerprint
    flarestream keys list keys/ --json > keys.json # one file for every consumer

Each site keeps its ``<site>.key`` (mode 0600) and signs with it
(``AnalyticsSender(signing_key=...)`` or ``FLARESTREAM_SIGNING_KEY``); consumers get
the ``<site>.pub`` files, or the JSON keys file, and verify with ``--verify-keys``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from flarestream.errors import ConfigError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "keys",
        help="make sites' Ed25519 signing keys; list the public keys consumers trust",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    commands = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    gen = commands.add_parser(
        "generate", help="write <site>.key (0600) and <site>.pub for each --site"
    )
    gen.add_argument("--site", action="append", required=True, help="site name (repeatable)")
    gen.add_argument("--out", required=True, help="directory to write the keys to")
    gen.add_argument("--force", action="store_true", help="replace keys that exist")
    gen.set_defaults(func=generate)
    show = commands.add_parser(
        "list", help="the sites and key fingerprints of a keys directory or JSON keys file"
    )
    show.add_argument("keys", help="a directory of <site>.pub files or a JSON keys file")
    show.add_argument(
        "--json", action="store_true", help="print the JSON keys file (for --verify-keys)"
    )
    show.set_defaults(func=list_keys)


def generate(args: argparse.Namespace) -> int:
    from flarestream.signing import check_site, write_key_pair

    sites = [check_site(s) for s in args.site]  # every name checked before any file is made
    if len(set(sites)) != len(sites):
        raise ConfigError("a --site is given twice")
    for site in sites:
        key = write_key_pair(args.out, site, force=args.force)
        print(
            f"{site}: {key.fingerprint}: {key.source} (the site's, keep it there) and "
            f"{os.path.join(args.out, site)}.pub (for consumers)"
        )
    return 0


def list_keys(args: argparse.Namespace) -> int:
    from flarestream.signing import PublicKeys

    keys = PublicKeys.load(args.keys)
    if args.json:
        json.dump(keys.to_json(), sys.stdout, indent=1, sort_keys=True)
        print()
        return 0
    for site in keys.sites:
        print(f"{site}  {'  '.join(keys.fingerprints(site))}")
    return 0
