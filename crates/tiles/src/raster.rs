//! Raster tiles: features drawn in process with a CartoCSS [`Style`], anti-aliased (fills
//! and strokes by exact area coverage with zeno, blend modes and grids with tiny-skia),
//! encoded as PNG.
//!
//! Geometry goes through the vector pipeline first (clipped to the tile plus a 64-pixel
//! buffer, thinned and snapped to 1/16 of a pixel), so a raster tile draws what the vector
//! tile of the same features holds; polygons are filled by the even–odd rule, which covers
//! what the vector tile's validity repair keeps without doing the repair. Mapnik's defaults
//! where the style is silent: polygons grey, lines black 1 px, markers blue ellipses 10 px wide with a
//! black 0.5 px outline, placed once per geometry (a point: each point; a line or polygon:
//! one point inside it) and kept apart unless `marker-allow-overlap` (one collision set per
//! tile, across layers, as Mapnik's); labels black 10 px DejaVu Sans Book, placed as markers
//! are (or along lines, or inside polygons) in the same collision set. Widths, sizes and
//! dashes scale with the tile (`@2x` doubles them).

use geo_types::Geometry;
use tiny_skia::{
    BlendMode, FillRule, LineCap, LineJoin, Paint, PathBuilder, Pixmap, PixmapPaint, Rect, Stroke,
    Transform,
};

use crate::cartocss::{Decl, GeomType, Val};
use crate::coverage::Filler;
use crate::pipeline::{Frame, prepare};
use crate::text;
use crate::{Attributes, Color, Error, Result, Style, TileCoord, TileGeometry, TileOptions};

/// Tile units per pixel in the frame geometry is prepared in.
const UNITS_PER_PIXEL: u32 = 16;
/// Vertices closer than this to the one kept before them are dropped, in tile units: a
/// quarter of a pixel, which no anti-aliased edge shows, and fewer vertices to stroke and
/// fill.
const SIMPLIFY_UNITS: f64 = 4.0;
/// The buffer drawn around the tile, in pixels at 1×: strokes and markers across the edge.
const BUFFER_PIXELS: u32 = 64;

/// How an image is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageFormat {
    /// PNG, 8-bit RGBA.
    Png,
    /// Baseline JPEG of this quality (1–100), over white.
    Jpeg(u8),
}

impl ImageFormat {
    /// Its media type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg(_) => "image/jpeg",
        }
    }
}

/// One tile's image being drawn: 256 pixels square times its scale.
///
/// ```
/// use geostack_tiles::{Canvas, Style, TileCoord};
///
/// let style = Style::parse("#layer { marker-fill: #ff0000; marker-width: 20; marker-line-width: 0; }").unwrap();
/// let coord = TileCoord::new_checked(0, 0, 0).unwrap();
/// let mut canvas = Canvas::new(coord, 1).unwrap();
/// let point: geo_types::Geometry<f64> = geo_types::Point::new(0.0, 0.0).into();
/// let attributes = serde_json::Map::new();
/// canvas.draw(&style, [(&point, &attributes)]);
/// // The marker sits at the centre of the world.
/// assert_eq!(canvas.pixel(128, 128), [255, 0, 0, 255]);
/// assert_eq!(canvas.pixel(10, 10), [0, 0, 0, 0]);
/// let png = canvas.png().unwrap();
/// assert_eq!(&png[1..4], b"PNG");
/// ```
pub struct Canvas {
    pixmap: Pixmap,
    /// The zoom its zoom filters see.
    zoom: u8,
    scale: f32,
    /// Where geometry is prepared: a square from the image's top left corner, 16 units a
    /// pixel, with a 64-pixel buffer.
    frame: Frame,
    placed: Collisions,
    filler: Filler,
    /// Drawing which feature covers each pixel (a UTFGrid) rather than an image: each feature
    /// in its own opaque colour, without anti-aliasing or blending.
    grid: bool,
    /// In a grid, the features drawn so far (their colours count from 1).
    drawn: u32,
}

impl std::fmt::Debug for Canvas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Canvas")
            .field("zoom", &self.zoom)
            .field("width", &self.pixmap.width())
            .field("height", &self.pixmap.height())
            .field("scale", &self.scale)
            .finish_non_exhaustive()
    }
}

impl Canvas {
    /// A transparent tile of `256 × scale` pixels.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for a scale other than 1 to 4.
    pub fn new(coord: TileCoord, scale: u8) -> Result<Self> {
        if !(1..=4).contains(&scale) {
            return Err(Error::InvalidOption {
                name: "scale",
                reason: "expected 1 to 4".into(),
            });
        }
        let side = 256 * u32::from(scale);
        let pixmap = Pixmap::new(side, side).ok_or_else(|| Error::InvalidOption {
            name: "scale",
            reason: "no image of that size".into(),
        })?;
        Ok(Self {
            pixmap,
            zoom: coord.z(),
            scale: f32::from(scale),
            frame: Frame::square(coord.bounds_3857(), &Self::frame_options(side)?).for_drawing(),
            placed: Collisions::new(side),
            filler: Filler::new(),
            grid: false,
            drawn: 0,
        })
    }

    /// A transparent image of `width × height` pixels showing the map at `zoom` centred on
    /// (`lon`, `lat`) (a static map by centre).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for a size of 0 or over 4096 pixels, a zoom over
    /// [`crate::MAX_ZOOM`] or a centre off the map.
    ///
    /// ```
    /// let canvas = geostack_tiles::Canvas::centred(0.0, 0.0, 2, 600, 300).unwrap();
    /// assert_eq!(canvas.size(), (600, 300));
    /// ```
    pub fn centred(lon: f64, lat: f64, zoom: u8, width: u32, height: u32) -> Result<Self> {
        if zoom > crate::MAX_ZOOM
            || !(-180.0..=180.0).contains(&lon)
            || !(-85.06..=85.06).contains(&lat)
        {
            return Err(Error::InvalidOption {
                name: "center",
                reason: "expected a zoom up to 30 and a centre on the map".into(),
            });
        }
        let per_pixel = 2.0 * crate::WEB_MERCATOR_HALF / (256.0 * f64::from(1u32 << zoom.min(30)));
        let (x, y) = crate::to_web_mercator(lon, lat);
        Self::view(
            x - f64::from(width) / 2.0 * per_pixel,
            y + f64::from(height) / 2.0 * per_pixel,
            per_pixel,
            zoom,
            width,
            height,
        )
    }

