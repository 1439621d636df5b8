//! CartoCSS, the subset CARTO's styles use, parsed into a typed [`Style`].
//!
//! What it reads: layer (`#name`), class (`.name`), `Map` and `*` selectors, `::attachments`,
//! nested rules, zoom filters (`[zoom>=4]`), attribute filters (`=`, `!=`, `<`, `<=`, `>`, `>=`
//! and `=~` regular expressions, matched whole as Mapnik does), `[mapnik::geometry_type=…]`,
//! variables (`@name`, block-scoped, top-level ones usable before they are defined),
//! arithmetic, colour literals and functions (`rgb`, `rgba`, `hsl`, `hsla`, `lighten`, `darken`,
//! `saturate`, `desaturate`, `fade`, `fadein`, `fadeout`, `spin`, `mix`, `greyscale`),
//! data-driven values (`marker-width: [pop] / 1e5 + 2`), and named symbolizer instances
//! (`casing/line-width`).
//!
//! How it cascades, as carto does: per attachment (drawn in the order each is first named), a
//! feature gets each property from the matching rule with the highest specificity — layer
//! selectors, then classes, then attribute filters, then the later rule. Each layer's style
//! applies to that layer whatever its `#name` selectors say (every layer has its own
//! stylesheet). `cartocss_version` 2.x and 3.x read the same.
//!
//! Properties it draws (with Mapnik's defaults) are listed in [`SUPPORTED`]; the other
//! properties of Mapnik's reference are accepted and come back as [`Style::warnings`], never
//! dropped silently; a name no symbolizer has is an error, as a syntax error is.

mod color;
mod lex;

use std::collections::HashMap;

pub use color::Color;
use lex::{Tok, Token};

use crate::{Error, Result};

/// The properties this renderer draws.
pub const SUPPORTED: &[&str] = &[
    "polygon-fill",
    "polygon-opacity",
    "polygon-comp-op",
    "line-color",
    "line-width",
    "line-opacity",
    "line-dasharray",
    "line-join",
    "line-cap",
    "line-comp-op",
    "marker-width",
    "marker-height",
    "marker-fill",
    "marker-fill-opacity",
    "marker-opacity",
    "marker-line-color",
    "marker-line-width",
    "marker-line-opacity",
    "marker-allow-overlap",
    "marker-ignore-placement",
    "marker-type",
    "marker-placement",
    "marker-comp-op",
    "text-name",
    "text-face-name",
    "text-size",
    "text-fill",
    "text-opacity",
    "text-halo-fill",
    "text-halo-radius",
    "text-halo-opacity",
    "text-allow-overlap",
    "text-placement",
    "text-dx",
    "text-dy",
    "text-transform",
    "text-wrap-width",
    "text-line-spacing",
    "text-character-spacing",
    "text-min-distance",
    "text-min-padding",
    "text-avoid-edges",
    "text-horizontal-alignment",
    "text-vertical-alignment",
    "text-align",
    "text-max-char-angle-delta",
    "text-comp-op",
    "text-halo-comp-op",
    "opacity",
    "comp-op",
    "background-color",
];

/// Families of Mapnik's reference whose properties, those of [`SUPPORTED`] aside, are not drawn
/// (each a warning): `text-placement-type`, `text-orientation` and the like, and all of `shield-`.
const UNDRAWN_FAMILIES: &[&str] = &[
    "text-",
    "shield-",
    "point-",
    "building-",
    "raster-",
    "dot-",
    "debug-",
    "polygon-pattern-",
    "line-pattern-",
];

/// The other properties of Mapnik's reference: read, not drawn (a warning each).
const UNDRAWN: &[&str] = &[
    "polygon-gamma",
    "polygon-gamma-method",
    "polygon-clip",
    "polygon-simplify",
    "polygon-simplify-algorithm",
    "polygon-smooth",
    "polygon-geometry-transform",
    "line-gamma",
    "line-gamma-method",
    "line-miterlimit",
    "line-clip",
    "line-simplify",
    "line-simplify-algorithm",
    "line-smooth",
    "line-offset",
    "line-rasterizer",
    "line-geometry-transform",
    "line-dash-offset",
    "marker-file",
    "marker-spacing",
    "marker-max-error",
    "marker-transform",
    "marker-clip",
    "marker-simplify",
    "marker-simplify-algorithm",
    "marker-smooth",
    "marker-geometry-transform",
    "marker-offset",
    "marker-avoid-edges",
    "marker-direction",
    "marker-multi-policy",
    "image-filters",
    "image-filters-inflate",
    "direct-image-filters",
    "filter-mode",
    "srs",
    "buffer-size",
    "background-image",
    "background-image-comp-op",
    "background-image-opacity",
    "font-directory",
    "base",
    "paths-from-xml",
    "minimum-version",
    "maximum-extent",
];

/// Values a property can take (checked when the value is constant).
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Color,
    Number,
    Bool,
    Keyword(&'static [&'static str]),
    Numbers,
    /// A string or a list of them (font names).
    Text,
    /// Any value (a label's text).
    Any,
}

