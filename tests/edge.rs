//! The HTTP edge, over real TCP: every refusal in CARTO's `{"error":[…]}` shape with CORS
//! headers, trailing slashes as CARTO takes them, and kept-alive connections without delay.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use std::time::{Duration, Instant};

use support::{app, app_with, encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn refusals_outside_the_handlers_are_carto_errors_with_cors() {
    let app = app_with(|c| c.query_limit(64).body_limit(4096)).await;
    let long = format!("select '{}' as x", "y".repeat(100));
    let cases: Vec<(String, &str, Vec<u8>, u16, &str)> = vec![
        (
            "/nothing/here".into(),
            "GET",
            vec![],
            404,
            "no such route: see the SQL, Batch and Maps APIs",
        ),
        (
            "/api/v2/sql".into(),
            "DELETE",
            vec![],
            405,
            "method not allowed",
        ),
        (
            "/api/v2/sql".into(),
            "POST",
            vec![b'x'; 10_000],
            413,
            "Failed to buffer the request body: length limit exceeded",
        ),
        (
            format!("/api/v2/sql?q={}", encode(&long)),
            "GET",
            vec![],
            413,
            "the query is 114 bytes long, over the limit of 64 bytes",
        ),
        (
            format!("/api/v2/sql?q={}", encode("select 1\0")),
            "GET",
            vec![],
            400,
            "invalid statement: the query contains a NUL character",
        ),
    ];
    for (path, method, body, status, message) in cases {
        let headers = [("content-type", "application/x-www-form-urlencoded")];
        let r = app.request(method, &path, &headers, &body).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        assert_eq!(
            r.json(),
            serde_json::json!({ "error": [message] }),
            "{method} {path}"
        );
        assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{path}");
    }
}

#[tokio::test]
async fn heads_hyper_cannot_read_are_refused_in_carto_s_shape_with_cors() {
    let app = app().await;
    let uri = format!(
        "/api/v2/sql?q={}",
        encode(&format!("select '{}'", "y".repeat(70_000)))
    );
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let cases = [
        (
            format!("GET {uri} HTTP/1.1\r\nhost: a\r\n\r\n"),
            414,
            "the request URI is longer than 65534 bytes: send the parameters in a POST body",
        ),
        (
            format!("GET /api/v2/sql?q=select+1 HTTP/1.1\r\nhost: a\r\n{many}\r\n"),
            431,
            "the request headers are larger than the server reads",
        ),
        (
            "GET /api/v2/sql HTTP/1.1\r\nho st: a\r\n\r\n".to_owned(),
            400,
            "the request could not be read as HTTP",
        ),
    ];
    for (request, status, message) in cases {
        let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
        assert!(head.contains("access-control-allow-origin: *"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body, serde_json::json!({ "error": [message] }), "{status}");
    }
}

#[tokio::test]
async fn trailing_slashes_are_taken_as_carto_takes_them() {
    let app = app().await;
    for path in [
        "/api/v2/sql/?q=select%201%20as%20n",
        "/user/alice/api/v2/sql/?q=select%201%20as%20n",
    ] {
        let r = app.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json()["rows"], serde_json::json!([{"n": 1}]));
    }
    // Every route: a map, its tilejson, a dataview, the key's own description.
    let config = serde_json::json!({
        "layers": [{"options": {"source": {"id": "a"}}}],
        "analyses": [{"id": "a", "type": "source", "params": {"query":
            "select gid as cartodb_id, featurecla, ST_Transform(geom, 3857) as the_geom_webmercator from places"}}],
        "dataviews": {"n": {"type": "formula", "source": {"id": "a"}, "options": {"operation": "count"}}}
    });
    let r = app.post_json("/api/v1/map/", &config).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["layergroupid"].as_str().unwrap().to_owned();
    for path in [
        format!("/api/v1/map/{token}/tilejson.json/"),
        format!("/api/v1/map/{token}/dataview/n/"),
        format!("/user/alice/api/v1/map/{token}/dataview/n/"),
        format!("/api/v3/me/?api_key={}", app.regular),
    ] {
        let r = app.get(&path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
}

/// One response read off a kept-alive connection: the head, then a chunked or sized body.
async fn read_response(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> (u16, Vec<u8>) {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec()).unwrap();
            let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
            let lower = head.to_ascii_lowercase();
            let mut rest = buf[end + 4..].to_vec();
            let body = if lower.contains("transfer-encoding: chunked") {
                while !rest.windows(5).any(|w| w == b"0\r\n\r\n") {
                    let mut more = [0u8; 8192];
                    let n = stream.read(&mut more).await.unwrap();
                    assert!(n > 0, "the connection closed mid-response");
                    rest.extend_from_slice(&more[..n]);
                }
                let at = rest.windows(5).position(|w| w == b"0\r\n\r\n").unwrap() + 5;
                let body = rest[..at].to_vec();
                *buf = rest[at..].to_vec();
                body
            } else {
                let len: usize = lower
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while rest.len() < len {
                    let mut more = [0u8; 8192];
                    let n = stream.read(&mut more).await.unwrap();
                    assert!(n > 0, "the connection closed mid-response");
                    rest.extend_from_slice(&more[..n]);
                }
                let body = rest[..len].to_vec();
                *buf = rest[len..].to_vec();
                body
            };
            return (status, body);
        }
        let mut more = [0u8; 8192];
        let n = stream.read(&mut more).await.unwrap();
        assert!(n > 0, "the connection closed before a response");
        buf.extend_from_slice(&more[..n]);
    }
}

#[tokio::test]
async fn sequential_requests_on_one_kept_alive_connection_are_not_delayed() {
    let app = app().await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let path = format!(
        "/api/v2/sql?q={}&api_key={}",
        encode("select id, note from notes where id = 1"),
        app.regular
    );
    let request = format!("GET {path} HTTP/1.1\r\nhost: {}\r\n\r\n", app.addr);
    let mut buf = Vec::new();
    // Warm: the role's pool connects, the key is cached.
    for _ in 0..3 {
        stream.write_all(request.as_bytes()).await.unwrap();
        let (status, _) = read_response(&mut stream, &mut buf).await;
        assert_eq!(status, 200);
    }
    let mut times = Vec::new();
    for _ in 0..20 {
        let one = Instant::now();
        stream.write_all(request.as_bytes()).await.unwrap();
        let (status, body) = read_response(&mut stream, &mut buf).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        times.push(one.elapsed());
    }
    // Nagle's algorithm against a delayed ACK costs 40 ms on every request; a point query takes
    // a few. The median, so that one request slowed by a busy machine does not decide.
    times.sort();
    let median = times[times.len() / 2];
    assert!(
        median < Duration::from_millis(30),
        "the median of 20 requests took {median:?} (all: {times:?})"
    );
}