    /// A transparent image of `width × height` pixels showing the box from (`west`, `south`)
    /// to (`east`, `north`) (degrees) whole, centred, at the zoom it fits (a static map by
    /// bounding box).
    ///
    /// # Errors
    ///
    /// As [`Canvas::centred`]; also for an empty box.
    pub fn fitted(
        west: f64,
        south: f64,
        east: f64,
        north: f64,
        width: u32,
        height: u32,
    ) -> Result<Self> {
        let clamp_lat = |v: f64| v.clamp(-85.06, 85.06);
        let (x0, y0) = crate::to_web_mercator(west.clamp(-180.0, 180.0), clamp_lat(south));
        let (x1, y1) = crate::to_web_mercator(east.clamp(-180.0, 180.0), clamp_lat(north));
        if !(x1 > x0 && y1 > y0) || width == 0 || height == 0 {
            return Err(Error::InvalidOption {
                name: "bbox",
                reason: "expected west < east and south < north".into(),
            });
        }
        let per_pixel = ((x1 - x0) / f64::from(width)).max((y1 - y0) / f64::from(height));
        let world = 2.0 * crate::WEB_MERCATOR_HALF;
        let zoom = (world / (256.0 * per_pixel))
            .log2()
            .floor()
            .clamp(0.0, f64::from(crate::MAX_ZOOM)) as u8;
        let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
        Self::view(
            cx - f64::from(width) / 2.0 * per_pixel,
            cy + f64::from(height) / 2.0 * per_pixel,
            per_pixel,
            zoom,
            width,
            height,
        )
    }

    /// An image whose top left corner is (`left`, `top`) (EPSG:3857) at `per_pixel` metres a
    /// pixel.
    fn view(
        left: f64,
        top: f64,
        per_pixel: f64,
        zoom: u8,
        width: u32,
        height: u32,
    ) -> Result<Self> {
        if !(1..=4096).contains(&width) || !(1..=4096).contains(&height) {
            return Err(Error::InvalidOption {
                name: "size",
                reason: "expected 1 to 4096 pixels a side".into(),
            });
        }
        let pixmap = Pixmap::new(width, height).ok_or_else(|| Error::InvalidOption {
            name: "size",
            reason: "no image of that size".into(),
        })?;
        let side = width.max(height);
        let span = f64::from(side) * per_pixel;
        let square = crate::Bounds {
            min_x: left,
            min_y: top - span,
            max_x: left + span,
            max_y: top,
        };
        Ok(Self {
            pixmap,
            zoom,
            scale: 1.0,
            frame: Frame::square(square, &Self::frame_options(side)?).for_drawing(),
            placed: Collisions::new(side),
            filler: Filler::new(),
            grid: false,
            drawn: 0,
        })
    }

    /// Its width and height in pixels.
    pub fn size(&self) -> (u32, u32) {
        (self.pixmap.width(), self.pixmap.height())
    }

    /// The zoom its styles' zoom filters see.
    pub fn zoom(&self) -> u8 {
        self.zoom
    }

    /// A canvas that records which feature covers each pixel, for [`Canvas::utf_grid`].
    ///
    /// # Errors
    ///
    /// As [`Canvas::new`].
    pub fn for_grid(coord: TileCoord) -> Result<Self> {
        let mut canvas = Self::new(coord, 1)?;
        canvas.grid = true;
        Ok(canvas)
    }

