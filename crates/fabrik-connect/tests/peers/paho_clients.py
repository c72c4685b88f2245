#!/usr/bin/env python3
"""Real-peer tests of Fabrik's MQTT device endpoint with Eclipse Paho (paho-mqtt 2.x).

No pytest: each named scenario runs for MQTT 3.1.1 and 5.0, prints one line per check
("ok   <scenario>/<version>: <what>") and the script exits 1 on the first failure
("FAIL <scenario>/<version>: <why>"), 2 on a usage error.

    paho_clients.py --url http://127.0.0.1:P --token ADMIN --mqtt 127.0.0.1:P \
        --mqtts 127.0.0.1:P --ca <data_dir>/tls/mqtt-cert.pem --certs DIR \
        --device pump-1:TOKEN --device pump-2:TOKEN  SCENARIO...

Scenarios: qos0 qos1 qos2 retained will session qos2-delivery qos2-resume tls mtls shared
topic-alias (or "all-plain" =
every scenario but mtls). The first --device is the device under test ("A"); mtls also needs a
second one ("B") and a Fabrik started with mqtt.tls_client_ca = DIR/ca.pem. Devices given
without ":TOKEN" are registered through the API (type "pump").

    paho_clients.py gen-certs DIR --cn DEVICE_A

writes DIR/ca.pem (+ca.key), DIR/client.pem/.key (CN = DEVICE_A, signed by ca),
DIR/rogue.pem/.key (CN = DEVICE_A, signed by another CA), DIR/stranger.pem/.key (CN =
"no-such-device", signed by ca) and DIR/other-ca.pem (a CA that
signed neither Fabrik's server certificate nor the clients: the "wrong CA").
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

VERSIONS = {"v3.1.1": mqtt.MQTTv311, "v5": mqtt.MQTTv5}
TABLE = "pump"  # device type of the devices the scripts register
WAIT = 10.0


class CheckFailed(Exception):
    pass


CURRENT = ["-"]


def ok(what: str) -> None:
    print(f"ok   {CURRENT[0]}: {what}", flush=True)


def check(cond, what: str) -> None:
    if not cond:
        raise CheckFailed(what)
    ok(what)


# --------------------------------------------------------------------------- HTTP API


class Api:
    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                return e.code, json.loads(text)
            except ValueError:
                return e.code, text

    def register(self, device_id: str, dtype: str = TABLE) -> str:
        status, body = self.call("POST", "/api/v1/devices", {"id": device_id, "type": dtype})
        if status >= 300 or "token" not in body:
            raise CheckFailed(f"registering device {device_id}: HTTP {status} {body}")
        return body["token"]

    def query(self, sql: str):
        status, body = self.call("POST", "/api/v1/query", {"sql": sql})
        if status != 200:
            return None, body
        return body, None

    def rows_for(self, device: str, probe: str):
        """Rows of TABLE stored for this device with this probe tag ([] if none or no table)."""
        rows, err = self.query(
            f"SELECT probe, value FROM {TABLE} WHERE device = '{device}' AND probe = '{probe}'"
        )
        return rows or []

    def wait_stored(self, device: str, probe: str, value: float, timeout: float = WAIT):
        deadline = time.monotonic() + timeout
        rows = []
        while time.monotonic() < deadline:
            rows = self.rows_for(device, probe)
            if rows:
                break
            time.sleep(0.25)
        if not rows:
            _, err = self.query(f"SELECT count(*) AS n FROM {TABLE}")
            raise CheckFailed(
                f"probe {probe} from {device} not queryable in table {TABLE} after {timeout:.0f}s"
                + (f" (query error: {err})" if err else "")
            )
        if len(rows) != 1 or abs(float(rows[0]["value"]) - value) > 1e-9:
            raise CheckFailed(f"probe {probe}: expected one row with value {value}, got {rows}")
        return rows[0]

    def assert_not_stored(self, device: str, probe: str, settle: float = 2.0):
        time.sleep(settle)
        rows = self.rows_for(device, probe)
        if rows:
            raise CheckFailed(f"probe {probe} must not be stored for {device}, got {rows}")


# --------------------------------------------------------------------------- MQTT client


def hostport(s: str):
    host, _, port = s.rpartition(":")
    return host, int(port)


class Peer:
    """A paho client run in its own network thread with synchronous helpers."""

    def __init__(self, name: str, version: int, client_id: str | None = None, *,
                 username=None, password=None, clean=True, tls=None, will=None,
                 manual_ack=False):
        self.name = name
        self.version = version
        self.clean = clean
        kwargs = {}
        if version != mqtt.MQTTv5:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=client_id or f"{name}-{uuid.uuid4().hex[:8]}",
                             protocol=version, reconnect_on_failure=False,
                             manual_ack=manual_ack, **kwargs)
        if username is not None:
            self.c.username_pw_set(username, password)
        if tls is not None:
            self.c.tls_set_context(tls)
        if will is not None:
            topic, payload, qos, retain = will
            self.c.will_set(topic, payload, qos=qos, retain=retain)
        self.messages: queue.Queue = queue.Queue()
        self.connack = threading.Event()
        self.connack_rc = None
        self.session_present = None
        self.disconnected = threading.Event()
        self.disconnect_rc = None
        self.subacks: queue.Queue = queue.Queue()
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_disconnect = self._on_disconnect
        self.c.on_publish = self._on_publish
        self.pub_reasons: dict = {}

    def _on_connect(self, c, ud, flags, rc, props):
        self.connack_rc = rc
        self.session_present = flags.session_present
        self.connack.set()

    def _on_message(self, c, ud, msg):
        self.messages.put(msg)

    def _on_subscribe(self, c, ud, mid, rcs, props):
        self.subacks.put(rcs)

    def _on_publish(self, c, ud, mid, rc, props):
        self.pub_reasons[mid] = rc

    def _on_disconnect(self, c, ud, flags, rc, props):
        self.disconnect_rc = rc
        self.disconnected.set()

    def connect(self, addr: str, *, session_expiry: int | None = None,
                topic_alias_max: int | None = None, timeout: float = WAIT):
        """Connects; returns None on success or a string saying why it failed."""
        host, port = hostport(addr)
        props = None
        kwargs = {}
        if self.version == mqtt.MQTTv5:
            kwargs["clean_start"] = self.clean
            if session_expiry is not None or topic_alias_max is not None:
                props = Properties(PacketTypes.CONNECT)
            if session_expiry is not None:
                props.SessionExpiryInterval = session_expiry
            if topic_alias_max is not None:
                props.TopicAliasMaximum = topic_alias_max
        try:
            self.c.connect(host, port, keepalive=30, properties=props, **kwargs)
        except (ssl.SSLError, OSError) as e:
            return f"{type(e).__name__}: {e}"
        self.c.loop_start()
        deadline = time.monotonic() + timeout
        while not self.connack.is_set() and not self.disconnected.is_set():
            if time.monotonic() > deadline:
                break
            self.connack.wait(0.05)
        if not self.connack.is_set():
            self.stop()
            if self.disconnected.is_set():
                return f"connection closed before CONNACK (paho: {self.disconnect_rc})"
            return f"no CONNACK within {timeout:.0f}s"
        if self.connack_rc.is_failure:
            self.stop()
            return f"CONNACK refused: {self.connack_rc}"
        return None

    def must_connect(self, addr: str, **kw):
        why = self.connect(addr, **kw)
        if why:
            raise CheckFailed(f"{self.name} could not connect to {addr}: {why}")
        return self

    def subscribe_result(self, topic: str, qos: int):
        """Subscribes and returns the SUBACK's reason codes, whatever they are."""
        self.c.subscribe(topic, qos)
        try:
            return self.subacks.get(timeout=WAIT)
        except queue.Empty:
            raise CheckFailed(f"{self.name}: no SUBACK for {topic}")

    def subscribe(self, topic: str, qos: int):
        rcs = self.subscribe_result(topic, qos)
        if any(rc.is_failure for rc in rcs) or rcs[0].value != qos:
            raise CheckFailed(f"{self.name}: SUBACK for {topic} at QoS {qos} was {rcs}")

    def publish(self, topic: str, payload, qos: int, retain=False):
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise CheckFailed(f"{self.name}: publish to {topic} failed locally: rc={info.rc}")
        if qos > 0:
            info.wait_for_publish(WAIT)
            if not info.is_published():
                raise CheckFailed(f"{self.name}: QoS {qos} publish to {topic} not acknowledged")
        return info

    def next_message(self, timeout: float = WAIT):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def drain(self, settle: float):
        out = []
        deadline = time.monotonic() + settle
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            m = self.next_message(left)
            if m is not None:
                out.append(m)

    def disconnect(self):
        self.c.disconnect()
        self.disconnected.wait(5)
        self.c.loop_stop()

    def drop(self):
        """Ends the connection without a DISCONNECT packet (socket torn down)."""
        self.c.loop_stop()
        sock = self.c.socket()
        if sock is not None:
            raw = sock
            try:
                raw.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            raw.close()

    def stop(self):
        try:
            self.c.loop_stop()
        except Exception:
            pass
        try:
            s = self.c.socket()
            if s is not None:
                s.close()
        except Exception:
            pass


