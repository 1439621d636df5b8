//! Parser tests on styles as CARTO writes them (Builder's defaults, the classic CartoDB
//! editor's wizards, the CartoCSS documentation's examples).

use super::*;

fn feature(json: &str) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_str(json).unwrap()
}

/// What holds for `attrs` at `z` on a polygon: per attachment, `property=value` in order.
fn resolved(style: &Style, z: u8, attrs: &str, geometry: GeomType) -> Vec<(String, Vec<String>)> {
    let attrs = feature(attrs);
    let get = &attrs;
    style
        .attachments
        .iter()
        .map(|a| {
            let decls = Style::resolve(a, z, get, geometry)
                .into_iter()
                .map(|d| {
                    let v = d.value.eval(get);
                    let shown = match v {
                        Val::Color(c) => {
                            let [r, g, b, a] = c.to_rgba8();
                            format!("#{r:02x}{g:02x}{b:02x}{a:02x}")
                        }
                        other => other.text(),
                    };
                    let name = if d.instance.is_empty() {
                        d.property.clone()
                    } else {
                        format!("{}/{}", d.instance, d.property)
                    };
                    format!("{name}={shown}")
                })
                .collect();
            (a.name.clone(), decls)
        })
        .collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn builder_point_defaults() {
    let style = Style::parse(
        "#layer {
  marker-width: 7;
  marker-fill: #EE4D5A;
  marker-fill-opacity: 0.9;
  marker-line-width: 1;
  marker-line-color: #FFFFFF;
  marker-line-opacity: 1;
  marker-type: ellipse;
  marker-allow-overlap: true;
}",
    )
    .unwrap();
    assert!(style.warnings().is_empty());
    assert!(style.fields().is_empty());
    assert_eq!(
        resolved(&style, 3, "{}", GeomType::Point),
        vec![(
            String::new(),
            strings(&[
                "marker-width=7",
                "marker-fill=#ee4d5aff",
                "marker-fill-opacity=0.9",
                "marker-line-width=1",
                "marker-line-color=#ffffffff",
                "marker-line-opacity=1",
                "marker-type=ellipse",
                "marker-allow-overlap=true",
            ])
        )]
    );
}

#[test]
fn builder_polygon_with_an_outline_attachment() {
    let style = Style::parse(
        "#layer {
  polygon-fill: #826DBA;
  polygon-opacity: 0.9;
  ::outline {
    line-width: 1;
    line-color: #FFFFFF;
    line-opacity: 0.5;
  }
}",
    )
    .unwrap();
    assert_eq!(
        resolved(&style, 2, "{}", GeomType::Polygon),
        vec![
            (
                String::new(),
                strings(&["polygon-fill=#826dbaff", "polygon-opacity=0.9"])
            ),
            (
                "outline".into(),
                strings(&["line-width=1", "line-color=#ffffffff", "line-opacity=0.5"])
            ),
        ]
    );
}

