//! Anti-aliased fills and strokes by exact area coverage: zeno's scanline-cell rasterizer
//! (the algorithm of FreeType's and AGG's, which Mapnik draws with) computes each pixel's
//! coverage of a path, or of its stroke, in the box where it meets the image, and the colour
//! is laid over the pixmap source-over. tiny-skia supersamples instead, which costs more on
//! the large polygons of map tiles; other blend modes, shaders and unanti-aliased paints
//! (UTFGrids) still go through tiny-skia.

use tiny_skia::{
    BlendMode, FillRule, LineCap, LineJoin, Paint, Path, PathSegment, Pixmap, PremultipliedColorU8,
    Shader, Transform,
};
use zeno::{Cap, Command, Fill, Join, Mask, Point, Style};

/// Reusable buffers for filling paths.
pub(crate) struct Filler {
    scratch: zeno::Scratch,
    commands: Vec<Command>,
    mask: Vec<u8>,
}

impl Filler {
    pub(crate) fn new() -> Self {
        Self {
            scratch: zeno::Scratch::new(),
            commands: Vec::new(),
            mask: Vec::new(),
        }
    }

    /// Fills `path` (pixel coordinates) on `pixmap` with `paint` by `rule`.
    pub(crate) fn fill(
        &mut self,
        pixmap: &mut Pixmap,
        path: &Path,
        paint: &Paint<'_>,
        rule: FillRule,
    ) {
        let Some(color) = solid(paint) else {
            pixmap.fill_path(path, paint, rule, Transform::identity(), None);
            return;
        };
        let fill = match rule {
            FillRule::EvenOdd => Fill::EvenOdd,
            FillRule::Winding => Fill::NonZero,
        };
        self.cover(pixmap, path, 0.0, Style::Fill(fill), color);
    }

    /// Strokes `path` on `pixmap` with `paint`, dashed by `dashes` (on, off, … lengths) if
    /// any: every stroke is an area covered, however thin (as AGG covers it), not a
    /// hairline.
    pub(crate) fn stroke(
        &mut self,
        pixmap: &mut Pixmap,
        path: &Path,
        paint: &Paint<'_>,
        stroke: &tiny_skia::Stroke,
        dashes: &[f32],
    ) {
        let Some(color) = solid(paint) else {
            let dashed = match tiny_skia::StrokeDash::new(dashes.to_vec(), 0.0) {
                Some(dash) => path.dash(&dash, 1.0),
                None => Some(path.clone()),
            };
            if let Some(outline) = dashed.and_then(|p| p.stroke(stroke, 1.0)) {
                pixmap.fill_path(
                    &outline,
                    paint,
                    FillRule::Winding,
                    Transform::identity(),
                    None,
                );
            }
            return;
        };
        let style = zeno::Stroke {
            width: stroke.width,
            join: match stroke.line_join {
                LineJoin::Round => Join::Round,
                LineJoin::Bevel => Join::Bevel,
                LineJoin::Miter | LineJoin::MiterClip => Join::Miter,
            },
            miter_limit: stroke.miter_limit,
            start_cap: cap(stroke.line_cap),
            end_cap: cap(stroke.line_cap),
            dashes: if dashes.iter().sum::<f32>() > 0.0 {
                dashes
            } else {
                &[]
            },
            offset: 0.0,
            scale: false,
        };
        // How far the outline reaches beyond the path: half the width, a miter's length.
        let reach = stroke.width / 2.0 * stroke.miter_limit.max(1.5);
        self.cover(pixmap, path, reach, Style::Stroke(style), color);
    }

