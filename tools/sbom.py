#!/usr/bin/env python3
"""A CycloneDX 1.5 SBOM of the `fabrik` binary, from cargo's own resolution.

    python3 tools/sbom.py [--target x86_64-unknown-linux-gnu] [--os-root DIR] [--out fabrik.cdx.json]

Lists the crates that build the binary for the target: `cargo metadata --filter-platform`
resolves features and platforms, and the walk from the `fabrik` package follows normal and
build dependencies, never dev-dependencies (test tools are not shipped). Crates that only run
at build time (proc-macros, build scripts and what they alone use) are listed with CycloneDX
scope `excluded`; the rest are compiled into the binary. Each component carries its version,
package URL (`pkg:cargo/...`), SPDX licence expression and the SHA-256 that Cargo.lock pins
for it, and the dependency graph between them. C libraries bundled by `-sys` crates (SQLite,
zstd, jemalloc) are not listed separately. Feed the file to a
vulnerability scanner (Dependency-Track, Grype, osv-scanner) where it can reach its database,
or to `tools/vulnscan.py` with an OSV database on disk.

`--os-root DIR` adds the Debian packages installed under DIR — a container image's file
system (`docker export` of a container of it, unpacked) or `/` on a gateway — from its
`var/lib/dpkg/status` and `etc/os-release`: an `operating-system` component and one `library`
component per installed binary package, with a package URL naming its release and its source
package (`pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12&upstream=glibc`),
since Debian's advisories are per release and per source package.

Exits non-zero, naming the problem, if cargo fails, a registry crate has no checksum in
Cargo.lock, or a crate declares no licence (CI runs it, so a new dependency cannot slip in
unlisted). Needs only the Python standard library (3.11+ for tomllib).
"""

import argparse
import datetime
import json
import pathlib
import re
import shlex
import subprocess
import sys
import tomllib
import uuid
from urllib.parse import quote

ROOT = pathlib.Path(__file__).resolve().parent.parent
BINARY_PACKAGE = "fabrik"


def host_target():
    out = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("host: "):
            return line.split(": ", 1)[1].strip()
    sys.exit("sbom: rustc -vV names no host target")


def purl(package):
    # A version's build metadata (`+spec-1.1.0`) is percent-encoded in a package URL.
    return f"pkg:cargo/{package['name']}@{package['version'].replace('+', '%2B')}"


def bom_ref(package):
    if package.get("source") is None:
        # One of Fabrik's own crates: built from this tree, on no registry.
        return f"fabrik-workspace:{package['name']}@{package['version']}"
    return purl(package)


def spdx(licence):
    """Cargo's old `MIT/Apache-2.0` form means either: SPDX writes it with OR."""
    return " OR ".join(part.strip() for part in licence.split("/"))


def is_proc_macro(package):
    return any("proc-macro" in target["kind"] for target in package["targets"])


def dpkg_stanzas(text, where):
    """The stanzas of a dpkg status file, as {field: value} (continuation lines joined)."""
    # Debian policy lets a line of only spaces or tabs separate stanzas too.
    for number, block in enumerate(re.split(r"\n[ \t]*\n", text)):
        fields, last = {}, None
        for line in block.splitlines():
            if not line.strip():
                continue
            if line[0] in " \t":
                if last is None:
                    raise ValueError(f"{where}: stanza {number + 1} starts with a continuation line")
                fields[last] += "\n" + line.strip()
                continue
            key, colon, value = line.partition(":")
            if not colon:
                raise ValueError(f"{where}: stanza {number + 1}: `{line}` is not a `Field: value` line")
            last = key.strip()
            fields[last] = value.strip()
        if fields:
            yield fields


