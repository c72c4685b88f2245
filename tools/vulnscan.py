#!/usr/bin/env python3
"""Known vulnerabilities of the crates in Fabrik's SBOM, from an OSV advisory database on disk.

    python3 tools/vulnscan.py --sbom fabrik.cdx.json --osv DB [--osv DB]... [--ignore ID]... [--fail-unfixed] [--json]

DB is an OSV export: a directory of advisory JSON files (RustSec's `osv` branch of
github.com/rustsec/advisory-db, or an unpacked osv.dev export), or the zip osv.dev serves
(https://osv-vulnerabilities.storage.googleapis.com/crates.io/all.zip). The scan needs no
network: fetch the database where there is one, carry it to the build machine or the plant.

Each SBOM component with a `pkg:cargo/` package URL is matched against every advisory whose
`affected` entry names that crate in the crates.io ecosystem: its `versions` list and its
SEMVER ranges (introduced / fixed / last_affected, the OSV schema's evaluation). Withdrawn
advisories are skipped. Informational advisories (RustSec's unmaintained, unsound, notice)
are listed as warnings; vulnerabilities fail the scan (exit 1) unless `--ignore ID` names
them (or one of their aliases). Components only used to build (SBOM scope `excluded`) are
marked so: they do not run on a plant's machines, but they did run on the build machine.

Debian packages (`pkg:deb/debian/` components, which `tools/sbom.py --os-root` adds for a
container image or a gateway) are matched against advisories of their release's ecosystem
(`Debian:12`) by *source* package, as Debian's advisories name them (the purl's `upstream`
qualifier; the binary's own name and version where it has none), with dpkg's version order
(epochs, `~`). Debian's database also lists issues its release has no fix for: those are
warnings (`unfixed`: no update exists to install) unless `--fail-unfixed`.

Exit status: 0 no vulnerability, 1 vulnerabilities found, 2 unusable input (named).
Needs only the Python standard library.
"""

import argparse
import functools
import json
import pathlib
import re
import sys
import zipfile
from urllib.parse import unquote

SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z.-]+)?$"
)


class Ordered:
    """Comparisons from a subclass's `compare(other)` (negative, zero, positive)."""

    def __lt__(self, other):
        return self.compare(other) < 0

    def __le__(self, other):
        return self.compare(other) <= 0

    def __eq__(self, other):
        return self.compare(other) == 0


class Version(Ordered):
    """A SemVer 2.0 version, ordered by precedence (build metadata ignored)."""

    def __init__(self, text):
        if not isinstance(text, str):
            raise ValueError(f"{text!r} is not a semantic version")
        m = SEMVER.match(text.strip())
        if not m:
            raise ValueError(f"`{text}` is not a semantic version")
        self.text = text
        self.core = tuple(int(m.group(i)) for i in (1, 2, 3))
        pre = m.group(4)
        # A release sorts after its pre-releases: an empty pre-release list is "highest".
        self.pre = tuple(
            (0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")
        ) if pre else None

    def key(self):
        # (core, is_release, pre identifiers): numeric identifiers sort before alphanumeric
        # ones, and a shorter list before a longer one it prefixes (tuple order does both).
        return (self.core, self.pre is None, self.pre or ())

    def compare(self, other):
        return (self.key() > other.key()) - (self.key() < other.key())


DIGITS = "0123456789"


def dpkg_order(c):
    """dpkg's weight of a non-digit character: `~` before the end, letters before the rest."""
    if c == "~":
        return -1
    if c.isascii() and c.isalpha():
        return ord(c)
    return ord(c) + 256


def dpkg_part_compare(a, b):
    """dpkg's verrevcmp: alternating non-digit runs (by dpkg_order) and numbers."""
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and a[i] not in DIGITS) or (j < len(b) and b[j] not in DIGITS):
            ac = dpkg_order(a[i]) if i < len(a) and a[i] not in DIGITS else 0
            bc = dpkg_order(b[j]) if j < len(b) and b[j] not in DIGITS else 0
            if ac != bc:
                return -1 if ac < bc else 1
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        first_difference = 0
        while i < len(a) and a[i] in DIGITS and j < len(b) and b[j] in DIGITS:
            if not first_difference and a[i] != b[j]:
                first_difference = -1 if a[i] < b[j] else 1
            i += 1
            j += 1
        if i < len(a) and a[i] in DIGITS:
            return 1
        if j < len(b) and b[j] in DIGITS:
            return -1
        if first_difference:
            return first_difference
    return 0


