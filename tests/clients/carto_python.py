"""CARTO's Python client (carto-python) against a geostack server, as its users call it.

Reads GEOSTACK_BASE_URL (…/user/<name>/) and GEOSTACK_API_KEY (a key that may write `notes`),
runs each call, and prints one JSON object of what the client got back; the Rust test that
runs this compares it with the database. Any exception fails the run (exit status 1).
"""
import io
import json
import os
import sys
import time
import warnings

from carto.auth import APIKeyAuthClient
from carto.sql import BatchSQLClient, CopySQLClient, SQLClient

warnings.simplefilter("ignore")

auth = APIKeyAuthClient(
    base_url=os.environ["GEOSTACK_BASE_URL"], api_key=os.environ["GEOSTACK_API_KEY"]
)
sql = SQLClient(auth)
copy = CopySQLClient(auth)
out = {}

out["json"] = sql.send("select name from countries order by name limit 3")["rows"]
out["json_get"] = sql.send(
    "select count(*) as n from countries", do_post=False
)["rows"]
csv = sql.send("select name, gid from countries order by name limit 2", format="csv")
out["csv"] = csv.decode() if isinstance(csv, bytes) else csv
geojson = sql.send(
    "select name, geom from countries order by name limit 2", format="geojson"
)
out["geojson"] = {
    "type": geojson["type"],
    "names": [f["properties"]["name"] for f in geojson["features"]],
    "geometry_types": [f["geometry"]["type"] for f in geojson["features"]],
}

# copyfrom: compressed (the client's default) and not, from an iterable and a file object.
query = "COPY notes (note) FROM STDIN WITH (FORMAT csv)"
out["copyfrom_gzip"] = copy.copyfrom(query, iter([b"alpha\n", b"beta\n"]))["total_rows"]
out["copyfrom_plain"] = copy.copyfrom_file_object(
    query, io.BytesIO(b"gamma\n\"delta, quoted\"\n"), compress=False
)["total_rows"]

# copyto: the rows just copied in, as CSV with a header, streamed.
response = copy.copyto(
    "COPY (select note from notes order by id) TO STDOUT WITH (FORMAT csv, HEADER true)"
)
out["copyto"] = b"".join(response.iter_content(1024)).decode()

# A refused copy raises the client's own exception with the server's message.
try:
    copy.copyto("COPY notes TO '/tmp/notes.csv'")
    out["copyto_file"] = "accepted"
except Exception as e:  # carto.exceptions.CartoException
    out["copyto_file"] = str(e)

# Batch jobs: a list of statements, and statements with fallbacks; cancelling a finished job.
batch = BatchSQLClient(auth)


def wait(job):
    for _ in range(300):
        if job["status"] not in ("pending", "running"):
            return job
        time.sleep(0.1)
        job = batch.read(job["job_id"])
    return job


many = wait(batch.create([
    "insert into notes (note) values ('from a list')",
    "update notes set note = note || '!' where note = 'from a list'",
]))
out["batch_many"] = {
    "status": many["status"],
    "statuses": [q["status"] for q in many["query"]],
}
fallback = wait(batch.create({
    "query": [{
        "query": "insert into notes (note) values ((1 / 0)::text)",
        "onerror": "insert into notes (note) values ('failed: <%= error_message %>')",
    }],
    "onsuccess": "insert into notes (note) values ('never')",
}))
step = fallback["query"]["query"][0]
out["batch_fallback"] = {
    "status": fallback["status"],
    "query_status": step["status"],
    "failed_reason": step.get("failed_reason"),
    "fallback_status": step["fallback_status"],
    "job_fallback_status": fallback.get("fallback_status"),
}
out["cancel_done"] = batch.cancel(many["job_id"])
# update reaches the job (its key in the body): a finished job keeps its SQL.
try:
    batch.update(many["job_id"], "select 1")
    out["update_done"] = "accepted"
except Exception as e:  # carto.exceptions.CartoException
    out["update_done"] = str(e)

json.dump(out, sys.stdout)
