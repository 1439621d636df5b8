//! In-memory features in an R-tree: tiles without a database.

use geo_types::Geometry;
use rstar::{AABB, RTree, RTreeObject};

use crate::{LayerBuilder, Result, Value};

/// An owned attribute value of an in-memory feature.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum AttributeValue {
    /// A string.
    String(String),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    Uint(u64),
    /// A double.
    Double(f64),
    /// A boolean.
    Bool(bool),
}

impl AttributeValue {
    fn as_value(&self) -> Value<'_> {
        match self {
            Self::String(s) => Value::String(s),
            Self::Int(i) => Value::Int(*i),
            Self::Uint(u) => Value::Uint(*u),
            Self::Double(d) => Value::Double(*d),
            Self::Bool(b) => Value::Bool(*b),
        }
    }
}

/// A feature held in memory: geometry in EPSG:3857 metres, an optional id, attributes.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryFeature {
    /// The id, if any.
    pub id: Option<u64>,
    /// The geometry, EPSG:3857 metres.
    pub geometry: Geometry<f64>,
    /// The attributes, in order.
    pub attributes: Vec<(String, AttributeValue)>,
}

struct Entry {
    envelope: AABB<[f64; 2]>,
    index: usize,
}

impl RTreeObject for Entry {
    type Envelope = AABB<[f64; 2]>;

    fn envelope(&self) -> Self::Envelope {
        self.envelope
    }
}

/// Features in an R-tree, bulk-loaded once; each tile takes those whose bounding box meets the
/// tile plus its buffer, in the order they were given.
///
/// ```
/// use geostack_tiles::{AttributeValue, MemoryFeature, MemorySource, TileBuilder, TileCoord, TileOptions};
///
/// let features = vec![MemoryFeature {
///     id: Some(1),
///     geometry: geo_types::Point::new(8.54, 47.37).into(), // lon/lat here…
///     attributes: vec![("name".into(), AttributeValue::String("Zürich".into()))],
/// }];
/// let source = MemorySource::from_lon_lat(features); // …projected once
/// let tile = TileCoord::new_checked(0, 0, 0).unwrap();
/// let mut builder = TileBuilder::new(tile, &TileOptions::default());
/// let mut layer = builder.layer("places");
/// source.fill(&mut layer).unwrap();
/// assert_eq!(layer.finish().unwrap().added, 1);
/// ```
pub struct MemorySource {
    features: Vec<MemoryFeature>,
    tree: RTree<Entry>,
}

impl MemorySource {
    /// Indexes features whose geometry is in EPSG:3857 metres. Features without coordinates
    /// (EMPTY) are kept but never found.
    pub fn new(features: Vec<MemoryFeature>) -> Self {
        let entries = features
            .iter()
            .enumerate()
            .filter_map(|(index, f)| bbox(&f.geometry).map(|envelope| Entry { envelope, index }))
            .collect();
        Self {
            tree: RTree::bulk_load(entries),
            features,
        }
    }

    /// Indexes features whose geometry is in EPSG:4326 degrees, projecting them once.
    pub fn from_lon_lat(mut features: Vec<MemoryFeature>) -> Self {
        for f in &mut features {
            crate::project::project_4326(&mut f.geometry);
        }
        Self::new(features)
    }

    /// The number of features.
    pub fn len(&self) -> usize {
        self.features.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// Adds the features near the layer's tile to it.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Encode`] from the encoder.
    pub fn fill(&self, layer: &mut LayerBuilder<'_>) -> Result<()> {
        let b = layer.buffered_bounds();
        let query = AABB::from_corners([b.min_x, b.min_y], [b.max_x, b.max_y]);
        let mut found: Vec<usize> = self
            .tree
            .locate_in_envelope_intersecting(query)
            .map(|e| e.index)
            .collect();
        found.sort_unstable();
        for i in found {
            let f = &self.features[i];
            let attributes: Vec<(&str, Value<'_>)> = f
                .attributes
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_value()))
                .collect();
            layer.add_geometry(&f.geometry, f.id, &attributes)?;
        }
        Ok(())
    }
}

/// The R-tree envelope of `g`, or `None` when it has no finite coordinates.
fn bbox(g: &Geometry<f64>) -> Option<AABB<[f64; 2]>> {
    let b = crate::project::bounds(g)?;
    let finite = [b.min_x, b.min_y, b.max_x, b.max_y]
        .iter()
        .all(|v| v.is_finite());
    finite.then(|| AABB::from_corners([b.min_x, b.min_y], [b.max_x, b.max_y]))
}