const COMP_OPS: &[&str] = &[
    "clear",
    "src",
    "dst",
    "src-over",
    "dst-over",
    "src-in",
    "dst-in",
    "src-out",
    "dst-out",
    "src-atop",
    "dst-atop",
    "xor",
    "plus",
    "multiply",
    "screen",
    "overlay",
    "darken",
    "lighten",
    "color-dodge",
    "color-burn",
    "hard-light",
    "soft-light",
    "difference",
    "exclusion",
    "hue",
    "saturation",
    "color",
    "value",
];

fn kind_of(property: &str) -> Kind {
    match property {
        "polygon-fill" | "line-color" | "marker-fill" | "marker-line-color"
        | "background-color" => Kind::Color,
        "text-fill" | "text-halo-fill" => Kind::Color,
        "marker-allow-overlap"
        | "marker-ignore-placement"
        | "text-allow-overlap"
        | "text-avoid-edges" => Kind::Bool,
        "text-name" => Kind::Any,
        "text-face-name" => Kind::Text,
        "text-placement" => Kind::Keyword(&["point", "line", "vertex", "interior"]),
        "text-transform" => Kind::Keyword(&["none", "uppercase", "lowercase", "capitalize"]),
        "text-horizontal-alignment" => Kind::Keyword(&["left", "middle", "right", "auto"]),
        "text-vertical-alignment" => Kind::Keyword(&["top", "middle", "bottom", "auto"]),
        "text-align" => Kind::Keyword(&["left", "right", "center", "auto"]),
        "line-join" => Kind::Keyword(&["miter", "miter-revert", "round", "bevel"]),
        "line-cap" => Kind::Keyword(&["butt", "round", "square"]),
        "marker-type" => Kind::Keyword(&["ellipse", "rectangle", "arrow"]),
        "marker-placement" => Kind::Keyword(&[
            "point",
            "interior",
            "centroid",
            "line",
            "vertex-first",
            "vertex-last",
        ]),
        "line-dasharray" => Kind::Numbers,
        p if p.ends_with("comp-op") => Kind::Keyword(COMP_OPS),
        _ => Kind::Number,
    }
}

/// A feature's attributes, as a style reads them.
///
/// ```
/// use geostack_tiles::Attributes;
///
/// let mut feature = serde_json::Map::new();
/// feature.insert("name".into(), "Lisbon".into());
/// assert_eq!(feature.attribute("name"), Some(&serde_json::json!("Lisbon")));
/// ```
pub trait Attributes {
    /// The value of attribute `name`, if the feature has it.
    fn attribute(&self, name: &str) -> Option<&serde_json::Value>;
}

impl Attributes for serde_json::Map<String, serde_json::Value> {
    fn attribute(&self, name: &str) -> Option<&serde_json::Value> {
        self.get(name)
    }
}

/// A value as a style computes it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Val {
    Num(f64),
    Str(String),
    Color(Color),
    Bool(bool),
    Null,
    List(Vec<Val>),
}

impl Val {
    pub(crate) fn num(&self) -> Option<f64> {
        match self {
            Val::Num(n) => Some(*n),
            Val::Str(s) => s.trim().parse().ok(),
            Val::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        }
    }

    pub(crate) fn text(&self) -> String {
        match self {
            Val::Num(n) => n.to_string(),
            Val::Str(s) => s.clone(),
            Val::Bool(b) => b.to_string(),
            Val::Null => String::new(),
            Val::Color(c) => {
                let [r, g, b, a] = c.to_rgba8();
                format!("rgba({r},{g},{b},{a})")
            }
            Val::List(l) => l.iter().map(Val::text).collect::<Vec<_>>().join(","),
        }
    }

    /// Its items as text: a list's each, or the value alone (font names).
    pub(crate) fn texts(&self) -> Vec<String> {
        match self {
            Val::List(l) => l.iter().map(Val::text).collect(),
            other => vec![other.text()],
        }
    }

    fn from_json(v: Option<&serde_json::Value>) -> Val {
        match v {
            None | Some(serde_json::Value::Null) => Val::Null,
            Some(serde_json::Value::Number(n)) => n.as_f64().map_or(Val::Null, Val::Num),
            Some(serde_json::Value::String(s)) => Val::Str(s.clone()),
            Some(serde_json::Value::Bool(b)) => Val::Bool(*b),
            Some(other) => Val::Str(other.to_string()),
        }
    }
}

/// An expression; constant ones are folded when parsed.
#[derive(Clone, Debug)]
pub(crate) enum Expr {
    Val(Val),
    Field(String),
    Bin(char, Box<Expr>, Box<Expr>),
    Neg(Box<Expr>),
    List(Vec<Expr>),
}

impl Expr {
    fn constant(&self) -> Option<&Val> {
        match self {
            Expr::Val(v) => Some(v),
            _ => None,
        }
    }

    fn fields(&self, out: &mut Vec<String>) {
        match self {
            Expr::Val(_) => {}
            Expr::Field(f) => {
                if !out.contains(f) {
                    out.push(f.clone());
                }
            }
            Expr::Bin(_, a, b) => {
                a.fields(out);
                b.fields(out);
            }
            Expr::Neg(a) => a.fields(out),
            Expr::List(l) => l.iter().for_each(|e| e.fields(out)),
        }
    }

