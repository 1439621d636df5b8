//! Polygon validity in tile space, as MVT 2.1 §4.3.4.4 asks of a polygon's rings: no
//! self-intersection or self-tangency, no spike, no zero-area ring; between the rings of one
//! feature no crossing and no shared stretch of boundary (touching at a point is allowed, as in
//! OGC simple features). Integer arithmetic throughout, so the verdict is exact.

use crate::pipeline::TilePoint;

/// What is wrong with a feature's rings, or nothing.
pub(crate) fn check(polygons: &[Vec<Vec<TilePoint>>]) -> Result<(), String> {
    let rings: Vec<&[TilePoint]> = polygons.iter().flatten().map(Vec::as_slice).collect();
    for ring in &rings {
        spikes(ring)?;
    }
    crossings(&rings)
}

/// Twice the signed area of the triangle `a b c` (positive when `c` is left of `a → b` with
/// `y` up).
fn orient(a: TilePoint, b: TilePoint, c: TilePoint) -> i128 {
    let d = |p: TilePoint, q: TilePoint| (i128::from(q[0] - p[0]), i128::from(q[1] - p[1]));
    let ((ux, uy), (vx, vy)) = (d(a, b), d(a, c));
    ux * vy - uy * vx
}

/// A repeated point, or a vertex where the ring turns straight back on itself.
fn spikes(ring: &[TilePoint]) -> Result<(), String> {
    let n = ring.len();
    for i in 0..n {
        let (a, b, c) = (ring[(i + n - 1) % n], ring[i], ring[(i + 1) % n]);
        if a == b {
            return Err(format!("a ring repeats the point {b:?}"));
        }
        let dot = i128::from(b[0] - a[0]) * i128::from(c[0] - b[0])
            + i128::from(b[1] - a[1]) * i128::from(c[1] - b[1]);
        if orient(a, b, c) == 0 && dot < 0 {
            return Err(format!(
                "a ring has a spike at {b:?} (from {a:?}, back to {c:?})"
            ));
        }
    }
    Ok(())
}

/// How two segments meet.
#[derive(Debug, PartialEq, Eq)]
enum Meet {
    Apart,
    /// At one point that is an end of at least one of them.
    Touch,
    /// At one point inside both.
    Cross,
    /// Along a stretch of positive length.
    Overlap,
}

fn on_segment(p: TilePoint, a: TilePoint, b: TilePoint) -> bool {
    p[0] >= a[0].min(b[0])
        && p[0] <= a[0].max(b[0])
        && p[1] >= a[1].min(b[1])
        && p[1] <= a[1].max(b[1])
}

fn meet(a: TilePoint, b: TilePoint, c: TilePoint, d: TilePoint) -> Meet {
    let (o1, o2) = (orient(a, b, c), orient(a, b, d));
    let (o3, o4) = (orient(c, d, a), orient(c, d, b));
    if o1 == 0 && o2 == 0 {
        // Collinear: project on the longer axis and compare the intervals.
        let axis = usize::from((b[0] - a[0]).abs() < (b[1] - a[1]).abs());
        let (lo1, hi1) = (a[axis].min(b[axis]), a[axis].max(b[axis]));
        let (lo2, hi2) = (c[axis].min(d[axis]), c[axis].max(d[axis]));
        let (lo, hi) = (lo1.max(lo2), hi1.min(hi2));
        return match lo.cmp(&hi) {
            std::cmp::Ordering::Less => Meet::Overlap,
            std::cmp::Ordering::Equal => Meet::Touch,
            std::cmp::Ordering::Greater => Meet::Apart,
        };
    }
    let strictly = |x: i128, y: i128| (x > 0 && y < 0) || (x < 0 && y > 0);
    if strictly(o1, o2) && strictly(o3, o4) {
        return Meet::Cross;
    }
    let touches = (o1 == 0 && on_segment(c, a, b))
        || (o2 == 0 && on_segment(d, a, b))
        || (o3 == 0 && on_segment(a, c, d))
        || (o4 == 0 && on_segment(b, c, d));
    if touches { Meet::Touch } else { Meet::Apart }
}

/// One edge: its ring, its index in the ring, its ends.
#[derive(Clone, Copy)]
struct Edge {
    ring: usize,
    index: usize,
    a: TilePoint,
    b: TilePoint,
}

impl Edge {
    fn min_x(&self) -> i32 {
        self.a[0].min(self.b[0])
    }
    fn max_x(&self) -> i32 {
        self.a[0].max(self.b[0])
    }
    fn y_overlaps(&self, other: &Edge) -> bool {
        self.a[1].min(self.b[1]) <= other.a[1].max(other.b[1])
            && other.a[1].min(other.b[1]) <= self.a[1].max(self.b[1])
    }
}