# --------------------------------------------------------------------------- context


class Ctx:
    def __init__(self, args):
        self.args = args
        self.api = Api(args.url, args.token)
        self.devices: list[tuple[str, str | None]] = []
        for d in args.device:
            did, _, tok = d.partition(":")
            if not tok:
                tok = self.api.register(did)
            self.devices.append((did, tok))
        if not self.devices:
            did = f"paho-{uuid.uuid4().hex[:6]}"
            self.devices.append((did, self.api.register(did)))

    @property
    def dev(self):
        return self.devices[0]

    def need(self, what: str, value):
        if not value:
            raise CheckFailed(f"this scenario needs {what}")
        return value

    def device(self, version, suffix="", *, client_id=None, clean=True, will=None, tls=None,
               manual_ack=False):
        did, tok = self.dev
        return Peer(f"{did}{suffix}", version, client_id, username=did, password=tok,
                    clean=clean, will=will, tls=tls, manual_ack=manual_ack)

    def commander(self, version):
        return Peer("commander", version, username="admin", password=self.args.token)

    def tls_context(self, cafile, cert=None, key=None):
        ctx = ssl.create_default_context(cafile=cafile)
        if cert:
            ctx.load_cert_chain(cert, key)
        return ctx


def probe_payload(tag: str):
    value = round(random.uniform(1, 1000), 3)
    return value, json.dumps({"probe": tag, "value": value})


