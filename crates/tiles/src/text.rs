//! Labels: text shaped by rustybuzz (HarfBuzz's shaping: kerning, ligatures, marks) in the
//! bundled DejaVu Sans and laid out as tiny-skia paths, at a point or along a line.
//!
//! Layout follows Mapnik's text symbolizer: lines broken at `\n` and, with a wrap width, at
//! spaces; the block centred on its anchor unless aligned or displaced (`dx > 0` puts it to
//! the right, `dy > 0` below); lines a font height apart plus the line spacing.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;

use rustybuzz::ttf_parser::{GlyphId, OutlineBuilder};
use rustybuzz::{Face, UnicodeBuffer};
use tiny_skia::{Path, PathBuilder, Transform};

static BOOK: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");
static BOLD: &[u8] = include_bytes!("../fonts/DejaVuSans-Bold.ttf");

/// A bundled face.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Font {
    Book,
    Bold,
}

/// The bundled faces by the names styles give them.
const NAMES: &[(&str, Font)] = &[
    ("DejaVu Sans Book", Font::Book),
    ("DejaVu Sans", Font::Book),
    ("DejaVu Sans Bold", Font::Bold),
];

impl Font {
    /// The face drawing `names` (a face name, or a fallback list of them): the first one
    /// bundled; when none is, the bold face for a bold name and the book face otherwise, with
    /// `false` (a stand-in).
    pub(crate) fn for_names<'n>(names: impl IntoIterator<Item = &'n str>) -> (Font, bool) {
        let mut bold = None;
        for name in names {
            let name = name.trim();
            if let Some((_, font)) = NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                return (*font, true);
            }
            bold.get_or_insert(name.to_ascii_lowercase().contains("bold"));
        }
        (
            if bold == Some(true) {
                Font::Bold
            } else {
                Font::Book
            },
            false,
        )
    }

    /// Its name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Font::Book => "DejaVu Sans Book",
            Font::Bold => "DejaVu Sans Bold",
        }
    }

    /// Its face, parsed once (`None` only if the bundled file were unreadable: then no label
    /// is drawn).
    fn face(self) -> Option<&'static Face<'static>> {
        static FACES: OnceLock<[Option<Face<'static>>; 2]> = OnceLock::new();
        let faces = FACES.get_or_init(|| [Face::from_slice(BOOK, 0), Face::from_slice(BOLD, 0)]);
        faces[self as usize].as_ref()
    }
}

/// Where a block of text goes relative to its anchor, and how its lines are set.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub(crate) font: Font,
    /// The font size, in pixels.
    pub(crate) size: f32,
    /// Extra space between lines and between characters, in pixels.
    pub(crate) line_spacing: f32,
    pub(crate) character_spacing: f32,
    /// Lines are broken at spaces to stay within this width (0: no wrapping).
    pub(crate) wrap_width: f32,
    /// `left`, `middle`, `right` or `auto` (from `dx`): which side of the anchor the block
    /// takes.
    pub(crate) horizontal: String,
    /// `top`, `middle`, `bottom` or `auto` (from `dy`).
    pub(crate) vertical: String,
    /// `left`, `center`, `right` or `auto`: how lines of different widths line up.
    pub(crate) align: String,
    /// Displacement in pixels (`dy > 0` moves down).
    pub(crate) dx: f32,
    pub(crate) dy: f32,
}

/// A glyph placed on a line: its id and its origin's distance along the line, in pixels.
struct Placed {
    glyph: u16,
    x: f32,
    /// Its advance, in pixels.
    advance: f32,
    /// HarfBuzz's offset from the origin (marks), in pixels, y up.
    offset: (f32, f32),
    /// The byte offset in the text of the characters it draws (HarfBuzz's cluster).
    cluster: usize,
    /// How far its ink reaches below and above the baseline, in pixels, y up.
    ink: (f32, f32),
}

/// One shaped line: its glyphs, its width and the height of its tallest glyph's ink.
struct Line {
    glyphs: Vec<Placed>,
    width: f32,
    ink_height: f32,
}

fn scale(layout: &Layout, face: &Face<'_>) -> f32 {
    layout.size / face.units_per_em() as f32
}

