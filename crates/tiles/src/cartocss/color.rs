//! Colours and CartoCSS's colour functions (LESS's, which CartoCSS inherits).

/// A colour: red, green and blue from 0 to 255, alpha from 0 to 1.
///
/// ```
/// use geostack_tiles::Color;
///
/// let c = Color::parse("#3d1a78").unwrap();
/// assert_eq!(c.to_rgba8(), [0x3d, 0x1a, 0x78, 255]);
/// assert_eq!(Color::parse("steelblue").unwrap().to_rgba8(), [70, 130, 180, 255]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Color {
    /// Red, 0–255.
    pub r: f64,
    /// Green, 0–255.
    pub g: f64,
    /// Blue, 0–255.
    pub b: f64,
    /// Alpha, 0–1.
    pub a: f64,
}

impl Color {
    /// Fully transparent black.
    pub const TRANSPARENT: Color = Color::rgba(0.0, 0.0, 0.0, 0.0);

    /// A colour from its components (clamped).
    pub const fn rgba(r: f64, g: f64, b: f64, a: f64) -> Self {
        Self {
            r: r.clamp(0.0, 255.0),
            g: g.clamp(0.0, 255.0),
            b: b.clamp(0.0, 255.0),
            a: a.clamp(0.0, 1.0),
        }
    }