    /// The grid of a [`Canvas::for_grid`] canvas, one cell per `resolution` pixels (UTFGrid's
    /// usual 4 gives 64 × 64): per cell, which feature covers its centre, counting the
    /// features given to [`Canvas::draw`] from 1 across calls (0: none).
    ///
    /// ```
    /// use geostack_tiles::{Canvas, Style, TileCoord};
    ///
    /// let style = Style::parse("#l { marker-width: 16; }").unwrap();
    /// let mut canvas = Canvas::for_grid(TileCoord::new_checked(0, 0, 0).unwrap()).unwrap();
    /// let point: geo_types::Geometry<f64> = geo_types::Point::new(0.0, 0.0).into();
    /// canvas.draw(&style, [(&point, &serde_json::Map::new())]);
    /// let grid = canvas.utf_grid(4);
    /// assert_eq!((grid.len(), grid[32][32], grid[0][0]), (64, 1, 0));
    /// ```
    pub fn utf_grid(&self, resolution: u32) -> Vec<Vec<u32>> {
        let resolution = resolution.max(1);
        let cells = self.pixmap.width() / resolution;
        (0..cells)
            .map(|row| {
                (0..cells)
                    .map(|col| {
                        let [r, g, b, a] = self.pixel(
                            col * resolution + resolution / 2,
                            row * resolution + resolution / 2,
                        );
                        if a == 255 {
                            u32::from_be_bytes([0, r, g, b])
                        } else {
                            0
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// The options geometry is prepared with for a square of `side` pixels: 16 units a pixel
    /// and a 64-pixel buffer.
    fn frame_options(side: u32) -> Result<TileOptions> {
        TileOptions::default()
            .extent(side * UNITS_PER_PIXEL)?
            .buffer((BUFFER_PIXELS * UNITS_PER_PIXEL).min(side * UNITS_PER_PIXEL))?
            .tolerance(SIMPLIFY_UNITS)
    }

    /// The box (EPSG:3857) whose features can show on this image.
    pub fn source_bounds(&self) -> crate::Bounds {
        self.frame.buffered
    }

    /// Paints the whole tile `color` (a style's `Map { background-color }`).
    pub fn fill(&mut self, color: Color) {
        let [r, g, b, a] = color.to_rgba8();
        self.pixmap.fill(tiny_skia::Color::from_rgba8(r, g, b, a));
    }

    /// Draws `features` (geometries in EPSG:3857 and their attributes) with `style`: each of
    /// its attachments in turn, each feature with the symbolizers its rules give it.
    pub fn draw<'f, A: Attributes + 'f>(
        &mut self,
        style: &Style,
        features: impl IntoIterator<Item = (&'f Geometry<f64>, &'f A)>,
    ) {
        let frame = self.frame;
        let first = self.drawn + 1;
        let mut count = 0;
        let prepared: Vec<(TileGeometry, &Geometry<f64>, &A, u32)> = features
            .into_iter()
            .filter_map(|(g, a)| {
                count += 1;
                let id = first + count - 1;
                prepare(g, &frame).ok().map(|tile| (tile, g, a, id))
            })
            .collect();
        self.drawn += count;
        let z = self.zoom;
        for attachment in &style.attachments {
            if !Style::visible_at(attachment, z) {
                continue;
            }
            let separate = !self.grid && (attachment.opacity < 1.0 || attachment.comp_op.is_some());
            let mut layer = if separate {
                Pixmap::new(self.pixmap.width(), self.pixmap.height())
            } else {
                None
            };
            for (geometry, source, attributes, id) in &prepared {
                let kind = match geometry {
                    TileGeometry::Points(_) => GeomType::Point,
                    TileGeometry::Lines(_) => GeomType::Line,
                    TileGeometry::Polygons(_) => GeomType::Polygon,
                };
                let decls = Style::resolve(attachment, z, *attributes, kind);
                if decls.is_empty() {
                    continue;
                }
                let target = match layer.as_mut() {
                    Some(l) => l,
                    None => &mut self.pixmap,
                };
                let grid = self.grid.then(|| {
                    let [_, r, g, b] = id.to_be_bytes();
                    [r, g, b]
                });
                let feature = Feature {
                    geometry,
                    source,
                    frame: &frame,
                    attributes: *attributes,
                };
                let surface = &mut Surface {
                    pixmap: target,
                    filler: &mut self.filler,
                };
                draw_feature(
                    surface,
                    &mut self.placed,
                    self.scale,
                    &feature,
                    &decls,
                    grid,
                );
            }
            if let Some(layer) = layer {
                let paint = PixmapPaint {
                    opacity: attachment.opacity.clamp(0.0, 1.0) as f32,
                    blend_mode: attachment
                        .comp_op
                        .as_deref()
                        .map_or(BlendMode::SourceOver, blend_mode),
                    ..PixmapPaint::default()
                };
                self.pixmap
                    .draw_pixmap(0, 0, layer.as_ref(), &paint, Transform::identity(), None);
            }
        }
    }

    /// The colour at pixel (`x`, `y`), not premultiplied; transparent outside.
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 4] {
        self.pixmap.pixel(x, y).map_or([0; 4], |p| {
            let c = p.demultiply();
            [c.red(), c.green(), c.blue(), c.alpha()]
        })
    }

    /// The tile as PNG (8-bit RGBA).
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] when the encoder fails.
    pub fn png(&self) -> Result<Vec<u8>> {
        // Opaque and transparent pixels (most of a tile) are the same premultiplied or not:
        // only the others are divided.
        let mut data = self.pixmap.data().to_vec();
        for (rgba, p) in data.chunks_exact_mut(4).zip(self.pixmap.pixels()) {
            if !matches!(p.alpha(), 0 | 255) {
                let c = p.demultiply();
                rgba.copy_from_slice(&[c.red(), c.green(), c.blue(), c.alpha()]);
            }
        }
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.pixmap.width(), self.pixmap.height());
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        let fail = |e: png::EncodingError| Error::Encode(format!("png: {e}"));
        let mut writer = encoder.write_header().map_err(fail)?;
        writer.write_image_data(&data).map_err(fail)?;
        writer.finish().map_err(fail)?;
        Ok(out)
    }

    /// The image as `format`.
    ///
    /// # Errors
    ///
    /// As [`Canvas::png`] and [`Canvas::jpeg`].
    pub fn encode(&self, format: ImageFormat) -> Result<Vec<u8>> {
        match format {
            ImageFormat::Png => self.png(),
            ImageFormat::Jpeg(quality) => self.jpeg(quality),
        }
    }

    /// The image as baseline JPEG of `quality` (1–100), over white where it is transparent
    /// (JPEG has no alpha).
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] when the encoder fails (an image over 65,535 pixels a side).
    ///
    /// ```
    /// let canvas = geostack_tiles::Canvas::centred(0.0, 0.0, 1, 300, 200).unwrap();
    /// let jpeg = canvas.jpeg(85).unwrap();
    /// assert_eq!(&jpeg[..3], &[0xff, 0xd8, 0xff]);
    /// ```
    pub fn jpeg(&self, quality: u8) -> Result<Vec<u8>> {
        // Premultiplied colour over white: c + (1 - a) · 255.
        let mut data = Vec::with_capacity(self.pixmap.pixels().len() * 3);
        for p in self.pixmap.pixels() {
            let under = 255 - p.alpha();
            data.extend_from_slice(&[p.red() + under, p.green() + under, p.blue() + under]);
        }
        let fail = |e: jpeg_encoder::EncodingError| Error::Encode(format!("jpeg: {e}"));
        let side = |v: u32| u16::try_from(v).map_err(|_| Error::Encode("jpeg: too large".into()));
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100))
            .encode(
                &data,
                side(self.pixmap.width())?,
                side(self.pixmap.height())?,
                jpeg_encoder::ColorType::Rgb,
            )
            .map_err(fail)?;
        Ok(out)
    }
}

/// A feature being drawn.
struct Feature<'f> {
    /// Its geometry clipped, simplified and snapped to the canvas.
    geometry: &'f TileGeometry,
    /// Its geometry as given (EPSG:3857), for labels along lines, which are placed on whole
    /// lines rather than on their parts on the tile.
    source: &'f Geometry<f64>,
    frame: &'f Frame,
    attributes: &'f dyn Attributes,
}

/// Where a feature is drawn: the image (the tile's, or an attachment's own) and the buffers
/// its fills reuse.
struct Surface<'a> {
    pixmap: &'a mut Pixmap,
    filler: &'a mut Filler,
}

impl Surface<'_> {
    fn fill(&mut self, path: &tiny_skia::Path, paint: &Paint<'_>, rule: FillRule) {
        self.filler.fill(self.pixmap, path, paint, rule);
    }

    fn stroke(
        &mut self,
        path: &tiny_skia::Path,
        paint: &Paint<'_>,
        stroke: &Stroke,
        dashes: &[f32],
    ) {
        self.filler.stroke(self.pixmap, path, paint, stroke, dashes);
    }
}

/// The symbolizers of one feature: `(instance, family)` in the order first declared.
fn draw_feature(
    out: &mut Surface<'_>,
    placed: &mut Collisions,
    scale: f32,
    feature: &Feature<'_>,
    decls: &[&Decl],
    grid: Option<[u8; 3]>,
) {
    let (geometry, attributes) = (feature.geometry, feature.attributes);
    let mut symbolizers: Vec<(&str, &str)> = Vec::new();
    for d in decls {
        let family = match d.property.split('-').next() {
            Some(f @ ("polygon" | "line" | "marker" | "text")) => f,
            _ => continue,
        };
        if !symbolizers.contains(&(d.instance.as_str(), family)) {
            symbolizers.push((d.instance.as_str(), family));
        }
    }
    for (instance, family) in symbolizers {
        let props = Props {
            decls,
            instance,
            attributes,
            grid,
        };
        match family {
            "polygon" => polygon(out, geometry, &props),
            "line" => line(out, geometry, &props, scale),
            "text" => text(out, placed, feature, &props, scale),
            _ => marker(out, placed, geometry, &props, scale),
        }
    }
}

/// The resolved values of one symbolizer instance.
struct Props<'a> {
    decls: &'a [&'a Decl],
    instance: &'a str,
    attributes: &'a dyn Attributes,
    /// In a grid, the feature's colour.
    grid: Option<[u8; 3]>,
}