DEB_VERSION = re.compile(r"^(?:(\d+):)?([A-Za-z0-9.+~:-]+)$")


class DebVersion(Ordered):
    """A Debian package version (`[epoch:]upstream[-revision]`), in dpkg's order."""

    def __init__(self, text):
        if not isinstance(text, str):
            raise ValueError(f"{text!r} is not a Debian version")
        m = DEB_VERSION.match(text.strip())
        if not m:
            raise ValueError(f"`{text}` is not a Debian version")
        self.text = text
        self.epoch = int(m.group(1) or 0)
        upstream, dash, revision = m.group(2).rpartition("-")
        if not dash:
            upstream, revision = m.group(2), ""
        if not upstream or not upstream[0] in DIGITS:
            raise ValueError(f"`{text}` is not a Debian version (its upstream part must start with a digit)")
        self.upstream, self.revision = upstream, revision

    def compare(self, other):
        if self.epoch != other.epoch:
            return -1 if self.epoch < other.epoch else 1
        return dpkg_part_compare(self.upstream, other.upstream) or dpkg_part_compare(
            self.revision, other.revision)


def event_version(value, parse=Version):
    """An event's version; `0` in `introduced` means "from the first version"."""
    return None if value == "0" else parse(value)


EVENT_KINDS = ("introduced", "fixed", "last_affected")


def in_range(version, events, where, parse=Version):
    """Whether `version` falls in an OSV range (its events in any order) whose versions
    `parse` reads and orders: SemVer, or Debian's."""
    # `limit` only bounds a git range's search: it does not change what is affected.
    events = [e for e in events if not (isinstance(e, dict) and set(e) == {"limit"})]
    for event in events:
        if not isinstance(event, dict) or len(set(event) & set(EVENT_KINDS)) != 1:
            raise ValueError(f"{where}: an event that is not one of {', '.join(EVENT_KINDS)}: {event!r}")

    def parsed(event):
        kind = next(k for k in EVENT_KINDS if k in event)
        v = event_version(event[kind], parse) if kind == "introduced" else parse(event[kind])
        return v, 0 if kind == "introduced" else 1

    def order(a, b):
        (va, ka), (vb, kb) = a[1], b[1]
        # "From the first version" comes before every version; at equal versions
        # `introduced` comes first, so [last_affected X, introduced X] still affects X.
        if va is None or vb is None:
            return (vb is None) - (va is None)
        return va.compare(vb) or (ka - kb)

    try:
        ordered = [e for e, _ in sorted(((e, parsed(e)) for e in events),
                                        key=functools.cmp_to_key(order))]
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    affected = False
    for event in ordered:
        if "introduced" in event:
            start = event_version(event["introduced"], parse)
            if start is None or start <= version:
                affected = True
            else:
                break
        elif "fixed" in event:
            if parse(event["fixed"]) <= version:
                affected = False
            else:
                break
        elif "last_affected" in event:
            if parse(event["last_affected"]) < version:
                affected = False
            else:
                break
    return affected


