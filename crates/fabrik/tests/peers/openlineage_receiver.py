"""An OpenLineage HTTP endpoint for Fabrik's lineage test (decision 0080), standing in for a
catalog such as Marquez.

Takes `POST /api/v1/lineage` and checks each RunEvent with OpenLineage's own Python client
(PyPI openlineage-python): the event is built again from its fields with the client's classes
(`RunEvent`, `Run`, `Job`, the datasets and each facet's class), whose validators check the
run id (a UUID), the event time (ISO 8601 with a time), the event type and every required
field, and the client's serialisation of that event must equal what was received — every
facet with the `_schemaURL` the client gives it, every field where the client puts it. A
facet the client has no class for is an error.

Each request is appended to OUT as one JSON line: {"event": ..., "authorization": ...}, plus
"error" when it did not pass (answered 400). With REFUSE_FIRST, that many requests are first
answered 503 (recorded as {"refused": 503}), which a sender should try again.

Usage: openlineage_receiver.py PORT OUT [REFUSE_FIRST]
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.generated import (
    dataset_version_dataset,
    error_message_run,
    job_type_job,
    nominal_time_run,
    output_statistics_output_dataset,
    parent_run,
    processing_engine_run,
    schema_dataset,
    sql_job,
)
from openlineage.client.serde import Serde

PORT, OUT = int(sys.argv[1]), sys.argv[2]
REFUSE = [int(sys.argv[3]) if len(sys.argv) > 3 else 0]
LOCK = threading.Lock()


def facets(kind, given, builders):
    built = {}
    for key, fields in (given or {}).items():
        if key not in builders:
            raise ValueError(f"{kind} facet {key!r}: openlineage-python has no class for it")
        fields = dict(fields)
        producer = fields.pop("_producer")
        fields.pop("_schemaURL")
        built[key] = builders[key](fields, producer)
    return built


def schema(f, producer):
    return schema_dataset.SchemaDatasetFacet(
        fields=[
            schema_dataset.SchemaDatasetFacetFields(name=c["name"], type=c.get("type"), fields=c["fields"])
            for c in f["fields"]
        ],
        producer=producer,
    )


DATASET_FACETS = {
    "schema": schema,
    "version": lambda f, p: dataset_version_dataset.DatasetVersionDatasetFacet(**f, producer=p),
}
OUTPUT_FACETS = {
    "outputStatistics": lambda f, p: output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
        **f, producer=p
    ),
}
RUN_FACETS = {
    "processing_engine": lambda f, p: processing_engine_run.ProcessingEngineRunFacet(**f, producer=p),
    "nominalTime": lambda f, p: nominal_time_run.NominalTimeRunFacet(**f, producer=p),
    "errorMessage": lambda f, p: error_message_run.ErrorMessageRunFacet(**f, producer=p),
    "parent": lambda f, p: parent_run.ParentRunFacet(
        run=parent_run.Run(runId=f["run"]["runId"]),
        job=parent_run.Job(namespace=f["job"]["namespace"], name=f["job"]["name"]),
        producer=p,
    ),
}
JOB_FACETS = {
    "jobType": lambda f, p: job_type_job.JobTypeJobFacet(**f, producer=p),
    "sql": lambda f, p: sql_job.SQLJobFacet(**f, producer=p),
}


def rebuilt(event):
    """The event as openlineage-python builds it from the received fields."""
    return RunEvent(
        eventType=RunState(event["eventType"]),
        eventTime=event["eventTime"],
        producer=event["producer"],
        run=Run(runId=event["run"]["runId"], facets=facets("run", event["run"]["facets"], RUN_FACETS)),
        job=Job(
            namespace=event["job"]["namespace"],
            name=event["job"]["name"],
            facets=facets("job", event["job"]["facets"], JOB_FACETS),
        ),
        inputs=[
            InputDataset(
                namespace=d["namespace"],
                name=d["name"],
                facets=facets("dataset", d["facets"], DATASET_FACETS),
                inputFacets=facets("input", d["inputFacets"], {}),
            )
            for d in event["inputs"]
        ],
        outputs=[
            OutputDataset(
                namespace=d["namespace"],
                name=d["name"],
                facets=facets("dataset", d["facets"], DATASET_FACETS),
                outputFacets=facets("output", d["outputFacets"], OUTPUT_FACETS),
            )
            for d in event["outputs"]
        ],
    )


def differences(expected, got, path="$"):
    if isinstance(expected, dict) and isinstance(got, dict):
        out = []
        for key in sorted(set(expected) | set(got)):
            if key not in got:
                out.append(f"{path}.{key} missing (the client has {expected[key]!r})")
            elif key not in expected:
                out.append(f"{path}.{key} is not in the client's event")
            else:
                out.extend(differences(expected[key], got[key], f"{path}.{key}"))
        return out
    if isinstance(expected, list) and isinstance(got, list) and len(expected) == len(got):
        return [d for i, (e, g) in enumerate(zip(expected, got)) for d in differences(e, g, f"{path}[{i}]")]
    return [] if expected == got else [f"{path}: the client has {expected!r}, received {got!r}"]


def record(line):
    with LOCK, open(OUT, "a") as out:
        out.write(json.dumps(line) + "\n")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/api/v1/lineage":
            self.answer(404, {"error": f"no endpoint {self.path}"})
            return
        with LOCK:
            refuse = REFUSE[0] > 0
            REFUSE[0] -= refuse
        if refuse:
            record({"refused": 503})
            self.answer(503, {"error": "not now"})
            return
        line = {"authorization": self.headers.get("Authorization")}
        try:
            if self.headers.get("Content-Type") != "application/json":
                raise ValueError(f"Content-Type {self.headers.get('Content-Type')!r}")
            event = json.loads(body)
            line["event"] = event
            problems = differences(Serde.to_dict(rebuilt(event)), event)
            if problems:
                raise ValueError("; ".join(problems))
        except Exception as e:  # noqa: BLE001 - every failure is the test's to see
            line["error"] = f"{type(e).__name__}: {e}"
            record(line)
            self.answer(400, {"error": line["error"]})
            return
        record(line)
        # Marquez answers 201 Created.
        self.answer(201, {})

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
