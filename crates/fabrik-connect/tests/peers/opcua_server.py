#!/usr/bin/env python3
"""OPC UA test peer for the Fabrik OPC UA connector tests (Python `asyncua`).

Serves, under namespace "urn:fabrik:test" (index 2), an object `Pump1` with variables that change
every 100 ms:

    ns=2;s=Pump1.Pressure  Double   (sine-ish, always changes)
    ns=2;s=Pump1.Count     Int32    (counter)
    ns=2;s=Pump1.Running   Boolean  (toggles)
    ns=2;s=Pump1.Mode      String   ("mode-<n>")
    ns=2;s=Pump1.Step      Double   (+0.1 per tick, +10 every 10th tick: for deadband tests)
    ns=2;s=Pump1.Broken    Double   status BadSensorFailure      (with --bad)
    ns=2;s=Pump1.Stale     Double   status UncertainLastUsableValue (with --bad)

and, for the write tests, variables that keep what a client writes:

    ns=2;s=Pump1.Setpoint  Double   4.0, writable
    ns=2;s=Pump1.Speed     Int16    0, writable
    ns=2;s=Pump1.Enable    Boolean  false, writable
    ns=2;s=Pump1.Limit     UInt16   0, writable, but the server keeps at most 500 (it clamps
                                    before it answers the write)
    ns=2;s=Pump1.Recipe    String   "A-100", writable
    ns=2;s=Pump1.Locked    Double   1.0, read-only (a write answers BadNotWritable)
    ns=2;s=Pump1.Fresh     Double   writable, no value yet (BadWaitingForInitialData): only
                                    its DataType says what it holds

and analog items that declare their range and unit (OPC UA Part 8's `EURange` and
`EngineeringUnits` properties):

    ns=2;s=Pump1.Flow      Double   40.0, writable, EURange 0..80, unit l/min; once written,
                                    its EURange narrows to 0..70 (a recipe changed on the
                                    controller)
    ns=2;s=Pump1.Valve     Double   50.0, writable, EURange 0..100, unit %
    ns=2;s=Pump1.Odd       Double   20.0, writable, EURange 50..10 (low above high: unusable)
    ns=2;s=Pump1.Hidden    Double   1.0, writable, its EURange read answers BadNotReadable

Security: `--security` is a comma list of none, sign, encrypt (Basic256Sha256 Sign /
SignAndEncrypt). With sign or encrypt the server certificate and key are read from
`--cert-dir` (server_cert.der, server_key.pem) and generated there first if absent, with the
application URI, `localhost` and 127.0.0.1 as subject alternative names. Client certificates
are accepted without a trust list (the tests exercise the client's trust, not the server's).

`--user NAME:PASSWORD` accepts only that user (UserName token; anonymous refused).

`--port 0` picks a free port. Once listening it prints one line `READY <port>` on stdout.
Stops on SIGTERM/SIGINT or when killed (the restart test uses SIGKILL).
"""

import argparse
import asyncio
import ipaddress
import math
import os
import signal
import socket
import sys

try:
    from asyncua import Server, ua
    from asyncua.common.callback import CallbackType
    from asyncua.crypto.permission_rules import User, UserRole
    from asyncua.crypto import cert_gen
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID
except ImportError as err:  # pragma: no cover - reported to the Rust test
    print(f"MISSING asyncua: {err}; install with: pip install asyncua", file=sys.stderr, flush=True)
    sys.exit(3)

APP_URI = "urn:fabrik:test:server"
NAMESPACE = "urn:fabrik:test"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OneUser:
    """Accepts exactly one user name and password."""

    def __init__(self, name: str, password: str) -> None:
        self.name, self.password = name, password

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username == self.name and password == self.password:
            return User(role=UserRole.User)
        return None


