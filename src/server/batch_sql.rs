//! What a batch job runs, as CARTO's Batch API takes it — one statement, a list, or a list with
//! fallbacks — and how its statements run one after another, each reported as it ends.

use std::future::Future;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The most statements one job may hold (fallbacks included).
pub const MAX_STATEMENTS: usize = 100;

/// A batch job's SQL: `query` of CARTO's Batch API.
///
/// ```
/// use geostack::server::BatchSql;
///
/// let one: BatchSql = serde_json::from_value(serde_json::json!("update t set n = 1"))?;
/// let many: BatchSql = serde_json::from_value(serde_json::json!(["select 1", "select 2"]))?;
/// let fallback: BatchSql = serde_json::from_value(serde_json::json!({
///     "query": [{"query": "update t set n = 1", "onerror": "insert into log values ('<%= error_message %>')"}],
///     "onsuccess": "insert into log values ('<%= job_id %> done')"
/// }))?;
/// assert_eq!((one.statements(), many.statements(), fallback.statements()), (1, 2, 3));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum BatchSql {
    /// One statement.
    One(String),
    /// Statements run in order, each in a transaction of its own; the first that fails ends
    /// the job, and those after it are skipped.
    Many(Vec<String>),
    /// Statements with fallbacks: each may have an `onsuccess` and an `onerror` statement run
    /// after it; the job's own `onsuccess` runs when every statement succeeded, its `onerror`
    /// when one failed (which ends the job). `<%= job_id %>` and `<%= error_message %>` in a
    /// fallback are replaced (the message with its quotes doubled, to sit in a string).
    Fallback(Fallback),
}

/// [`BatchSql::Fallback`]'s definition.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Fallback {
    /// The statements.
    pub query: Vec<Step>,
    /// Run when every statement succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onsuccess: Option<String>,
    /// Run when a statement failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onerror: Option<String>,
}

/// One statement of a [`Fallback`] and its own fallbacks.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Step {
    /// The statement.
    pub query: String,
    /// Run after it when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onsuccess: Option<String>,
    /// Run after it when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onerror: Option<String>,
}

impl BatchSql {
    /// How many statements it holds, fallbacks included.
    pub fn statements(&self) -> usize {
        match self {
            Self::One(_) => 1,
            Self::Many(list) => list.len(),
            Self::Fallback(f) => {
                let own = |s: &Option<String>| usize::from(s.is_some());
                f.query
                    .iter()
                    .map(|s| 1 + own(&s.onsuccess) + own(&s.onerror))
                    .sum::<usize>()
                    + own(&f.onsuccess)
                    + own(&f.onerror)
            }
        }
    }

    /// Every statement's text.
    pub(crate) fn texts(&self) -> Vec<&str> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(list) => list.iter().map(String::as_str).collect(),
            Self::Fallback(f) => f
                .query
                .iter()
                .flat_map(|s| [Some(&s.query), s.onsuccess.as_ref(), s.onerror.as_ref()])
                .chain([f.onsuccess.as_ref(), f.onerror.as_ref()])
                .flatten()
                .map(String::as_str)
                .collect(),
        }
    }

    /// `query` as CARTO shows a job before it ran: every statement pending.
    pub(crate) fn pending(&self) -> Value {
        match self {
            Self::One(s) => Value::from(s.as_str()),
            Self::Many(list) => list
                .iter()
                .map(|q| json!({ "query": q, "status": "pending" }))
                .collect(),
            Self::Fallback(f) => {
                let steps: Vec<Value> = f
                    .query
                    .iter()
                    .map(|s| {
                        let mut v = json!({ "query": s.query, "status": "pending" });
                        if s.onsuccess.is_some() || s.onerror.is_some() {
                            v["fallback_status"] = "pending".into();
                        }
                        put(&mut v, "onsuccess", s.onsuccess.as_deref());
                        put(&mut v, "onerror", s.onerror.as_deref());
                        v
                    })
                    .collect();
                let mut v = json!({ "query": steps });
                put(&mut v, "onsuccess", f.onsuccess.as_deref());
                put(&mut v, "onerror", f.onerror.as_deref());
                v
            }
        }
    }

    /// Runs the job's statements with `run` (the rows a statement touched, or why it failed),
    /// reporting CARTO's `query` value after each with `report`. Returns that value at the
    /// end, the job's own `fallback_status` when it has fallbacks, and the failure that ended
    /// the job, if one did.
    pub(crate) async fn execute<R, RF, P, PF>(
        &self,
        job_id: &str,
        mut run: R,
        mut report: P,
    ) -> Executed
    where
        R: FnMut(String) -> RF,
        RF: Future<Output = Result<u64, String>>,
        P: FnMut(Value) -> PF,
        PF: Future<Output = ()>,
    {
        let mut state = self.pending();
        match self {
            Self::One(sql) => {
                let failure = run(sql.clone()).await.err();
                Executed {
                    state,
                    fallback_status: None,
                    failure,
                }
            }
            Self::Many(list) => {
                let mut failure = None;
                for (i, sql) in list.iter().enumerate() {
                    let entry = &mut state[i];
                    if failure.is_some() {
                        entry["status"] = "skipped".into();
                        continue;
                    }
                    match run(sql.clone()).await {
                        Ok(_) => entry["status"] = "done".into(),
                        Err(e) => {
                            entry["status"] = "failed".into();
                            entry["failed_reason"] = e.as_str().into();
                            failure = Some(e);
                        }
                    }
                    report(state.clone()).await;
                }
                Executed {
                    state,
                    fallback_status: None,
                    failure,
                }
            }
            Self::Fallback(f) => {
                let mut failure: Option<String> = None;
                let fill = |sql: &str, error: Option<&str>| {
                    sql.replace("<%= job_id %>", job_id).replace(
                        "<%= error_message %>",
                        &error.unwrap_or("").replace('\'', "''"),
                    )
                };
                for (i, step) in f.query.iter().enumerate() {
                    let has_fallback = step.onsuccess.is_some() || step.onerror.is_some();
                    if failure.is_some() {
                        state["query"][i]["status"] = "skipped".into();
                        if has_fallback {
                            state["query"][i]["fallback_status"] = "skipped".into();
                        }
                        continue;
                    }
                    let outcome = run(step.query.clone()).await;
                    let entry = &mut state["query"][i];
                    let fallback = match &outcome {
                        Ok(_) => {
                            entry["status"] = "done".into();
                            step.onsuccess.as_deref()
                        }
                        Err(e) => {
                            entry["status"] = "failed".into();
                            entry["failed_reason"] = e.as_str().into();
                            step.onerror.as_deref()
                        }
                    };
                    let error = outcome.as_ref().err().map(String::as_str);
                    if has_fallback {
                        let status = match fallback {
                            None => "skipped",
                            Some(sql) => match run(fill(sql, error)).await {
                                Ok(_) => "done",
                                Err(_) => "failed",
                            },
                        };
                        state["query"][i]["fallback_status"] = status.into();
                    }
                    if let Err(e) = outcome {
                        failure = Some(e);
                    }
                    report(state.clone()).await;
                }
                let fallback_status =
                    (f.onsuccess.is_some() || f.onerror.is_some()).then(|| {
                        match (&failure, &f.onsuccess, &f.onerror) {
                            (None, Some(sql), _) => Some(fill(sql, None)),
                            (Some(e), _, Some(sql)) => Some(fill(sql, Some(e))),
                            _ => None,
                        }
                    });
                let fallback_status = match fallback_status {
                    None => None,
                    Some(None) => Some("skipped"),
                    Some(Some(sql)) => Some(match run(sql).await {
                        Ok(_) => "done",
                        Err(_) => "failed",
                    }),
                };
                Executed {
                    state,
                    fallback_status,
                    failure,
                }
            }
        }
    }
}