fn shape(text: &str, layout: &Layout, face: &Face<'_>) -> Line {
    let scale = scale(layout, face);
    let mut buffer = UnicodeBuffer::new();
    buffer.push_str(text);
    buffer.guess_segment_properties();
    let shaped = rustybuzz::shape(face, &[], buffer);
    let mut x = 0.0;
    let mut ink_height = 0.0f32;
    let mut glyphs = Vec::with_capacity(shaped.len());
    for (info, pos) in shaped.glyph_infos().iter().zip(shaped.glyph_positions()) {
        let advance = pos.x_advance as f32 * scale + layout.character_spacing;
        let glyph = u16::try_from(info.glyph_id).unwrap_or(0);
        let ink = face
            .glyph_bounding_box(GlyphId(glyph))
            .map_or((0.0, 0.0), |b| {
                (f32::from(b.y_min) * scale, f32::from(b.y_max) * scale)
            });
        ink_height = ink_height.max(ink.1 - ink.0);
        glyphs.push(Placed {
            glyph,
            x,
            advance,
            offset: (pos.x_offset as f32 * scale, pos.y_offset as f32 * scale),
            cluster: info.cluster as usize,
            ink,
        });
        x += advance;
    }
    let width = (x - layout.character_spacing).max(0.0);
    Line {
        glyphs,
        width,
        ink_height,
    }
}

/// The text's lines: broken at `\n`, then, with a wrap width, as Mapnik breaks them: a line
/// runs until it is wider than the wrap width and ends at the next space after that (the
/// space kept at its end).
fn lines(text: &str, layout: &Layout, face: &Face<'_>) -> Vec<Line> {
    let mut out = Vec::new();
    for paragraph in text.split('\n') {
        let whole = shape(paragraph, layout, face);
        if layout.wrap_width <= 0.0 || whole.width < layout.wrap_width {
            out.push(whole);
            continue;
        }
        // Each character's share of the width, by its byte offset.
        let mut widths = vec![0.0f32; paragraph.len() + 1];
        for g in &whole.glyphs {
            if let Some(w) = widths.get_mut(g.cluster) {
                *w += g.advance;
            }
        }
        let mut start = 0;
        let mut length = 0.0;
        let mut skip_to = 0;
        for (i, _) in paragraph.char_indices() {
            if i < skip_to {
                continue;
            }
            length += widths[i];
            if length <= layout.wrap_width {
                continue;
            }
            let end = paragraph[i..]
                .find(' ')
                .map_or(paragraph.len(), |space| i + space + 1);
            out.push(shape(&paragraph[start..end], layout, face));
            start = end;
            skip_to = end;
            length = 0.0;
        }
        if start < paragraph.len() {
            out.push(shape(&paragraph[start..], layout, face));
        }
    }
    out
}

/// A line's height in pixels: the font's ascent to descent plus its gap.
fn line_height(layout: &Layout, face: &Face<'_>) -> f32 {
    f32::from(face.ascender() - face.descender() + face.line_gap()) * scale(layout, face)
}

thread_local! {
    /// Glyph outlines in font units, by face and glyph (`None`: an empty glyph, a space).
    static OUTLINES: RefCell<HashMap<(Font, u16), Option<Path>>> = RefCell::new(HashMap::new());
}