# --------------------------------------------------------------------------- scenarios


def publish_stored(ctx: Ctx, ver, qos: int):
    did, _ = ctx.dev
    dev = ctx.device(ver, "-pub").must_connect(ctx.need("--mqtt", ctx.args.mqtt))
    tag = f"q{qos}-{uuid.uuid4().hex[:8]}"
    value, payload = probe_payload(tag)
    dev.publish(f"devices/{did}/telemetry", payload, qos)
    ok(f"QoS {qos} publish to devices/{did}/telemetry accepted" + (" (acknowledged)" if qos else ""))
    if qos == 0:
        time.sleep(0.2)  # QoS 0 has no acknowledgement: let the packet leave before DISCONNECT
    dev.disconnect()
    ctx.api.wait_stored(did, tag, value)
    ok(f"value {value} (probe {tag}) queryable in table {TABLE}")


def sc_qos0(ctx, ver):
    publish_stored(ctx, ver, 0)


def sc_qos1(ctx, ver):
    publish_stored(ctx, ver, 1)


def sc_qos2(ctx, ver):
    publish_stored(ctx, ver, 2)


def sc_retained(ctx, ver):
    did, _ = ctx.dev
    addr = ctx.need("--mqtt", ctx.args.mqtt)
    topic = f"devices/{did}/cmd/config"
    payload = f"cfg-{uuid.uuid4().hex[:8]}".encode()
    cmd = ctx.commander(ver).must_connect(addr)
    cmd.publish(topic, payload, 1, retain=True)
    ok(f"commander published retained {payload.decode()} on {topic}")
    dev = ctx.device(ver, "-ret").must_connect(addr)
    dev.subscribe(f"devices/{did}/cmd/#", 1)
    m = dev.next_message()
    try:
        check(m is not None, "device subscribing later receives the retained message")
        check(m.topic == topic and m.payload == payload,
              f"retained message is {topic} = {payload.decode()} (got {m.topic} = {m.payload!r})")
        check(m.retain, "retain flag is set on the delivered message")
    finally:
        dev.disconnect()
        cmd.publish(topic, b"", 1, retain=True)  # clear it for the next scenario
        cmd.disconnect()
    dev2 = ctx.device(ver, "-ret2").must_connect(addr)
    dev2.subscribe(f"devices/{did}/cmd/#", 1)
    left = dev2.drain(1.0)
    dev2.disconnect()
    check(not left, f"an empty retained publish cleared it (got {[(m.topic, m.payload) for m in left]})")


def sc_will(ctx, ver):
    did, _ = ctx.dev
    addr = ctx.need("--mqtt", ctx.args.mqtt)
    topic = f"devices/{did}/status"
    payload = f"offline-{uuid.uuid4().hex[:8]}".encode()
    cmd = ctx.commander(ver).must_connect(addr)
    cmd.subscribe(topic, 1)
    dev = ctx.device(ver, "-will", will=(topic, payload, 1, False)).must_connect(addr)
    ok(f"device connected with a will on {topic}")
    dev.drop()
    ok("device socket closed without DISCONNECT")
    m = cmd.next_message()
    cmd.disconnect()
    check(m is not None, "commander received the will")
    check(m.topic == topic and m.payload == payload,
          f"will is {topic} = {payload.decode()} (got {m.topic} = {m.payload!r})")
    # and a clean DISCONNECT must NOT send it
    cmd = ctx.commander(ver).must_connect(addr)
    cmd.subscribe(topic, 1)
    dev = ctx.device(ver, "-will2", will=(topic, payload + b"-2", 1, False)).must_connect(addr)
    dev.disconnect()
    extra = cmd.drain(1.5)
    cmd.disconnect()
    check(not extra, f"no will after a normal DISCONNECT (got {[m.payload for m in extra]})")


