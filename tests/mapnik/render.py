"""Renders 256-pixel tiles with Mapnik, the reference the raster tiles are checked against.

Usage: python3 render.py STYLE.xml
Reads "z x y" lines on stdin; answers each with the tile as 32-bit PNG on stdout, preceded by
its length in bytes on a line of its own. Run with the python3 that scripts/services gives as
GEOSTACK_MAPNIK_PYTHON (Debian's python3-mapnik).
"""

import math
import os
import sys

import mapnik

HALF = math.pi * 6378137.0
# The fonts the renderer under test bundles, so that labels are set in the same faces.
FONTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "crates", "tiles", "fonts")


def tile_box(z, x, y):
    span = 2.0 * HALF / (1 << z)
    west = -HALF + x * span
    north = HALF - y * span
    return mapnik.Box2d(west, north - span, west + span, north)


def main():
    mapnik.register_fonts(FONTS)
    tile = mapnik.Map(256, 256)
    mapnik.load_map(tile, sys.argv[1])
    out = sys.stdout.buffer
    for line in sys.stdin:
        z, x, y = (int(v) for v in line.split())
        tile.zoom_to_box(tile_box(z, x, y))
        image = mapnik.Image(256, 256)
        mapnik.render(tile, image)
        png = image.tostring("png32")
        out.write(b"%d\n" % len(png))
        out.write(png)
        out.flush()


if __name__ == "__main__":
    main()
