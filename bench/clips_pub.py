"""Publishes WAV clips to Fabrik's MQTT endpoint as devices do (QoS 1, `devices/<id>/clips/acoustic`)
and reports how fast they were acknowledged: a PUBACK from Fabrik means the clip's blob and rows
are durable. Usage: clips_pub.py HOST PORT TOKEN CLIPS PUBLISHERS [SECONDS_PER_CLIP]"""
import random
import struct
import sys
import threading
import time

import paho.mqtt.client as mqtt

host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
clips, publishers = int(sys.argv[4]), int(sys.argv[5])
seconds = float(sys.argv[6]) if len(sys.argv) > 6 else 1.0
RATE = 8000


def wav(index):
    frames = int(RATE * seconds)
    data = random.Random(index).randbytes(2 * frames)
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, RATE, 2 * RATE, 2, 16)
    header += b"data" + struct.pack("<I", len(data))
    return header + data


payloads = [wav(i) for i in range(clips)]
latencies = []
lock = threading.Lock()


def publish(k):
    done = threading.Event()
    mine = list(range(k, clips, publishers))
    acks = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"clip-bench-{k}")
    client.username_pw_set("admin", token)
    client.max_inflight_messages_set(20)

    # Called with paho's own lock held: record and return, never wait for another lock here.
    def on_publish(_c, _u, mid, _rc, _p):
        acks[mid] = time.perf_counter()
        if len(acks) == len(mine):
            done.set()

    client.on_publish = on_publish
    client.connect(host, port, keepalive=60)
    client.loop_start()
    sent = []
    for i in mine:
        t = time.perf_counter()
        sent.append((client.publish(f"devices/bench-{k}/clips/acoustic", payloads[i], qos=1).mid, t))
    done.wait(600)
    client.loop_stop()
    client.disconnect()
    with lock:
        latencies.extend(acks[mid] - t for mid, t in sent if mid in acks)


start = time.perf_counter()
threads = [threading.Thread(target=publish, args=(k,)) for k in range(publishers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
elapsed = time.perf_counter() - start
latencies.sort()
p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
size = len(payloads[0])
print(
    f"{len(latencies)} of {clips} clips ({size} bytes each) acknowledged in {elapsed:.2f} s: "
    f"{len(latencies) / elapsed:.0f} clips/s, {len(latencies) * size / elapsed / 1e6:.1f} MB/s; "
    f"PUBACK latency p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms"
)