def sc_session(ctx, ver):
    did, _ = ctx.dev
    addr = ctx.need("--mqtt", ctx.args.mqtt)
    cid = f"{did}-sess-{uuid.uuid4().hex[:8]}"
    expiry = 300 if ver == mqtt.MQTTv5 else None
    # First connection: a new persistent session (v5: clean start + expiry; 3.1.1: clean=0).
    first = ctx.device(ver, client_id=cid, clean=(ver == mqtt.MQTTv5))
    first.must_connect(addr, session_expiry=expiry)
    check(not first.session_present, "first connection: session present = 0")
    first.subscribe(f"devices/{did}/cmd/#", 1)
    first.disconnect()
    ok("device subscribed at QoS 1 and disconnected")
    cmd = ctx.commander(ver).must_connect(addr)
    sent = [f"cmd-{i}-{uuid.uuid4().hex[:6]}".encode() for i in range(3)]
    for i, p in enumerate(sent):
        cmd.publish(f"devices/{did}/cmd/set/{i}", p, 1)
    cmd.disconnect()
    ok("commander published 3 QoS 1 commands while the device was offline")
    again = ctx.device(ver, client_id=cid, clean=False)
    again.must_connect(addr, session_expiry=expiry)
    check(again.session_present, "reconnect with the same client id: session present = 1")
    got = again.drain(3.0)
    payloads = [m.payload for m in got]
    # Remove the session so it does not linger (3.1.1: clean connect; v5: expiry 0 on connect).
    again.disconnect()
    end = ctx.device(ver, client_id=cid, clean=True)
    end.must_connect(addr, session_expiry=0 if ver == mqtt.MQTTv5 else None)
    end.disconnect()
    check(payloads == sent, f"all 3 queued commands received in order (got {payloads})")
    check(all(m.qos == 1 for m in got), "queued commands delivered at QoS 1")


def sc_qos2_delivery(ctx, ver):
    did, _ = ctx.dev
    addr = ctx.need("--mqtt", ctx.args.mqtt)
    dev = ctx.device(ver, "-q2d").must_connect(addr)
    dev.subscribe(f"devices/{did}/cmd/#", 2)
    cmd = ctx.commander(ver).must_connect(addr)
    sent = [f"q2-{i}-{uuid.uuid4().hex[:6]}".encode() for i in range(10)]
    for p in sent:
        cmd.publish(f"devices/{did}/cmd/q2", p, 2)
    ok("commander published 10 QoS 2 commands (PUBCOMP received for each)")
    got = []
    deadline = time.monotonic() + WAIT
    while len(got) < len(sent) and time.monotonic() < deadline:
        m = dev.next_message(0.5)
        if m:
            got.append(m)
    got += dev.drain(1.5)  # anything duplicated arrives here
    cmd.disconnect()
    dev.disconnect()
    payloads = [m.payload for m in got]
    check(sorted(payloads) == sorted(sent) and len(set(payloads)) == len(payloads),
          f"each command delivered exactly once ({len(payloads)} deliveries for {len(sent)})")
    check(payloads == sent, "in publish order")
    check(all(m.qos == 2 for m in got), "delivered at QoS 2")


