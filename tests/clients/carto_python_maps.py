"""carto-python's map clients against a geostack server: AnonymousMap (the key inside the
config's body, as the client sends it) and NamedMapManager (a template made with the master
key, instantiated with placeholder values), each map's vector tile fetched.

Reads GEOSTACK_BASE_URL (…/user/<name>/), GEOSTACK_API_KEY (a key that reads `notes`) and
GEOSTACK_MASTER_KEY, and prints one JSON object of what the clients got back; any exception
fails the run (exit status 1).
"""
import json
import os
import sys
import warnings

import requests
from carto.auth import APIKeyAuthClient
from carto.maps import AnonymousMap, NamedMapManager

warnings.simplefilter("ignore")

base = os.environ["GEOSTACK_BASE_URL"]
auth = APIKeyAuthClient(base_url=base, api_key=os.environ["GEOSTACK_API_KEY"])
master = APIKeyAuthClient(base_url=base, api_key=os.environ["GEOSTACK_MASTER_KEY"])
out = {}

layer_sql = "select id, note, ST_Transform(geom, 3857) as the_geom_webmercator from notes"
anonymous = AnonymousMap(auth)
anonymous.instantiate({
    "version": "1.3.0",
    "layers": [{"type": "cartodb", "options": {
        "sql": layer_sql, "cartocss": "#l { marker-width: 5; }", "cartocss_version": "2.1.1"}}],
})
out["anonymous"] = anonymous.layergroupid
# Its tiles are read as the key that asks for them (here the same key).
tile = requests.get(
    anonymous.get_tile_url(0, 0, 0, layer_id="0", extension="mvt"),
    params={"api_key": os.environ["GEOSTACK_API_KEY"]},
)
out["anonymous_tile"] = [tile.status_code, len(tile.content)]

manager = NamedMapManager(master)
named = manager.create(template={
    "version": "0.0.1",
    "name": "python_notes",
    "auth": {"method": "open"},
    "placeholders": {"word": {"type": "sql_literal", "default": "x"}},
    "view": {"zoom": 1, "center": {"lng": 0, "lat": 0}},
    "layergroup": {"version": "1.3.0", "layers": [{"type": "cartodb", "options": {
        "sql": layer_sql + " where note like '%<%= word %>%'",
        "cartocss": "#l { marker-width: 5; }", "cartocss_version": "2.1.1"}}]},
})
out["template_id"] = named.template_id
named.instantiate({"word": "a"})
out["named"] = named.layergroupid
tile_url = "{}api/v1/map/{}/0/0/0/0.mvt".format(base, named.layergroupid)
tile = requests.get(tile_url)
out["named_tile"] = [tile.status_code, len(tile.content)]
out["listed"] = [m.template_id for m in manager.all()]
fetched = manager.get("python_notes")
out["fetched_auth"] = fetched.auth["method"]
fetched.delete()
out["after_delete"] = [m.template_id for m in manager.all()]

json.dump(out, sys.stdout)