def ensure_cert(cert_dir: str) -> tuple[str, str]:
    os.makedirs(cert_dir, exist_ok=True)
    cert_path = os.path.join(cert_dir, "server_cert.der")
    key_path = os.path.join(cert_dir, "server_key.pem")
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        "Fabrik Test Server",
        {"organizationName": "Fabrik"},
        [
            x509.UniformResourceIdentifier(APP_URI),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
        extended=[ExtendedKeyUsageOID.SERVER_AUTH],
        days=30,
    )
    with open(key_path, "wb") as f:
        f.write(cert_gen.dump_private_key_as_pem(key))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.DER))
    return cert_path, key_path


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--security", default="none")
    parser.add_argument("--cert-dir", default=None)
    parser.add_argument("--bad", action="store_true", help="add the Bad and Uncertain variables")
    parser.add_argument("--period-ms", type=int, default=100)
    parser.add_argument("--user", default=None, help="NAME:PASSWORD; then only this user may log in")
    args = parser.parse_args()

    port = args.port or free_port()
    modes = {m.strip() for m in args.security.split(",") if m.strip()}
    policies = []
    if "none" in modes:
        policies.append(ua.SecurityPolicyType.NoSecurity)
    if "sign" in modes:
        policies.append(ua.SecurityPolicyType.Basic256Sha256_Sign)
    if "encrypt" in modes:
        policies.append(ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt)
    if not policies:
        parser.error("--security needs at least one of none, sign, encrypt")

    if args.user:
        name, _, password = args.user.partition(":")
        server = Server(user_manager=OneUser(name, password))
    else:
        server = Server()
    await server.init()
    if args.user:
        server.set_identity_tokens([ua.UserNameIdentityToken])
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/fabrik/")
    server.set_server_name("Fabrik Test Server")
    await server.set_application_uri(APP_URI)
    server.set_security_policy(policies)
    if modes & {"sign", "encrypt"}:
        if not args.cert_dir:
            parser.error("--cert-dir is required with sign or encrypt")
        cert_path, key_path = ensure_cert(args.cert_dir)
        await server.load_certificate(cert_path)
        await server.load_private_key(key_path)

    idx = await server.register_namespace(NAMESPACE)
    pump = await server.nodes.objects.add_object(ua.NodeId("Pump1", idx), ua.QualifiedName("Pump1", idx))

    async def var(name: str, value, vtype):
        return await pump.add_variable(
            ua.NodeId(f"Pump1.{name}", idx), ua.QualifiedName(name, idx), ua.Variant(value, vtype)
        )

    pressure = await var("Pressure", 1.0, ua.VariantType.Double)
    count = await var("Count", 0, ua.VariantType.Int32)
    running = await var("Running", False, ua.VariantType.Boolean)
    mode = await var("Mode", "mode-0", ua.VariantType.String)
    step = await var("Step", 0.0, ua.VariantType.Double)
    step_value = 0.0
    broken = await var("Broken", 0.0, ua.VariantType.Double) if args.bad else None
    stale = await var("Stale", 0.0, ua.VariantType.Double) if args.bad else None
    for name, value, vtype in (
        ("Setpoint", 4.0, ua.VariantType.Double),
        ("Speed", 0, ua.VariantType.Int16),
        ("Enable", False, ua.VariantType.Boolean),
        ("Limit", 0, ua.VariantType.UInt16),
        ("Recipe", "A-100", ua.VariantType.String),
    ):
        await (await var(name, value, vtype)).set_writable()
    limit_id = ua.NodeId("Pump1.Limit", idx)
    limit = server.get_node(limit_id)
    await var("Locked", 1.0, ua.VariantType.Double)
    fresh = await var("Fresh", 0.0, ua.VariantType.Double)
    await fresh.set_writable()
    await fresh.write_value(
        ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData))
    )

    async def analog(name: str, value: float, low: float, high: float, unit):
        node = await var(name, value, ua.VariantType.Double)
        await node.set_writable()
        eu_range = await node.add_property(
            ua.NodeId(f"Pump1.{name}.EURange", idx),
            ua.QualifiedName("EURange", 0),
            ua.Range(Low=low, High=high),
            ua.VariantType.ExtensionObject,
            ua.NodeId(ua.ObjectIds.Range),
        )
        if unit is not None:
            await node.add_property(
                ua.NodeId(f"Pump1.{name}.EngineeringUnits", idx),
                ua.QualifiedName("EngineeringUnits", 0),
                ua.EUInformation(DisplayName=ua.LocalizedText(unit)),
                ua.VariantType.ExtensionObject,
                ua.NodeId(ua.ObjectIds.EUInformation),
            )
        return eu_range

    flow_range = await analog("Flow", 40.0, 0.0, 80.0, "l/min")
    flow_id = ua.NodeId("Pump1.Flow", idx)
    await analog("Valve", 50.0, 0.0, 100.0, "%")
    await analog("Odd", 20.0, 50.0, 10.0, None)
    hidden_range = await analog("Hidden", 1.0, 0.0, 10.0, None)
    await hidden_range.write_value(ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadNotReadable)))

    async def clamp(event, _dispatcher):
        """Keeps Limit at most 500 before the write is answered, as a drive keeps its limit;
        narrows Flow's EURange once it is written."""
        for write in event.request_params.NodesToWrite:
            if write.NodeId == limit_id and write.Value.Value.Value > 500:
                await limit.write_value(ua.Variant(500, ua.VariantType.UInt16))
            if write.NodeId == flow_id:
                await flow_range.write_value(ua.Variant(ua.Range(Low=0.0, High=70.0), ua.VariantType.ExtensionObject))

    server.subscribe_server_callback(CallbackType.PostWrite, clamp)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async with server:
        print(f"READY {port}", flush=True)
        n = 0
        while not stop.is_set():
            n += 1
            await pressure.write_value(ua.Variant(2.0 + math.sin(n / 10.0) + n * 1e-6, ua.VariantType.Double))
            await count.write_value(ua.Variant(n, ua.VariantType.Int32))
            await running.write_value(ua.Variant(n % 2 == 0, ua.VariantType.Boolean))
            await mode.write_value(ua.Variant(f"mode-{n}", ua.VariantType.String))
            step_value += 10.0 if n % 10 == 0 else 0.1
            await step.write_value(ua.Variant(step_value, ua.VariantType.Double))

            if broken is not None:
                await broken.write_value(
                    ua.DataValue(
                        ua.Variant(float(n), ua.VariantType.Double),
                        StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure),
                    )
                )
            if stale is not None:
                await stale.write_value(
                    ua.DataValue(
                        ua.Variant(float(n), ua.VariantType.Double),
                        StatusCode=ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue),
                    )
                )
            try:
                await asyncio.wait_for(stop.wait(), args.period_ms / 1000.0)
            except asyncio.TimeoutError:
                pass


if __name__ == "__main__":
    asyncio.run(main())