/// Adds glyph `glyph`'s outline to `out`, `transform` taking font units to pixels.
fn add_glyph(
    out: &mut PathBuilder,
    (font, face): (Font, &Face<'_>),
    glyph: u16,
    transform: Transform,
) {
    OUTLINES.with_borrow_mut(|cache| {
        let outline = cache.entry((font, glyph)).or_insert_with(|| {
            let mut builder = Outline(PathBuilder::new());
            face.outline_glyph(GlyphId(glyph), &mut builder)?;
            builder.0.finish()
        });
        if let Some(path) = outline.clone().and_then(|p: Path| p.transform(transform)) {
            out.push_path(&path);
        }
    });
}

struct Outline(PathBuilder);

impl OutlineBuilder for Outline {
    fn move_to(&mut self, x: f32, y: f32) {
        self.0.move_to(x, y);
    }
    fn line_to(&mut self, x: f32, y: f32) {
        self.0.line_to(x, y);
    }
    fn quad_to(&mut self, x1: f32, y1: f32, x: f32, y: f32) {
        self.0.quad_to(x1, y1, x, y);
    }
    fn curve_to(&mut self, x1: f32, y1: f32, x2: f32, y2: f32, x: f32, y: f32) {
        self.0.cubic_to(x1, y1, x2, y2, x, y);
    }
    fn close(&mut self) {
        self.0.close();
    }
}

/// A label laid out: its glyphs as one path and the boxes it occupies (`[x0, y0, x1, y1]`,
/// pixels), which collision checks use.
pub(crate) struct Label {
    pub(crate) path: Path,
    pub(crate) boxes: Vec<[f32; 4]>,
}

/// `text` set as a block at (`x`, `y`). As Mapnik sets it, the first line is as tall as its
/// tallest glyph's ink (its baseline that far below the block's top) and each further line a
/// font height plus the line spacing.
pub(crate) fn at_point(text: &str, layout: &Layout, (x, y): (f32, f32)) -> Option<Label> {
    let face = layout.font.face()?;
    let lines = lines(text, layout, face);
    let height = line_height(layout, face) + layout.line_spacing;
    let advances: Vec<f32> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| if i == 0 { l.ink_height } else { height })
        .collect();
    let block_height: f32 = advances.iter().sum();
    let block_width = lines.iter().map(|l| l.width).fold(0.0, f32::max);
    let horizontal = match layout.horizontal.as_str() {
        "auto" if layout.dx > 0.0 => "right",
        "auto" if layout.dx < 0.0 => "left",
        "auto" => "middle",
        other => other,
    };
    let vertical = match layout.vertical.as_str() {
        "auto" if layout.dy > 0.0 => "bottom",
        "auto" if layout.dy < 0.0 => "top",
        "auto" => "middle",
        other => other,
    };
    let left = x + layout.dx
        - match horizontal {
            "left" => block_width,
            "right" => 0.0,
            _ => block_width / 2.0,
        };
    let top = y + layout.dy
        - match vertical {
            "top" => block_height,
            "bottom" => 0.0,
            _ => block_height / 2.0,
        };
    let align = match layout.align.as_str() {
        "auto" if layout.dx > 0.0 => "left",
        "auto" if layout.dx < 0.0 => "right",
        "auto" => "center",
        other => other,
    };
    let scale = scale(layout, face);
    let mut pb = PathBuilder::new();
    let mut baseline = top;
    for (line, advance) in lines.iter().zip(&advances) {
        let start = left
            + match align {
                "right" => block_width - line.width,
                "left" => 0.0,
                _ => (block_width - line.width) / 2.0,
            };
        baseline += advance;
        for g in &line.glyphs {
            let transform = Transform::from_row(
                scale,
                0.0,
                0.0,
                -scale,
                start + g.x + g.offset.0,
                baseline - g.offset.1,
            );
            add_glyph(&mut pb, (layout.font, face), g.glyph, transform);
        }
    }
    let path = pb.finish()?;
    Some(Label {
        path,
        boxes: vec![[left, top, left + block_width, top + block_height]],
    })
}

/// A line measured: its points and each one's distance from the start.
struct Path64 {
    points: Vec<(f64, f64)>,
    lengths: Vec<f64>,
}

impl Path64 {
    fn new(points: Vec<(f64, f64)>) -> Self {
        let mut lengths = Vec::with_capacity(points.len());
        let mut total = 0.0;
        lengths.push(0.0);
        for w in points.windows(2) {
            total += (w[1].0 - w[0].0).hypot(w[1].1 - w[0].1);
            lengths.push(total);
        }
        Self { points, lengths }
    }

    fn length(&self) -> f64 {
        self.lengths.last().copied().unwrap_or(0.0)
    }

    /// The point at distance `d` along the line.
    fn at(&self, d: f64) -> (f64, f64) {
        let i = self
            .lengths
            .partition_point(|&l| l <= d)
            .clamp(1, self.points.len() - 1);
        let (a, b) = (self.points[i - 1], self.points[i]);
        let span = (self.lengths[i] - self.lengths[i - 1]).max(f64::EPSILON);
        let t = ((d - self.lengths[i - 1]) / span).clamp(0.0, 1.0);
        (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t)
    }
}

/// Glyphs set along a line.
struct Along {
    /// Each glyph and its transform from font units.
    glyphs: Vec<(u16, Transform)>,
    boxes: Vec<[f32; 4]>,
    /// How many glyphs are upside down.
    upside_down: usize,
}