def os_release(root):
    """The os-release fields of the system under `root`."""
    for candidate in ("etc/os-release", "usr/lib/os-release"):
        path = root / candidate
        if path.is_file():
            fields = {}
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"{path}: {e}") from None
            for number, line in enumerate(lines, 1):
                key, equals, value = line.partition("=")
                if equals and not key.strip().startswith("#"):
                    try:
                        parts = shlex.split(value, posix=True)
                    except ValueError as e:
                        raise ValueError(f"{path}: line {number}: {e}") from None
                    fields[key.strip()] = parts[0] if parts else ""
            return fields
    raise ValueError(f"{root}: no etc/os-release or usr/lib/os-release: is it a system's root?")


def debian_components(root):
    """The operating-system component and the installed packages of the Debian under `root`."""
    root = pathlib.Path(root)
    release = os_release(root)
    if release.get("ID") != "debian":
        raise ValueError(f"{root}: the system is {release.get('ID')!r}, not Debian: only Debian's packages are read")
    version_id = release.get("VERSION_ID", "")
    if not version_id:
        raise ValueError(f"{root}: os-release has no VERSION_ID (testing or unstable): "
                         "Debian's advisories name releases")
    status = root / "var/lib/dpkg/status"
    try:
        text = status.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"{status}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{status}: not UTF-8 ({e})") from None
    distro = f"debian-{version_id}"
    packages = []
    for fields in dpkg_stanzas(text, status):
        # `Status: want flag state`. Removed packages leave their stanza behind
        # (`config-files`); every other state — half-configured, unpacked, triggers-pending
        # after an interrupted upgrade — has the package's files on disk.
        state = fields.get("Status", "").split()
        if len(state) != 3:
            raise ValueError(f"{status}: the stanza of {fields.get('Package', '?')} has no `Status: want flag state` line")
        if state[2] in ("not-installed", "config-files"):
            continue
        missing = [f for f in ("Package", "Version", "Architecture") if not fields.get(f)]
        if missing:
            raise ValueError(f"{status}: the stanza of {fields.get('Package', '?')} has no {', '.join(missing)}")
        name, version, arch = fields["Package"], fields["Version"], fields["Architecture"]
        source = fields.get("Source", name)
        source_name, _, source_version = source.partition(" ")
        source_version = source_version.strip("() ")
        upstream = source_name + (f"@{source_version}" if source_version else "")
        purl = (f"pkg:deb/debian/{quote(name, safe='')}@{quote(version, safe='')}"
                f"?arch={quote(arch, safe='')}&distro={distro}&upstream={quote(upstream, safe='')}")
        component = {"type": "library", "bom-ref": purl, "name": name, "version": version,
                     "purl": purl}
        if fields.get("Description"):
            component["description"] = fields["Description"].splitlines()[0]
        packages.append(component)
    if not packages:
        raise ValueError(f"{status}: no installed package")
    packages.sort(key=lambda c: c["bom-ref"])
    system = {"type": "operating-system", "bom-ref": f"os:{distro}", "name": "debian",
              "version": version_id,
              "description": release.get("PRETTY_NAME", f"Debian {version_id}")}
    return [system] + packages


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="target triple (default: this host's)")
    parser.add_argument("--os-root", metavar="DIR",
                        help="also list the Debian packages installed under DIR (an image's root, or /)")
    parser.add_argument("--out", help="file to write (default: standard output)")
    args = parser.parse_args()
    target = args.target or host_target()
    try:
        system = debian_components(args.os_root) if args.os_root else []
    except ValueError as e:
        sys.exit(f"sbom: {e}")

    metadata = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", target],
        cwd=ROOT, capture_output=True, text=True,
    )
    if metadata.returncode != 0:
        sys.exit(f"sbom: cargo metadata failed:\n{metadata.stderr}")
    metadata = json.loads(metadata.stdout)
    packages = {p["id"]: p for p in metadata["packages"]}
    nodes = {n["id"]: n for n in metadata["resolve"]["nodes"]}
    with open(ROOT / "Cargo.lock", "rb") as lock_file:
        lock = tomllib.load(lock_file)
    checksums = {(p["name"], p["version"]): p.get("checksum") for p in lock["package"]}

    roots = [p["id"] for p in metadata["packages"]
             if p["name"] == BINARY_PACKAGE and p["id"] in metadata["workspace_members"]]
    if len(roots) != 1:
        sys.exit(f"sbom: no single workspace package named {BINARY_PACKAGE}")
    root = roots[0]

    # Normal and build dependencies only, from the binary's package.
    shipped, edges, queue = {root}, {}, [root]
    while queue:
        node = nodes[queue.pop()]
        edges[node["id"]] = []
        for dep in node["deps"]:
            kinds = {k["kind"] for k in dep["dep_kinds"]}
            if kinds <= {"dev"}:
                continue
            edges[node["id"]].append(dep["pkg"])
            if dep["pkg"] not in shipped:
                shipped.add(dep["pkg"])
                queue.append(dep["pkg"])

    # What runs in the binary: normal edges only, and never into a proc-macro.
    runtime, queue = {root}, [root]
    while queue:
        node = nodes[queue.pop()]
        for dep in node["deps"]:
            kinds = {k["kind"] for k in dep["dep_kinds"]}
            if None in kinds and dep["pkg"] not in runtime and not is_proc_macro(packages[dep["pkg"]]):
                runtime.add(dep["pkg"])
                queue.append(dep["pkg"])

    components, problems = [], []
    for package_id in sorted(shipped - {root}, key=lambda i: (packages[i]["name"], packages[i]["version"])):
        package = packages[package_id]
        component = {
            "type": "library",
            "bom-ref": bom_ref(package),
            "name": package["name"],
            "version": package["version"],
        }
        if package.get("source") is not None:
            component["purl"] = purl(package)
        if package_id not in runtime:
            component["scope"] = "excluded"
            component["properties"] = [{"name": "cargo:dependency-kind", "value": "build"}]
        if package.get("description"):
            component["description"] = " ".join(package["description"].split())
        if package.get("license"):
            component["licenses"] = [{"expression": spdx(package["license"])}]
        elif package.get("license_file"):
            component["licenses"] = [{"license": {"name": f"see {package['license_file']}"}}]
        else:
            problems.append(f"{package['name']} {package['version']} declares no licence")
        source = package.get("source")
        if source is not None:
            checksum = checksums.get((package["name"], package["version"]))
            if not checksum:
                problems.append(f"{package['name']} {package['version']} ({source}) has no checksum in Cargo.lock")
            else:
                component["hashes"] = [{"alg": "SHA-256", "content": checksum}]
        if package.get("repository"):
            component["externalReferences"] = [{"type": "vcs", "url": package["repository"]}]
        components.append(component)
    if problems:
        sys.exit("sbom: " + "; ".join(problems))

    ref_of = {package_id: bom_ref(packages[package_id]) for package_id in shipped}
    binary = packages[root]
    bom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [{"type": "application", "name": "fabrik tools/sbom.py"}]},
            "component": {
                "type": "application",
                "bom-ref": ref_of[root],
                "name": binary["name"],
                "version": binary["version"],
                **({"licenses": [{"expression": spdx(binary["license"])}]} if binary.get("license") else {}),
            },
            "properties": [{"name": "cargo:target", "value": target}],
        },
        "components": components + system,
        "dependencies": [
            {"ref": ref_of[i], "dependsOn": sorted({ref_of[d] for d in edges.get(i, [])})}
            for i in sorted(shipped, key=lambda i: ref_of[i])
        ],
    }
    text = json.dumps(bom, indent=2) + "\n"
    if args.out:
        pathlib.Path(args.out).write_text(text)
        excluded = sum(1 for c in components if c.get("scope") == "excluded")
        os_packages = f", {len(system) - 1} Debian packages under {args.os_root}" if system else ""
        print(f"sbom: {len(components)} components for {target} ({len(components) - excluded} in "
              f"the binary, {excluded} used to build it){os_packages} in {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
