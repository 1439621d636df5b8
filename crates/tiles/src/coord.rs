//! Tile coordinates and Web Mercator math.

use std::fmt;

use crate::{Error, Result};

/// Half the width of the Web Mercator square, in EPSG:3857 metres (π × 6 378 137).
pub const WEB_MERCATOR_HALF: f64 = 20_037_508.342_789_244;

/// The deepest zoom accepted.
pub const MAX_ZOOM: u8 = 30;

/// A checked tile coordinate: `z` in `0..=30`, `x` and `y` in `0..2^z`, `y` counted from the top
/// (XYZ, as in slippy maps).
///
/// ```
/// use geostack_tiles::TileCoord;
///
/// let tile = TileCoord::new_checked(1, 1, 0).unwrap();
/// let b = tile.bounds_3857();
/// assert_eq!((b.min_x, b.max_y), (0.0, geostack_tiles::WEB_MERCATOR_HALF));
/// assert!(TileCoord::new_checked(31, 0, 0).is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TileCoord {
    z: u8,
    x: u32,
    y: u32,
}

/// An axis-aligned box.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bounds {
    /// West (or left).
    pub min_x: f64,
    /// South (or bottom).
    pub min_y: f64,
    /// East.
    pub max_x: f64,
    /// North.
    pub max_y: f64,
}

impl Bounds {
    /// The box grown by `margin` on every side.
    pub fn expand(&self, margin: f64) -> Self {
        Self {
            min_x: self.min_x - margin,
            min_y: self.min_y - margin,
            max_x: self.max_x + margin,
            max_y: self.max_y + margin,
        }
    }

    /// Whether two boxes overlap (touching counts).
    pub fn intersects(&self, other: &Bounds) -> bool {
        self.min_x <= other.max_x
            && other.min_x <= self.max_x
            && self.min_y <= other.max_y
            && other.min_y <= self.max_y
    }
}

impl TileCoord {
    /// A tile coordinate.
    ///
    /// # Errors
    ///
    /// [`Error::TileOutOfRange`] when `z` is above 30 or `x`/`y` not below `2^z`.
    pub fn new_checked(z: u8, x: u32, y: u32) -> Result<Self> {
        let out = |reason: String| Error::TileOutOfRange { z, x, y, reason };
        if z > MAX_ZOOM {
            return Err(out(format!("zoom must be at most {MAX_ZOOM}")));
        }
        let n = 1u64 << z;
        if u64::from(x) >= n || u64::from(y) >= n {
            return Err(out(format!("x and y must be below {n}")));
        }
        Ok(Self { z, x, y })
    }

    /// A tile coordinate from a URL's path segments; `y` may end in `.mvt` or `.pbf`.
    ///
    /// ```
    /// use geostack_tiles::TileCoord;
    ///
    /// assert_eq!(TileCoord::parse("3", "4", "2.mvt")?, TileCoord::new_checked(3, 4, 2)?);
    /// assert_eq!(TileCoord::parse("3", "4", "2.png").unwrap_err().status(), 400);
    /// assert_eq!(TileCoord::parse("3", "8", "0").unwrap_err().status(), 400);
    /// # Ok::<(), geostack_tiles::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCoordinate`] naming a part that is not a number,
    /// [`Error::TileOutOfRange`] as [`TileCoord::new_checked`].
    pub fn parse(z: &str, x: &str, y: &str) -> Result<Self> {
        let y = y
            .strip_suffix(".mvt")
            .or_else(|| y.strip_suffix(".pbf"))
            .unwrap_or(y);
        let z: u8 = z.parse().map_err(|_| Error::InvalidCoordinate("z"))?;
        let x: u32 = x.parse().map_err(|_| Error::InvalidCoordinate("x"))?;
        let y: u32 = y.parse().map_err(|_| Error::InvalidCoordinate("y"))?;
        Self::new_checked(z, x, y)
    }

    /// Zoom.
    pub fn z(&self) -> u8 {
        self.z
    }

    /// Column, from the west.
    pub fn x(&self) -> u32 {
        self.x
    }

    /// Row, from the north.
    pub fn y(&self) -> u32 {
        self.y
    }

    /// The tile's width in EPSG:3857 metres.
    pub fn size_3857(&self) -> f64 {
        2.0 * WEB_MERCATOR_HALF / (1u64 << self.z) as f64
    }

