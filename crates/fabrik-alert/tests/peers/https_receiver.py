"""An HTTPS webhook receiver for Fabrik's webhook notifier tests (Python's http.server behind
ssl): a certificate for `localhost` signed by a throwaway CA generated on start, and HTTP
basic authentication for one user.

Prints `PORT <n>`, `CA <path>` and `CERT <path>` (the server's own certificate, which is no
CA) once listening, then one `POST <json>` line per request:
`{"authorized": bool, "body": <the JSON body>}`. Answers 200 when authorized, else 401.
"""

import argparse
import base64
import http.server
import json
import os
import shutil
import ssl
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smtp_server import make_certificate  # noqa: E402  (the same throwaway CA)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--user", default="fabrik")
    parser.add_argument("--password", default="s3cret")
    args = parser.parse_args()
    expected = "Basic " + base64.b64encode(f"{args.user}:{args.password}".encode()).decode()
    output = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("content-length", 0))
            body = self.rfile.read(length)
            authorized = self.headers.get("authorization") == expected
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            line = "POST " + json.dumps({"authorized": authorized, "body": parsed}) + "\n"
            # One write under a lock: the server answers each request on its own thread, and
            # print() writes its parts separately, so two requests' lines could interleave.
            with output:
                sys.stdout.write(line)
                sys.stdout.flush()
            self.send_response(200 if authorized else 401)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_):
            pass

    directory = tempfile.mkdtemp(prefix="fabrik-https-")
    ca, cert, key = make_certificate(directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("PORT", server.server_address[1], flush=True)
    print("CA", ca, flush=True)
    print("CERT", cert, flush=True)
    try:
        sys.stdin.read()
    finally:
        server.shutdown()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