/// Every pair of edges whose boxes meet, found by a sweep along `x`: within a ring only
/// neighbouring edges may meet (at their shared vertex); between rings only a touch at a point.
fn crossings(rings: &[&[TilePoint]]) -> Result<(), String> {
    let mut edges: Vec<Edge> = rings
        .iter()
        .enumerate()
        .flat_map(|(r, ring)| {
            let n = ring.len();
            (0..n).map(move |i| Edge {
                ring: r,
                index: i,
                a: ring[i],
                b: ring[(i + 1) % n],
            })
        })
        .collect();
    edges.sort_unstable_by_key(Edge::min_x);
    let mut active: Vec<Edge> = Vec::new();
    for e in edges {
        active.retain(|o| o.max_x() >= e.min_x());
        for o in &active {
            if !e.y_overlaps(o) {
                continue;
            }
            let m = meet(e.a, e.b, o.a, o.b);
            if m == Meet::Apart {
                continue;
            }
            if e.ring == o.ring {
                let n = rings[e.ring].len();
                let neighbours = (e.index + 1) % n == o.index || (o.index + 1) % n == e.index;
                if neighbours && m == Meet::Touch {
                    continue;
                }
                return Err(format!(
                    "a ring meets itself ({m:?}): {:?}→{:?} and {:?}→{:?}",
                    e.a, e.b, o.a, o.b
                ));
            }
            if m != Meet::Touch {
                return Err(format!(
                    "two rings of a feature meet ({m:?}): {:?}→{:?} and {:?}→{:?}",
                    e.a, e.b, o.a, o.b
                ));
            }
        }
        active.push(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(ring: &[TilePoint]) -> Result<(), String> {
        check(&[vec![ring.to_vec()]])
    }

    #[test]
    fn a_square_and_a_square_with_a_hole_are_valid() {
        assert_eq!(one(&[[0, 0], [10, 0], [10, 10], [0, 10]]), Ok(()));
        let outer = vec![[0, 0], [10, 0], [10, 10], [0, 10]];
        let hole = vec![[2, 2], [2, 8], [8, 8], [8, 2]];
        assert_eq!(check(&[vec![outer.clone(), hole]]), Ok(()));
        // A hole touching the exterior at one point is allowed.
        let touching = vec![[0, 5], [5, 8], [5, 2]];
        assert_eq!(check(&[vec![outer, touching]]), Ok(()));
        // Collinear points going on in the same direction are not spikes.
        assert_eq!(one(&[[0, 0], [5, 0], [10, 0], [10, 10]]), Ok(()));
    }

    #[test]
    fn spikes_repeats_and_crossings_are_found() {
        let spike = one(&[[0, 0], [10, 0], [10, 10], [10, 20], [10, 10], [0, 10]]);
        assert!(spike.unwrap_err().contains("spike"));
        let along = one(&[[0, 0], [10, 0], [5, 0], [5, 5]]);
        assert!(along.unwrap_err().contains("spike"));
        let repeat = one(&[[0, 0], [10, 0], [10, 0], [10, 10]]);
        assert!(repeat.unwrap_err().contains("repeats"));
        let bowtie = one(&[[0, 0], [10, 10], [10, 0], [0, 10]]);
        assert!(bowtie.unwrap_err().contains("Cross"));
        // A ring passing twice through (5, 5): self-tangent.
        let figure_eight = one(&[[0, 0], [5, 5], [10, 0], [10, 10], [5, 5], [0, 10]]);
        assert!(figure_eight.unwrap_err().contains("itself"));
    }

    #[test]
    fn rings_of_a_feature_may_touch_but_not_cross_or_share_an_edge() {
        let a = vec![[0, 0], [10, 0], [10, 10], [0, 10]];
        let corner = vec![[10, 10], [20, 10], [20, 20], [10, 20]];
        assert_eq!(check(&[vec![a.clone()], vec![corner]]), Ok(()));
        let shared_edge = vec![[10, 0], [20, 0], [20, 10], [10, 10]];
        let err = check(&[vec![a.clone()], vec![shared_edge]]).unwrap_err();
        assert!(err.contains("Overlap"), "{err}");
        let crossing = vec![[5, 5], [15, 5], [15, 15], [5, 15]];
        let err = check(&[vec![a], vec![crossing]]).unwrap_err();
        assert!(err.contains("Cross"), "{err}");
    }
}