    /// The tile's bounds in EPSG:3857 metres.
    pub fn bounds_3857(&self) -> Bounds {
        let size = self.size_3857();
        let min_x = -WEB_MERCATOR_HALF + f64::from(self.x) * size;
        let max_y = WEB_MERCATOR_HALF - f64::from(self.y) * size;
        Bounds {
            min_x,
            min_y: max_y - size,
            max_x: min_x + size,
            max_y,
        }
    }

    /// The tile's bounds in EPSG:4326 degrees (longitude, latitude).
    pub fn bounds_4326(&self) -> Bounds {
        let b = self.bounds_3857();
        let (min_x, min_y) = to_lon_lat(b.min_x, b.min_y);
        let (max_x, max_y) = to_lon_lat(b.max_x, b.max_y);
        Bounds {
            min_x,
            min_y,
            max_x,
            max_y,
        }
    }
}

impl fmt::Display for TileCoord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.z, self.x, self.y)
    }
}

/// EPSG:4326 degrees → EPSG:3857 metres. The poles are at infinity: latitude is clamped to
/// ±89.9999°, so what lies beyond ±85.0511° (the square's edge) lands outside the square, where
/// tiles clip it at their buffer, as PostGIS's projection does.
///
/// ```
/// let (x, y) = geostack_tiles::to_web_mercator(180.0, 0.0);
/// assert!((x - geostack_tiles::WEB_MERCATOR_HALF).abs() < 1e-6 && y.abs() < 1e-9);
/// ```
pub fn to_web_mercator(lon: f64, lat: f64) -> (f64, f64) {
    const MAX_LAT: f64 = 89.9999;
    let x = lon * WEB_MERCATOR_HALF / 180.0;
    let lat = lat.clamp(-MAX_LAT, MAX_LAT).to_radians();
    let y = (std::f64::consts::FRAC_PI_4 + lat / 2.0).tan().ln() * WEB_MERCATOR_HALF
        / std::f64::consts::PI;
    (x, y)
}

/// EPSG:3857 metres → EPSG:4326 degrees.
pub fn to_lon_lat(x: f64, y: f64) -> (f64, f64) {
    let lon = x * 180.0 / WEB_MERCATOR_HALF;
    let lat = (2.0 * (y * std::f64::consts::PI / WEB_MERCATOR_HALF).exp().atan()
        - std::f64::consts::FRAC_PI_2)
        .to_degrees();
    (lon, lat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_coordinates_refuse_what_is_outside_the_pyramid() {
        assert!(TileCoord::new_checked(0, 0, 0).is_ok());
        assert!(TileCoord::new_checked(0, 1, 0).is_err());
        assert!(TileCoord::new_checked(30, (1 << 30) - 1, 0).is_ok());
        assert!(TileCoord::new_checked(30, 1 << 30, 0).is_err());
        assert!(TileCoord::new_checked(31, 0, 0).is_err());
    }

    #[test]
    fn bounds_tile_the_square_exactly() {
        let root = TileCoord::new_checked(0, 0, 0).unwrap().bounds_3857();
        assert_eq!(
            root,
            Bounds {
                min_x: -WEB_MERCATOR_HALF,
                min_y: -WEB_MERCATOR_HALF,
                max_x: WEB_MERCATOR_HALF,
                max_y: WEB_MERCATOR_HALF
            }
        );
        let t = TileCoord::new_checked(2, 3, 1).unwrap().bounds_3857();
        let q = WEB_MERCATOR_HALF / 2.0;
        for (got, want) in [
            (t.min_x, q),
            (t.min_y, 0.0),
            (t.max_x, 2.0 * q),
            (t.max_y, q),
        ] {
            assert!((got - want).abs() < 1e-6, "{got} != {want}");
        }
        let ll = TileCoord::new_checked(1, 0, 0).unwrap().bounds_4326();
        assert!((ll.min_x + 180.0).abs() < 1e-9 && ll.max_x.abs() < 1e-9);
        assert!((ll.max_y - 85.051_128_779_806_59).abs() < 1e-9 && ll.min_y.abs() < 1e-9);
    }

    #[test]
    fn projections_round_trip() {
        for (lon, lat) in [(8.54, 47.37), (-179.9, -60.0), (0.0, 0.0)] {
            let (x, y) = to_web_mercator(lon, lat);
            let (lon2, lat2) = to_lon_lat(x, y);
            assert!((lon - lon2).abs() < 1e-9 && (lat - lat2).abs() < 1e-9);
        }
    }
}
