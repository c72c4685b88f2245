#!/usr/bin/env python3
"""A synthetic OSV database in Debian's shape, to time `tools/vulnscan.py` at the size of
osv.dev's Debian export (docs/benchmarks.md): ADVISORIES advisories (default 60,000), 20 %
DSA-like and 80 % tracker-like (`DEBIAN-CVE-…`), spread over Debian 11, 12 and 13, each naming
one source package — this machine's installed source packages (from dpkg-query) and 3,000
names no machine has — with a fixed version for 70 % of them. Seeded: the same file every
run. The advisories are made up; only their shape and number are Debian's.

usage: osv_debian_synthetic.py OUT.zip [ADVISORIES]
"""
import json
import random
import subprocess
import sys
import zipfile


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 60_000
    random.seed(5)
    installed = subprocess.run(
        ["dpkg-query", "-W", "-f=${source:Package}\n"], capture_output=True, text=True, check=True
    ).stdout.split()
    names = sorted(set(installed)) + [f"pkg{i}" for i in range(3000)]
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(count):
            events = [{"introduced": "0"}]
            if random.random() < 0.7:
                events.append({"fixed": f"{random.randint(0, 9)}.{random.randint(0, 30)}-"
                                        f"{random.randint(1, 9)}+deb12u{random.randint(1, 9)}"})
            kind = "DSA" if random.random() < 0.2 else "DEBIAN-CVE"
            advisory = {
                "id": f"{kind}-{i}",
                "upstream": [f"CVE-2099-{i}"],
                "details": "synthetic",
                "affected": [{
                    "package": {"ecosystem": random.choice(["Debian:11", "Debian:12", "Debian:13"]),
                                "name": random.choice(names)},
                    "ranges": [{"type": "ECOSYSTEM", "events": events}],
                }],
            }
            z.writestr(f"{kind}-{i}.json", json.dumps(advisory))
    print(f"{count} advisories in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