impl Props<'_> {
    fn get(&self, property: &str) -> Option<Val> {
        self.decls
            .iter()
            .find(|d| d.instance == self.instance && d.property == property)
            .map(|d| d.value.eval(self.attributes))
    }

    fn num(&self, property: &str, default: f64) -> f64 {
        self.get(property)
            .and_then(|v| v.num())
            .filter(|n| n.is_finite())
            .unwrap_or(default)
    }

    fn color(&self, property: &str, default: Color) -> Color {
        match self.get(property) {
            Some(Val::Color(c)) => c,
            Some(Val::Str(s)) => Color::parse(&s).unwrap_or(default),
            _ => default,
        }
    }

    fn word(&self, property: &str) -> Option<String> {
        match self.get(property) {
            Some(Val::Str(s)) => Some(s),
            _ => None,
        }
    }

    fn flag(&self, property: &str) -> bool {
        matches!(self.get(property), Some(Val::Bool(true)))
    }

    fn paint(&self, color: Color, opacity: f64, comp_op: &str) -> Paint<'static> {
        let mut paint = Paint::default();
        if let Some([r, g, b]) = self.grid {
            // What is drawn at all, however faint, is the feature's.
            paint.set_color_rgba8(r, g, b, if color.a * opacity > 0.0 { 255 } else { 0 });
            paint.anti_alias = false;
            return paint;
        }
        let [r, g, b, a] =
            Color::rgba(color.r, color.g, color.b, color.a * opacity.clamp(0.0, 1.0)).to_rgba8();
        paint.set_color_rgba8(r, g, b, a);
        paint.anti_alias = true;
        if let Some(op) = self.word(comp_op) {
            paint.blend_mode = blend_mode(&op);
        }
        paint
    }
}

fn pixel(p: [i32; 2]) -> (f32, f32) {
    let unit = UNITS_PER_PIXEL as f32;
    (p[0] as f32 / unit, p[1] as f32 / unit)
}

fn ring_path(pb: &mut PathBuilder, ring: &[[i32; 2]], close: bool) {
    let mut points = ring.iter().map(|p| pixel(*p));
    if let Some((x, y)) = points.next() {
        pb.move_to(x, y);
        for (x, y) in points {
            pb.line_to(x, y);
        }
        if close {
            pb.close();
        }
    }
}

fn polygon(out: &mut Surface<'_>, geometry: &TileGeometry, props: &Props<'_>) {
    let TileGeometry::Polygons(polygons) = geometry else {
        return;
    };
    let mut pb = PathBuilder::new();
    for ring in polygons.iter().flatten() {
        ring_path(&mut pb, ring, true);
    }
    let Some(path) = pb.finish() else { return };
    let paint = props.paint(
        props.color("polygon-fill", Color::rgba(128.0, 128.0, 128.0, 1.0)),
        props.num("polygon-opacity", 1.0),
        "polygon-comp-op",
    );
    // What the vector tile's repair keeps: inside an odd number of rings.
    out.fill(&path, &paint, FillRule::EvenOdd);
}

fn line(out: &mut Surface<'_>, geometry: &TileGeometry, props: &Props<'_>, scale: f32) {
    let mut pb = PathBuilder::new();
    match geometry {
        TileGeometry::Lines(lines) => lines.iter().for_each(|l| ring_path(&mut pb, l, false)),
        TileGeometry::Polygons(polygons) => polygons
            .iter()
            .flatten()
            .for_each(|r| ring_path(&mut pb, r, true)),
        TileGeometry::Points(_) => return,
    }
    let Some(path) = pb.finish() else { return };
    let width = props.num("line-width", 1.0) as f32 * scale;
    if width <= 0.0 {
        return;
    }
    let paint = props.paint(
        props.color("line-color", Color::rgba(0.0, 0.0, 0.0, 1.0)),
        props.num("line-opacity", 1.0),
        "line-comp-op",
    );
    let dashes: Vec<f32> = match props.get("line-dasharray") {
        Some(Val::List(values)) => values
            .iter()
            .filter_map(Val::num)
            .map(|n| n as f32 * scale)
            .filter(|n| n.is_finite() && *n >= 0.0)
            .collect(),
        _ => Vec::new(),
    };
    let stroke = Stroke {
        width,
        line_join: match props.word("line-join").as_deref() {
            Some("round") => LineJoin::Round,
            Some("bevel") => LineJoin::Bevel,
            Some("miter-revert") => LineJoin::MiterClip,
            _ => LineJoin::Miter,
        },
        line_cap: match props.word("line-cap").as_deref() {
            Some("round") => LineCap::Round,
            Some("square") => LineCap::Square,
            _ => LineCap::Butt,
        },
        ..Stroke::default()
    };
    // An odd number of lengths repeats, as in SVG and Mapnik.
    let dashes = if dashes.len() % 2 == 1 {
        dashes.repeat(2)
    } else {
        dashes
    };
    out.stroke(&path, &paint, &stroke, &dashes);
}

/// Where a marker goes on a geometry: each point, or one point inside a line or polygon.
fn anchors(geometry: &TileGeometry) -> Vec<(f32, f32)> {
    match geometry {
        TileGeometry::Points(points) => points.iter().map(|p| pixel(*p)).collect(),
        TileGeometry::Lines(lines) => lines
            .iter()
            .max_by_key(|l| l.len())
            .and_then(|l| l.get(l.len() / 2))
            .map(|p| vec![pixel(*p)])
            .unwrap_or_default(),
        TileGeometry::Polygons(polygons) => polygons
            .iter()
            .filter_map(|p| p.first())
            .max_by(|a, b| ring_area(a).total_cmp(&ring_area(b)))
            .and_then(|ring| centroid(ring))
            .map(|p| vec![p])
            .unwrap_or_default(),
    }
}

fn ring_area(ring: &[[i32; 2]]) -> f64 {
    let n = ring.len();
    (0..n)
        .map(|i| {
            let (a, b) = (ring[i], ring[(i + 1) % n]);
            f64::from(a[0]) * f64::from(b[1]) - f64::from(b[0]) * f64::from(a[1])
        })
        .sum::<f64>()
        / 2.0
}

fn centroid(ring: &[[i32; 2]]) -> Option<(f32, f32)> {
    let n = ring.len();
    let area = ring_area(ring);
    if area == 0.0 {
        return ring.first().map(|p| pixel(*p));
    }
    let (mut cx, mut cy) = (0.0, 0.0);
    for i in 0..n {
        let (a, b) = (ring[i], ring[(i + 1) % n]);
        let cross = f64::from(a[0]) * f64::from(b[1]) - f64::from(b[0]) * f64::from(a[1]);
        cx += (f64::from(a[0]) + f64::from(b[0])) * cross;
        cy += (f64::from(a[1]) + f64::from(b[1])) * cross;
    }
    let unit = f64::from(UNITS_PER_PIXEL);
    Some((
        (cx / (6.0 * area) / unit) as f32,
        (cy / (6.0 * area) / unit) as f32,
    ))
}

