//! Point aggregation on an absolute grid: clusters never duplicated across tiles.

use std::collections::BTreeMap;

use geo_types::{Coord, Geometry, Point};

use crate::{Error, LayerBuilder, Result, TileCoord, Value, WEB_MERCATOR_HALF};

/// How an attribute is aggregated over a cluster's points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Aggregate {
    /// The sum.
    Sum,
    /// The mean.
    Avg,
    /// The least.
    Min,
    /// The greatest.
    Max,
}

impl Aggregate {
    fn suffix(self) -> &'static str {
        match self {
            Self::Sum => "sum",
            Self::Avg => "avg",
            Self::Min => "min",
            Self::Max => "max",
        }
    }
}

/// Point aggregation settings. Every setter's doc gives its default.
#[derive(Clone, Debug, PartialEq)]
pub struct AggregationOptions {
    cell: u32,
    threshold: usize,
    aggregates: Vec<(String, Aggregate)>,
}

impl Default for AggregationOptions {
    fn default() -> Self {
        Self {
            cell: 64,
            threshold: 0,
            aggregates: Vec::new(),
        }
    }
}

impl AggregationOptions {
    /// The grid cell's size in tile units; it must divide the extent so that cells of every
    /// tile line up with one grid. Default 64 (a 4096 tile holds 64 × 64 cells).
    pub fn cell(mut self, units: u32) -> Self {
        self.cell = units.max(1);
        self
    }

    /// Points are aggregated only when the tile holds more than this many. Default 0 (always).
    pub fn threshold(mut self, points: usize) -> Self {
        self.threshold = points;
        self
    }

    /// Also aggregates attribute `name` (its position in the values given to
    /// [`PointAggregator::add`] is its position in these calls): the cluster gets
    /// `<name>_<sum|avg|min|max>`. Default none; every cluster has `count`.
    pub fn aggregate(mut self, name: impl Into<String>, how: Aggregate) -> Self {
        self.aggregates.push((name.into(), how));
        self
    }
}

#[derive(Clone, Copy)]
struct Acc {
    sum: f64,
    n: u64,
    min: f64,
    max: f64,
}

struct Cell {
    count: u64,
    sx: f64,
    sy: f64,
    accs: Vec<Acc>,
}

/// Collects the points near one tile and writes them, as clusters (points at their members'
/// centroid with `count` and the chosen aggregates) or as they are when few.
///
/// The grid is anchored at the top-left corner of the Web Mercator square, with cells the
/// given number of tile units wide at the tile's zoom; a tile owns the cells whose top-left
/// corner lies in `[min, max)` of its box, and takes only the points in those cells. Points
/// fetched with the buffer or from neighbours are ignored, so every point lands in exactly one
/// cluster of one tile.
///
/// ```
/// use geostack_tiles::{Aggregate, AggregationOptions, PointAggregator, TileBuilder, TileCoord, TileOptions};
///
/// let tile = TileCoord::new_checked(0, 0, 0).unwrap();
/// let options = AggregationOptions::default().aggregate("pop", Aggregate::Sum);
/// let mut agg = PointAggregator::new(tile, &TileOptions::default(), &options).unwrap();
/// agg.add(geo_types::Coord { x: 10.0, y: 10.0 }, &[Some(5.0)]);
/// agg.add(geo_types::Coord { x: 20.0, y: 20.0 }, &[Some(7.0)]);
/// let mut builder = TileBuilder::new(tile, &TileOptions::default());
/// let mut layer = builder.layer("clusters");
/// assert_eq!(agg.write(&mut layer).unwrap(), 1); // one cluster of 2
/// ```
pub struct PointAggregator {
    options: AggregationOptions,
    cell_m: f64,
    first: (i64, i64),
    last: (i64, i64),
    cells: BTreeMap<(i64, i64), Cell>,
    raw: Vec<(Coord<f64>, Vec<Option<f64>>)>,
}