    /// The value for a feature whose attribute `name` is `attr(name)`.
    pub(crate) fn eval(&self, attr: &dyn Attributes) -> Val {
        match self {
            Expr::Val(v) => v.clone(),
            Expr::Field(f) => Val::from_json(attr.attribute(f)),
            Expr::Neg(a) => match a.eval(attr).num() {
                Some(n) => Val::Num(-n),
                None => Val::Null,
            },
            Expr::List(l) => Val::List(l.iter().map(|e| e.eval(attr)).collect()),
            Expr::Bin(op, a, b) => binary(*op, a.eval(attr), b.eval(attr)),
        }
    }

    /// Folds a constant expression.
    fn fold(self) -> Expr {
        match self {
            Expr::Bin(op, a, b) => match (a.fold(), b.fold()) {
                (Expr::Val(a), Expr::Val(b)) => Expr::Val(binary(op, a, b)),
                (a, b) => Expr::Bin(op, Box::new(a), Box::new(b)),
            },
            Expr::Neg(a) => match a.fold() {
                Expr::Val(v) => Expr::Val(v.num().map_or(Val::Null, |n| Val::Num(-n))),
                a => Expr::Neg(Box::new(a)),
            },
            Expr::List(l) => {
                let l: Vec<Expr> = l.into_iter().map(Expr::fold).collect();
                if l.iter().all(|e| e.constant().is_some()) {
                    Expr::Val(Val::List(
                        l.into_iter()
                            .filter_map(|e| e.constant().cloned())
                            .collect(),
                    ))
                } else {
                    Expr::List(l)
                }
            }
            other => other,
        }
    }
}

fn binary(op: char, a: Val, b: Val) -> Val {
    if op == '+' && (matches!(a, Val::Str(_)) || matches!(b, Val::Str(_))) {
        return Val::Str(a.text() + &b.text());
    }
    match (a.num(), b.num()) {
        (Some(x), Some(y)) => Val::Num(match op {
            '+' => x + y,
            '-' => x - y,
            '*' => x * y,
            _ => x / y,
        }),
        _ => Val::Null,
    }
}

/// A comparison of a filter.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    fn holds(self, o: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match self {
            Cmp::Eq => o == Equal,
            Cmp::Ne => o != Equal,
            Cmp::Lt => o == Less,
            Cmp::Le => o != Greater,
            Cmp::Gt => o == Greater,
            Cmp::Ge => o != Less,
        }
    }
}

#[derive(Clone, Debug)]
enum Filter {
    Zoom(Cmp, f64),
    /// `[mapnik::geometry_type=…]`: 1 point, 2 line, 3 polygon.
    GeometryType(Cmp, f64),
    Field(String, Cmp, Val),
    Match(String, regex::Regex),
}

/// A feature's geometry type, as `[mapnik::geometry_type]` numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GeomType {
    Point = 1,
    Line = 2,
    Polygon = 3,
}

impl Filter {
    fn matches(&self, attr: &dyn Attributes, geometry: GeomType) -> bool {
        match self {
            Filter::Zoom(..) => true,
            Filter::GeometryType(cmp, v) => cmp.holds((geometry as u8 as f64).total_cmp(v)),
            Filter::Match(field, re) => match Val::from_json(attr.attribute(field)) {
                Val::Null => false,
                v => re.is_match(&v.text()),
            },
            Filter::Field(field, cmp, expected) => {
                let actual = Val::from_json(attr.attribute(field));
                let order = match (&actual, expected) {
                    (Val::Null, Val::Null) => Some(std::cmp::Ordering::Equal),
                    (Val::Null, _) | (_, Val::Null) => None,
                    (Val::Num(a), Val::Num(b)) => Some(a.total_cmp(b)),
                    (Val::Str(a), Val::Num(b)) => {
                        a.trim().parse::<f64>().ok().map(|a| a.total_cmp(b))
                    }
                    (Val::Bool(a), Val::Bool(b)) => Some(a.cmp(b)),
                    (Val::Bool(a), Val::Num(b)) => Some(f64::from(u8::from(*a)).total_cmp(b)),
                    (a, b) => Some(a.text().cmp(&b.text())),
                };
                match order {
                    Some(o) => cmp.holds(o),
                    None => *cmp == Cmp::Ne,
                }
            }
        }
    }

    fn zoom_holds(&self, z: u8) -> bool {
        match self {
            Filter::Zoom(cmp, v) => cmp.holds(f64::from(z).total_cmp(v)),
            _ => true,
        }
    }
}

/// One declaration: `instance/property: value`.
#[derive(Clone, Debug)]
pub(crate) struct Decl {
    pub(crate) instance: String,
    pub(crate) property: String,
    pub(crate) value: Expr,
    /// Its place in the stylesheet.
    pub(crate) index: usize,
}