def sc_qos2_resume(ctx, ver):
    """QoS 2 to a device whose connection breaks mid-exchange, persistent session resumed.

    1. The device never sends PUBREC (connection dropped): on resume the server must send the
       PUBLISH again with DUP=1, and the device gets it once.
    2. The device sent PUBREC and got PUBREL but dropped before PUBCOMP: on resume the server
       must send PUBREL only, never the PUBLISH again (the device would see it twice).
    """
    did, _ = ctx.dev
    addr = ctx.need("--mqtt", ctx.args.mqtt)
    cid = f"{did}-q2r-{uuid.uuid4().hex[:8]}"
    expiry = 300 if ver == mqtt.MQTTv5 else None
    filt = f"devices/{did}/cmd/#"
    cmd = ctx.commander(ver).must_connect(addr)

    # --- 1: PUBLISH received, PUBREC withheld, socket dropped.
    dev = ctx.device(ver, client_id=cid, clean=(ver == mqtt.MQTTv5))
    dev.must_connect(addr, session_expiry=expiry)
    dev.subscribe(filt, 2)
    got_publish = threading.Event()
    seen = []

    def swallow_pubrec(mid):  # paho sends PUBREC from _handle_publish; hold it back
        seen.append(mid)
        got_publish.set()
        return mqtt.MQTT_ERR_SUCCESS

    dev.c._send_pubrec = swallow_pubrec  # noqa: SLF001 (fault injection)
    p1 = f"q2r-a-{uuid.uuid4().hex[:6]}".encode()
    cmd.publish(f"devices/{did}/cmd/q2r", p1, 2)
    check(got_publish.wait(WAIT), "device got the QoS 2 PUBLISH (PUBREC withheld)")
    dev.drop()
    ok("device dropped its socket before PUBREC")
    time.sleep(0.3)
    dev = ctx.device(ver, client_id=cid, clean=False)
    dev.must_connect(addr, session_expiry=expiry)
    check(dev.session_present, "resumed: session present = 1")
    got = dev.drain(2.5)
    check([m.payload for m in got] == [p1],
          f"the PUBLISH is re-sent and delivered once (got {[m.payload for m in got]})")
    check(got[0].dup, "re-sent PUBLISH carries DUP=1")
    check(got[0].mid == seen[0], f"re-sent with the same packet id {seen[0]} (got {got[0].mid})")
    dev.drop()

    # --- 2: PUBREC sent, PUBREL received, PUBCOMP withheld, socket dropped.
    dev = ctx.device(ver, client_id=cid, clean=False, manual_ack=True)
    dev.must_connect(addr, session_expiry=expiry)
    dev.drain(0.5)
    p2 = f"q2r-b-{uuid.uuid4().hex[:6]}".encode()
    cmd.publish(f"devices/{did}/cmd/q2r", p2, 2)
    m = dev.next_message()
    check(m is not None and m.payload == p2, "device got the message at PUBREL (PUBCOMP withheld)")
    dev.drop()
    ok("device dropped its socket before PUBCOMP")
    time.sleep(0.3)
    dev = ctx.device(ver, client_id=cid, clean=False)
    dev.must_connect(addr, session_expiry=expiry)
    again = dev.drain(2.5)
    check(not again, f"no second delivery after resume (got {[(x.payload, x.dup) for x in again]})")
    p3 = f"q2r-c-{uuid.uuid4().hex[:6]}".encode()
    cmd.publish(f"devices/{did}/cmd/q2r", p3, 2)
    after = dev.drain(2.0)
    check([x.payload for x in after] == [p3], f"next QoS 2 message flows once (got {[x.payload for x in after]})")
    dev.disconnect()
    cmd.disconnect()
    end = ctx.device(ver, client_id=cid, clean=True)
    end.must_connect(addr, session_expiry=0 if ver == mqtt.MQTTv5 else None)
    end.disconnect()


def sc_tls(ctx, ver):
    did, _ = ctx.dev
    addr = ctx.need("--mqtts", ctx.args.mqtts)
    ca = ctx.need("--ca", ctx.args.ca)
    dev = ctx.device(ver, "-tls", tls=ctx.tls_context(ca)).must_connect(addr)
    ok(f"TLS connection verified against {os.path.basename(ca)} (hostname {hostport(addr)[0]})")
    tag = f"tls-{uuid.uuid4().hex[:8]}"
    value, payload = probe_payload(tag)
    dev.publish(f"devices/{did}/telemetry", payload, 1)
    dev.disconnect()
    ctx.api.wait_stored(did, tag, value)
    ok(f"value {value} published over TLS is stored")
    wrong = ctx.need("--wrong-ca (or --certs with other-ca.pem)", ctx.args.wrong_ca)
    bad = ctx.device(ver, "-tlsbad", tls=ctx.tls_context(wrong))
    why = bad.connect(addr, timeout=5)
    check(why is not None and "CERTIFICATE_VERIFY_FAILED" in why,
          f"with a wrong CA the handshake fails verification ({why})")