fn marker(
    out: &mut Surface<'_>,
    placed: &mut Collisions,
    geometry: &TileGeometry,
    props: &Props<'_>,
    scale: f32,
) {
    let width = props.num("marker-width", 10.0) as f32 * scale;
    let height = props.num("marker-height", f64::from(width / scale)) as f32 * scale;
    if width <= 0.0 || height <= 0.0 {
        return;
    }
    let opacity = props.num("marker-opacity", 1.0);
    let fill = props.paint(
        props.color("marker-fill", Color::rgba(0.0, 0.0, 255.0, 1.0)),
        props.num("marker-fill-opacity", 1.0) * opacity,
        "marker-comp-op",
    );
    let line_width = props.num("marker-line-width", 0.5) as f32 * scale;
    let line = props.paint(
        props.color("marker-line-color", Color::rgba(0.0, 0.0, 0.0, 1.0)),
        props.num("marker-line-opacity", 1.0) * opacity,
        "marker-comp-op",
    );
    let allow_overlap = props.flag("marker-allow-overlap");
    let ignore_placement = props.flag("marker-ignore-placement");
    let shape = props.word("marker-type");
    let half = (line_width.max(0.0) / 2.0, line_width.max(0.0) / 2.0);
    for (x, y) in anchors(geometry) {
        let (left, top) = (x - width / 2.0, y - height / 2.0);
        let reach = [
            left - half.0,
            top - half.1,
            left + width + half.0,
            top + height + half.1,
        ];
        if !allow_overlap && placed.collides(reach) {
            continue;
        }
        if !ignore_placement {
            placed.insert(reach);
        }
        let Some(rect) = Rect::from_xywh(left, top, width, height) else {
            continue;
        };
        let path = match shape.as_deref() {
            Some("rectangle") => Some(PathBuilder::from_rect(rect)),
            Some("arrow") => {
                let mut pb = PathBuilder::new();
                pb.move_to(left, top + height * 0.25);
                pb.line_to(left + width * 0.6, top + height * 0.25);
                pb.line_to(left + width * 0.6, top);
                pb.line_to(left + width, top + height * 0.5);
                pb.line_to(left + width * 0.6, top + height);
                pb.line_to(left + width * 0.6, top + height * 0.75);
                pb.line_to(left, top + height * 0.75);
                pb.close();
                pb.finish()
            }
            _ => PathBuilder::from_oval(rect),
        };
        let Some(path) = path else { continue };
        out.fill(&path, &fill, FillRule::Winding);
        if line_width > 0.0 {
            let stroke = Stroke {
                width: line_width,
                ..Stroke::default()
            };
            out.stroke(&path, &line, &stroke, &[]);
        }
    }
}

/// A label: `text-name` set in the bundled font at the geometry's anchors (`point`: as
/// markers are placed; `interior`: a point inside a polygon; `vertex`: every vertex) or along
/// its lines (`line`), skipped where it would overlap a label or marker placed before it
/// unless `text-allow-overlap`.
fn text(
    out: &mut Surface<'_>,
    placed: &mut Collisions,
    feature: &Feature<'_>,
    props: &Props<'_>,
    scale: f32,
) {
    let Some(name) = props.get("text-name") else {
        return;
    };
    let name = name.text();
    let name = match props.word("text-transform").as_deref() {
        Some("uppercase") => name.to_uppercase(),
        Some("lowercase") => name.to_lowercase(),
        Some("capitalize") => capitalize(&name),
        _ => name,
    };
    let name = name.trim();
    let size = props.num("text-size", 10.0) as f32 * scale;
    if name.is_empty() || size <= 0.0 {
        return;
    }
    let font = props
        .get("text-face-name")
        .map_or(text::Font::Book, |names| {
            text::Font::for_names(names.texts().iter().map(String::as_str)).0
        });
    let word = |property: &str| props.word(property).unwrap_or_else(|| "auto".into());
    let layout = text::Layout {
        font,
        size,
        line_spacing: props.num("text-line-spacing", 0.0) as f32 * scale,
        character_spacing: props.num("text-character-spacing", 0.0) as f32 * scale,
        wrap_width: props.num("text-wrap-width", 0.0) as f32 * scale,
        horizontal: word("text-horizontal-alignment"),
        vertical: word("text-vertical-alignment"),
        align: word("text-align"),
        dx: props.num("text-dx", 0.0) as f32 * scale,
        dy: props.num("text-dy", 0.0) as f32 * scale,
    };
    let opacity = props.num("text-opacity", 1.0);
    let fill = props.paint(
        props.color("text-fill", Color::rgba(0.0, 0.0, 0.0, 1.0)),
        opacity,
        "text-comp-op",
    );
    let halo_radius = props.num("text-halo-radius", 0.0) as f32 * scale;
    let halo = props.paint(
        props.color("text-halo-fill", Color::rgba(255.0, 255.0, 255.0, 1.0)),
        props.num("text-halo-opacity", 1.0) * opacity,
        "text-halo-comp-op",
    );
    let allow_overlap = props.flag("text-allow-overlap");
    let avoid_edges = props.flag("text-avoid-edges");
    let distance = props.num("text-min-distance", 0.0).max(0.0) as f32 * scale;
    let padding = props.num("text-min-padding", 0.0).max(0.0) as f32 * scale;
    let max_angle = (props.num("text-max-char-angle-delta", 22.5) as f32).to_radians();
    let placement = props.word("text-placement");
    let (width, height) = (out.pixmap.width() as f32, out.pixmap.height() as f32);
    let grown = |b: &[f32; 4], by: f32| [b[0] - by, b[1] - by, b[2] + by, b[3] + by];
    let outside = |b: [f32; 4]| b[0] < 0.0 || b[1] < 0.0 || b[2] > width || b[3] > height;
    // Whether a label with these boxes may go here: inside the image if it must avoid the
    // edges or keep a padding, clear of what is placed unless it may overlap.
    let fits = |placed: &Collisions, boxes: &[[f32; 4]]| {
        !boxes.iter().any(|b| {
            (avoid_edges && outside(*b))
                || (padding > 0.0 && outside(grown(b, padding)))
                || (!allow_overlap && placed.collides(grown(b, distance)))
        })
    };
    let geometry = feature.geometry;
    let mut labels = Vec::new();
    if placement.as_deref() == Some("line") {
        for line in source_lines(feature.source, feature.frame) {
            let fits = |boxes: &[[f32; 4]]| fits(placed, boxes);
            if let Some(label) = text::along_line(name, &layout, &line, max_angle, fits) {
                placed.insert_all(&label.boxes);
                labels.push(label);
            }
        }
    } else {
        let points = match placement.as_deref() {
            Some("vertex") => paths(geometry).into_iter().flatten().collect(),
            Some("interior") => interior(geometry),
            _ => anchors(geometry),
        };
        for point in points {
            if let Some(label) = text::at_point(name, &layout, point)
                && fits(placed, &label.boxes)
            {
                placed.insert_all(&label.boxes);
                labels.push(label);
            }
        }
    }
    for label in labels {
        if halo_radius > 0.0 {
            let stroke = Stroke {
                width: halo_radius * 2.0,
                line_join: LineJoin::Round,
                ..Stroke::default()
            };
            out.stroke(&label.path, &halo, &stroke, &[]);
        }
        out.fill(&label.path, &fill, FillRule::Winding);
    }
}