/// A flattened rule: what it matches and what it sets.
#[derive(Clone, Debug)]
struct Def {
    filters: Vec<Filter>,
    decls: Vec<Decl>,
    specificity: (u32, u32, u32, usize),
}

/// The rules of one attachment, most specific last.
#[derive(Clone, Debug)]
pub(crate) struct Attachment {
    pub(crate) name: String,
    defs: Vec<Def>,
    /// Its `opacity` and `comp-op`, which apply to the attachment as a whole.
    pub(crate) opacity: f64,
    pub(crate) comp_op: Option<String>,
}

/// A parsed CartoCSS stylesheet.
///
/// ```
/// use geostack_tiles::Style;
///
/// let style = Style::parse(
///     "@land: #3d1a78;
///      #layer { polygon-fill: lighten(@land, 10%); polygon-gamma: 0.5;
///        [pop_est > 1e8] { polygon-fill: @land; }
///        ::outline { line-color: #fff; line-width: 0.5; } }",
/// )
/// .unwrap();
/// assert_eq!(style.fields(), ["pop_est"]);
/// assert_eq!(style.warnings(), ["polygon-gamma is not drawn by this renderer (ignored)"]);
/// assert!(Style::parse("#layer { polygon-fil: red; }").is_err());
/// ```
#[derive(Clone, Debug)]
pub struct Style {
    pub(crate) attachments: Vec<Attachment>,
    background: Option<Color>,
    warnings: Vec<String>,
    fields: Vec<String>,
}

impl Style {
    /// Parses `text`.
    ///
    /// # Errors
    ///
    /// [`Error::Style`] with the line and column of a syntax error, an unknown property or
    /// function, an undefined variable, or a value of the wrong type.
    pub fn parse(text: &str) -> Result<Style> {
        let tokens = lex::tokens(text)?;
        let mut p = Parser {
            top_vars: top_level_variables(&tokens),
            tokens,
            i: 0,
            scopes: vec![HashMap::new()],
            resolving: Vec::new(),
            defs: Vec::new(),
            attachments: Vec::new(),
            index: 0,
            warnings: Vec::new(),
        };
        while p.i < p.tokens.len() {
            p.statement(&[Selector::default()], true)?;
        }
        let mut fields = Vec::new();
        let mut background = None;
        let mut attachments: Vec<Attachment> = p
            .attachments
            .iter()
            .map(|name| Attachment {
                name: name.clone(),
                defs: Vec::new(),
                opacity: 1.0,
                comp_op: None,
            })
            .collect();
        for (selector, decls) in p.defs {
            if selector.map {
                for d in decls {
                    if let ("background-color", Some(Val::Color(c))) =
                        (d.property.as_str(), d.value.constant())
                    {
                        background = Some(*c);
                    }
                }
                continue;
            }
            for f in &selector.filters {
                if let Filter::Field(name, ..) | Filter::Match(name, _) = f
                    && !fields.contains(name)
                {
                    fields.push(name.clone());
                }
            }
            let kept = decls;
            for d in &kept {
                d.value.fields(&mut fields);
            }
            let Some(a) = attachments
                .iter_mut()
                .find(|a| a.name == selector.attachment.clone().unwrap_or_default())
            else {
                continue;
            };
            for d in &kept {
                match (d.property.as_str(), d.value.constant()) {
                    ("opacity", Some(v)) => a.opacity = v.num().unwrap_or(1.0),
                    ("comp-op", Some(Val::Str(op))) => a.comp_op = Some(op.clone()),
                    _ => {}
                }
            }
            let filter_count = selector
                .filters
                .iter()
                .filter(|f| !matches!(f, Filter::Zoom(..)))
                .count() as u32;
            let first = kept.first().map_or(usize::MAX, |d| d.index);
            a.defs.push(Def {
                specificity: (selector.ids, selector.classes, filter_count, first),
                filters: selector.filters,
                decls: kept,
            });
        }
        for a in &mut attachments {
            a.defs.sort_by_key(|d| d.specificity);
        }
        attachments.retain(|a| !a.defs.is_empty());
        Ok(Style {
            attachments,
            background,
            warnings: p.warnings,
            fields,
        })
    }

    /// What the style has that is not drawn (one line per property), to show the user.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The attributes its filters and values read, in the order they appear.
    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// `Map { background-color }`, if set.
    pub fn background(&self) -> Option<Color> {
        self.background
    }

    /// The declarations that hold for a feature at zoom `z` in `attachment`: per
    /// `instance/property` the one of the most specific matching rule, in stylesheet order.
    pub(crate) fn resolve<'s>(
        attachment: &'s Attachment,
        z: u8,
        attr: &dyn Attributes,
        geometry: GeomType,
    ) -> Vec<&'s Decl> {
        // Each property in the place of its first declaration, with the value of the most
        // specific one.
        let mut out: Vec<(usize, &Decl)> = Vec::new();
        for def in &attachment.defs {
            if !def
                .filters
                .iter()
                .all(|f| f.zoom_holds(z) && f.matches(attr, geometry))
            {
                continue;
            }
            for d in &def.decls {
                match out
                    .iter_mut()
                    .find(|(_, o)| o.property == d.property && o.instance == d.instance)
                {
                    Some((first, slot)) => {
                        *first = (*first).min(d.index);
                        *slot = d;
                    }
                    None => out.push((d.index, d)),
                }
            }
        }
        out.sort_by_key(|(first, _)| *first);
        out.into_iter().map(|(_, d)| d).collect()
    }

    /// Whether any rule of `attachment` can hold at zoom `z`.
    pub(crate) fn visible_at(attachment: &Attachment, z: u8) -> bool {
        attachment
            .defs
            .iter()
            .any(|d| d.filters.iter().all(|f| f.zoom_holds(z)))
    }
}