/// Where each glyph goes when the text starts at distance `start` along `path` (`scale`:
/// pixels per font unit); `None` when the line bends more than `max_angle` between two glyphs.
fn glyphs_along(
    line: &Line,
    (layout, scale): (&Layout, f32),
    path: &Path64,
    start: f64,
    max_angle: f32,
) -> Option<Along> {
    use std::f32::consts::PI;
    // The baseline sits half the tallest glyph's ink below the line, so that the text is
    // centred on it; then `dy` moves it.
    let shift = line.ink_height / 2.0 + layout.dy;
    let mut placed = Vec::with_capacity(line.glyphs.len());
    let mut boxes = Vec::with_capacity(line.glyphs.len());
    let mut previous: Option<f32> = None;
    let mut upside_down = 0;
    for g in &line.glyphs {
        let from = start + f64::from(g.x);
        let (ax, ay) = path.at(from);
        // Its direction: from where it starts to where it ends along the line.
        let (bx, by) = path.at(from + f64::from(g.advance.max(0.5)));
        let angle = (by - ay).atan2(bx - ax) as f32;
        if let Some(p) = previous {
            let mut turn = (angle - p).abs() % (2.0 * PI);
            if turn > PI {
                turn = 2.0 * PI - turn;
            }
            if turn > max_angle {
                return None;
            }
        }
        previous = Some(angle);
        if angle.abs() > PI / 2.0 {
            upside_down += 1;
        }
        let (sin, cos) = angle.sin_cos();
        let (ox, oy) = (ax as f32, ay as f32);
        // Glyph space: its origin where it starts on the line, x along it, y down.
        let place = Transform::from_row(cos, sin, -sin, cos, ox, oy);
        let transform =
            Transform::from_row(scale, 0.0, 0.0, -scale, g.offset.0, shift - g.offset.1)
                .post_concat(place);
        placed.push((g.glyph, transform));
        // The box around its advance and ink, turned with it.
        let corners = [
            (0.0, shift - g.ink.1),
            (g.advance, shift - g.ink.1),
            (0.0, shift - g.ink.0),
            (g.advance, shift - g.ink.0),
        ]
        .map(|(u, v)| (ox + u * cos - v * sin, oy + u * sin + v * cos));
        boxes.push(
            corners
                .iter()
                .fold([f32::MAX, f32::MAX, f32::MIN, f32::MIN], |b, &(px, py)| {
                    [b[0].min(px), b[1].min(py), b[2].max(px), b[3].max(py)]
                }),
        );
    }
    Some(Along {
        glyphs: placed,
        boxes,
        upside_down,
    })
}