/// The lines and rings of `geometry` (EPSG:3857) in the canvas's pixels, whole.
fn source_lines(geometry: &Geometry<f64>, frame: &Frame) -> Vec<Vec<(f64, f64)>> {
    let unit = f64::from(UNITS_PER_PIXEL);
    let line = |l: &geo_types::LineString<f64>| {
        l.0.iter()
            .map(|c| {
                let p = frame.project(*c);
                (p.x / unit, p.y / unit)
            })
            .collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    let add_polygon = |p: &geo_types::Polygon<f64>, out: &mut Vec<_>| {
        out.push(line(p.exterior()));
        out.extend(p.interiors().iter().map(line));
    };
    match geometry {
        Geometry::LineString(l) => out.push(line(l)),
        Geometry::MultiLineString(m) => out.extend(m.0.iter().map(line)),
        Geometry::Polygon(p) => add_polygon(p, &mut out),
        Geometry::MultiPolygon(m) => m.0.iter().for_each(|p| add_polygon(p, &mut out)),
        Geometry::GeometryCollection(c) => {
            out.extend(c.0.iter().flat_map(|g| source_lines(g, frame)));
        }
        _ => {}
    }
    out
}

/// `text-transform: capitalize`: each word's first letter in upper case.
fn capitalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut start = true;
    for c in text.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = c.is_whitespace();
    }
    out
}

/// A geometry's lines and rings, in pixels (points: each alone).
fn paths(geometry: &TileGeometry) -> Vec<Vec<(f32, f32)>> {
    let all = |rings: &mut dyn Iterator<Item = &Vec<[i32; 2]>>| {
        rings
            .map(|r| r.iter().map(|p| pixel(*p)).collect())
            .collect()
    };
    match geometry {
        TileGeometry::Points(points) => points.iter().map(|p| vec![pixel(*p)]).collect(),
        TileGeometry::Lines(lines) => all(&mut lines.iter()),
        TileGeometry::Polygons(polygons) => all(&mut polygons.iter().flatten()),
    }
}

/// A point inside the largest polygon: the middle of the widest span across it at its
/// centroid's height (the centroid of a crescent or a ring is outside it); points and lines
/// as [`anchors`].
fn interior(geometry: &TileGeometry) -> Vec<(f32, f32)> {
    let TileGeometry::Polygons(polygons) = geometry else {
        return anchors(geometry);
    };
    let Some(largest) = polygons.iter().max_by(|a, b| {
        let area = |p: &&Vec<Vec<[i32; 2]>>| p.first().map_or(0.0, |r| ring_area(r).abs());
        area(a).total_cmp(&area(b))
    }) else {
        return Vec::new();
    };
    let Some((cx, cy)) = largest.first().and_then(|r| centroid(r)) else {
        return Vec::new();
    };
    let y = cy * UNITS_PER_PIXEL as f32;
    let mut crossings: Vec<f32> = Vec::new();
    for ring in largest {
        for i in 0..ring.len() {
            let (a, b) = (ring[i], ring[(i + 1) % ring.len()]);
            let (ya, yb) = (a[1] as f32, b[1] as f32);
            if (ya <= y) != (yb <= y) {
                let t = (y - ya) / (yb - ya);
                crossings.push(a[0] as f32 + t * (b[0] - a[0]) as f32);
            }
        }
    }
    crossings.sort_by(f32::total_cmp);
    let widest = crossings
        .chunks_exact(2)
        .max_by(|a, b| (a[1] - a[0]).total_cmp(&(b[1] - b[0])));
    match widest {
        Some(span) => vec![((span[0] + span[1]) / 2.0 / UNITS_PER_PIXEL as f32, cy)],
        None => vec![(cx, cy)],
    }
}

/// CartoCSS's `comp-op` names as tiny-skia's blend modes (`value`, which tiny-skia lacks,
/// as luminosity).
fn blend_mode(name: &str) -> BlendMode {
    match name {
        "clear" => BlendMode::Clear,
        "src" => BlendMode::Source,
        "dst" => BlendMode::Destination,
        "dst-over" => BlendMode::DestinationOver,
        "src-in" => BlendMode::SourceIn,
        "dst-in" => BlendMode::DestinationIn,
        "src-out" => BlendMode::SourceOut,
        "dst-out" => BlendMode::DestinationOut,
        "src-atop" => BlendMode::SourceAtop,
        "dst-atop" => BlendMode::DestinationAtop,
        "xor" => BlendMode::Xor,
        "plus" => BlendMode::Plus,
        "multiply" => BlendMode::Multiply,
        "screen" => BlendMode::Screen,
        "overlay" => BlendMode::Overlay,
        "darken" => BlendMode::Darken,
        "lighten" => BlendMode::Lighten,
        "color-dodge" => BlendMode::ColorDodge,
        "color-burn" => BlendMode::ColorBurn,
        "hard-light" => BlendMode::HardLight,
        "soft-light" => BlendMode::SoftLight,
        "difference" => BlendMode::Difference,
        "exclusion" => BlendMode::Exclusion,
        "hue" => BlendMode::Hue,
        "saturation" => BlendMode::Saturation,
        "color" => BlendMode::Color,
        "value" => BlendMode::Luminosity,
        _ => BlendMode::SourceOver,
    }
}

/// Boxes of the markers placed so far, in a grid of 32-pixel cells over the tile and its
/// buffer.
struct Collisions {
    cells: Vec<Vec<[f32; 4]>>,
    /// Cells per side.
    side: usize,
    /// The first cell's left and top edge, in pixels.
    origin: f32,
}

const CELL: f32 = 32.0;

