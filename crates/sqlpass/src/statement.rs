//! One statement of untrusted SQL, checked on its own before anything wraps it.
//!
//! PostgreSQL's lexical rules, as far as they decide where a statement, a string, a comment or a
//! parenthesis ends: quoted strings (`'…'` with `''`, `E'…'` with backslash escapes), quoted
//! identifiers, dollar quotes, nested block comments, line comments. A statement that passes
//! has every parenthesis closed in order and nothing after its one `;`, so
//! `SELECT … FROM (\n<statement>\n) AS q` cannot be closed early or extended by its text: the
//! wrapper's own parentheses stay the outermost.

use crate::{Error, Result};

/// A statement that passed [`Statement::new`]: exactly one, complete, with no trailing `;`.
///
/// ```
/// use sqlpass::Statement;
///
/// let s = Statement::new("select 1 as a; -- done").unwrap();
/// assert_eq!(s.as_str(), "select 1 as a");
/// assert_eq!(s.keyword(), "select");
/// for bad in ["select 1) AS q UNION SELECT 2 --", "select 1; select 2", "select '", ""] {
///     assert!(Statement::new(bad).is_err(), "{bad}");
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    text: String,
    keyword: String,
}

/// Statements that would end, nest or escape the sandbox's transaction or outlive it in the
/// session: refused whatever the key may do.
const REFUSED: &[&str] = &[
    "abort",
    "begin",
    "checkpoint",
    "close",
    "commit",
    "copy",
    "deallocate",
    "declare",
    "discard",
    "end",
    "execute",
    "fetch",
    "listen",
    "load",
    "move",
    "notify",
    "prepare",
    "release",
    "reset",
    "rollback",
    "savepoint",
    "set",
    "start",
    "unlisten",
    "vacuum",
];

impl Statement {
    /// Checks `sql` as one statement on its own.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidStatement`] for an empty text, more than one statement, an unbalanced
    /// parenthesis, an unterminated string, identifier or comment, a NUL character, or a
    /// statement that controls the transaction or the session (`BEGIN`, `COMMIT`, `SET`,
    /// `RESET`, `PREPARE`, `LISTEN`, `COPY`, …).
    pub fn new(sql: &str) -> Result<Self> {
        let end = scan(sql)?;
        let text = sql[..end].trim().to_owned();
        let keyword = first_keyword(&text);
        if keyword.is_empty() {
            return Err(invalid("the query is empty"));
        }
        if REFUSED.contains(&keyword.as_str()) {
            return Err(Error::InvalidStatement(format!(
                "{} statements are not allowed: the transaction and the session belong to the server",
                keyword.to_ascii_uppercase()
            )));
        }
        Ok(Self { text, keyword })
    }

    /// The statement, without a trailing `;`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Its first keyword, lower-cased (`select`, `with`, `insert`…).
    pub fn keyword(&self) -> &str {
        &self.keyword
    }

    /// Whether PostgreSQL plans it (a query or a row change, which `EXPLAIN` shows), as
    /// opposed to a utility command (DDL, `DO`, `CALL`…).
    pub fn has_plan(&self) -> bool {
        matches!(
            self.keyword.as_str(),
            "select" | "with" | "values" | "table" | "insert" | "update" | "delete" | "merge"
        )
    }
}

/// Several statements sent as one text, as CARTO lets a master key send them
/// (`BEGIN; CREATE TABLE …; COMMIT;`): each checked as a [`Statement`] on its own, all run in
/// order in the sandbox's one transaction, all or nothing. `BEGIN`, `BEGIN WORK|TRANSACTION`,
/// `START TRANSACTION`, `COMMIT` and `END` (with `WORK` or `TRANSACTION`) only mark that
/// transaction and are left out; any other statement [`Statement::new`] refuses (`ROLLBACK`,
/// `SET`, a `BEGIN` with options…) is refused here too. A `;` inside a dollar-quoted body
/// (`CREATE FUNCTION … AS $$ …; … $$`) does not split; an SQL-standard body
/// (`BEGIN ATOMIC … END`) is not supported.
///
/// ```
/// use sqlpass::Script;
///
/// let s = Script::new("BEGIN; CREATE TABLE t (a int); INSERT INTO t VALUES (1); COMMIT;").unwrap();
/// let texts: Vec<&str> = s.statements().iter().map(|s| s.as_str()).collect();
/// assert_eq!(texts, ["CREATE TABLE t (a int)", "INSERT INTO t VALUES (1)"]);
/// assert!(Script::new("select 1; rollback").is_err());
/// assert!(Script::new("begin; commit").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    statements: Vec<Statement>,
}