def sc_mtls(ctx, ver):
    did, _ = ctx.dev
    if len(ctx.devices) < 2:
        raise CheckFailed("mtls needs two --device (A = the certificate's CN, B = another)")
    other, _ = ctx.devices[1]
    addr = ctx.need("--mqtts", ctx.args.mqtts)
    ca = ctx.need("--ca", ctx.args.ca)
    certs = ctx.need("--certs", ctx.args.certs)
    client = (os.path.join(certs, "client.pem"), os.path.join(certs, "client.key"))
    rogue = (os.path.join(certs, "rogue.pem"), os.path.join(certs, "rogue.key"))
    cn = ssl._ssl._test_decode_cert(client[0])["subject"]  # noqa: SLF001 (stdlib, tests only)
    cn = dict(x[0] for x in cn).get("commonName")
    if cn != did:
        raise CheckFailed(f"{client[0]} has CN {cn!r}, expected the first --device {did!r}")

    # 1. Certificate, no user name, no password: the CN is the identity.
    dev = Peer(f"{did}-mtls", ver, tls=ctx.tls_context(ca, *client)).must_connect(addr)
    ok(f"client certificate CN={did} connects without user name or password")
    tag = f"mtls-{uuid.uuid4().hex[:8]}"
    value, payload = probe_payload(tag)
    dev.publish(f"devices/{did}/telemetry", payload, 1)
    ctx.api.wait_stored(did, tag, value)
    ok(f"publish under devices/{did}/ is stored (value {value})")

    # 2. Cross-device publish with A's certificate into B's namespace: nothing stored.
    tag_b = f"mtlsx-{uuid.uuid4().hex[:8]}"
    value_b, payload_b = probe_payload(tag_b)
    info = dev.c.publish(f"devices/{other}/telemetry", payload_b, qos=1)
    info.wait_for_publish(WAIT)
    if ver == mqtt.MQTTv5:
        rc = dev.pub_reasons.get(info.mid)
        check(rc is not None and rc.value == 0x87,
              f"v5 PUBACK for devices/{other}/telemetry says Not authorized (0x87) (got {rc})")
    dev.disconnect()
    ctx.api.assert_not_stored(other, tag_b)
    ctx.api.assert_not_stored(did, tag_b, settle=0)
    ok(f"publish with CN={did} into devices/{other}/telemetry is not stored")

    # 2b. Same, with B's user name but A's certificate: the certificate wins.
    did_b, tok_b = ctx.devices[1]
    mixed = Peer(f"{did}-mtls-mixed", ver, username=did_b, password=tok_b,
                 tls=ctx.tls_context(ca, *client)).must_connect(addr)
    tag_c = f"mtlsy-{uuid.uuid4().hex[:8]}"
    _, payload_c = probe_payload(tag_c)
    mixed.c.publish(f"devices/{other}/telemetry", payload_c, qos=1).wait_for_publish(WAIT)
    mixed.disconnect()
    ctx.api.assert_not_stored(other, tag_c)
    ok(f"CN={did} certificate + {did_b}'s user name/password still cannot publish as {did_b}")

    # 3. No certificate: refused (tls_require_client_cert = true).
    nocert = ctx.device(ver, "-nocert", tls=ctx.tls_context(ca))
    why = nocert.connect(addr, timeout=5)
    check(why is not None, f"client without a certificate is refused ({why})")

    # 3b. Valid certificate whose CN is no registered device: CONNACK "not authorized".
    stranger = (os.path.join(certs, "stranger.pem"), os.path.join(certs, "stranger.key"))
    st = Peer("stranger", ver, tls=ctx.tls_context(ca, *stranger))
    why = st.connect(addr, timeout=5)
    check(why is not None and "CONNACK refused" in why,
          f"certificate with an unregistered CN is refused in CONNACK ({why})")

    # 4. Certificate from another CA, same CN: refused.
    bad = Peer(f"{did}-rogue", ver, tls=ctx.tls_context(ca, *rogue))
    why = bad.connect(addr, timeout=5)
    check(why is not None, f"certificate signed by another CA is refused ({why})")


def sc_shared(ctx, ver):
    """Two connections of one device (a redundant gateway pair, say) share its command
    stream: each command reaches exactly one of them, both take turns, retained commands are
    not replayed to the group, and the ACLs judge the filter inside `$share/{group}/`."""
    did, _ = ctx.dev
    addr = ctx.need("--mqtt", ctx.args.mqtt)
    group = f"$share/gw-{uuid.uuid4().hex[:6]}/devices/{did}/cmd/#"
    cmd = ctx.commander(ver).must_connect(addr)
    retained_topic = f"devices/{did}/cmd/shared-retained"
    cmd.publish(retained_topic, b"old", 1, retain=True)
    a = ctx.device(ver, "-sha").must_connect(addr)
    b = ctx.device(ver, "-shb").must_connect(addr)
    try:
        a.subscribe(group, 1)
        b.subscribe(group, 1)
        ok(f"two connections subscribed to {group}")
        replayed = a.drain(0.5) + b.drain(0.5)
        check(not replayed, f"no retained message for a shared subscription (got {len(replayed)})")
        sent = [f"s-{i}-{uuid.uuid4().hex[:6]}".encode() for i in range(10)]
        for i, p in enumerate(sent):
            cmd.publish(f"devices/{did}/cmd/job/{i}", p, 1)
        got_a = [m.payload for m in a.drain(2.0)]
        got_b = [m.payload for m in b.drain(0.5)]
        check(sorted(got_a + got_b) == sorted(sent),
              f"each of 10 commands reached exactly one member (a {len(got_a)}, b {len(got_b)})")
        check(got_a and got_b, f"both members took turns (a {len(got_a)}, b {len(got_b)})")
        other = "someone-else"
        rcs = a.subscribe_result(f"$share/gw/devices/{other}/cmd/#", 1)
        check(rcs[0].is_failure,
              f"a shared subscription to another device's commands is refused ({rcs[0]})")
        rcs = a.subscribe_result("$share/gw", 1)
        check(rcs[0].is_failure, f"a malformed shared filter is refused ({rcs[0]})")
    finally:
        a.disconnect()
        b.disconnect()
        cmd.publish(retained_topic, b"", 1, retain=True)
        cmd.disconnect()