/// What a selector selects, combined with its parents'.
#[derive(Clone, Debug, Default)]
struct Selector {
    ids: u32,
    classes: u32,
    map: bool,
    attachment: Option<String>,
    filters: Vec<Filter>,
}

struct Parser {
    tokens: Vec<Token>,
    i: usize,
    /// Top-level `@name: …;`: the position of each one's value.
    top_vars: HashMap<String, usize>,
    scopes: Vec<HashMap<String, Expr>>,
    resolving: Vec<String>,
    defs: Vec<(Selector, Vec<Decl>)>,
    /// Attachment names in the order first seen ("" the default).
    attachments: Vec<String>,
    index: usize,
    warnings: Vec<String>,
}

/// Where each top-level variable's value starts.
fn top_level_variables(tokens: &[Token]) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    let mut depth = 0i32;
    for (i, t) in tokens.iter().enumerate() {
        match &t.kind {
            Tok::Punct("{") => depth += 1,
            Tok::Punct("}") => depth -= 1,
            Tok::Var(name)
                if depth == 0
                    && tokens.get(i + 1).map(|t| &t.kind) == Some(&Tok::Punct(":"))
                    && (i == 0 || matches!(tokens[i - 1].kind, Tok::Punct(";" | "}"))) =>
            {
                out.entry(name.clone()).or_insert(i + 2);
            }
            _ => {}
        }
    }
    out
}