impl Script {
    /// Splits `sql` at its top-level `;`s and checks each statement.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidStatement`] as [`Statement::new`] gives it for any statement, and for a
    /// text with no statement but transaction marks.
    pub fn new(sql: &str) -> Result<Self> {
        let mut statements = Vec::new();
        for (start, end) in split(sql)? {
            let piece = &sql[start..end];
            if only_comments(piece) || marks_transaction(piece)? {
                continue;
            }
            statements.push(Statement::new(piece)?);
        }
        if statements.is_empty() {
            return Err(invalid("the query is empty"));
        }
        Ok(Self { statements })
    }

    /// The statements, in order.
    pub fn statements(&self) -> &[Statement] {
        &self.statements
    }

    /// The statements before the last, and the last.
    pub(crate) fn into_parts(mut self) -> (Vec<Statement>, Statement) {
        // Never empty: `new` refuses a script without a statement.
        let last = self.statements.pop().unwrap_or_else(|| Statement {
            text: String::new(),
            keyword: String::new(),
        });
        (self.statements, last)
    }
}

/// Whether `piece` is a bare `BEGIN`, `START TRANSACTION`, `COMMIT` or `END`, which only marks
/// the one transaction a script runs in.
fn marks_transaction(piece: &str) -> Result<bool> {
    let words: Option<Vec<String>> = tokens(piece)?
        .into_iter()
        .map(|t| match t {
            Token::Word(w) => Some(w.to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    let Some(words) = words else {
        return Ok(false);
    };
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    Ok(matches!(
        words.as_slice(),
        ["begin" | "commit" | "end"]
            | ["begin" | "commit" | "end", "work" | "transaction"]
            | ["start", "transaction"]
    ))
}

/// A top-level piece of a statement's text, for the few statements parsed here (`COPY`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Token<'a> {
    /// A bare word (a keyword or an unquoted identifier), as written.
    Word(&'a str),
    /// A quoted identifier, unescaped.
    Quoted(String),
    /// A string constant, as written with its quotes.
    Str(&'a str),
    /// A parenthesized group, its text without the outer parentheses.
    Group(&'a str),
    /// Anything else: one byte of punctuation, or a number.
    Other(&'a str),
}

/// The top-level tokens of `sql` (one statement that passed [`scan`]), comments dropped.
pub(crate) fn tokens(sql: &str) -> Result<Vec<Token<'_>>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if is_space(c) {
            i += 1;
        } else if starts_comment(b, i) {
            i = if c == b'-' {
                line_comment(b, i)
            } else {
                block_comment(b, i)?
            };
        } else if c == b'(' {
            let end = group_end(b, i)?;
            out.push(Token::Group(&sql[i + 1..end - 1]));
            i = end;
        } else if c == b'"' {
            let end = quoted(b, i + 1, b'"', false)?;
            out.push(Token::Quoted(sql[i + 1..end - 1].replace("\"\"", "\"")));
            i = end;
        } else if c == b'\'' {
            let end = quoted(b, i + 1, b'\'', false)?;
            out.push(Token::Str(&sql[i..end]));
            i = end;
        } else if matches!(c, b'e' | b'E') && b.get(i + 1) == Some(&b'\'') {
            let end = quoted(b, i + 2, b'\'', true)?;
            out.push(Token::Str(&sql[i..end]));
            i = end;
        } else if c == b'$' {
            let end = dollar(b, i)?;
            out.push(Token::Other(&sql[i..end]));
            i = end;
        } else if is_ident_start(c) {
            let mut j = i + 1;
            while j < b.len() && is_ident_char(b[j]) {
                j += 1;
            }
            out.push(Token::Word(&sql[i..j]));
            i = j;
        } else {
            let len = sql[i..].chars().next().map_or(1, char::len_utf8);
            out.push(Token::Other(&sql[i..i + len]));
            i += len;
        }
    }
    Ok(out)
}

/// Where the parenthesized group opened at `open` ends (after its `)`).
fn group_end(b: &[u8], open: usize) -> Result<usize> {
    let mut depth = 0_u32;
    let mut i = open;
    while i < b.len() {
        i = match b[i] {
            b'(' => {
                depth += 1;
                i + 1
            }
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i + 1);
                }
                i + 1
            }
            b'-' if b.get(i + 1) == Some(&b'-') => line_comment(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => block_comment(b, i)?,
            b'\'' => quoted(b, i + 1, b'\'', false)?,
            b'"' => quoted(b, i + 1, b'"', false)?,
            b'$' => dollar(b, i)?,
            b'e' | b'E' if b.get(i + 1) == Some(&b'\'') && (i == 0 || !is_ident_char(b[i - 1])) => {
                quoted(b, i + 2, b'\'', true)?
            }
            _ => i + 1,
        };
    }
    Err(invalid("a parenthesis is not closed"))
}

/// The statement an `EXPLAIN` explains: what follows `EXPLAIN`, its parenthesized options
/// and its `ANALYZE`/`VERBOSE` words. `None` when `sql` is not an `EXPLAIN`.
pub(crate) fn explained(sql: &str) -> Result<Option<&str>> {
    let b = sql.as_bytes();
    let skip = |mut i: usize| -> Result<usize> {
        while i < b.len() {
            if is_space(b[i]) {
                i += 1;
            } else if starts_comment(b, i) {
                i = if b[i] == b'-' {
                    line_comment(b, i)
                } else {
                    block_comment(b, i)?
                };
            } else {
                break;
            }
        }
        Ok(i)
    };
    let word_at = |i: usize| {
        let mut j = i;
        while j < b.len() && is_ident_char(b[j]) {
            j += 1;
        }
        (sql[i..j].to_ascii_lowercase(), j)
    };
    let mut i = skip(0)?;
    let (first, end) = word_at(i);
    if first != "explain" {
        return Ok(None);
    }
    i = skip(end)?;
    if b.get(i) == Some(&b'(') {
        i = skip(group_end(b, i)?)?;
    }
    loop {
        let (word, end) = word_at(i);
        if matches!(word.as_str(), "analyze" | "analyse" | "verbose") {
            i = skip(end)?;
        } else {
            return Ok(Some(&sql[i..]));
        }
    }
}

/// `sql` checked as one complete statement ([`scan`]) whatever its keyword, without its `;`.
pub(crate) fn one_statement(sql: &str) -> Result<&str> {
    let end = scan(sql)?;
    Ok(sql[..end].trim())
}

fn invalid(reason: &str) -> Error {
    Error::InvalidStatement(reason.to_owned())
}

/// Scans `sql` and returns where its one statement ends (before a top-level `;`, or the end).
fn scan(sql: &str) -> Result<usize> {
    let ends = split(sql)?;
    match ends.as_slice() {
        [] => Ok(0),
        [(start, end), rest @ ..] => {
            if rest.iter().any(|&(s, e)| !only_comments(&sql[s..e])) {
                return Err(invalid("only one statement is allowed"));
            }
            // Comments before a lone `;` belong to no statement.
            Ok(if only_comments(&sql[*start..*end]) {
                0
            } else {
                *end
            })
        }
    }
}

/// Whether `text` holds only spaces and complete comments.
fn only_comments(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if is_space(b[i]) {
            i += 1;
        } else if starts_comment(b, i) {
            i = if b[i] == b'-' {
                line_comment(b, i)
            } else {
                match block_comment(b, i) {
                    Ok(j) => j,
                    Err(_) => return false,
                }
            };
        } else {
            return false;
        }
    }
    true
}