def check_advisory(where, advisory):
    """The shape the scan relies on, or a ValueError naming what is not."""
    if not isinstance(advisory, dict):
        raise ValueError(f"{where}: not an OSV advisory (a JSON object)")
    for key, kind in (("affected", list), ("aliases", list), ("severity", list), ("upstream", list)):
        if not isinstance(advisory.get(key, []), kind):
            raise ValueError(f"{where}: `{key}` is not a list")
    for key in ("id", "summary"):
        if not isinstance(advisory.get(key, ""), str):
            raise ValueError(f"{where}: `{key}` is not a string")
    for i, affected in enumerate(advisory.get("affected", [])):
        if not isinstance(affected, dict) or not isinstance(affected.get("package", {}), dict):
            raise ValueError(f"{where}: affected[{i}] is not an object with a `package`")
        if not isinstance(affected.get("package", {}).get("name", ""), str):
            raise ValueError(f"{where}: affected[{i}].package.name is not a string")
        if not all(isinstance(v, str) for v in affected.get("versions", []) or []):
            raise ValueError(f"{where}: affected[{i}].versions holds a non-string")
        if not isinstance(affected.get("ranges", []), list) or not all(
            isinstance(r, dict) and isinstance(r.get("events", []), list)
            for r in affected.get("ranges", [])
        ):
            raise ValueError(f"{where}: affected[{i}].ranges is not a list of ranges")
        if not isinstance(affected.get("versions", []), list):
            raise ValueError(f"{where}: affected[{i}].versions is not a list")


def informational(advisory, affected):
    """RustSec's kind of informational advisory (`unmaintained`, `unsound`, `notice`), or None.
    RustSec's OSV export puts it in the affected entry's `database_specific`; older or other
    exports at the top level."""
    for place in (affected.get("database_specific"), advisory.get("database_specific")):
        if isinstance(place, dict) and isinstance(place.get("informational"), str):
            return place["informational"]
    return None


def load_advisories(path):
    """Every advisory JSON in a directory tree or a zip, as (name, parsed)."""
    p = pathlib.Path(path)
    if p.is_dir():
        for file in sorted(p.rglob("*.json")):
            yield str(file), file.read_text(encoding="utf-8")
    elif zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            for name in sorted(z.namelist()):
                if name.endswith(".json"):
                    yield f"{p}:{name}", z.read(name).decode("utf-8")
    else:
        raise FileNotFoundError(f"{path}: neither a directory of OSV JSON files nor a zip of them")


def components(sbom_path):
    """(name, version, scope) of every cargo component of a CycloneDX SBOM, and
    {(ecosystem, source package): {source version: [binary packages]}} of its Debian ones."""
    sbom = json.loads(pathlib.Path(sbom_path).read_text(encoding="utf-8"))
    if sbom.get("bomFormat") != "CycloneDX":
        raise ValueError(f"{sbom_path}: not a CycloneDX SBOM (bomFormat is {sbom.get('bomFormat')!r})")
    crates, debian, unsourced = [], {}, []
    for c in sbom.get("components", []):
        purl = c.get("purl", "")
        if purl.startswith("pkg:cargo/"):
            name, _, version = purl[len("pkg:cargo/"):].partition("@")
            version = unquote(version.split("?")[0])
            try:
                Version(version)
            except ValueError as e:
                raise ValueError(f"{sbom_path}: {purl}: {e}") from None
            crates.append((unquote(name), version, c.get("scope", "required")))
        elif purl.startswith("pkg:deb/debian/"):
            path, _, query = purl[len("pkg:deb/debian/"):].partition("?")
            name, _, version = (unquote(part) for part in path.partition("@"))
            # Plain percent-decoding, as the purl spec has it: `+` is not a space here.
            qualifiers = {key: unquote(value) for key, _, value in
                          (pair.partition("=") for pair in query.split("&") if pair)}
            release = qualifiers.get("distro", "").removeprefix("debian-").split(".")[0]
            if not release.isdigit() or not version:
                raise ValueError(
                    f"{sbom_path}: {purl}: a Debian package needs its version and its release "
                    "(`distro=debian-12`): Debian's advisories are per release")
            # `upstream` is the source package, `name` or `name@version` (binNMUs and
            # packages built from another source's version differ from the binary's). Trivy
            # writes it as properties instead.
            properties = {p.get("name"): p.get("value") for p in c.get("properties", [])
                          if isinstance(p, dict)}
            source, _, source_version = qualifiers.get(
                "upstream", properties.get("aquasecurity:trivy:SrcName") or "").partition("@")
            if not source:
                unsourced.append(name)
                source = name
            source_version = source_version or trivy_source_version(properties) or version
            try:
                DebVersion(source_version)
            except ValueError as e:
                raise ValueError(f"{sbom_path}: {purl}: {e}") from None
            debian.setdefault((f"Debian:{release}", source), {}).setdefault(
                source_version, []).append(name)
    if unsourced:
        print(f"vulnscan: {len(unsourced)} Debian package(s) without their source package "
              f"(purl qualifier `upstream`), e.g. {unsourced[0]}: matched by their own name, "
              "which Debian's advisories use only where it is the source's", file=sys.stderr)
    return crates, debian