def sc_topic_alias(ctx, ver):
    """MQTT 5 server topic aliases: a client that accepts N aliases gets the topic once with
    an alias, then the alias alone; topics beyond N go in full; a client that accepts none
    gets none."""
    if ver != mqtt.MQTTv5:
        ok("topic aliases are MQTT 5 only: nothing to check for 3.1.1")
        return
    did, _ = ctx.dev
    addr = ctx.need("--mqtt", ctx.args.mqtt)
    dev = ctx.device(ver, "-alias").must_connect(addr, topic_alias_max=2)
    plain = ctx.device(ver, "-noalias").must_connect(addr)
    cmd = ctx.commander(ver).must_connect(addr)
    try:
        dev.subscribe(f"devices/{did}/cmd/#", 1)
        plain.subscribe(f"devices/{did}/cmd/#", 1)
        topics = [f"devices/{did}/cmd/{t}" for t in ("a", "a", "b", "a", "c", "b", "c")]
        for i, t in enumerate(topics):
            cmd.publish(t, f"m{i}".encode(), 1)
        got = dev.drain(2.0)
        check([m.payload for m in got] == [f"m{i}".encode() for i in range(len(topics))],
              f"all {len(topics)} messages arrived in order")
        seen = []
        for m in got:
            alias = getattr(m.properties, "TopicAlias", None)
            seen.append((m.topic, alias))
        a, b, c = (f"devices/{did}/cmd/{t}" for t in "abc")
        want = [(a, 1), ("", 1), (b, 2), ("", 1), (c, None), ("", 2), (c, None)]
        check(seen == want, f"topics and aliases as expected: {seen}")
        ok("first use sends topic + alias, later ones the alias alone, none beyond the maximum")
        plain_seen = [(m.topic, getattr(m.properties, "TopicAlias", None))
                      for m in plain.drain(1.0)]
        check(plain_seen == [(t, None) for t in topics],
              f"a client without Topic Alias Maximum gets full topics and no alias: {plain_seen}")
    finally:
        dev.disconnect()
        plain.disconnect()
        cmd.disconnect()


def sc_burst(ctx, ver):
    """A client that sends far more QoS 1 messages than the receive maximum without waiting
    (paho re-sends its whole offline queue this way at a reconnect) is slowed by TCP, not
    disconnected, and every message is stored."""
    did, _ = ctx.dev
    dev = ctx.device(ver, "-burst")
    dev.c.max_inflight_messages_set(0)  # unlimited, as paho's reconnect replay behaves
    dev.c.max_queued_messages_set(0)
    dev.must_connect(ctx.need("--mqtt", ctx.args.mqtt))
    tag = f"burst-{uuid.uuid4().hex[:8]}"
    count = 1500
    base_ms = int(time.time() * 1000) - count
    started = time.monotonic()
    infos = [dev.c.publish(f"devices/{did}/telemetry",
                           json.dumps({"probe": tag, "value": i, "ts": base_ms + i}), qos=1)
             for i in range(count)]
    deadline = time.monotonic() + 4 * WAIT
    while time.monotonic() < deadline and not all(i.is_published() for i in infos):
        if dev.disconnected.is_set():
            break
        time.sleep(0.05)
    check(not dev.disconnected.is_set(),
          f"{count} QoS 1 publishes sent without waiting: still connected "
          f"(disconnect: {dev.disconnect_rc})")
    acked = sum(1 for i in infos if i.is_published())
    elapsed = time.monotonic() - started
    check(acked == count, f"all {count} acknowledged ({acked}) in {elapsed:.2f} s")
    if ctx.args.rate:
        # The bucket holds a second's worth; the rest goes at the rate.
        least = (count - ctx.args.rate) / ctx.args.rate
        check(elapsed >= 0.8 * least,
              f"held to mqtt.max_message_rate = {ctx.args.rate}/s: {elapsed:.2f} s >= 0.8 x {least:.2f} s")
    dev.disconnect()
    rows, err = ctx.api.query(
        f"SELECT count(*) AS n FROM {TABLE} WHERE device = '{did}' AND probe = '{tag}'")
    n = rows[0]["n"] if rows else err
    check(n == count, f"all {count} stored ({n})")