/// Scans `sql` by PostgreSQL's lexical rules and returns each statement's byte range, split at
/// the top-level `;`s (the last range runs to the end of the text, and may be blank).
fn split(sql: &str) -> Result<Vec<(usize, usize)>> {
    let b = sql.as_bytes();
    let mut i = 0;
    let mut depth: u32 = 0;
    let mut start = 0;
    let mut ranges = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c == 0 {
            return Err(invalid("the query contains a NUL character"));
        }
        i = match c {
            b'-' if b.get(i + 1) == Some(&b'-') => line_comment(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => block_comment(b, i)?,
            b'\'' => quoted(b, i + 1, b'\'', false)?,
            b'"' => quoted(b, i + 1, b'"', false)?,
            b'$' => dollar(b, i)?,
            b'(' => {
                depth += 1;
                i + 1
            }
            b')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| invalid("a parenthesis is closed that was not opened"))?;
                i + 1
            }
            b';' => {
                if depth > 0 {
                    return Err(invalid("only one statement is allowed"));
                }
                ranges.push((start, i));
                start = i + 1;
                i + 1
            }
            c if is_ident_start(c) => {
                let first = i;
                let mut j = i + 1;
                while j < b.len() && is_ident_char(b[j]) {
                    j += 1;
                }
                // E'…': a string with backslash escapes.
                if j == first + 1 && matches!(c, b'e' | b'E') && b.get(j) == Some(&b'\'') {
                    quoted(b, j + 1, b'\'', true)?
                } else {
                    j
                }
            }
            c if c.is_ascii_digit() => {
                let mut j = i + 1;
                while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
                    j += 1;
                }
                j
            }
            _ => i + 1,
        };
    }
    if depth > 0 {
        return Err(invalid("a parenthesis is not closed"));
    }
    ranges.push((start, b.len()));
    Ok(ranges)
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

