//! Every key the queue's Lua functions touch is declared in their calls: a Redis of the test's
//! own records every command with MONITOR while the queue does all it can do (nearly every
//! function runs), and each command a function ran is checked, by the keys Redis itself finds in
//! it (`COMMAND GETKEYS`), against the keys its call declared. A proxy or managed cluster that
//! holds scripts to their declared keys lets every call through.

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use geostack_jobs::Schedule;
use geostack_testkit::RedisServer;

/// The arguments of one MONITOR line (`<time> [<db> <client>] "arg" …`), unescaped, and
/// whether a script ran it.
fn monitored(line: &str) -> Option<(bool, Command)> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let by_script = line[open..close].ends_with(" lua");
    let mut args = Vec::new();
    let mut bytes = line[close + 1..].bytes().peekable();
    while let Some(b) = bytes.next() {
        if b != b'"' {
            continue;
        }
        let mut arg = Vec::new();
        while let Some(c) = bytes.next() {
            match c {
                b'"' => break,
                b'\\' => match bytes.next()? {
                    b'n' => arg.push(b'\n'),
                    b'r' => arg.push(b'\r'),
                    b't' => arg.push(b'\t'),
                    b'a' => arg.push(7),
                    b'b' => arg.push(8),
                    b'x' => {
                        let hex = [bytes.next()?, bytes.next()?];
                        arg.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
                    }
                    other => arg.push(other),
                },
                other => arg.push(other),
            }
        }
        args.push(arg);
    }
    Some((by_script, args))
}

/// Records every command the server at `port` runs until `stop`; the lines come back on join.
#[expect(clippy::unwrap_used, reason = "a test helper")]
fn monitor(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<String>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(b"MONITOR\r\n").unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert_eq!(first, "+OK\r\n");
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut line = String::new();
        loop {
            match reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) if line.ends_with('\n') => {
                    lines.push(line.trim_end().trim_start_matches('+').to_owned());
                    line.clear();
                }
                // A partial line (the read timed out within it) goes on with the next read.
                Ok(_) => {}
                Err(_) if stop.load(Ordering::Relaxed) => break,
                Err(_) => {}
            }
        }
        lines
    })
}