def trivy_source_version(properties):
    """The source package's version from Trivy's properties, which split it into epoch,
    version and release (Debian's revision); `None` without them."""
    version = properties.get("aquasecurity:trivy:SrcVersion")
    if not version:
        return None
    release = properties.get("aquasecurity:trivy:SrcRelease")
    epoch = properties.get("aquasecurity:trivy:SrcEpoch")
    if release:
        version = f"{version}-{release}"
    if epoch and epoch != "0":
        version = f"{epoch}:{version}"
    return version


def fixed_versions(ranges, parse):
    """Every `fixed` version of the ranges, in order."""
    return sorted(
        {e["fixed"] for r in ranges for e in r.get("events", [])
         if isinstance(e, dict) and "fixed" in e},
        key=functools.cmp_to_key(lambda a, b: parse(a).compare(parse(b))),
    )


def debian_findings(where, advisory, affected, debian, ids, ignore):
    """An advisory's entry for a Debian release, against the SBOM's source packages."""
    package = affected.get("package", {})
    versions = debian.get((package.get("ecosystem"), package.get("name")))
    if not versions:
        return []
    listed = set(affected.get("versions", []))
    ranges = [r for r in affected.get("ranges", []) if r.get("type") == "ECOSYSTEM"]
    named = f"{where}: {package['name']}"
    out = []
    for version, binaries in sorted(versions.items()):
        v = DebVersion(version)
        matching = [r for r in ranges if in_range(v, r.get("events", []), named, DebVersion)]
        if version not in listed and not matching:
            continue
        # Debian lists what its release has no fix for yet (a range that only opens):
        # nothing to install. Any other match has a fix, or is a listed version.
        unfixed = version not in listed and all(
            all(isinstance(e, dict) and set(e) == {"introduced"} for e in r.get("events", []))
            for r in matching)
        try:
            fixed = [f for f in fixed_versions(matching or ranges, DebVersion)
                     if v < DebVersion(f)]
        except ValueError as e:
            raise ValueError(f"{named}: {e}") from None
        out.append({
            "id": advisory.get("id", "?"),
            "aliases": sorted(ids - {advisory.get("id", "")}),
            "package": package["name"],
            "ecosystem": package["ecosystem"],
            "version": version,
            "binaries": sorted(set(binaries)),
            "build_only": False,
            "kind": "unfixed" if unfixed else "vulnerability",
            "summary": summary(advisory),
            "fixed_in": fixed,
            "severity": [s.get("score") for s in advisory.get("severity", [])],
            "ignored": bool(ids & ignore),
        })
    return out


def summary(advisory):
    """The advisory's summary, or its details' first line (Debian's tracker records have no
    summary)."""
    text = advisory.get("summary", "").strip()
    if not text and isinstance(advisory.get("details"), str):
        text = next((line.strip() for line in advisory["details"].splitlines() if line.strip()), "")
    return text