fn starts_comment(b: &[u8], i: usize) -> bool {
    matches!(
        (b[i], b.get(i + 1)),
        (b'-', Some(b'-')) | (b'/', Some(b'*'))
    )
}

/// PostgreSQL's identifier start: a letter, `_`, or any non-ASCII byte.
fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_char(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

fn line_comment(b: &[u8], i: usize) -> usize {
    let mut j = i + 2;
    while j < b.len() && b[j] != b'\n' && b[j] != b'\r' {
        j += 1;
    }
    j
}

/// A block comment from `i` (at `/*`); they nest.
fn block_comment(b: &[u8], i: usize) -> Result<usize> {
    let mut depth = 0_u32;
    let mut j = i;
    while j < b.len() {
        match (b[j], b.get(j + 1)) {
            (b'/', Some(b'*')) => {
                depth += 1;
                j += 2;
            }
            (b'*', Some(b'/')) => {
                depth -= 1;
                j += 2;
                if depth == 0 {
                    return Ok(j);
                }
            }
            (0, _) => return Err(invalid("the query contains a NUL character")),
            _ => j += 1,
        }
    }
    Err(invalid("a comment is not closed"))
}

/// A string or identifier whose text starts at `i`, closed by `quote` (doubled to escape it);
/// `backslash` for `E'…'`. Returns the position after the closing quote.
fn quoted(b: &[u8], mut i: usize, quote: u8, backslash: bool) -> Result<usize> {
    while i < b.len() {
        let c = b[i];
        if c == 0 {
            return Err(invalid("the query contains a NUL character"));
        }
        if backslash && c == b'\\' {
            // The escaped byte is skipped, so it is checked here.
            if b.get(i + 1) == Some(&0) {
                return Err(invalid("the query contains a NUL character"));
            }
            i += 2;
        } else if c == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return Ok(i + 1);
            }
        } else {
            i += 1;
        }
    }
    Err(invalid(if quote == b'"' {
        "a quoted identifier is not closed"
    } else {
        "a string is not closed"
    }))
}

/// `$tag$…$tag$` from `i` (at `$`), or a parameter `$1`, or a lone `$`.
fn dollar(b: &[u8], i: usize) -> Result<usize> {
    let mut j = i + 1;
    if j < b.len() && is_ident_start(b[j]) {
        j += 1;
        while j < b.len() && (is_ident_start(b[j]) || b[j].is_ascii_digit()) {
            j += 1;
        }
    }
    if b.get(j) != Some(&b'$') {
        // A parameter or an operator character: no quote begins here.
        return Ok(i + 1);
    }
    let tag = &b[i..=j];
    let body = j + 1;
    let close = b[body..]
        .windows(tag.len())
        .position(|w| w == tag)
        .ok_or_else(|| invalid("a dollar-quoted string is not closed"))?;
    if b[body..body + close].contains(&0) {
        return Err(invalid("the query contains a NUL character"));
    }
    Ok(body + close + tag.len())
}

/// Whether byte `at` of `sql` falls inside a plain string constant (`'…'`; not `E'…'`, a
/// dollar quote, a quoted identifier or a comment), by PostgreSQL's lexical rules: where text
/// spliced with its quotes doubled (and no backslash) stays one value. `false` when `sql` does
/// not scan.
///
/// ```
/// use sqlpass::in_string_literal;
///
/// let sql = "select * from t where a = 'x' and b = x -- 'x'";
/// assert!(in_string_literal(sql, 27));
/// assert!(!in_string_literal(sql, 38));
/// assert!(!in_string_literal(sql, 44));
/// assert!(!in_string_literal("select E'x'", 9));
/// ```
pub fn in_string_literal(sql: &str, at: usize) -> bool {
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() && i <= at {
        let c = b[i];
        let next = match c {
            b'-' if b.get(i + 1) == Some(&b'-') => Ok(line_comment(b, i)),
            b'/' if b.get(i + 1) == Some(&b'*') => block_comment(b, i),
            b'\'' => match quoted(b, i + 1, b'\'', false) {
                Ok(end) if at > i && at < end - 1 => return true,
                other => other,
            },
            b'"' => quoted(b, i + 1, b'"', false),
            b'$' => dollar(b, i),
            c if is_ident_start(c) => {
                let start = i;
                let mut j = i + 1;
                while j < b.len() && is_ident_char(b[j]) {
                    j += 1;
                }
                // E'…' has backslash escapes: not a plain constant.
                if j == start + 1 && matches!(c, b'e' | b'E') && b.get(j) == Some(&b'\'') {
                    quoted(b, j + 1, b'\'', true)
                } else {
                    Ok(j)
                }
            }
            _ => Ok(i + 1),
        };
        match next {
            Ok(j) => i = j,
            Err(_) => return false,
        }
    }
    false
}