    /// A colour by CSS name (`steelblue`, `transparent`) or hexadecimal (`#abc`, `#aabbcc`,
    /// `#aabbccdd`); `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let c = csscolorparser::parse(text).ok()?;
        Some(Self::rgba(
            f64::from(c.r) * 255.0,
            f64::from(c.g) * 255.0,
            f64::from(c.b) * 255.0,
            f64::from(c.a),
        ))
    }

    /// Red, green, blue and alpha as bytes.
    pub fn to_rgba8(self) -> [u8; 4] {
        // Nudged so that halves computed in floating point round as LESS rounds them.
        let byte = |v: f64| (v + 1e-9).round().clamp(0.0, 255.0) as u8;
        [
            byte(self.r),
            byte(self.g),
            byte(self.b),
            byte(self.a * 255.0),
        ]
    }

    /// Hue (degrees), saturation and lightness (0–1).
    fn hsl(self) -> (f64, f64, f64) {
        let (r, g, b) = (self.r / 255.0, self.g / 255.0, self.b / 255.0);
        let max = r.max(g).max(b);
        let min = r.min(g).min(b);
        let l = (max + min) / 2.0;
        let d = max - min;
        if d == 0.0 {
            return (0.0, 0.0, l);
        }
        let s = if l > 0.5 {
            d / (2.0 - max - min)
        } else {
            d / (max + min)
        };
        let h = if max == r {
            (g - b) / d + if g < b { 6.0 } else { 0.0 }
        } else if max == g {
            (b - r) / d + 2.0
        } else {
            (r - g) / d + 4.0
        };
        (h * 60.0, s, l)
    }

    /// A colour from hue (degrees), saturation and lightness (0–1) and alpha.
    pub fn from_hsla(h: f64, s: f64, l: f64, a: f64) -> Self {
        let h = h.rem_euclid(360.0) / 360.0;
        let (s, l) = (s.clamp(0.0, 1.0), l.clamp(0.0, 1.0));
        let m2 = if l <= 0.5 {
            l * (s + 1.0)
        } else {
            l + s - l * s
        };
        let m1 = l * 2.0 - m2;
        let channel = |h: f64| {
            let h = h.rem_euclid(1.0);
            let v = if h * 6.0 < 1.0 {
                m1 + (m2 - m1) * h * 6.0
            } else if h * 2.0 < 1.0 {
                m2
            } else if h * 3.0 < 2.0 {
                m1 + (m2 - m1) * (2.0 / 3.0 - h) * 6.0
            } else {
                m1
            };
            v * 255.0
        };
        Self::rgba(
            channel(h + 1.0 / 3.0),
            channel(h),
            channel(h - 1.0 / 3.0),
            a,
        )
    }

    fn with_hsl(self, f: impl FnOnce(f64, f64, f64) -> (f64, f64, f64)) -> Self {
        let (h, s, l) = self.hsl();
        let (h, s, l) = f(h, s, l);
        Self::from_hsla(h, s, l, self.a)
    }

    /// `lighten(c, p%)`: lightness up by `p` points.
    pub fn lighten(self, percent: f64) -> Self {
        self.with_hsl(|h, s, l| (h, s, l + percent / 100.0))
    }

    /// `darken(c, p%)`.
    pub fn darken(self, percent: f64) -> Self {
        self.lighten(-percent)
    }

    /// `saturate(c, p%)`.
    pub fn saturate(self, percent: f64) -> Self {
        self.with_hsl(|h, s, l| (h, s + percent / 100.0, l))
    }

    /// `desaturate(c, p%)`.
    pub fn desaturate(self, percent: f64) -> Self {
        self.saturate(-percent)
    }

    /// `spin(c, degrees)`: the hue turned.
    pub fn spin(self, degrees: f64) -> Self {
        self.with_hsl(|h, s, l| (h + degrees, s, l))
    }

    /// `fade(c, p%)`: alpha set to `p`%.
    pub fn fade(self, percent: f64) -> Self {
        Self::rgba(self.r, self.g, self.b, percent / 100.0)
    }

    /// `fadein(c, p%)` (negative `p`: `fadeout`): alpha up by `p` points.
    pub fn fadein(self, percent: f64) -> Self {
        Self::rgba(self.r, self.g, self.b, self.a + percent / 100.0)
    }

    /// `mix(a, b, w%)`: `w`% of `self` and the rest of `other`, weighted by their alphas as
    /// LESS does.
    pub fn mix(self, other: Color, weight_percent: f64) -> Self {
        let p = weight_percent / 100.0;
        let w = p * 2.0 - 1.0;
        let a = self.a - other.a;
        let w1 = if w * a == -1.0 {
            (w + 1.0) / 2.0
        } else {
            ((w + a) / (1.0 + w * a) + 1.0) / 2.0
        };
        let w2 = 1.0 - w1;
        Self::rgba(
            self.r * w1 + other.r * w2,
            self.g * w1 + other.g * w2,
            self.b * w1 + other.b * w2,
            self.a * p + other.a * (1.0 - p),
        )
    }

    /// `greyscale(c)`.
    pub fn greyscale(self) -> Self {
        self.desaturate(100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> [u8; 4] {
        Color::parse(text).unwrap().to_rgba8()
    }

    #[test]
    fn functions_give_what_less_gives() {
        // Values as LESS computes them.
        let red = Color::parse("#ff0000").unwrap();
        assert_eq!(red.lighten(20.0).to_rgba8(), hex("#ff6666"));
        assert_eq!(red.darken(20.0).to_rgba8(), hex("#990000"));
        assert_eq!(red.spin(120.0).to_rgba8(), hex("#00ff00"));
        assert_eq!(red.fade(50.0).to_rgba8(), [255, 0, 0, 128]);
        assert_eq!(red.fade(50.0).fadein(25.0).to_rgba8(), [255, 0, 0, 191]);
        assert_eq!(
            red.mix(Color::parse("#0000ff").unwrap(), 50.0).to_rgba8(),
            hex("#800080")
        );
        assert_eq!(
            Color::parse("#ff0000")
                .unwrap()
                .mix(Color::parse("#0000ff").unwrap(), 75.0)
                .to_rgba8(),
            hex("#bf0040")
        );
        assert_eq!(
            hex("#80e7a5"),
            Color::parse("#80e7a5").unwrap().saturate(0.0).to_rgba8()
        );
        assert_eq!(
            Color::parse("#29bb9c").unwrap().greyscale().to_rgba8(),
            hex("#727272")
        );
        assert_eq!(red.desaturate(100.0).to_rgba8(), hex("#808080"));
        assert_eq!(hex("#abc"), [0xaa, 0xbb, 0xcc, 255]);
        assert_eq!(hex("transparent")[3], 0);
        assert_eq!(
            Color::from_hsla(240.0, 1.0, 0.5, 1.0).to_rgba8(),
            hex("blue")
        );
        assert!(Color::parse("nocolour").is_none());
    }
}