#[test]
fn choropleth_classes_cascade_the_last_matching_wins() {
    // The classic editor's choropleth: equal specificity, so the later (smaller) class wins.
    let style = Style::parse(
        "/** choropleth visualization */

#countries{
  polygon-fill: #FFFFB2;
  polygon-opacity: 0.8;
  line-color: #FFF;
  line-width: 0.5;
  line-opacity: 1;
}
#countries [ pop_est <= 1338612970] {
   polygon-fill: #B10026;
}
#countries [ pop_est <= 157070163] {
   polygon-fill: #E31A1C;
}
#countries [ pop_est <= 40913584] {
   polygon-fill: #FC4E2A;
}
#countries [ pop_est <= 10211904] {
   polygon-fill: #FD8D3C;
}",
    )
    .unwrap();
    assert_eq!(style.fields(), ["pop_est"]);
    let fill = |attrs: &str| {
        resolved(&style, 1, attrs, GeomType::Polygon)[0]
            .1
            .iter()
            .find(|d| d.starts_with("polygon-fill="))
            .cloned()
            .unwrap()
    };
    assert_eq!(fill(r#"{"pop_est": 1.2e9}"#), "polygon-fill=#b10026ff");
    assert_eq!(fill(r#"{"pop_est": 5e7}"#), "polygon-fill=#e31a1cff");
    assert_eq!(fill(r#"{"pop_est": 2e7}"#), "polygon-fill=#fc4e2aff");
    assert_eq!(fill(r#"{"pop_est": 100}"#), "polygon-fill=#fd8d3cff");
    // Over every class, and without the attribute: the base fill.
    assert_eq!(fill(r#"{"pop_est": 2e9}"#), "polygon-fill=#ffffb2ff");
    assert_eq!(fill("{}"), "polygon-fill=#ffffb2ff");
    // The base rule's other properties still hold under a class.
    assert_eq!(
        resolved(&style, 1, r#"{"pop_est": 100}"#, GeomType::Polygon)[0].1,
        strings(&[
            "polygon-fill=#fd8d3cff",
            "polygon-opacity=0.8",
            "line-color=#ffffffff",
            "line-width=0.5",
            "line-opacity=1",
        ])
    );
}

#[test]
fn categories_by_string_and_a_more_specific_filter_wins_over_order() {
    let style = Style::parse(
        r#"#layer {
  polygon-fill: #7F3C8D;
  [continent="Africa"][pop_est > 1e8] { polygon-fill: #000; }
  [continent="Africa"] { polygon-fill: #11A579; }
  [continent='Asia'] { polygon-fill: #3969AC; }
  [continent!='Asia'][continent!='Africa'] { polygon-opacity: 0.5; }
}"#,
    )
    .unwrap();
    let r = |a: &str| resolved(&style, 0, a, GeomType::Polygon)[0].1.clone();
    assert_eq!(
        r(r#"{"continent": "Africa", "pop_est": 2e8}"#),
        strings(&["polygon-fill=#000000ff"])
    );
    assert_eq!(
        r(r#"{"continent": "Africa", "pop_est": 2e7}"#),
        strings(&["polygon-fill=#11a579ff"])
    );
    assert_eq!(
        r(r#"{"continent": "Asia"}"#),
        strings(&["polygon-fill=#3969acff"])
    );
    assert_eq!(
        r(r#"{"continent": "Europe"}"#),
        strings(&["polygon-fill=#7f3c8dff", "polygon-opacity=0.5"])
    );
    // A missing attribute is unequal to every value.
    assert_eq!(
        r("{}"),
        strings(&["polygon-fill=#7f3c8dff", "polygon-opacity=0.5"])
    );
}

#[test]
fn zoom_filters_and_regular_expressions() {
    let style = Style::parse(
        "#roads {
  line-width: 0.5;
  [zoom >= 5] { line-width: 1; }
  [zoom >= 8][zoom < 10] { line-width: 2; }
  [zoom = 12] { line-width: 4; }
  [name =~ 'A[0-9]+'] { line-color: red; }
}",
    )
    .unwrap();
    let width = |z: u8| resolved(&style, z, "{}", GeomType::Line)[0].1[0].clone();
    assert_eq!(width(4), "line-width=0.5");
    assert_eq!(width(5), "line-width=1");
    assert_eq!(width(9), "line-width=2");
    assert_eq!(width(10), "line-width=1");
    assert_eq!(width(12), "line-width=4");
    let colour = |name: &str| {
        resolved(
            &style,
            3,
            &format!(r#"{{"name": "{name}"}}"#),
            GeomType::Line,
        )[0]
        .1
        .iter()
        .any(|d| d == "line-color=#ff0000ff")
    };
    // Matched whole, as Mapnik matches.
    assert!(colour("A7"));
    assert!(!colour("xA7"));
    assert!(!colour("A"));
    assert!(Style::visible_at(&style.attachments[0], 0));
}

#[test]
fn variables_colour_functions_and_arithmetic() {
    let style = Style::parse(
        "#layer {
  @w: @base * 2;
  marker-width: @w + 1;
  marker-fill: darken(@brand, 10%);
  marker-line-color: fade(@brand, 50%);
  marker-line-width: -@base + 3;
  [zoom > 4] { @w: 20; marker-width: @w; }
}
@base: 1.5;
@brand: mix(#ff0000, #0000ff, 50%);",
    )
    .unwrap();
    assert_eq!(
        resolved(&style, 3, "{}", GeomType::Point)[0].1,
        strings(&[
            "marker-width=4",
            "marker-fill=#4d004dff",
            "marker-line-color=#80008080",
            "marker-line-width=1.5",
        ])
    );
    assert_eq!(
        resolved(&style, 5, "{}", GeomType::Point)[0].1[0],
        "marker-width=20"
    );
}

#[test]
fn data_driven_values_and_geometry_type_filters() {
    let style = Style::parse(
        "#layer {
  marker-width: [pop_max] / 1000000 + 2;
  [mapnik::geometry_type = 3] { polygon-fill: #abc; }
  instance/line-color: #f00;
  casing/line-color: #000; casing/line-width: 3;
}",
    )
    .unwrap();
    assert_eq!(style.fields(), ["pop_max"]);
    assert_eq!(
        resolved(&style, 3, r#"{"pop_max": 8000000}"#, GeomType::Point)[0].1,
        strings(&[
            "marker-width=10",
            "instance/line-color=#ff0000ff",
            "casing/line-color=#000000ff",
            "casing/line-width=3",
        ])
    );
    assert!(
        resolved(&style, 3, "{}", GeomType::Polygon)[0]
            .1
            .contains(&"polygon-fill=#aabbccff".to_owned())
    );
}

#[test]
fn unsupported_properties_and_missing_fonts_are_warnings() {
    let style = Style::parse(
        "Map { background-color: #b8dee6; }
#layer::labels {
  text-name: [name];
  text-face-name: 'DejaVu Sans Book';
  text-size: 10;
  text-halo-fill: fade(#000, 50%);
  polygon-gamma: 0.5;
  image-filters: agg-stack-blur(2, 2);
  comp-op: multiply;
  opacity: 0.5;
}",
    );
    // agg-stack-blur is no colour function: image-filters' value is refused.
    assert!(style.is_err());
    let style = Style::parse(
        "Map { background-color: #b8dee6; }
#layer::labels {
  text-name: [name];
  text-face-name: 'Open Sans Semibold', 'Lato Regular';
  text-size: 10;
  text-placement-type: simple;
  shield-name: [name];
  polygon-gamma: 0.5;
  polygon-fill: #fff;
  comp-op: multiply;
  opacity: 0.5;
}",
    )
    .unwrap();
    assert_eq!(
        style.warnings(),
        [
            "text-face-name Open Sans Semibold, Lato Regular is not bundled: drawn with DejaVu Sans Bold",
            "text-placement-type is not drawn by this renderer (ignored)",
            "shield-name is not drawn by this renderer (ignored)",
            "polygon-gamma is not drawn by this renderer (ignored)",
        ]
    );
    assert_eq!(
        style.background().unwrap().to_rgba8(),
        [0xb8, 0xde, 0xe6, 255]
    );
    assert_eq!(style.attachments[0].name, "labels");
    assert_eq!(style.attachments[0].opacity, 0.5);
    assert_eq!(style.attachments[0].comp_op.as_deref(), Some("multiply"));
    assert_eq!(style.fields(), ["name"]);
}

#[test]
fn errors_name_the_place_and_the_fault() {
    let err = |text: &str| Style::parse(text).unwrap_err().to_string();
    assert_eq!(
        err("#layer {\n  polygon-fil: red;\n}"),
        "invalid CartoCSS: 2:3 unrecognized property polygon-fil"
    );
    assert_eq!(
        err("#layer { polygon-fill: 3; }"),
        "invalid CartoCSS: 1:10 invalid value for polygon-fill: 3"
    );
    assert_eq!(
        err("#layer { line-join: wobbly; }"),
        "invalid CartoCSS: 1:10 invalid value for line-join: wobbly"
    );
    assert_eq!(
        err("#layer { marker-fill: @nope; }"),
        "invalid CartoCSS: 1:23 undefined variable @nope"
    );
    assert!(
        err("#layer { marker-fill: frobnicate(#fff); }").contains("unknown function frobnicate()")
    );
    assert!(err("#layer { marker-fill: lighten(#fff); }").contains("does not take 1 arguments"));
    assert!(err("#layer { marker-width: 3 ").contains("expected }"));
    assert!(err("#layer [zoom > ] { }").contains("expected a value in the filter"));
    assert!(
        err("#layer [name =~ '('] { marker-width: 1; }").contains("invalid regular expression")
    );
    assert!(err("@a: @b; @b: @a; #l { marker-width: @a; }").contains("refers to itself"));
    assert!(err("#layer { marker-fill: #ggg; }").contains("invalid colour #ggg"));
    assert!(err("#layer { polygon-fill: red }}").contains("expected a selector"));
}

#[test]
fn comma_selectors_and_nested_attachments() {
    let style = Style::parse(
        "#a, #b [kind='x'] { line-color: blue; ::glow { line-width: 4; } }
#a::glow { line-color: #0f0; }",
    )
    .unwrap();
    let names: Vec<&str> = style.attachments.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["", "glow"]);
    assert_eq!(
        resolved(&style, 0, "{}", GeomType::Line)[1].1,
        strings(&["line-width=4", "line-color=#00ff00ff"])
    );
}

#[test]
fn label_text_reads_fields_in_either_form() {
    let style = Style::parse(
        "#l { text-name: \"[name] ([pop])\"; text-face-name: 'DejaVu Sans Bold';
              text-placement: line; text-transform: uppercase; text-fill: #333; }",
    )
    .unwrap();
    assert!(style.warnings().is_empty(), "{:?}", style.warnings());
    assert_eq!(style.fields(), ["name", "pop"]);
    let attachment = &style.attachments[0];
    let attributes: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(r#"{"name": "Lisbon", "pop": 545923}"#).unwrap();
    let decls = Style::resolve(attachment, 4, &attributes, GeomType::Point);
    let name = decls.iter().find(|d| d.property == "text-name").unwrap();
    assert_eq!(name.value.eval(&attributes).text(), "Lisbon (545923)");
    let style = Style::parse("#l { text-name: [a] + [b]; }").unwrap();
    assert_eq!(style.fields(), ["a", "b"]);
    assert!(Style::parse("#l { text-placement: diagonal; }").is_err());
    assert!(Style::parse("#l { text-fill: 12; }").is_err());
}