/// Everything a queue does, so that every script runs: jobs added one by one, in bulk,
/// delayed, unique and by tenant; run, failed, retried, logged, given progress, cancelled
/// waiting and running, updated, promoted, removed, retried and re-driven from the dead
/// letter; a worker found dead by the sweep; repeatable jobs fired, parked and removed;
/// pause and resume, drain, clean and obliterate; records read.
#[expect(clippy::unwrap_used, reason = "a test helper")]
async fn exercise(q: &Queue, client: &redis::Client, prefix: &str) {
    let recorder = Recorder::default();
    let (stop, rx) = tokio::sync::oneshot::channel();
    let worker = Worker::new(
        q.clone(),
        client.clone(),
        WorkerConfig::default()
            .concurrency(2)
            .lease(Duration::from_millis(600)),
    )
    .handle::<Task, _>(recorder.clone());
    let running = tokio::spawn(worker.run(async {
        let _ = rx.await;
    }));
    let ids = q
        .enqueue_bulk(
            &[task(1, "ok"), task(2, "log"), task(3, "progress")],
            JobOptions::default().tenant("t1"),
        )
        .await
        .unwrap();
    q.enqueue(&task(4, "fatal"), fast_backoff().attempts(1))
        .await
        .unwrap();
    q.enqueue(&task(5, "ok"), JobOptions::default().unique("five"))
        .await
        .unwrap();
    q.enqueue(&task(6, "fail"), fast_backoff().attempts(2).tenant("t2"))
        .await
        .unwrap();
    let long = q
        .enqueue(&task(7, "sleep:3000"), JobOptions::default())
        .await
        .unwrap();
    until("the jobs done", Duration::from_secs(10), async || {
        let c = q.counts().await.unwrap();
        c.dead == 2 && c.waiting == 0 && c.active == 1
    })
    .await;
    // The long job is renewed under its short lease, then cancelled while it runs.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        q.cancel(&long).await.unwrap(),
        Some(JobState::Active),
        "{:?}",
        q.status(&long).await.unwrap()
    );
    assert!(!q.logs(&ids[1], 0, 10).await.unwrap().is_empty());
    let delayed = q
        .enqueue(
            &task(8, "ok"),
            JobOptions::default().delay(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let pending = q
        .enqueue(
            &task(9, "ok"),
            JobOptions::default().delay(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    q.update(&pending, &task(10, "ok")).await.unwrap();
    q.cancel(&pending).await.unwrap();
    q.promote(&delayed).await.unwrap();
    let dead = q.jobs(JobState::Dead, 0, 10).await.unwrap();
    q.retry(&dead[0].id).await.unwrap();
    q.redrive(10).await.unwrap();
    q.repeat(
        "tick",
        &task(11, "ok"),
        Schedule::every(Duration::from_secs(1)).unwrap(),
        JobOptions::default(),
    )
    .await
    .unwrap();
    // A repeatable entry without a definition: parked by the sweep.
    let mut conn = q.conn();
    let _: () = redis::cmd("ZADD")
        .arg(format!("{prefix}repeats"))
        .arg(0)
        .arg("gone")
        .query_async(&mut conn)
        .await
        .unwrap();
    until("a repeat run", Duration::from_secs(5), async || {
        q.jobs(JobState::Completed, 0, 10)
            .await
            .unwrap()
            .iter()
            .any(|j| j.id.as_str().starts_with("tick-"))
    })
    .await;
    q.unrepeat("tick").await.unwrap();
    // A running job whose worker the sweep takes for dead (no heartbeat is young enough).
    let taken = q
        .enqueue(&task(12, "sleep:800"), JobOptions::default())
        .await
        .unwrap();
    until("the job running", Duration::from_secs(5), async || {
        q.status(&taken).await.unwrap().unwrap().state == JobState::Active
    })
    .await;
    assert_eq!(q.workers().await.unwrap().len(), 1);
    assert!(q.sweep(3, Duration::ZERO).await.unwrap() >= 1);
    q.pause().await.unwrap();
    q.enqueue(&task(13, "ok"), JobOptions::default())
        .await
        .unwrap();
    q.drain(true).await.unwrap();
    q.resume().await.unwrap();
    q.clean(JobState::Completed, Duration::ZERO).await.unwrap();
    q.clean(JobState::Cancelled, Duration::ZERO).await.unwrap();
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    q.obliterate(true).await.unwrap();
}

/// A command's arguments.
type Command = Vec<Vec<u8>>;

/// A function call as MONITOR saw it: the function, the keys it declared, the commands it ran.
type Traced = (Vec<u8>, HashSet<Vec<u8>>, Vec<Command>);

#[tokio::test]
async fn every_key_a_script_touches_is_declared() {
    let server = RedisServer::start();
    let redis = TestRedis::connect(&server.url()).await.unwrap();
    let q = queue(&redis, "declared").await;
    let prefix = format!("{}{{declared}}:", redis.prefix());
    let stop = Arc::new(AtomicBool::new(false));
    let recording = monitor(server.port(), Arc::clone(&stop));
    exercise(&q, redis.client(), &prefix).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let lines = recording.join().unwrap();

    // Each function call, then the commands it ran (a call runs whole: nothing comes between).
    let mut calls: Vec<Traced> = Vec::new();
    for line in &lines {
        let Some((by_script, args)) = monitored(line) else {
            continue;
        };
        let name = args.first().map(|a| a.to_ascii_uppercase());
        if by_script {
            calls
                .last_mut()
                .expect("a script's command after its call")
                .2
                .push(args);
        } else if name.as_deref() == Some(b"FCALL") {
            let n: usize = std::str::from_utf8(&args[2]).unwrap().parse().unwrap();
            // The function, its keys, its commands.
            calls.push((
                args[1].clone(),
                args[3..3 + n].iter().cloned().collect(),
                Vec::new(),
            ));
        }
    }
    let mut conn = redis.connection();
    let mut keys_of: HashMap<Command, Vec<Vec<u8>>> = HashMap::new();
    let mut undeclared = BTreeSet::new();
    let mut checked = 0;
    let mut touched = HashSet::new();
    for (_, declared, commands) in &calls {
        for command in commands {
            if !keys_of.contains_key(command) {
                // The keys Redis finds in the command (none for TIME, which has no key).
                let keys: Vec<Vec<u8>> = redis::cmd("COMMAND")
                    .arg("GETKEYS")
                    .arg(command)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                keys_of.insert(command.clone(), keys);
            }
            for key in &keys_of[command] {
                checked += 1;
                touched.insert(key.clone());
                if !declared.contains(key) {
                    undeclared.insert(format!(
                        "{} in {}",
                        String::from_utf8_lossy(key),
                        String::from_utf8_lossy(&command[0])
                    ));
                }
            }
        }
    }
    assert!(undeclared.is_empty(), "undeclared: {undeclared:?}");
    // Not vacuous: many scripts ran, with many commands, over many of the queue's keys.
    let functions: HashSet<&Vec<u8>> = calls.iter().map(|(name, _, _)| name).collect();
    assert!(functions.len() >= 20, "{} functions ran", functions.len());
    assert!(checked > 500, "{checked} keys checked");
    assert!(touched.len() >= 20, "{touched:?}");
}