impl PointAggregator {
    /// An aggregator for `coord`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] when the cell does not divide the extent.
    pub fn new(
        coord: TileCoord,
        tile: &crate::TileOptions,
        options: &AggregationOptions,
    ) -> Result<Self> {
        let extent = tile.extent_units();
        if !extent.is_multiple_of(options.cell) {
            return Err(Error::InvalidOption {
                name: "cell",
                reason: format!("{} does not divide the extent {extent}", options.cell),
            });
        }
        let per_tile = i64::from(extent / options.cell);
        let cell_m = coord.size_3857() / per_tile as f64;
        let first = (
            i64::from(coord.x()) * per_tile,
            i64::from(coord.y()) * per_tile,
        );
        Ok(Self {
            options: options.clone(),
            cell_m,
            first,
            last: (first.0 + per_tile, first.1 + per_tile),
            cells: BTreeMap::new(),
            raw: Vec::new(),
        })
    }

    /// Offers a point (EPSG:3857 metres) with its aggregated attributes' values, in the order
    /// of [`AggregationOptions::aggregate`]; it counts only if it lies in a cell of this tile.
    pub fn add(&mut self, p: Coord<f64>, values: &[Option<f64>]) {
        let col = ((p.x + WEB_MERCATOR_HALF) / self.cell_m).floor() as i64;
        let row = ((WEB_MERCATOR_HALF - p.y) / self.cell_m).floor() as i64;
        if col < self.first.0 || col >= self.last.0 || row < self.first.1 || row >= self.last.1 {
            return;
        }
        let n = self.options.aggregates.len();
        let cell = self.cells.entry((col, row)).or_insert_with(|| Cell {
            count: 0,
            sx: 0.0,
            sy: 0.0,
            accs: vec![
                Acc {
                    sum: 0.0,
                    n: 0,
                    min: f64::INFINITY,
                    max: f64::NEG_INFINITY
                };
                n
            ],
        });
        cell.count += 1;
        cell.sx += p.x;
        cell.sy += p.y;
        for (acc, v) in cell
            .accs
            .iter_mut()
            .zip(values.iter().chain(std::iter::repeat(&None)))
        {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                acc.sum += v;
                acc.n += 1;
                acc.min = acc.min.min(v);
                acc.max = acc.max.max(v);
            }
        }
        self.raw.push((p, values.to_vec()));
    }

    /// The points this tile owns so far.
    pub fn points(&self) -> usize {
        self.raw.len()
    }

    /// Writes the clusters (or, at or under the threshold, the points themselves) to `layer`;
    /// returns how many features were written.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] from the encoder.
    pub fn write(self, layer: &mut LayerBuilder<'_>) -> Result<usize> {
        let names: Vec<String> = self
            .options
            .aggregates
            .iter()
            .map(|(name, how)| format!("{name}_{}", how.suffix()))
            .collect();
        if self.raw.len() <= self.options.threshold {
            for (p, values) in &self.raw {
                let attrs: Vec<(&str, Value<'_>)> = self
                    .options
                    .aggregates
                    .iter()
                    .zip(values)
                    .map(|((name, _), v)| (name.as_str(), v.map_or(Value::Null, Value::Double)))
                    .collect();
                layer.add_geometry(&Geometry::Point(Point(*p)), None, &attrs)?;
            }
            return Ok(self.raw.len());
        }
        for cell in self.cells.values() {
            let centroid = Coord {
                x: cell.sx / cell.count as f64,
                y: cell.sy / cell.count as f64,
            };
            let mut attrs: Vec<(&str, Value<'_>)> = vec![("count", Value::Uint(cell.count))];
            for ((name, (_, how)), acc) in
                names.iter().zip(&self.options.aggregates).zip(&cell.accs)
            {
                let v = match (how, acc.n) {
                    (_, 0) => Value::Null,
                    (Aggregate::Sum, _) => Value::Double(acc.sum),
                    (Aggregate::Avg, n) => Value::Double(acc.sum / n as f64),
                    (Aggregate::Min, _) => Value::Double(acc.min),
                    (Aggregate::Max, _) => Value::Double(acc.max),
                };
                attrs.push((name.as_str(), v));
            }
            layer.add_geometry(&Geometry::Point(Point(centroid)), None, &attrs)?;
        }
        Ok(self.cells.len())
    }
}