impl Collisions {
    fn new(pixels: u32) -> Self {
        let origin = -(BUFFER_PIXELS as f32) * 2.0;
        let side = ((pixels as f32 - 2.0 * origin) / CELL).ceil() as usize;
        Self {
            cells: vec![Vec::new(); side * side],
            side,
            origin,
        }
    }

    /// The cells `b` touches.
    fn cells(&self, b: [f32; 4]) -> impl Iterator<Item = usize> + use<> {
        let last = self.side.saturating_sub(1);
        let cell = |v: f32| (((v - self.origin) / CELL).floor().max(0.0) as usize).min(last);
        let (x0, y0, x1, y1) = (cell(b[0]), cell(b[1]), cell(b[2]), cell(b[3]));
        let side = self.side;
        (y0..=y1).flat_map(move |y| (x0..=x1).map(move |x| y * side + x))
    }

    fn collides(&self, b: [f32; 4]) -> bool {
        self.cells(b).any(|c| {
            self.cells[c]
                .iter()
                .any(|o| b[0] < o[2] && o[0] < b[2] && b[1] < o[3] && o[1] < b[3])
        })
    }

    fn insert(&mut self, b: [f32; 4]) {
        for c in self.cells(b) {
            self.cells[c].push(b);
        }
    }

    fn insert_all(&mut self, boxes: &[[f32; 4]]) {
        boxes.iter().for_each(|b| self.insert(*b));
    }
}

#[cfg(test)]
mod tests {
    use geo_types::{Geometry, LineString, Point, Polygon, coord};

    use super::*;

