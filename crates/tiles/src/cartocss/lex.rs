//! CartoCSS's tokens.

use crate::{Error, Result};

/// A token and where it starts (line, column; both from 1).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Token {
    pub(super) kind: Tok,
    pub(super) line: u32,
    pub(super) col: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Tok {
    /// A name: a property, keyword, function or colour name (`polygon-fill`, `src-over`).
    Ident(String),
    /// `@name`.
    Var(String),
    /// `#name`: a layer selector or a hexadecimal colour, as the parser decides.
    Hash(String),
    /// A number and whether it was a percentage (`10%`); `px` and `deg` are dropped.
    Num(f64, bool),
    /// A quoted string, unescaped.
    Str(String),
    /// `url(…)`'s address.
    Url(String),
    /// Punctuation: `{ } [ ] ( ) ; : , . :: = != < <= > >= =~ + - * / %`.
    Punct(&'static str),
}

const PUNCTS: [&str; 22] = [
    "::", "!=", "<=", ">=", "=~", "{", "}", "[", "]", "(", ")", ";", ":", ",", ".", "=", "<", ">",
    "+", "-", "*", "/",
];

/// `text`'s tokens, comments (`/* */` and `//`) skipped.
pub(super) fn tokens(text: &str) -> Result<Vec<Token>> {
    let chars: Vec<char> = text.chars().collect();
    let (mut i, mut line, mut col) = (0, 1u32, 1u32);
    let mut out = Vec::new();
    let advance = |i: &mut usize, line: &mut u32, col: &mut u32, n: usize| {
        for c in &chars[*i..(*i + n).min(chars.len())] {
            if *c == '\n' {
                *line += 1;
                *col = 1;
            } else {
                *col += 1;
            }
        }
        *i += n;
    };
    let at = |i: usize, s: &str| {
        s.chars()
            .enumerate()
            .all(|(k, c)| chars.get(i + k) == Some(&c))
    };
    let err = |line: u32, col: u32, what: String| Error::Style(format!("{line}:{col} {what}"));
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            advance(&mut i, &mut line, &mut col, 1);
            continue;
        }
        if at(i, "/*") {
            let end = (i + 2..chars.len().saturating_sub(1))
                .find(|&k| chars[k] == '*' && chars[k + 1] == '/')
                .ok_or_else(|| err(line, col, "unclosed comment".into()))?;
            let n = end + 2 - i;
            advance(&mut i, &mut line, &mut col, n);
            continue;
        }
        if at(i, "//") {
            let end = (i..chars.len())
                .find(|&k| chars[k] == '\n')
                .unwrap_or(chars.len());
            let n = end - i;
            advance(&mut i, &mut line, &mut col, n);
            continue;
        }
        let (start_line, start_col) = (line, col);
        let name_len = |from: usize| {
            (from..chars.len())
                .take_while(|&k| chars[k].is_alphanumeric() || chars[k] == '-' || chars[k] == '_')
                .count()
        };
        let (kind, len) = if c == '@' || c == '#' {
            let n = name_len(i + 1);
            if n == 0 {
                return Err(err(line, col, format!("expected a name after {c}")));
            }
            let name: String = chars[i + 1..i + 1 + n].iter().collect();
            let kind = if c == '@' {
                Tok::Var(name)
            } else {
                Tok::Hash(name)
            };
            (kind, n + 1)
        } else if c == '"' || c == '\'' {
            let mut value = String::new();
            let mut k = i + 1;
            loop {
                match chars.get(k) {
                    None => return Err(err(line, col, "unclosed string".into())),
                    Some('\\') => {
                        if let Some(&next) = chars.get(k + 1) {
                            value.push(next);
                        }
                        k += 2;
                    }
                    Some(&q) if q == c => break,
                    Some(&other) => {
                        value.push(other);
                        k += 1;
                    }
                }
            }
            (Tok::Str(value), k + 1 - i)
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let mut n = (i..chars.len())
                .take_while(|&k| chars[k].is_ascii_digit() || chars[k] == '.')
                .count();
            // An exponent: `1e8`, `2.5E-3`.
            if matches!(chars.get(i + n), Some('e' | 'E')) {
                let sign = usize::from(matches!(chars.get(i + n + 1), Some('+' | '-')));
                let digits = (i + n + 1 + sign..chars.len())
                    .take_while(|&k| chars[k].is_ascii_digit())
                    .count();
                if digits > 0 {
                    n += 1 + sign + digits;
                }
            }
            let digits: String = chars[i..i + n].iter().collect();
            let value: f64 = digits
                .parse()
                .map_err(|_| err(line, col, format!("invalid number {digits}")))?;
            let mut len = n;
            let mut percent = false;
            if chars.get(i + n) == Some(&'%') {
                percent = true;
                len += 1;
            } else {
                let unit = name_len(i + n);
                let word: String = chars[i + n..i + n + unit].iter().collect();
                match word.as_str() {
                    "" => {}
                    "px" | "deg" => len += unit,
                    other => return Err(err(line, col, format!("unknown unit {other}"))),
                }
            }
            (Tok::Num(value, percent), len)
        } else if c.is_alphabetic()
            || c == '_'
            || (c == '-' && chars.get(i + 1).is_some_and(|n| n.is_alphabetic()))
        {
            let n = name_len(i);
            let name: String = chars[i..i + n].iter().collect();
            if name.eq_ignore_ascii_case("url") && chars.get(i + n) == Some(&'(') {
                let close = (i + n..chars.len())
                    .find(|&k| chars[k] == ')')
                    .ok_or_else(|| err(line, col, "unclosed url(".into()))?;
                let inner: String = chars[i + n + 1..close].iter().collect();
                let inner = inner.trim().trim_matches(['"', '\'']).to_owned();
                (Tok::Url(inner), close + 1 - i)
            } else {
                (Tok::Ident(name), n)
            }
        } else if let Some(p) = PUNCTS.iter().find(|p| at(i, p)) {
            (Tok::Punct(p), p.chars().count())
        } else {
            return Err(err(line, col, format!("unexpected character {c:?}")));
        };
        out.push(Token {
            kind,
            line: start_line,
            col: start_col,
        });
        advance(&mut i, &mut line, &mut col, len);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<Tok> {
        tokens(text).unwrap().into_iter().map(|t| t.kind).collect()
    }

    #[test]
    fn names_numbers_strings_and_punctuation() {
        assert_eq!(
            kinds(
                "#layer::halo[zoom>=4] { line-width: 1.5px; /* c */ text-name: [name] + 'x\\'y'; } // end"
            ),
            vec![
                Tok::Hash("layer".into()),
                Tok::Punct("::"),
                Tok::Ident("halo".into()),
                Tok::Punct("["),
                Tok::Ident("zoom".into()),
                Tok::Punct(">="),
                Tok::Num(4.0, false),
                Tok::Punct("]"),
                Tok::Punct("{"),
                Tok::Ident("line-width".into()),
                Tok::Punct(":"),
                Tok::Num(1.5, false),
                Tok::Punct(";"),
                Tok::Ident("text-name".into()),
                Tok::Punct(":"),
                Tok::Punct("["),
                Tok::Ident("name".into()),
                Tok::Punct("]"),
                Tok::Punct("+"),
                Tok::Str("x'y".into()),
                Tok::Punct(";"),
                Tok::Punct("}"),
            ]
        );
        assert_eq!(
            kinds("@c: lighten(#fff, 10%); marker-file: url('a b.svg');"),
            vec![
                Tok::Var("c".into()),
                Tok::Punct(":"),
                Tok::Ident("lighten".into()),
                Tok::Punct("("),
                Tok::Hash("fff".into()),
                Tok::Punct(","),
                Tok::Num(10.0, true),
                Tok::Punct(")"),
                Tok::Punct(";"),
                Tok::Ident("marker-file".into()),
                Tok::Punct(":"),
                Tok::Url("a b.svg".into()),
                Tok::Punct(";"),
            ]
        );
    }

    #[test]
    fn errors_say_where() {
        assert_eq!(
            tokens("a {\n  b: 'open").unwrap_err().to_string(),
            "invalid CartoCSS: 2:6 unclosed string"
        );
        assert_eq!(
            tokens("a { b: 3em; }").unwrap_err().to_string(),
            "invalid CartoCSS: 1:8 unknown unit em"
        );
        assert!(tokens("/* never closed").is_err());
        assert!(tokens("a { b: $; }").is_err());
    }
}