/// `text` set along `line` (pixels), each glyph turned to the line's direction: as Mapnik
/// does, first centred on the line, then at positions further from the middle in turn (up to
/// 100 a side), the first where the line bends no more than `max_angle` (radians) from one
/// glyph to the next and `fits` accepts the glyphs' boxes; read the way that keeps most of
/// the glyphs upright. `None` when the line is shorter than the text or no position serves.
pub(crate) fn along_line(
    text: &str,
    layout: &Layout,
    line: &[(f64, f64)],
    max_angle: f32,
    fits: impl Fn(&[[f32; 4]]) -> bool,
) -> Option<Label> {
    let mut points = line.to_vec();
    points.dedup();
    if points.len() < 2 {
        return None;
    }
    let face = layout.font.face()?;
    let scale = scale(layout, face);
    let shaped = shape(&text.replace('\n', " "), layout, face);
    let forward = Path64::new(points);
    let total = forward.length();
    let width = f64::from(shaped.width);
    if width > total || shaped.glyphs.is_empty() {
        return None;
    }
    let mut backward: Option<Path64> = None;
    let tolerance = total / 2.0;
    let step = (tolerance / 100.0).max(1.0);
    for k in 0..=200u32 {
        let offset = f64::from(k.div_ceil(2)) * step * if k % 2 == 0 { -1.0 } else { 1.0 };
        if offset.abs() > tolerance {
            break;
        }
        let start = (total - width) / 2.0 + offset;
        if start < 0.0 || start + width > total {
            continue;
        }
        let Some(mut found) = glyphs_along(&shaped, (layout, scale), &forward, start, max_angle)
        else {
            continue;
        };
        if found.upside_down * 2 > shaped.glyphs.len() {
            let reversed = backward
                .get_or_insert_with(|| Path64::new(forward.points.iter().rev().copied().collect()));
            let start = total - start - width;
            match glyphs_along(&shaped, (layout, scale), reversed, start, max_angle) {
                Some(other) => found = other,
                None => continue,
            }
        }
        let Along { glyphs, boxes, .. } = found;
        if !fits(&boxes) {
            continue;
        }
        let mut pb = PathBuilder::new();
        for (glyph, transform) in glyphs {
            add_glyph(&mut pb, (layout.font, face), glyph, transform);
        }
        return pb.finish().map(|path| Label { path, boxes });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: f32) -> Layout {
        Layout {
            font: Font::Book,
            size,
            line_spacing: 0.0,
            character_spacing: 0.0,
            wrap_width: 0.0,
            horizontal: "auto".into(),
            vertical: "auto".into(),
            align: "auto".into(),
            dx: 0.0,
            dy: 0.0,
        }
    }

    #[test]
    fn faces_are_found_by_name_with_a_stand_in_otherwise() {
        assert_eq!(Font::for_names(["DejaVu Sans Bold"]), (Font::Bold, true));
        assert_eq!(
            Font::for_names(["Open Sans Regular", "DejaVu Sans Book"]),
            (Font::Book, true)
        );
        assert_eq!(Font::for_names(["Lato Bold"]), (Font::Bold, false));
        assert_eq!(Font::for_names(["Lato Regular"]), (Font::Book, false));
    }

    #[test]
    fn a_block_is_centred_on_its_anchor_and_kerned() {
        let label = at_point("Lisbon", &layout(20.0), (100.0, 50.0)).unwrap();
        let [x0, y0, x1, y1] = label.boxes[0];
        assert!((x0 + x1) / 2.0 - 100.0 < 0.01 && ((y0 + y1) / 2.0 - 50.0).abs() < 0.01);
        let bounds = label.path.bounds();
        assert!(bounds.left() >= x0 - 1.0 && bounds.right() <= x1 + 1.0);
        // Kerning: "AV" is narrower than "A" and "V" apart.
        let l = layout(20.0);
        let face = l.font.face().unwrap();
        let width = |text| shape(text, &l, face).width;
        assert!(width("AV") < width("A") + width("V") - 0.5);
    }

    #[test]
    fn wrapping_breaks_at_spaces_and_displacement_moves_the_block() {
        let mut l = layout(10.0);
        l.wrap_width = 40.0;
        // Each line runs until it is wider than 40 pixels, to the end of that word.
        let face = l.font.face().unwrap();
        let wrapped = lines("Rio de Janeiro do Sul", &l, face);
        assert_eq!(wrapped.len(), 2, "{}", wrapped.len());
        assert!(wrapped[0].width > 40.0 && wrapped[1].width < 40.0);
        assert_eq!(lines("Rio", &l, face).len(), 1);
        l.wrap_width = 0.0;
        l.dy = 10.0;
        let below = at_point("Porto", &l, (0.0, 0.0)).unwrap();
        assert!((below.boxes[0][1] - 10.0).abs() < 0.01);
    }

    #[test]
    fn text_along_a_line_needs_room_and_a_gentle_bend() {
        let l = layout(10.0);
        let anywhere = |_: &[[f32; 4]]| true;
        let straight = [(0.0, 0.0), (200.0, 0.0)];
        let label = along_line("Avenida", &l, &straight, 0.4, anywhere).unwrap();
        assert_eq!(label.boxes.len(), 7);
        // Centred on the line.
        let (left, right) = (label.boxes[0][0], label.boxes[6][2]);
        assert!((left + right - 200.0).abs() < 1.0, "{left} {right}");
        assert!(along_line("Avenida", &l, &[(0.0, 0.0), (10.0, 0.0)], 0.4, anywhere).is_none());
        let sharp = [(0.0, 0.0), (60.0, 0.0), (60.0, 60.0)];
        // The corner is in the middle: the label moves along the longer arm, if it fits.
        let moved = along_line(
            "Avenida",
            &l,
            &[(0.0, 0.0), (100.0, 0.0), (100.0, 30.0)],
            0.4,
            anywhere,
        )
        .unwrap();
        assert!(moved.boxes[6][2] <= 101.0);
        assert!(along_line("Avenida Almirante Reis", &l, &sharp, 0.4, anywhere).is_none());
        // Right to left is drawn left to right.
        let back = along_line("Avenida", &l, &[(200.0, 0.0), (0.0, 0.0)], 0.4, anywhere).unwrap();
        assert!(back.boxes[0][0] < back.boxes[6][0]);
        // A taken spot moves it.
        let clear = |boxes: &[[f32; 4]]| boxes.iter().all(|b| b[0] > 120.0);
        let aside = along_line("Avenida", &l, &straight, 0.4, clear).unwrap();
        assert!(aside.boxes[0][0] > 120.0);
    }
}