impl Parser {
    fn error(&self, what: impl std::fmt::Display) -> Error {
        match self.tokens.get(self.i).or(self.tokens.last()) {
            Some(t) => Error::Style(format!("{}:{} {what}", t.line, t.col)),
            None => Error::Style(what.to_string()),
        }
    }

    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.i).map(|t| &t.kind)
    }

    fn peek_at(&self, k: usize) -> Option<&Tok> {
        self.tokens.get(self.i + k).map(|t| &t.kind)
    }

    fn is(&self, p: &str) -> bool {
        matches!(self.peek(), Some(Tok::Punct(q)) if *q == p)
    }

    fn eat(&mut self, p: &str) -> bool {
        if self.is(p) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, p: &str) -> Result<()> {
        if self.eat(p) {
            Ok(())
        } else {
            Err(self.error(format!("expected {p}")))
        }
    }

    fn name(&mut self) -> Result<String> {
        match self.peek().cloned() {
            Some(Tok::Ident(n)) => {
                self.i += 1;
                Ok(n)
            }
            _ => Err(self.error("expected a name")),
        }
    }

    /// A variable definition, a declaration or a rule set, inside `parents`.
    fn statement(&mut self, parents: &[Selector], top: bool) -> Result<()> {
        if let Some(Tok::Var(name)) = self.peek().cloned()
            && self.peek_at(1) == Some(&Tok::Punct(":"))
        {
            self.i += 2;
            let value = self.value()?;
            self.end_declaration()?;
            if let Some(scope) = self.scopes.last_mut() {
                scope.insert(name, value);
            }
            return Ok(());
        }
        if !top
            && matches!(self.peek(), Some(Tok::Ident(_)))
            && (self.peek_at(1) == Some(&Tok::Punct(":"))
                || (self.peek_at(1) == Some(&Tok::Punct("/"))
                    && self.peek_at(3) == Some(&Tok::Punct(":"))))
        {
            let decl = self.declaration()?;
            for parent in parents {
                self.add(parent, decl.clone());
            }
            return Ok(());
        }
        let selectors = self.selectors(parents)?;
        self.expect("{")?;
        self.scopes.push(HashMap::new());
        while !self.eat("}") {
            if self.i >= self.tokens.len() {
                return Err(self.error("expected }"));
            }
            if self.eat(";") {
                continue;
            }
            self.statement(&selectors, false)?;
        }
        self.scopes.pop();
        Ok(())
    }

    fn add(&mut self, selector: &Selector, decl: Decl) {
        let attachment = selector.attachment.clone().unwrap_or_default();
        if !selector.map && !self.attachments.contains(&attachment) {
            self.attachments.push(attachment);
        }
        // Rules of one selector, declared in one block, share a definition.
        let same = self.defs.iter_mut().rev().take(64).find(|(s, decls)| {
            same_selector(s, selector) && decls.last().is_some_and(|d| d.index + 1 == decl.index)
        });
        match same {
            Some((_, decls)) => decls.push(decl),
            None => self.defs.push((selector.clone(), vec![decl])),
        }
    }

    fn end_declaration(&mut self) -> Result<()> {
        if self.eat(";") || self.is("}") || self.i >= self.tokens.len() {
            Ok(())
        } else {
            Err(self.error("expected ; after the value"))
        }
    }

    /// `[instance/]property: value;`
    fn declaration(&mut self) -> Result<Decl> {
        let start = self.i;
        let mut instance = String::new();
        let mut property = self.name()?;
        if self.eat("/") {
            instance = property;
            property = self.name()?;
        }
        self.expect(":")?;
        let mut value = self.value()?;
        // carto's older form of a label: `text-name: "[name] ([pop])"`.
        if property == "text-name"
            && let Expr::Val(Val::Str(s)) = &value
        {
            value = template(s);
        }
        let at = self.i;
        self.i = start;
        self.check_property(&property, &value)?;
        self.i = at;
        self.end_declaration()?;
        self.index += 1;
        Ok(Decl {
            instance,
            property,
            value,
            index: self.index,
        })
    }

    fn check_property(&mut self, property: &str, value: &Expr) -> Result<()> {
        if !SUPPORTED.contains(&property) {
            if UNDRAWN.contains(&property)
                || UNDRAWN_FAMILIES.iter().any(|p| property.starts_with(p))
            {
                let warning = format!("{property} is not drawn by this renderer (ignored)");
                if !self.warnings.contains(&warning) {
                    self.warnings.push(warning);
                }
                return Ok(());
            }
            return Err(self.error(format!("unrecognized property {property}")));
        }
        let Some(v) = value.constant() else {
            return Ok(());
        };
        let ok = match (kind_of(property), v) {
            (Kind::Color, Val::Color(_)) => true,
            (Kind::Number, Val::Num(_)) => true,
            (Kind::Bool, Val::Bool(_)) => true,
            (Kind::Numbers, Val::Num(_)) => true,
            (Kind::Numbers, Val::List(l)) => l.iter().all(|v| matches!(v, Val::Num(_))),
            (Kind::Keyword(words), Val::Str(w)) => words.contains(&w.as_str()),
            (Kind::Any, _) => true,
            (Kind::Text, Val::Str(_)) => true,
            (Kind::Text, Val::List(l)) => l.iter().all(|v| matches!(v, Val::Str(_))),
            // `marker-width: null` and the like: the default.
            (_, Val::Null) => true,
            _ => false,
        };
        if ok {
            if property == "text-face-name" {
                let names = v.texts();
                let (font, bundled) =
                    crate::text::Font::for_names(names.iter().map(String::as_str));
                let warning = format!(
                    "text-face-name {} is not bundled: drawn with {}",
                    names.join(", "),
                    font.name()
                );
                if !bundled && !self.warnings.contains(&warning) {
                    self.warnings.push(warning);
                }
            }
            Ok(())
        } else {
            Err(self.error(format!("invalid value for {property}: {}", v.text())))
        }
    }

    /// A comma-separated list of selectors, each combined with each parent.
    fn selectors(&mut self, parents: &[Selector]) -> Result<Vec<Selector>> {
        let mut out = Vec::new();
        loop {
            let own = self.selector()?;
            for parent in parents {
                let mut s = parent.clone();
                s.ids += own.ids;
                s.classes += own.classes;
                s.map |= own.map;
                if own.attachment.is_some() {
                    s.attachment.clone_from(&own.attachment);
                }
                s.filters.extend(own.filters.iter().cloned());
                out.push(s);
            }
            if !self.eat(",") {
                return Ok(out);
            }
        }
    }

    fn selector(&mut self) -> Result<Selector> {
        let mut s = Selector::default();
        let start = self.i;
        loop {
            match self.peek().cloned() {
                Some(Tok::Hash(_)) => {
                    s.ids += 1;
                    self.i += 1;
                }
                Some(Tok::Punct(".")) => {
                    self.i += 1;
                    self.name()?;
                    s.classes += 1;
                }
                Some(Tok::Ident(n)) if n == "Map" => {
                    s.map = true;
                    self.i += 1;
                }
                Some(Tok::Punct("*")) => self.i += 1,
                Some(Tok::Punct("::")) => {
                    self.i += 1;
                    s.attachment = Some(self.name()?);
                }
                Some(Tok::Punct("[")) => {
                    self.i += 1;
                    s.filters.push(self.filter()?);
                    self.expect("]")?;
                }
                _ => break,
            }
        }
        if self.i == start {
            return Err(self.error("expected a selector"));
        }
        Ok(s)
    }

    fn filter(&mut self) -> Result<Filter> {
        let field = match self.peek().cloned() {
            Some(Tok::Ident(n)) => {
                self.i += 1;
                if n == "mapnik" && self.eat("::") {
                    let inner = self.name()?;
                    if inner != "geometry_type" {
                        return Err(self.error(format!("unknown filter mapnik::{inner}")));
                    }
                    "mapnik::geometry_type".to_owned()
                } else {
                    n
                }
            }
            Some(Tok::Str(s)) => {
                self.i += 1;
                s
            }
            _ => return Err(self.error("expected a field name in the filter")),
        };
        let op = match self.peek() {
            Some(Tok::Punct(p)) => *p,
            _ => return Err(self.error("expected a comparison")),
        };
        self.i += 1;
        let cmp = match op {
            "=" => Cmp::Eq,
            "!=" => Cmp::Ne,
            "<" => Cmp::Lt,
            "<=" => Cmp::Le,
            ">" => Cmp::Gt,
            ">=" => Cmp::Ge,
            "=~" => {
                let Some(Tok::Str(pattern)) = self.peek().cloned() else {
                    return Err(self.error("expected a quoted regular expression after =~"));
                };
                let re = regex::Regex::new(&format!("^(?:{pattern})$"))
                    .map_err(|_| self.error(format!("invalid regular expression {pattern:?}")))?;
                self.i += 1;
                return Ok(Filter::Match(field, re));
            }
            other => return Err(self.error(format!("unknown comparison {other}"))),
        };
        let negative = self.eat("-");
        let value = match self.peek().cloned() {
            Some(Tok::Num(n, _)) => Val::Num(if negative { -n } else { n }),
            Some(Tok::Str(s)) if !negative => Val::Str(s),
            Some(Tok::Ident(w)) if !negative => match w.as_str() {
                "null" => Val::Null,
                "true" => Val::Bool(true),
                "false" => Val::Bool(false),
                _ => Val::Str(w),
            },
            Some(Tok::Var(name)) if !negative => match self.variable(&name)?.fold() {
                Expr::Val(v) => v,
                _ => return Err(self.error("a filter compares with a constant")),
            },
            _ => return Err(self.error("expected a value in the filter")),
        };
        self.i += 1;
        Ok(match field.as_str() {
            "zoom" => Filter::Zoom(
                cmp,
                value
                    .num()
                    .ok_or_else(|| self.error("a zoom filter compares with a number"))?,
            ),
            "mapnik::geometry_type" => Filter::GeometryType(
                cmp,
                value
                    .num()
                    .ok_or_else(|| self.error("geometry_type compares with 1, 2 or 3"))?,
            ),
            _ => Filter::Field(field, cmp, value),
        })
    }

    fn variable(&mut self, name: &str) -> Result<Expr> {
        if let Some(v) = self.scopes.iter().rev().find_map(|s| s.get(name)) {
            return Ok(v.clone());
        }
        let Some(&at) = self.top_vars.get(name) else {
            return Err(self.error(format!("undefined variable @{name}")));
        };
        if self.resolving.iter().any(|n| n == name) || self.resolving.len() > 32 {
            return Err(self.error(format!("variable @{name} refers to itself")));
        }
        self.resolving.push(name.to_owned());
        let back = self.i;
        self.i = at;
        let value = self.value();
        self.i = back;
        self.resolving.pop();
        value
    }

    /// A value: expressions separated by commas (a list) or spaces (kept as a list).
    fn value(&mut self) -> Result<Expr> {
        let mut items = vec![self.expr()?];
        while self.eat(",") {
            items.push(self.expr()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::List(items).fold()
        })
    }

    fn expr(&mut self) -> Result<Expr> {
        let mut left = self.term()?;
        loop {
            let op = if self.is("+") {
                '+'
            } else if self.is("-") {
                '-'
            } else {
                return Ok(left.fold());
            };
            self.i += 1;
            let right = self.term()?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
    }

    fn term(&mut self) -> Result<Expr> {
        let mut left = self.factor()?;
        loop {
            let op = if self.is("*") {
                '*'
            } else if self.is("/") {
                '/'
            } else {
                return Ok(left);
            };
            self.i += 1;
            let right = self.factor()?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
    }

    fn factor(&mut self) -> Result<Expr> {
        let Some(tok) = self.peek().cloned() else {
            return Err(self.error("expected a value"));
        };
        self.i += 1;
        Ok(match tok {
            Tok::Punct("-") => Expr::Neg(Box::new(self.factor()?)).fold(),
            Tok::Punct("(") => {
                let e = self.expr()?;
                self.expect(")")?;
                e
            }
            Tok::Punct("[") => {
                let field = match self.peek().cloned() {
                    Some(Tok::Ident(n) | Tok::Str(n)) => n,
                    _ => return Err(self.error("expected a field name")),
                };
                self.i += 1;
                self.expect("]")?;
                Expr::Field(field)
            }
            Tok::Num(n, _) => Expr::Val(Val::Num(n)),
            Tok::Str(s) | Tok::Url(s) => Expr::Val(Val::Str(s)),
            Tok::Hash(h) => {
                self.i -= 1;
                let c = Color::parse(&format!("#{h}"))
                    .ok_or_else(|| self.error(format!("invalid colour #{h}")))?;
                self.i += 1;
                Expr::Val(Val::Color(c))
            }
            Tok::Var(name) => {
                self.i -= 1;
                let v = self.variable(&name)?;
                self.i += 1;
                v
            }
            Tok::Ident(name) if self.is("(") => {
                self.i += 1;
                let mut args = Vec::new();
                if !self.eat(")") {
                    loop {
                        args.push(self.expr()?);
                        if self.eat(")") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                self.call(&name, args)?
            }
            Tok::Ident(name) => match name.as_str() {
                "true" => Expr::Val(Val::Bool(true)),
                "false" => Expr::Val(Val::Bool(false)),
                "null" | "none" => Expr::Val(Val::Null),
                _ => match Color::parse(&name) {
                    Some(c) if !COMP_OPS.contains(&name.as_str()) => Expr::Val(Val::Color(c)),
                    _ => Expr::Val(Val::Str(name)),
                },
            },
            Tok::Punct(p) => {
                self.i -= 1;
                return Err(self.error(format!("unexpected {p}")));
            }
        })
    }

    /// A colour function, computed now (its arguments must be constant).
    fn call(&mut self, name: &str, args: Vec<Expr>) -> Result<Expr> {
        let values: Vec<Val> = args
            .into_iter()
            .map(|a| match a.fold() {
                Expr::Val(v) => Ok(v),
                _ => Err(self.error(format!("{name}() takes constant arguments"))),
            })
            .collect::<Result<_>>()?;
        let num = |k: usize| values.get(k).and_then(Val::num);
        let color = |k: usize| match values.get(k) {
            Some(Val::Color(c)) => Some(*c),
            _ => None,
        };
        let result = match (name, values.len()) {
            ("rgb", 3) => num(0)
                .zip(num(1))
                .zip(num(2))
                .map(|((r, g), b)| Color::rgba(r, g, b, 1.0)),
            ("rgba", 4) => num(0)
                .zip(num(1))
                .zip(num(2))
                .zip(num(3))
                .map(|(((r, g), b), a)| Color::rgba(r, g, b, a)),
            ("hsl", 3) => num(0)
                .zip(num(1))
                .zip(num(2))
                .map(|((h, s), l)| Color::from_hsla(h, s / 100.0, l / 100.0, 1.0)),
            ("hsla", 4) => num(0)
                .zip(num(1))
                .zip(num(2))
                .zip(num(3))
                .map(|(((h, s), l), a)| Color::from_hsla(h, s / 100.0, l / 100.0, a)),
            ("lighten", 2) => color(0).zip(num(1)).map(|(c, p)| c.lighten(p)),
            ("darken", 2) => color(0).zip(num(1)).map(|(c, p)| c.darken(p)),
            ("saturate", 2) => color(0).zip(num(1)).map(|(c, p)| c.saturate(p)),
            ("desaturate", 2) => color(0).zip(num(1)).map(|(c, p)| c.desaturate(p)),
            ("fade", 2) => color(0).zip(num(1)).map(|(c, p)| c.fade(p)),
            ("fadein", 2) => color(0).zip(num(1)).map(|(c, p)| c.fadein(p)),
            ("fadeout", 2) => color(0).zip(num(1)).map(|(c, p)| c.fadein(-p)),
            ("spin", 2) => color(0).zip(num(1)).map(|(c, d)| c.spin(d)),
            ("mix", 2 | 3) => color(0)
                .zip(color(1))
                .map(|(a, b)| a.mix(b, num(2).unwrap_or(50.0))),
            ("greyscale", 1) => color(0).map(Color::greyscale),
            (
                "rgb" | "rgba" | "hsl" | "hsla" | "lighten" | "darken" | "saturate" | "desaturate"
                | "fade" | "fadein" | "fadeout" | "spin" | "mix" | "greyscale",
                n,
            ) => return Err(self.error(format!("{name}() does not take {n} arguments"))),
            _ => return Err(self.error(format!("unknown function {name}()"))),
        };
        result
            .map(|c| Expr::Val(Val::Color(c)))
            .ok_or_else(|| self.error(format!("invalid arguments to {name}()")))
    }
}

/// A string with `[field]`s in it as the expression joining its parts.
fn template(text: &str) -> Expr {
    let mut parts: Vec<Expr> = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find(']').map(|c| open + c) else {
            break;
        };
        if open > 0 {
            parts.push(Expr::Val(Val::Str(rest[..open].to_owned())));
        }
        parts.push(Expr::Field(rest[open + 1..close].trim().to_owned()));
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() || parts.is_empty() {
        parts.push(Expr::Val(Val::Str(rest.to_owned())));
    }
    if parts.len() == 1 {
        return parts.remove(0);
    }
    // Joined as text from an empty string, so that two numeric fields are not added.
    parts
        .into_iter()
        .fold(Expr::Val(Val::Str(String::new())), |joined, part| {
            Expr::Bin('+', Box::new(joined), Box::new(part))
        })
}

fn same_selector(a: &Selector, b: &Selector) -> bool {
    a.ids == b.ids
        && a.classes == b.classes
        && a.map == b.map
        && a.attachment == b.attachment
        && a.filters.len() == b.filters.len()
        && a.filters
            .iter()
            .zip(&b.filters)
            .all(|(x, y)| format!("{x:?}") == format!("{y:?}"))
}

#[cfg(test)]
mod tests;