def scan(sbom_path, osv_paths, ignore):
    crates = {}
    listed_crates, debian = components(sbom_path)
    for name, version, scope in listed_crates:
        crates.setdefault(name, []).append((version, scope))
    findings = []
    advisories = 0
    for where, text in (entry for path in osv_paths for entry in load_advisories(path)):
        try:
            advisory = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not JSON ({e})") from None
        advisories += 1
        check_advisory(where, advisory)
        if advisory.get("withdrawn"):
            continue
        # Debian's export names the CVE in `upstream` (`CVE-…` on its tracker's records,
        # `DEBIAN-CVE-…` on DSAs and DLAs), not in `aliases`: `--ignore CVE-…` accepts both.
        upstream = advisory.get("upstream", [])
        ids = {advisory.get("id", "")} | set(advisory.get("aliases", [])) | {
            u.removeprefix("DEBIAN-") for u in (upstream if isinstance(upstream, list) else [])
            if isinstance(u, str)}
        for affected in advisory.get("affected", []):
            package = affected.get("package", {})
            if str(package.get("ecosystem", "")).startswith("Debian:"):
                findings.extend(debian_findings(where, advisory, affected, debian, ids, ignore))
                continue
            if package.get("ecosystem") != "crates.io" or package.get("name") not in crates:
                continue
            listed = set(affected.get("versions", []))
            for version, scope in crates[package["name"]]:
                v = Version(version)
                # crates.io's own versions are SemVer, so its ECOSYSTEM ranges (GitHub's
                # advisories use them) read as SEMVER ones.
                ranges = [r for r in affected.get("ranges", [])
                          if r.get("type") in ("SEMVER", "ECOSYSTEM")]
                hit = version in listed or any(
                    in_range(v, r.get("events", []), f"{where}: {package['name']}")
                    for r in ranges
                )
                if not hit:
                    continue
                kind = informational(advisory, affected)
                fixed = fixed_versions(ranges, Version)
                findings.append({
                    "id": advisory.get("id", "?"),
                    "aliases": sorted(ids - {advisory.get("id", "")}),
                    "crate": package["name"],
                    "version": version,
                    "build_only": scope == "excluded",
                    "kind": kind or "vulnerability",
                    "summary": summary(advisory),
                    "fixed_in": fixed,
                    "severity": [s.get("score") for s in advisory.get("severity", [])],
                    "ignored": bool(ids & ignore),
                })
    return advisories, findings


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sbom", required=True, help="CycloneDX JSON (tools/sbom.py)")
    parser.add_argument("--osv", required=True, action="append",
                        help="OSV advisories: a directory or a zip; repeat for several")
    parser.add_argument("--ignore", action="append", default=[], metavar="ID",
                        help="an advisory (or alias) accepted after review; repeat")
    parser.add_argument("--fail-unfixed", action="store_true",
                        help="also fail on Debian issues its release has no fix for")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    args = parser.parse_args()
    try:
        advisories, findings = scan(args.sbom, args.osv, set(args.ignore))
    except (OSError, ValueError) as e:
        print(f"vulnscan: {e}", file=sys.stderr)
        return 2
    except (TypeError, AttributeError, KeyError, StopIteration) as e:
        # A shape check_advisory does not foresee: still unusable input, never "found".
        print(f"vulnscan: unexpected input ({type(e).__name__}: {e})", file=sys.stderr)
        return 2
    if advisories == 0:
        print(f"vulnscan: {', '.join(args.osv)} holds no advisories: is it an OSV export?", file=sys.stderr)
        return 2
    failing_kinds = {"vulnerability", "unfixed"} if args.fail_unfixed else {"vulnerability"}
    failing = [f for f in findings if f["kind"] in failing_kinds and not f["ignored"]]
    if args.json:
        print(json.dumps({"advisories": advisories, "findings": findings,
                          "failing": len(failing)}, indent=2))
    else:
        print(f"{advisories} advisories read; {len(findings)} finding(s), {len(failing)} failing")
        for f in findings:
            state = "ignored" if f["ignored"] else ("FAIL" if f in failing else "warn")
            if "crate" in f:
                where = f"{f['crate']}@{f['version']}" + (" (build only)" if f["build_only"] else "")
            else:
                where = (f"{f['package']}@{f['version']} ({f['ecosystem']}; "
                         f"installed as {', '.join(f['binaries'])})")
            fix = f"fixed in {', '.join(f['fixed_in'])}" if f["fixed_in"] else "no fixed version"
            aliases = f" ({', '.join(f['aliases'])})" if f["aliases"] else ""
            print(f"  {state:7} {f['id']}{aliases} {f['kind']}: {where}: {f['summary']} [{fix}]")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
