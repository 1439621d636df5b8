"""cartoframes against a geostack server, as a data scientist calls it: a GeoDataFrame uploaded
with to_carto (a new table, then replaced), read back with read_carto (a table and a query).

Reads GEOSTACK_BASE_URL (…/user/<name>/) and GEOSTACK_API_KEY (the user's master key) and
prints one JSON object of what cartoframes gave back; the Rust test that runs this compares it
with the database. Any exception fails the run (exit status 1).
"""
import json
import logging
import os
import warnings

warnings.simplefilter("ignore")
logging.disable(logging.CRITICAL)

from cartoframes.utils.metrics import setup_metrics  # noqa: E402

setup_metrics(False)  # no usage reports sent anywhere

import geopandas  # noqa: E402
from cartoframes import read_carto, to_carto  # noqa: E402
from cartoframes.auth import Credentials  # noqa: E402
from shapely.geometry import Point  # noqa: E402

creds = Credentials(
    base_url=os.environ["GEOSTACK_BASE_URL"],
    api_key=os.environ["GEOSTACK_API_KEY"],
    allow_non_secure=True,
)
gdf = geopandas.GeoDataFrame(
    {
        "name": ["Zürich", "Lisbon", "Quito"],
        "pop": [421878, 545923, 2011388],
        "score": [0.5, -1.25, 3.0],
    },
    geometry=[Point(8.541694, 47.376887), Point(-9.139, 38.722), Point(-78.5, -0.22)],
    crs="epsg:4326",
)
out = {}
out["table"] = to_carto(gdf, "Uploaded Places", credentials=creds)


def rows(frame):
    frame = frame.sort_values("name")
    return [
        {
            "name": r["name"],
            "pop": int(r["pop"]),
            "score": float(r["score"]),
            "point": [round(r["the_geom"].x, 6), round(r["the_geom"].y, 6)],
            "cartodb_id": int(r["cartodb_id"]),
        }
        for _, r in frame.iterrows()
    ]


back = read_carto(out["table"], credentials=creds)
out["columns"] = sorted(back.columns)
out["rows"] = rows(back)
out["crs"] = str(back.crs)

# The same table replaced by fewer rows: cartoframes truncates it and copies again.
to_carto(gdf[gdf["pop"] < 1000000], out["table"], credentials=creds, if_exists="replace")
out["replaced"] = rows(read_carto(out["table"], credentials=creds))

query = "select name from {} where pop > 500000 order by name".format(out["table"])
out["query"] = list(read_carto(query, credentials=creds, decode_geom=False)["name"])
print(json.dumps(out))
