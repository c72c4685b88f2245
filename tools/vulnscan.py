#!/usr/bin/env python3
"""Known vulnerabilities of the crates in Fabrik's SBOM, from an OSV advisory database on disk.

    python3 tools/vulnscan.py --sbom fabrik.cdx.json --osv DB [--ignore ID]... [--json]

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

Exit status: 0 no vulnerability, 1 vulnerabilities found, 2 unusable input (named).
Needs only the Python standard library.
"""

import argparse
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


class Version:
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

    def __lt__(self, other):
        return self.key() < other.key()

    def __le__(self, other):
        return self.key() <= other.key()

    def __eq__(self, other):
        return self.key() == other.key()


def event_version(value):
    """An event's version; `0` in `introduced` means "from the first version"."""
    return None if value == "0" else Version(value)


EVENT_KINDS = ("introduced", "fixed", "last_affected")


def in_range(version, events, where):
    """Whether `version` falls in an OSV SEMVER range (its events in any order)."""
    # `limit` only bounds a git range's search: it does not change what is affected.
    events = [e for e in events if not (isinstance(e, dict) and set(e) == {"limit"})]
    for event in events:
        if not isinstance(event, dict) or len(set(event) & set(EVENT_KINDS)) != 1:
            raise ValueError(f"{where}: an event that is not one of {', '.join(EVENT_KINDS)}: {event!r}")

    def order(event):
        kind = next(k for k in EVENT_KINDS if k in event)
        v = event_version(event[kind]) if kind == "introduced" else Version(event[kind])
        # At equal versions `introduced` comes first, so [last_affected X, introduced X]
        # still affects X.
        return (0, (), 0) if v is None else (1, v.key(), 0 if kind == "introduced" else 1)

    try:
        ordered = sorted(events, key=order)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    affected = False
    for event in ordered:
        if "introduced" in event:
            start = event_version(event["introduced"])
            if start is None or start <= version:
                affected = True
            else:
                break
        elif "fixed" in event:
            if Version(event["fixed"]) <= version:
                affected = False
            else:
                break
        elif "last_affected" in event:
            if Version(event["last_affected"]) < version:
                affected = False
            else:
                break
    return affected


def check_advisory(where, advisory):
    """The shape the scan relies on, or a ValueError naming what is not."""
    if not isinstance(advisory, dict):
        raise ValueError(f"{where}: not an OSV advisory (a JSON object)")
    for key, kind in (("affected", list), ("aliases", list), ("severity", list)):
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
    """(name, version, scope) of every cargo component of a CycloneDX SBOM."""
    sbom = json.loads(pathlib.Path(sbom_path).read_text(encoding="utf-8"))
    if sbom.get("bomFormat") != "CycloneDX":
        raise ValueError(f"{sbom_path}: not a CycloneDX SBOM (bomFormat is {sbom.get('bomFormat')!r})")
    out = []
    for c in sbom.get("components", []):
        purl = c.get("purl", "")
        if not purl.startswith("pkg:cargo/"):
            continue
        name, _, version = purl[len("pkg:cargo/"):].partition("@")
        version = unquote(version.split("?")[0])
        out.append((unquote(name), version, c.get("scope", "required")))
    return out


def scan(sbom_path, osv_path, ignore):
    crates = {}
    for name, version, scope in components(sbom_path):
        crates.setdefault(name, []).append((version, scope))
    findings = []
    advisories = 0
    for where, text in load_advisories(osv_path):
        try:
            advisory = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not JSON ({e})") from None
        advisories += 1
        check_advisory(where, advisory)
        if advisory.get("withdrawn"):
            continue
        ids = {advisory.get("id", "")} | set(advisory.get("aliases", []))
        for affected in advisory.get("affected", []):
            package = affected.get("package", {})
            if package.get("ecosystem") != "crates.io" or package.get("name") not in crates:
                continue
            listed = set(affected.get("versions", []))
            for version, scope in crates[package["name"]]:
                try:
                    v = Version(version)
                except ValueError:
                    continue
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
                fixed = sorted(
                    {e["fixed"] for r in ranges for e in r.get("events", [])
                     if isinstance(e, dict) and "fixed" in e},
                    key=lambda text: Version(text).key(),
                )
                findings.append({
                    "id": advisory.get("id", "?"),
                    "aliases": sorted(set(advisory.get("aliases", []))),
                    "crate": package["name"],
                    "version": version,
                    "build_only": scope == "excluded",
                    "kind": kind or "vulnerability",
                    "summary": advisory.get("summary", "").strip(),
                    "fixed_in": fixed,
                    "severity": [s.get("score") for s in advisory.get("severity", [])],
                    "ignored": bool(ids & ignore),
                })
    return advisories, findings


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sbom", required=True, help="CycloneDX JSON (tools/sbom.py)")
    parser.add_argument("--osv", required=True, help="OSV advisories: a directory or a zip")
    parser.add_argument("--ignore", action="append", default=[], metavar="ID",
                        help="an advisory (or alias) accepted after review; repeat")
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
        print(f"vulnscan: {args.osv} holds no advisories: is it an OSV export?", file=sys.stderr)
        return 2
    failing = [f for f in findings if f["kind"] == "vulnerability" and not f["ignored"]]
    if args.json:
        print(json.dumps({"advisories": advisories, "findings": findings,
                          "failing": len(failing)}, indent=2))
    else:
        print(f"{advisories} advisories read; {len(findings)} finding(s), {len(failing)} failing")
        for f in findings:
            state = "ignored" if f["ignored"] else ("FAIL" if f in failing else "warn")
            where = f"{f['crate']}@{f['version']}" + (" (build only)" if f["build_only"] else "")
            fix = f"fixed in {', '.join(f['fixed_in'])}" if f["fixed_in"] else "no fixed version"
            aliases = f" ({', '.join(f['aliases'])})" if f["aliases"] else ""
            print(f"  {state:7} {f['id']}{aliases} {f['kind']}: {where}: {f['summary']} [{fix}]")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