/// The first word outside comments and parentheses, lower-cased (`(select 1)` gives `select`).
fn first_keyword(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if is_space(b[i]) || b[i] == b'(' {
            i += 1;
        } else if starts_comment(b, i) {
            i = if b[i] == b'-' {
                line_comment(b, i)
            } else {
                block_comment(b, i).unwrap_or(b.len())
            };
        } else {
            break;
        }
    }
    let start = i;
    while i < b.len() && b[i].is_ascii_alphabetic() {
        i += 1;
    }
    sql[start..i].to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(sql: &str) -> String {
        Statement::new(sql).unwrap().as_str().to_owned()
    }

    fn reason(sql: &str) -> String {
        Statement::new(sql).unwrap_err().to_string()
    }

    #[test]
    fn one_complete_statement_passes_without_its_semicolon() {
        assert_eq!(ok("select 1"), "select 1");
        assert_eq!(ok("  select 1 ;  \n"), "select 1");
        assert_eq!(ok("select 1; -- the end"), "select 1");
        assert_eq!(ok("select 1; /* the end */ "), "select 1");
        assert_eq!(
            ok("select ')' as p, \")\" from t"),
            "select ')' as p, \")\" from t"
        );
        assert_eq!(ok("select 'it''s', E'\\')'"), "select 'it''s', E'\\')'");
        assert_eq!(
            ok("select $$ ) ; $$, $a$ $$ ) $a$"),
            "select $$ ) ; $$, $a$ $$ ) $a$"
        );
        assert_eq!(ok("select a$b$ from t -- )"), "select a$b$ from t -- )");
        assert_eq!(
            ok("select $1 from t where x = (1)"),
            "select $1 from t where x = (1)"
        );
        assert_eq!(
            ok("select /* a /* nested ) */ comment */ 1"),
            "select /* a /* nested ) */ comment */ 1"
        );
        assert_eq!(
            ok("(select 1) union (select 2)"),
            "(select 1) union (select 2)"
        );
        assert_eq!(Statement::new("(select 1)").unwrap().keyword(), "select");
        assert_eq!(
            Statement::new("/* x */ WITH a AS (select 1) select * from a")
                .unwrap()
                .keyword(),
            "with"
        );
    }

    #[test]
    fn a_statement_that_could_rewrite_its_wrapper_is_refused() {
        for sql in [
            "select * from t) AS q UNION SELECT * FROM secrets --",
            "select * from t) q, (select 1",
            "select 1 /* ) */ ) --",
            "select 1; select 2",
            "select 1; drop table t",
            "select (1; 2)",
            "select ((1)",
            "select 'open",
            "select \"open",
            "select E'\\'",
            "select $x$ open",
            "select /* open",
            "select /* /* */ still open",
            "select 1 \0",
            "select '\0'",
            "select E'\\\0'",
        ] {
            assert!(Statement::new(sql).is_err(), "{sql}");
        }
        assert_eq!(
            reason("select 1; select 2"),
            "invalid statement: only one statement is allowed"
        );
        assert_eq!(
            reason(") --"),
            "invalid statement: a parenthesis is closed that was not opened"
        );
        assert_eq!(reason(" ; "), "invalid statement: the query is empty");
        assert_eq!(
            reason("-- nothing"),
            "invalid statement: the query is empty"
        );
    }

    #[test]
    fn transaction_and_session_statements_are_refused() {
        for sql in [
            "COMMIT",
            "begin",
            "set role postgres",
            "SET statement_timeout = 0",
            "reset all",
            "prepare p as select 1",
            "listen x",
            "copy t to stdout",
            "  /* hi */ rollback",
            "savepoint a",
            "start transaction",
        ] {
            let e = reason(sql);
            assert!(e.contains("are not allowed"), "{sql}: {e}");
        }
        assert_eq!(
            ok("select set_config('x.y', '1', true)"),
            "select set_config('x.y', '1', true)"
        );
        assert_eq!(ok("settings_table_select"), "settings_table_select");
    }
}