SCENARIOS = {
    "burst": sc_burst,
    "qos0": sc_qos0,
    "qos1": sc_qos1,
    "qos2": sc_qos2,
    "retained": sc_retained,
    "will": sc_will,
    "session": sc_session,
    "qos2-delivery": sc_qos2_delivery,
    "qos2-resume": sc_qos2_resume,
    "tls": sc_tls,
    "mtls": sc_mtls,
    "shared": sc_shared,
    "topic-alias": sc_topic_alias,
}
GROUPS = {"all-plain": [s for s in SCENARIOS if s not in ("mtls", "burst")]}


# --------------------------------------------------------------------------- certificates


def gen_certs(out: str, cn: str) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    os.makedirs(out, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(n):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, n)])

    def write(path, cert=None, key=None):
        with open(os.path.join(out, path), "wb") as f:
            if cert is not None:
                f.write(cert.public_bytes(serialization.Encoding.PEM))
            if key is not None:
                f.write(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))

    def ca(cn_):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn_)).issuer_name(name(cn_))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                             crl_sign=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        return cert, key

    def leaf(cn_, ca_cert, ca_key):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn_))
                .issuer_name(ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        return cert, key

    ca_cert, ca_key = ca("Fabrik test device CA")
    write("ca.pem", ca_cert)
    write("ca.key", key=ca_key)
    c, k = leaf(cn, ca_cert, ca_key)
    write("client.pem", c)
    write("client.key", key=k)
    c, k = leaf("no-such-device", ca_cert, ca_key)
    write("stranger.pem", c)
    write("stranger.key", key=k)
    other_cert, other_key = ca("Some other CA")
    write("other-ca.pem", other_cert)
    c, k = leaf(cn, other_cert, other_key)
    write("rogue.pem", c)
    write("rogue.key", key=k)
    print(f"wrote ca.pem client.pem/.key (CN={cn}) rogue.pem/.key stranger.pem/.key other-ca.pem in {out}")


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "gen-certs":
        p = argparse.ArgumentParser(prog="paho_clients.py gen-certs")
        p.add_argument("dir")
        p.add_argument("--cn", required=True)
        a = p.parse_args(argv[1:])
        gen_certs(a.dir, a.cn)
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="Fabrik HTTP base URL")
    p.add_argument("--token", required=True, help="admin token (API + MQTT user 'admin')")
    p.add_argument("--mqtt", help="host:port of the plain MQTT listener")
    p.add_argument("--mqtts", help="host:port of the MQTT/TLS listener")
    p.add_argument("--ca", help="PEM that signed the server certificate (<data_dir>/tls/mqtt-cert.pem)")
    p.add_argument("--wrong-ca", help="a PEM CA that did not sign it (default: CERTS/other-ca.pem)")
    p.add_argument("--certs", help="directory written by gen-certs (mtls)")
    p.add_argument("--device", action="append", default=[],
                   help="ID:TOKEN of a registered device (type pump); ID alone registers it")
    p.add_argument("--versions", default="v3.1.1,v5", help="comma list of v3.1.1,v5")
    p.add_argument("--rate", type=int, help="burst: the server's mqtt.max_message_rate, checked")
    p.add_argument("scenarios", nargs="+", help=" ".join(list(SCENARIOS) + list(GROUPS)))
    a = p.parse_args(argv)
    if a.certs and not a.wrong_ca:
        a.wrong_ca = os.path.join(a.certs, "other-ca.pem")
    names = []
    for s in a.scenarios:
        names += GROUPS.get(s, [s])
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; known: {list(SCENARIOS)}")
    versions = [v.strip() for v in a.versions.split(",")]
    try:
        ctx = Ctx(a)
        for name in names:
            for v in versions:
                CURRENT[0] = f"{name}/{v}"
                SCENARIOS[name](ctx, VERSIONS[v])
    except CheckFailed as e:
        print(f"FAIL {CURRENT[0]}: {e}", flush=True)
        return 1
    print(f"all checks passed ({', '.join(names)} x {', '.join(versions)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
