#!/usr/bin/env python3
"""A pymodbus TCP server with known register values, the peer of Fabrik's Modbus poller tests.

It binds 127.0.0.1 on the given port (0 = an ephemeral port), prints `PORT <n>` on stdout once
it listens, and serves until it is killed or its stdin closes (so a crashed test leaves no
orphan). The values are encoded here with Python's `struct`, independently of the Rust
decoder, so the tests compare two implementations.

Layout (addresses are 0-based, as on the wire). Holding and input registers hold the same
values; only addresses 0..HOLDING_SIZE-1 exist, anything above answers exception 0x02.
Holding registers 42..46 are for the write tests.

  addr  type  byte  word  value
  0     u16   big   -     51234
  1     i16   big   -     -1234
  2     u16   little -    0x1234 (stored as 0x3412)
  3     i16   little -    -2 (stored byte-swapped)
  4     u32   big   big   3000000000
  6     u32   big   little 3000000000
  8     i32   big   big   -123456789
  10    i32   little little -123456789
  12    f32   big   big   3.5
  14    f32   big   little -1.25
  16    f32   little big  1234.5
  18    f32   little little 0.15625
  20    f64   big   big   -2.718281828459045
  24    f64   big   little 1e100
  28    f64   little little 6.02214076e23
  32    string big  -     "FABRIK-7" (4 registers)
  36    string little -   "pump" (2 registers)
  38    u16   big   -     1000 (scale 0.1, offset -20 in the tests -> 80.0)
  40    i32   big   big   0 (1 register of padding between 39 and 40 tests gap merging)
  42    u16   big   -     0, writable
  43    f32   big   little 0.0, writable
  45    u16   big   -     0, writable, but the server keeps at most 500 (a device that clamps)
  46    u16   big   -     7, read-only: a write answers exception 0x02

Coils 0..15: True at 0, 3, 9. Discrete inputs 0..15: True at 1, 2, 15.

Usage: modbus_server.py --port 0
"""

import argparse
import asyncio
import struct
import sys

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

HOLDING_SIZE = 47
CLAMPED = 45
CLAMP = 500
READ_ONLY = 46


def words(raw: bytes, byte_order: str, word_order: str) -> list[int]:
    """Split big-endian `raw` into registers, then apply the byte and word orders."""
    regs = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if word_order == "little":
        regs.reverse()
    if byte_order == "little":
        regs = [r[::-1] for r in regs]
    return [int.from_bytes(r, "big") for r in regs]


def string_words(text: str, byte_order: str, registers: int) -> list[int]:
    raw = text.encode("utf-8").ljust(registers * 2, b"\0")
    return words(raw, byte_order, "big")


def register_values() -> list[int]:
    regs = [0] * HOLDING_SIZE

    def put(addr: int, values: list[int]) -> None:
        regs[addr : addr + len(values)] = values

    put(0, words(struct.pack(">H", 51234), "big", "big"))
    put(1, words(struct.pack(">h", -1234), "big", "big"))
    put(2, words(struct.pack(">H", 0x1234), "little", "big"))
    put(3, words(struct.pack(">h", -2), "little", "big"))
    put(4, words(struct.pack(">I", 3_000_000_000), "big", "big"))
    put(6, words(struct.pack(">I", 3_000_000_000), "big", "little"))
    put(8, words(struct.pack(">i", -123_456_789), "big", "big"))
    put(10, words(struct.pack(">i", -123_456_789), "little", "little"))
    put(12, words(struct.pack(">f", 3.5), "big", "big"))
    put(14, words(struct.pack(">f", -1.25), "big", "little"))
    put(16, words(struct.pack(">f", 1234.5), "little", "big"))
    put(18, words(struct.pack(">f", 0.15625), "little", "little"))
    put(20, words(struct.pack(">d", -2.718281828459045), "big", "big"))
    put(24, words(struct.pack(">d", 1e100), "big", "little"))
    put(28, words(struct.pack(">d", 6.02214076e23), "little", "little"))
    put(32, string_words("FABRIK-7", "big", 4))
    put(36, string_words("pump", "little", 2))
    put(38, [1000])
    put(40, words(struct.pack(">i", 0), "big", "big"))
    put(READ_ONLY, [7])
    return regs


async def clamp(function_code, start_address, address, count, registers, set_values):
    """Keeps register CLAMPED at most CLAMP, as a drive keeps its speed setpoint in range."""
    if set_values is not None and function_code in (6, 16):
        for i in range(count):
            if address + i == CLAMPED and set_values[i] > CLAMP:
                set_values[i] = CLAMP
    return None


def device() -> SimDevice:
    regs = register_values()
    coils = [i in (0, 3, 9) for i in range(16)]
    discretes = [i in (1, 2, 15) for i in range(16)]
    return SimDevice(
        id=0,  # answer every unit id
        simdata=(
            [SimData(0, values=coils, datatype=DataType.BITS)],
            [SimData(0, values=discretes, datatype=DataType.BITS)],
            [
                SimData(0, values=regs[:READ_ONLY], datatype=DataType.REGISTERS),
                SimData(
                    READ_ONLY,
                    values=regs[READ_ONLY:],
                    datatype=DataType.REGISTERS,
                    readonly=True,
                ),
            ],
            [SimData(0, values=regs, datatype=DataType.REGISTERS)],
        ),
        action=clamp,
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    server = ModbusTcpServer(device(), address=("127.0.0.1", args.port))
    await server.serve_forever(background=True)
    port = server.transport.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)

    # Serve until stdin closes (the test process died or dropped its handle).
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await server.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
