#!/usr/bin/env python3
"""Opens N idle MQTT 3.1.1 connections (keepalive 60 s, pings every 30 s) to a broker and keeps
them open for HOLD seconds. Source addresses rotate over 127.0.0.1-8 so N can exceed one
address's ephemeral ports. Prints `connected <n>` once all CONNACKs are in, then `done`.

usage: mqtt_idle.py HOST PORT N HOLD [USER PASSWORD]
"""
import asyncio
import resource
import sys


def connect_packet(client_id: str, user, password) -> bytes:
    flags = 0x02
    payload = len(client_id).to_bytes(2, "big") + client_id.encode()
    if user is not None:
        flags |= 0x80 | 0x40
        payload += len(user).to_bytes(2, "big") + user.encode()
        payload += len(password).to_bytes(2, "big") + password.encode()
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x3c" + payload
    length = len(body)
    encoded = b""
    while True:
        byte = length % 128
        length //= 128
        encoded += bytes([byte | (0x80 if length else 0)])
        if not length:
            break
    return b"\x10" + encoded + body


async def one(host, port, i, user, password, connected, hold):
    source = f"127.0.0.{1 + i % 8}" if host.startswith("127.") else None
    reader, writer = await asyncio.open_connection(
        host, port, local_addr=(source, 0) if source else None
    )
    writer.write(connect_packet(f"idle-{i}", user, password))
    await writer.drain()
    ack = await reader.readexactly(4)
    if ack[0] != 0x20 or ack[3] != 0:
        raise RuntimeError(f"connection {i}: CONNACK {ack.hex()}")
    connected.append(i)
    end = asyncio.get_running_loop().time() + hold
    while asyncio.get_running_loop().time() < end:
        await asyncio.sleep(30)
        writer.write(b"\xc0\x00")
        await writer.drain()
    writer.close()


async def main():
    host, port, n, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    user = sys.argv[5] if len(sys.argv) > 5 else None
    password = sys.argv[6] if len(sys.argv) > 6 else None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1024), hard))
    connected = []
    tasks = []
    for start in range(0, n, 1000):
        for i in range(start, min(n, start + 1000)):
            tasks.append(asyncio.create_task(one(host, port, i, user, password, connected, hold)))
        while len(connected) < min(n, start + 1000):
            failed = [t for t in tasks if t.done() and t.exception()]
            if failed:
                raise failed[0].exception()
            await asyncio.sleep(0.05)
    print(f"connected {len(connected)}", flush=True)
    await asyncio.gather(*tasks)
    print("done", flush=True)


asyncio.run(main())