    fn attrs(json: &str) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(json).unwrap()
    }

    /// A square of the z0 tile from pixel (x0, y0) to (x1, y1), in EPSG:3857.
    fn square(x0: f64, y0: f64, x1: f64, y1: f64) -> Geometry<f64> {
        let m = |px: f64, py: f64| {
            let half = crate::WEB_MERCATOR_HALF;
            coord! { x: px / 256.0 * 2.0 * half - half, y: half - py / 256.0 * 2.0 * half }
        };
        Polygon::new(
            LineString::new(vec![m(x0, y0), m(x1, y0), m(x1, y1), m(x0, y1), m(x0, y0)]),
            vec![],
        )
        .into()
    }

    fn point(px: f64, py: f64) -> Geometry<f64> {
        let half = crate::WEB_MERCATOR_HALF;
        Point::new(
            px / 256.0 * 2.0 * half - half,
            half - py / 256.0 * 2.0 * half,
        )
        .into()
    }

    fn z0(scale: u8) -> Canvas {
        Canvas::new(TileCoord::new_checked(0, 0, 0).unwrap(), scale).unwrap()
    }

    #[test]
    fn polygons_fill_by_attribute_and_outlines_draw_on_top() {
        let style = Style::parse(
            "#layer { polygon-fill: #0000ff; [kind='a'] { polygon-fill: #ff0000; }
               ::outline { line-color: #00ff00; line-width: 4; } }",
        )
        .unwrap();
        let (a, b) = (
            square(20.0, 20.0, 100.0, 100.0),
            square(150.0, 150.0, 240.0, 240.0),
        );
        let (ka, kb) = (attrs(r#"{"kind": "a"}"#), attrs(r#"{"kind": "b"}"#));
        let mut canvas = z0(1);
        canvas.draw(&style, [(&a, &ka), (&b, &kb)]);
        assert_eq!(canvas.pixel(60, 60), [255, 0, 0, 255]);
        assert_eq!(canvas.pixel(200, 200), [0, 0, 255, 255]);
        // On the edge, the outline attachment (drawn after the fill).
        assert_eq!(canvas.pixel(20, 60), [0, 255, 0, 255]);
        assert_eq!(canvas.pixel(130, 130), [0, 0, 0, 0]);
    }

    #[test]
    fn at_2x_everything_is_twice_as_large() {
        let style =
            Style::parse("#l { marker-width: 10; marker-fill: #f00; marker-line-width: 0; }")
                .unwrap();
        let p = point(100.0, 100.0);
        let none = attrs("{}");
        let mut canvas = z0(2);
        canvas.draw(&style, [(&p, &none)]);
        assert_eq!(canvas.pixel(200, 200), [255, 0, 0, 255]);
        assert_eq!(canvas.pixel(208, 200), [255, 0, 0, 255]);
        assert_eq!(canvas.pixel(212, 200)[3], 0);
        let png = canvas.png().unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (512, 512));
    }

    #[test]
    fn markers_keep_apart_unless_allowed_to_overlap() {
        let close = [point(100.0, 100.0), point(104.0, 100.0)];
        let blue = attrs("{}");
        let count = |style: &str| {
            let style = Style::parse(style).unwrap();
            let mut canvas = z0(1);
            canvas.draw(&style, close.iter().map(|g| (g, &blue)));
            // Only the second marker reaches x = 106.
            canvas.pixel(106, 100)[3] > 0
        };
        assert!(!count("#l { marker-width: 8; marker-line-width: 0; }"));
        assert!(count(
            "#l { marker-width: 8; marker-line-width: 0; marker-allow-overlap: true; }"
        ));
    }

    #[test]
    fn data_driven_sizes_dashes_and_layer_opacity() {
        let style = Style::parse(
            "#l { marker-width: [size] * 2; marker-fill: #000; marker-line-width: 0; marker-allow-overlap: true; }",
        )
        .unwrap();
        let p = point(128.0, 128.0);
        let big = attrs(r#"{"size": 20}"#);
        let mut canvas = z0(1);
        canvas.draw(&style, [(&p, &big)]);
        assert_eq!(canvas.pixel(128 + 18, 128), [0, 0, 0, 255]);
        assert_eq!(canvas.pixel(128 + 22, 128)[3], 0);

        let style = Style::parse("#l { polygon-fill: #000; opacity: 0.5; }").unwrap();
        let sq = square(0.0, 0.0, 256.0, 256.0);
        let mut canvas = z0(1);
        canvas.draw(&style, [(&sq, &big)]);
        assert_eq!(canvas.pixel(50, 50), [0, 0, 0, 128]);

        let style = Style::parse("#l { line-color: #000; line-width: 2; line-dasharray: 10, 10; }")
            .unwrap();
        let line: Geometry<f64> = {
            let half = crate::WEB_MERCATOR_HALF;
            LineString::new(vec![
                coord! { x: -half, y: 0.0 },
                coord! { x: half, y: 0.0 },
            ])
            .into()
        };
        let mut canvas = z0(1);
        canvas.draw(&style, [(&line, &big)]);
        assert_eq!(canvas.pixel(5, 128)[3], 255);
        assert_eq!(canvas.pixel(15, 128)[3], 0);
        assert_eq!(canvas.pixel(25, 128)[3], 255);
    }

    #[test]
    fn a_grid_says_which_feature_is_on_top() {
        let style = Style::parse(
            "#l { polygon-fill: #000; polygon-opacity: 0.1; marker-width: 8; marker-allow-overlap: true; }",
        )
        .unwrap();
        let (under, over) = (
            square(0.0, 0.0, 128.0, 128.0),
            square(64.0, 64.0, 192.0, 192.0),
        );
        let p = point(200.0, 40.0);
        let none = attrs("{}");
        let mut canvas = Canvas::for_grid(TileCoord::new_checked(0, 0, 0).unwrap()).unwrap();
        canvas.draw(&style, [(&under, &none), (&over, &none)]);
        canvas.draw(&style, [(&p, &none)]);
        let grid = canvas.utf_grid(4);
        assert_eq!(grid.len(), 64);
        assert_eq!(grid[4][4], 1);
        assert_eq!(grid[20][20], 2);
        assert_eq!(grid[40][40], 2);
        assert_eq!(grid[60][4], 0);
        // The marker of the second call: its centre cell.
        assert_eq!(grid[10][50], 3);
        assert_eq!(grid[10][56], 0);
    }

    /// The box of pixels at least half covered in `canvas`, if any.
    fn inked(canvas: &Canvas) -> Option<[u32; 4]> {
        let (w, h) = canvas.size();
        let mut b: Option<[u32; 4]> = None;
        for y in 0..h {
            for x in 0..w {
                if canvas.pixel(x, y)[3] >= 128 {
                    let o = b.get_or_insert([x, y, x, y]);
                    *o = [o[0].min(x), o[1].min(y), o[2].max(x), o[3].max(y)];
                }
            }
        }
        b
    }

    #[test]
    fn labels_sit_on_their_point_with_a_halo_and_keep_apart() {
        let style = Style::parse(
            "#l { text-name: [name]; text-size: 12; text-fill: #ff0000; text-halo-radius: 2; }",
        )
        .unwrap();
        let p = point(128.0, 128.0);
        let lisbon = attrs(r#"{"name": "Lisbon"}"#);
        let mut canvas = z0(1);
        canvas.draw(&style, [(&p, &lisbon)]);
        let [x0, y0, x1, y1] = inked(&canvas).unwrap();
        // Centred on the point: about 35 pixels wide and 9 (the ink of "L", "b") tall, plus
        // the halo.
        assert!(
            (x0 + x1).abs_diff(256) <= 2 && (y0 + y1).abs_diff(256) <= 3,
            "{x0} {y0} {x1} {y1}"
        );
        assert!(
            (35..60).contains(&(x1 - x0)) && (10..18).contains(&(y1 - y0)),
            "{x0} {y0} {x1} {y1}"
        );
        // Red glyphs inside a white halo.
        let colours: Vec<[u8; 4]> = (x0..=x1).map(|x| canvas.pixel(x, 128)).collect();
        assert!(colours.contains(&[255, 0, 0, 255]) && colours.contains(&[255, 255, 255, 255]));

        // A second label on nearly the same spot is dropped, unless it may overlap.
        let q = point(130.0, 130.0);
        let porto = attrs(r#"{"name": "Porto"}"#);
        let mut both = z0(1);
        both.draw(&style, [(&p, &lisbon), (&q, &porto)]);
        assert_eq!(both.png().unwrap(), canvas.png().unwrap());
        let overlapping = Style::parse(
            "#l { text-name: [name]; text-size: 12; text-halo-radius: 2; text-allow-overlap: true; }",
        )
        .unwrap();
        let mut both = z0(1);
        both.draw(&overlapping, [(&p, &lisbon), (&q, &porto)]);
        let mut one = z0(1);
        one.draw(&overlapping, [(&p, &lisbon)]);
        assert_ne!(both.png().unwrap(), one.png().unwrap());

        // Markers and labels share the placements.
        let marker_first = Style::parse(
            "#l { marker-width: 30; text-name: [name]; text-size: 12; text-fill: #ff0000; }",
        )
        .unwrap();
        let mut canvas = z0(1);
        canvas.draw(&marker_first, [(&p, &lisbon)]);
        assert!((0..256).all(|x| canvas.pixel(x, 128) != [255, 0, 0, 255]));
    }

    #[test]
    fn labels_follow_lines_and_wrap() {
        let style = Style::parse(
            "#l { text-name: 'Rua Augusta'; text-size: 10; text-placement: line; text-fill: #000; }",
        )
        .unwrap();
        let half = crate::WEB_MERCATOR_HALF;
        let m = |px: f64| px / 256.0 * 2.0 * half - half;
        // A diagonal from the top left to the bottom right.
        let line: Geometry<f64> = LineString::new(vec![
            coord! { x: m(20.0), y: -m(20.0) },
            coord! { x: m(236.0), y: -m(236.0) },
        ])
        .into();
        let none = attrs("{}");
        let mut canvas = z0(1);
        canvas.draw(&style, [(&line, &none)]);
        let [x0, y0, x1, y1] = inked(&canvas).unwrap();
        // Centred on the line's middle and as tall as it is wide (turned 45°).
        assert!(
            (x0 + x1).abs_diff(256) <= 4 && (y0 + y1).abs_diff(256) <= 4,
            "{x0} {y0} {x1} {y1}"
        );
        assert!((x1 - x0).abs_diff(y1 - y0) <= 6, "{x0} {y0} {x1} {y1}");

        let wrapped = Style::parse(
            "#l { text-name: 'Rua Augusta Lisboa'; text-size: 10; text-wrap-width: 20; }",
        )
        .unwrap();
        let p = point(128.0, 128.0);
        let mut canvas = z0(1);
        canvas.draw(&wrapped, [(&p, &none)]);
        let [_, y0, _, y1] = inked(&canvas).unwrap();
        // Three lines.
        assert!(y1 - y0 > 28, "{y0} {y1}");
    }

    #[test]
    fn multiply_blends_with_what_is_below() {
        let under = Style::parse("#l { polygon-fill: #ffff00; }").unwrap();
        let over =
            Style::parse("#l { polygon-fill: #00ffff; polygon-comp-op: multiply; }").unwrap();
        let sq = square(0.0, 0.0, 256.0, 256.0);
        let none = attrs("{}");
        let mut canvas = z0(1);
        canvas.draw(&under, [(&sq, &none)]);
        canvas.draw(&over, [(&sq, &none)]);
        assert_eq!(canvas.pixel(100, 100), [0, 255, 0, 255]);
        assert!(Canvas::new(TileCoord::new_checked(0, 0, 0).unwrap(), 0).is_err());
    }
}
