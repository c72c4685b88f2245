"""An OTLP trace receiver for Fabrik's trace tests (decisions 0054, 0073, 0076).

Takes `POST /v1/traces` with an `ExportTraceServiceRequest` in either of OTLP/HTTP's
encodings, parsed strictly by the OpenTelemetry protocol's own definitions (PyPI
`opentelemetry-proto`): binary protobuf (`application/x-protobuf`), or JSON
(`application/json`, protobuf's JSON mapping; either gzip-compressed with `Content-Encoding:
gzip`, recorded as "compressed": unknown fields and wrong types are errors). As
the OTLP specification says, and as the OpenTelemetry Collector does, trace and span ids in
OTLP/JSON are hex, not protobuf's base64: they are checked and converted first. Each span is
appended to OUT as one JSON line (ids in hex, attributes as a dict, the resource's attributes
beside them, and the encoding it came in); a request that does not parse is answered 400 and
written as {"error": ...}.

With `grpc`, it is an OTLP/gRPC receiver instead: the `TraceService/Export` call served by
gRPC's reference implementation (PyPI grpcio, with opentelemetry-proto's service stubs),
spans recorded with the encoding "grpc". With a count after it, it refuses that many calls
first with UNAVAILABLE (recorded as {"refused": "UNAVAILABLE"}), which OTLP says to retry.

With OTLP_REJECT=N in its environment it answers every export with a partial success:
N spans rejected, "too old" (in the request's encoding).

Usage: otlp_receiver.py PORT OUT [grpc [REFUSE_FIRST]]
"""
import base64
import gzip
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format, unknown_fields
from google.protobuf.descriptor import FieldDescriptor
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

PORT, OUT = int(sys.argv[1]), sys.argv[2]
ID_LENGTHS = {"traceId": 16, "spanId": 8, "parentSpanId": 8}
REJECT = int(os.environ.get("OTLP_REJECT", "0"))


def response():
    if not REJECT:
        return ExportTraceServiceResponse()
    return ExportTraceServiceResponse(
        partial_success=ExportTracePartialSuccess(rejected_spans=REJECT, error_message="too old")
    )


def hex_ids_to_base64(span):
    for key, length in ID_LENGTHS.items():
        if key in span:
            raw = bytes.fromhex(span[key])
            if len(raw) != length:
                raise ValueError(f"{key} {span[key]!r} is not {length} bytes of hex")
            span[key] = base64.b64encode(raw).decode()


def has_unknown_fields(message):
    if len(unknown_fields.UnknownFieldSet(message)):
        return True
    for field, v in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        repeated = getattr(field, "is_repeated", None)
        if repeated is None:
            repeated = field.label == FieldDescriptor.LABEL_REPEATED
        if any(has_unknown_fields(m) for m in (v if repeated else [v])):
            return True
    return False


def value(any_value):
    kind = any_value.WhichOneof("value")
    v = getattr(any_value, kind)
    return int(v) if kind == "int_value" else v


# Requests are answered on threads of their own: their lines are appended one request at a
# time, so a large batch flushed in several writes never interleaves with another's.
OUT_LOCK = threading.Lock()


def record(request, encoding, compressed=None):
    lines = []
    for resource_spans in request.resource_spans:
        resource = {a.key: value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                lines.append(json.dumps({
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "name": span.name,
                    "kind": span.kind,
                    "start": span.start_time_unix_nano,
                    "end": span.end_time_unix_nano,
                    "attributes": {a.key: value(a.value) for a in span.attributes},
                    "status": span.status.code,
                    "status_message": span.status.message,
                    "links": [
                        {"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()}
                        for link in span.links
                    ],
                    "resource": resource,
                    "encoding": encoding,
                    "compressed": compressed,
                }))
    with OUT_LOCK, open(OUT, "a") as out:
        out.writelines(line + "\n" for line in lines)


def note(entry):
    with OUT_LOCK, open(OUT, "a") as out:
        out.write(json.dumps(entry) + "\n")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        compressed = self.headers.get("content-encoding") == "gzip"
        try:
            if compressed:
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                raise ValueError(f"path {self.path}")
            content_type = self.headers.get("content-type", "").split(";")[0]
            if content_type == "application/x-protobuf":
                encoding = "protobuf"
                request = ExportTraceServiceRequest.FromString(body)
                # Parsing keeps fields it does not know aside: a field sent under a wrong
                # number would otherwise pass unseen.
                if has_unknown_fields(request):
                    raise ValueError("fields under numbers OTLP does not define")
            elif content_type == "application/json":
                encoding = "json"
                document = json.loads(body)
                for resource_spans in document.get("resourceSpans", []):
                    for scope_spans in resource_spans.get("scopeSpans", []):
                        for span in scope_spans.get("spans", []):
                            hex_ids_to_base64(span)
                            for link in span.get("links", []):
                                hex_ids_to_base64(link)
                request = json_format.Parse(json.dumps(document), ExportTraceServiceRequest())
            else:
                raise ValueError(f"content-type {self.headers.get('content-type')}")
        except Exception as e:  # noqa: BLE001 - every failure is the sender's
            note({"error": str(e)})
            self.send_response(400)
            self.end_headers()
            return
        record(request, encoding, compressed)
        if encoding == "protobuf":
            answer, answer_type = response().SerializeToString(), "application/x-protobuf"
        else:
            answer = json_format.MessageToJson(response()).encode()
            answer_type = "application/json"
        self.send_response(200)
        self.send_header("content-type", answer_type)
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def serve_grpc(refuse_first):
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    refusals = [refuse_first]
    refusals_lock = threading.Lock()

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            with refusals_lock:
                refuse = refusals[0] > 0
                refusals[0] -= refuse
            if refuse:
                note({"refused": "UNAVAILABLE"})
                context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
            if has_unknown_fields(request):
                note({"error": "fields under numbers OTLP does not define"})
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unknown fields")
            record(request, "grpc")
            return response()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    server.add_insecure_port(f"127.0.0.1:{PORT}")
    server.start()
    server.wait_for_termination()


if len(sys.argv) > 3 and sys.argv[3] == "grpc":
    serve_grpc(int(sys.argv[4]) if len(sys.argv) > 4 else 0)
else:
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