    /// Lays `color` over `pixmap` where `style` covers `path` (which stays within `reach`
    /// pixels of the path's own box).
    fn cover(
        &mut self,
        pixmap: &mut Pixmap,
        path: &Path,
        reach: f32,
        style: Style<'_>,
        color: PremultipliedColorU8,
    ) {
        if color.alpha() == 0 {
            return;
        }
        // The box of pixels the path can touch, within the image.
        let bounds = path.bounds();
        let (width, height) = (pixmap.width() as i64, pixmap.height() as i64);
        let x0 = ((bounds.left() - reach).floor() as i64).clamp(0, width);
        let y0 = ((bounds.top() - reach).floor() as i64).clamp(0, height);
        let x1 = ((bounds.right() + reach).ceil() as i64 + 1).clamp(0, width);
        let y1 = ((bounds.bottom() + reach).ceil() as i64 + 1).clamp(0, height);
        if x0 >= x1 || y0 >= y1 {
            return;
        }
        let (w, h) = ((x1 - x0) as usize, (y1 - y0) as usize);
        self.commands.clear();
        let point = |p: tiny_skia::Point| Point::new(p.x, p.y);
        self.commands.extend(path.segments().map(|s| match s {
            PathSegment::MoveTo(p) => Command::MoveTo(point(p)),
            PathSegment::LineTo(p) => Command::LineTo(point(p)),
            PathSegment::QuadTo(c, p) => Command::QuadTo(point(c), point(p)),
            PathSegment::CubicTo(c1, c2, p) => Command::CurveTo(point(c1), point(c2), point(p)),
            PathSegment::Close => Command::Close,
        }));
        self.mask.clear();
        self.mask.resize(w * h, 0);
        Mask::with_scratch(&self.commands, &mut self.scratch)
            .style(style)
            .offset((-(x0 as f32), -(y0 as f32)))
            .size(w as u32, h as u32)
            .render_into(&mut self.mask, None);
        let src = [color.red(), color.green(), color.blue(), color.alpha()];
        let stride = pixmap.width() as usize * 4;
        let data = pixmap.data_mut();
        for (row, coverage) in self.mask.chunks_exact(w).enumerate() {
            let start = (y0 as usize + row) * stride + x0 as usize * 4;
            let pixels = &mut data[start..start + w * 4];
            for (dst, &c) in pixels.chunks_exact_mut(4).zip(coverage) {
                match c {
                    0 => {}
                    255 if src[3] == 255 => dst.copy_from_slice(&src),
                    _ => {
                        let s = src.map(|v| mul(v, c));
                        let keep = 255 - s[3];
                        for k in 0..4 {
                            dst[k] = s[k] + mul(dst[k], keep);
                        }
                    }
                }
            }
        }
    }
}

/// The premultiplied colour of a paint this module draws: solid, anti-aliased, source-over.
fn solid(paint: &Paint<'_>) -> Option<PremultipliedColorU8> {
    match &paint.shader {
        Shader::SolidColor(c) if paint.anti_alias && paint.blend_mode == BlendMode::SourceOver => {
            Some(c.premultiply().to_color_u8())
        }
        _ => None,
    }
}

fn cap(cap: LineCap) -> Cap {
    match cap {
        LineCap::Butt => Cap::Butt,
        LineCap::Round => Cap::Round,
        LineCap::Square => Cap::Square,
    }
}

/// `a × b / 255`, rounded.
fn mul(a: u8, b: u8) -> u8 {
    let t = u32::from(a) * u32::from(b) + 128;
    ((t + (t >> 8)) >> 8) as u8
}

#[cfg(test)]
mod tests {
    use tiny_skia::{PathBuilder, Rect};

    use super::*;

    #[test]
    fn a_square_is_covered_exactly_and_edges_by_their_share() {
        let mut pixmap = Pixmap::new(20, 20).unwrap();
        let mut paint = Paint::default();
        paint.set_color_rgba8(255, 0, 0, 255);
        let path = PathBuilder::from_rect(Rect::from_ltrb(2.0, 2.0, 10.5, 10.0).unwrap());
        let mut filler = Filler::new();
        filler.fill(&mut pixmap, &path, &paint, FillRule::Winding);
        let at = |pixmap: &Pixmap, x, y| pixmap.pixel(x, y).unwrap();
        assert_eq!(at(&pixmap, 5, 5).alpha(), 255);
        assert_eq!(at(&pixmap, 5, 5).red(), 255);
        // Half of column 10 is inside.
        assert!(
            (126..=129).contains(&at(&pixmap, 10, 5).alpha()),
            "{}",
            at(&pixmap, 10, 5).alpha()
        );
        assert_eq!(at(&pixmap, 11, 5).alpha(), 0);
        assert_eq!(at(&pixmap, 1, 1).alpha(), 0);

        // Translucent over opaque: source-over.
        paint.set_color_rgba8(0, 0, 255, 128);
        filler.fill(&mut pixmap, &path, &paint, FillRule::EvenOdd);
        let p = at(&pixmap, 5, 5);
        assert_eq!((p.alpha(), p.blue()), (255, 128));
        assert!((126..=128).contains(&p.red()), "{}", p.red());

        // Off the image: nothing, and no panic.
        let outside = PathBuilder::from_rect(Rect::from_ltrb(30.0, 30.0, 40.0, 40.0).unwrap());
        filler.fill(&mut pixmap, &outside, &paint, FillRule::Winding);
        assert_eq!(mul(255, 255), 255);
        assert_eq!(mul(128, 255), 128);
        assert_eq!(mul(255, 0), 0);
    }
}