/// How a job's statements ran.
pub(crate) struct Executed {
    /// CARTO's `query` value, with each statement's status.
    pub(crate) state: Value,
    /// The job's own fallback's status, when it has one.
    pub(crate) fallback_status: Option<&'static str>,
    /// Why the job failed, if a statement did.
    pub(crate) failure: Option<String>,
}

fn put(v: &mut Value, name: &str, text: Option<&str>) {
    if let Some(text) = text {
        v[name] = text.into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Runs `sql` with statements failing when they start with "fail", and returns what ran and
    /// how the job ended.
    fn exec(sql: BatchSql) -> (Vec<String>, Executed) {
        let ran = Mutex::new(Vec::new());
        let executed = futures_util::FutureExt::now_or_never(sql.execute(
            "J1",
            |s: String| {
                ran.lock().unwrap().push(s.clone());
                async move {
                    if s.starts_with("fail") {
                        Err(format!("{s} went wrong"))
                    } else {
                        Ok(1)
                    }
                }
            },
            |_| async {},
        ))
        .unwrap();
        (ran.into_inner().unwrap(), executed)
    }

    #[test]
    fn a_list_stops_at_its_first_failure() {
        let (ran, done) = exec(BatchSql::Many(vec![
            "a".into(),
            "fail b".into(),
            "c".into(),
        ]));
        assert_eq!(ran, ["a", "fail b"]);
        assert_eq!(done.failure.as_deref(), Some("fail b went wrong"));
        let statuses: Vec<&str> = done
            .state
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["done", "failed", "skipped"]);
        assert_eq!(done.state[1]["failed_reason"], "fail b went wrong");
    }

    #[test]
    fn fallbacks_run_on_success_and_on_error_with_their_placeholders() {
        let sql: BatchSql = serde_json::from_value(json!({
            "query": [
                {"query": "a", "onsuccess": "a ok <%= job_id %>"},
                {"query": "fail b", "onerror": "log '<%= error_message %>'"},
                {"query": "c", "onsuccess": "c ok"}
            ],
            "onsuccess": "all ok",
            "onerror": "job failed: <%= error_message %>"
        }))
        .unwrap();
        assert_eq!(sql.statements(), 8);
        let (ran, done) = exec(sql);
        assert_eq!(
            ran,
            [
                "a",
                "a ok J1",
                "fail b",
                "log 'fail b went wrong'",
                "job failed: fail b went wrong"
            ]
        );
        let q = &done.state["query"];
        assert_eq!(
            (q[0]["status"].as_str(), q[0]["fallback_status"].as_str()),
            (Some("done"), Some("done"))
        );
        assert_eq!(
            (q[1]["status"].as_str(), q[1]["fallback_status"].as_str()),
            (Some("failed"), Some("done"))
        );
        assert_eq!(
            (q[2]["status"].as_str(), q[2]["fallback_status"].as_str()),
            (Some("skipped"), Some("skipped"))
        );
        assert_eq!(done.fallback_status, Some("done"));
        assert!(done.failure.is_some());
    }

    #[test]
    fn an_error_message_cannot_close_its_string() {
        let sql: BatchSql = serde_json::from_value(json!({
            "query": [{"query": "fail x');drop table t;--", "onerror": "log '<%= error_message %>'"}]
        }))
        .unwrap();
        let (ran, _) = exec(sql);
        assert_eq!(ran[1], "log 'fail x'');drop table t;-- went wrong'");
    }
}
