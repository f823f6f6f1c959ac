//! Every configuration key a message names exists.
//!
//! Error messages, help texts and log lines tell the operator which key to change (`set
//! `dataplane.tun = false``); a key that does not exist sends them nowhere. This test collects
//! every dotted key named in the string literals of the crates that talk to operators
//! (`x0-node`, `x0t`, `x0-bench`) and in `docs/configuration.md`, and asks the configuration
//! parser itself whether each exists: it sets the key to values of every TOML type and looks
//! for an "unknown field" refusal (`deny_unknown_fields` everywhere makes that exact).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use x0_node::config::Config;

/// The top-level keys of [`Config`]: a dotted name starting with one of these is a key.
const SECTIONS: &[&str] = &[
    "state_dir",
    "listen",
    "advertise",
    "log_format",
    "peers",
    "link",
    "svid",
    "routing",
    "dataplane",
    "api",
    "ebpf",
    "heal",
    "danger_fault_injection",
];

/// Dotted names in messages that are not configuration keys: file names, domains, and the few
/// others listed (JSON paths of other programs' output). Anything else dotted is taken for a
/// key and must exist, so a new kind of dotted text in a message is a decision made here.
fn not_a_key(name: &str) -> bool {
    const EXTENSIONS: &[&str] = &[
        // Files.
        "db", "toml", "md", "json", "rs", "log", "sh", "c", "o", "pem", "der", "crt", "key", "png",
        "svg", "csv", "txt", "yaml", "tmp", "exe", // Trust domains.
        "example", "test", "mesh", "x0t",
    ];
    const OTHERS: &[&str] = &[
        "e.g",
        "i.e",
        // iperf3's JSON.
        "end.sum_received.bits_per_second",
        "end.sum_received.bytes",
    ];
    let last = name.rsplit('.').next().unwrap_or_default();
    EXTENSIONS.contains(&last) || OTHERS.contains(&name)
}

/// The contents of the string literals of a Rust source file (escaped line breaks joined).
fn string_literals(source: &str) -> Vec<String> {
    let bytes = source.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{1b}'), or a lifetime.
                if bytes.get(i + 1) == Some(&b'\\') {
                    i += 2;
                    while i < bytes.len() && bytes[i] != b'\'' {
                        i += 1;
                    }
                    i += 1;
                } else if bytes.get(i + 2) == Some(&b'\'') {
                    i += 3;
                } else {
                    i += 1;
                }
            }
            b'r' if matches!(bytes.get(i + 1), Some(b'"' | b'#'))
                && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_')) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while bytes.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if bytes.get(j) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                let close = format!("\"{}", "#".repeat(hashes));
                let start = j + 1;
                let end = source[start..]
                    .find(&close)
                    .map_or(source.len(), |e| start + e);
                out.push(source[start..end].to_owned());
                i = end + close.len();
            }
            b'"' => {
                let mut text = String::new();
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                        match bytes.get(i) {
                            Some(b'\n') => {
                                while i + 1 < bytes.len() && bytes[i + 1].is_ascii_whitespace() {
                                    i += 1;
                                }
                            }
                            Some(b'n') => text.push('\n'),
                            Some(b'u') if bytes.get(i + 1) == Some(&b'{') => {
                                while i < bytes.len() && bytes[i] != b'}' {
                                    i += 1;
                                }
                                text.push(' ');
                            }
                            Some(&c) => text.push(c as char),
                            None => {}
                        }
                        i += 1;
                        continue;
                    }
                    let ch_len = source[i..].chars().next().map_or(1, char::len_utf8);
                    text.push_str(&source[i..i + ch_len]);
                    i += ch_len;
                }
                i += 1;
                out.push(text);
            }
            _ => i += 1,
        }
    }
    out
}

/// The configuration keys named in `text`: backticked `[section] key`, `a.b = value`,
/// `key \`x\``, and any dotted name `a.b.c` / `a[0].b`.
fn named_keys(text: &str) -> Vec<String> {
    let mut keys = Vec::new();
    // `[section] key`
    for (i, _) in text.match_indices("`[") {
        let rest = &text[i + 2..];
        if let Some((section, tail)) = rest.split_once("] ")
            && let Some(key) = tail.split('`').next()
            && is_name(section)
            && is_name(key.split_whitespace().next().unwrap_or_default())
        {
            keys.push(format!(
                "{section}.{}",
                key.split_whitespace().next().unwrap_or_default()
            ));
        }
    }
    // key `name`
    for (i, _) in text.match_indices("key `") {
        let rest = &text[i + 5..];
        if let Some(name) = rest.split('`').next() {
            let name = name.split([' ', '=']).next().unwrap_or_default();
            if is_name(name) {
                keys.push(name.to_owned());
            }
        }
    }
    // Dotted names anywhere.
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts = chars[i].is_ascii_lowercase()
            && (i == 0
                || !(chars[i - 1].is_ascii_alphanumeric()
                    || matches!(chars[i - 1], '_' | '/' | '.' | '-' | ':' | '$' | '{')));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i;
        let mut dotted = false;
        while j < chars.len() {
            let c = chars[j];
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                j += 1;
            } else if c == '.'
                && chars
                    .get(j + 1)
                    .is_some_and(|n| n.is_ascii_lowercase() || *n == '{')
            {
                dotted = true;
                j += 1;
            } else if c == '[' {
                match chars[j..].iter().position(|c| *c == ']') {
                    Some(close) => {
                        dotted = true;
                        j += close + 1;
                    }
                    None => break,
                }
            } else if c == '{' {
                // A format placeholder (`heal.{}`): the key ends before it.
                break;
            } else {
                break;
            }
        }
        let followed_by_path = chars
            .get(j)
            .is_some_and(|c| matches!(c, '/' | '(' | ':' | '-') || c.is_ascii_uppercase());
        if dotted && !followed_by_path {
            let name: String = chars[i..j].iter().collect();
            keys.push(name.trim_end_matches('.').to_owned());
        }
        i = j.max(i + 1);
    }
    keys.into_iter().filter(|k| !not_a_key(k)).collect()
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
}

/// A key path: its segments, each with whether it names an array of tables (`peers[0]`).
fn segments(key: &str) -> Vec<(String, bool)> {
    key.split('.')
        .filter(|s| !s.is_empty() && !s.starts_with('{'))
        .map(|s| match s.split_once('[') {
            Some((name, _)) => (name.to_owned(), true),
            None => (s.to_owned(), false),
        })
        .collect()
}

/// `key = value` as TOML, arrays of tables as inline arrays (faults with each kind in turn).
fn toml_setting(path: &[(String, bool)], value: &str, kind: &str) -> String {
    fn build(path: &[(String, bool)], value: &str, kind: &str) -> String {
        match path.split_first() {
            None => value.to_owned(),
            Some(((name, array), rest)) => {
                let inner = if rest.is_empty() {
                    value.to_owned()
                } else if *array {
                    let tag = if name == "faults" {
                        format!("kind = \"{kind}\", ")
                    } else {
                        String::new()
                    };
                    return format!("{name} = [{{ {tag}{} }}]", build(rest, value, kind));
                } else {
                    format!("{{ {} }}", build(rest, value, kind))
                };
                format!("{name} = {inner}")
            }
        }
    }
    build(path, value, kind)
}

/// Whether the configuration parser knows `key`.
fn exists(key: &str) -> bool {
    let path = segments(key);
    if path.is_empty() || !SECTIONS.contains(&path[0].0.as_str()) {
        return false;
    }
    // A key under a value that is not a table (`dataplane.tun.enabled`) does not exist.
    for end in 1..path.len() {
        let prefix = &path[..end];
        if prefix[end - 1].1 {
            continue;
        }
        let text = format!("state_dir = \"/x\"\n{}", toml_setting(prefix, "{}", "flap"));
        let shown: Vec<&str> = prefix.iter().map(|(n, _)| n.as_str()).collect();
        if Config::parse(&text).is_err_and(|e| {
            e.contains("invalid type: map") && e.contains(&format!("{}`", shown.join(".")))
        }) {
            return false;
        }
    }
    for kind in ["delay", "loss", "blackhole", "flap"] {
        for value in ["true", "0", "\"x\"", "0.5", "[]", "{}"] {
            let mut text = toml_setting(&path, value, kind);
            if path[0].0 != "state_dir" {
                text = format!("state_dir = \"/x\"\n{text}");
            }
            match Config::parse(&text) {
                Ok(_) => return true,
                Err(e) if !e.contains("unknown field") && !e.contains("unknown variant") => {
                    return true;
                }
                Err(_) => {}
            }
        }
    }
    false
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn every_key_a_message_names_exists() {
    let mut files = Vec::new();
    for krate in ["x0-node", "x0t", "x0-bench"] {
        rust_files(&root().join("crates").join(krate).join("src"), &mut files);
    }
    let mut named = BTreeSet::new();
    for file in &files {
        let source = std::fs::read_to_string(file).unwrap();
        for literal in string_literals(&source) {
            for key in named_keys(&literal) {
                named.insert((key, file.strip_prefix(root()).unwrap_or(file).to_owned()));
            }
        }
    }
    let config_doc = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    for key in named_keys(&config_doc) {
        named.insert((key, PathBuf::from("docs/configuration.md")));
    }
    let keys: BTreeSet<&str> = named.iter().map(|(k, _)| k.as_str()).collect();
    // The scan finds what it must: keys named in messages of every kind.
    for must in [
        "api.token_file",
        "api.listen",
        "dataplane.tun",
        "dataplane.tun_name",
        "danger_fault_injection.enabled",
        "link.redial_max_ms",
        "heal.mode",
    ] {
        assert!(keys.contains(must), "the scan missed {must}: {keys:?}");
    }
    let missing: Vec<String> = named
        .iter()
        .filter(|(k, _)| !exists(k))
        .map(|(k, f)| format!("`{k}` in {}", f.display()))
        .collect();
    assert!(
        missing.is_empty(),
        "configuration keys named but not in the configuration:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_probe_tells_keys_from_non_keys() {
    for key in [
        "dataplane.tun",
        "listen",
        "api.listen",
        "peers[0].addr",
        "heal.detect.z_threshold",
        "danger_fault_injection.faults[0].period_ms",
        "danger_fault_injection.faults[0].ratio",
        "heal.{}",
    ] {
        assert!(exists(key), "{key}");
    }
    for key in [
        "tun.enabled",
        "dataplane.tun.enabled",
        "api.port",
        "peers[0].address",
        "heal.detect.bogus",
        "danger_fault_injection.faults[0].bogus",
    ] {
        assert!(!exists(key), "{key}");
    }
    let found = named_keys(
        "set `tun.enabled = false`, `[api] listen`, key `advertise`: x0t.toml, docs/api.md, \
         peers[{i}].addr and heal.{}",
    );
    assert_eq!(
        found,
        [
            "api.listen",
            "advertise",
            "tun.enabled",
            "peers[{i}].addr",
            "heal"
        ]
    );
}

/// A bound from docs/configuration.md's "allowed" column.
#[derive(Debug, Clone, Copy)]
struct Bound {
    value: f64,
    inclusive: bool,
}

/// What a cell of the "allowed" column says about a number.
#[derive(Debug, Clone, Copy)]
struct Allowed {
    lo: Option<Bound>,
    hi: Option<Bound>,
    /// A float (written with a decimal point, or an open interval).
    float: bool,
    /// No upper bound: the cell is `≥ …`, `> …` or `any`.
    unbounded: bool,
}

/// The numeric bounds a cell states: `lo–hi`, `≥ lo`, `> lo`, `(a, b]` and the like,
/// `` `other`–hi ``, `` ≥ `other` ``, `any`; `None` when it is not about a number alone (a
/// list, a name, a length) or adds a condition (`…, < idle timeout`).
fn bounds(cell: &str) -> Option<Allowed> {
    // Thousands separators out, then the first clause.
    let mut text = String::new();
    let chars: Vec<char> = cell.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        let between_digits = i > 0
            && chars[i - 1].is_ascii_digit()
            && chars.get(i + 1).is_some_and(char::is_ascii_digit)
            && chars.get(i + 4).is_none_or(|c| !c.is_ascii_digit());
        if !(*c == ',' && between_digits) {
            text.push(*c);
        }
    }
    let text = text.trim();
    let num = |s: &str| s.trim().parse::<f64>().ok();
    let relative =
        |s: &str| s.starts_with('`') && s.ends_with('`') && !s[1..s.len() - 1].contains('`');
    let side = |s: &str, inclusive: bool| -> Option<Option<Bound>> {
        match num(s) {
            Some(value) => Some(Some(Bound { value, inclusive })),
            None if relative(s.trim()) => Some(None),
            None => None,
        }
    };
    if text == "any" {
        return Some(Allowed {
            lo: None,
            hi: None,
            float: false,
            unbounded: true,
        });
    }
    if let Some(interval) = text.strip_prefix(['(', '['])
        && let Some((a, rest)) = interval.split_once(", ")
        && let Some(b) = rest.strip_suffix([')', ']'])
    {
        return Some(Allowed {
            lo: side(a, text.starts_with('['))?,
            hi: side(b, text.ends_with(']'))?,
            float: true,
            unbounded: false,
        });
    }
    for (prefix, inclusive) in [("≥ ", true), ("> ", false)] {
        if let Some(lo) = text.strip_prefix(prefix) {
            return Some(Allowed {
                lo: side(lo, inclusive)?,
                hi: None,
                float: num(lo).is_some() && lo.contains('.'),
                unbounded: true,
            });
        }
    }
    let (lo, hi) = text.split_once('–')?;
    Some(Allowed {
        lo: side(lo, true)?,
        hi: side(hi, true)?,
        float: [lo, hi].iter().any(|s| num(s).is_some() && s.contains('.')),
        unbounded: false,
    })
}

/// What the parser says to `key = value`: `Ok` when it accepts it, `Err` with the message
/// when it refuses it naming `key` (a refusal that names another key is acceptance of this
/// one: the documented ranges hold with the other keys at their defaults).
fn verdict(key: &str, value: f64, float: bool) -> Result<(), String> {
    let path = segments(key);
    let literal = |float: bool| {
        if float {
            format!("{value:?}")
        } else {
            format!("{}", value as i64)
        }
    };
    let mut text = format!(
        "state_dir = \"/x\"\n{}",
        toml_setting(&path, &literal(float), "")
    );
    let mut result = Config::parse(&text);
    if let Err(e) = &result
        && !float
        && e.contains("invalid type: integer")
    {
        text = format!(
            "state_dir = \"/x\"\n{}",
            toml_setting(&path, &literal(true), "")
        );
        result = Config::parse(&text);
    }
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.contains(&format!("`{key}`")) => Err(e),
        Err(_) => Ok(()),
    }
}

#[test]
fn the_documented_ranges_are_the_enforced_ones() {
    let doc = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    // One table: a blank line would end it and print the rest as text.
    let lines: Vec<&str> = doc.lines().collect();
    for pair in lines.windows(2) {
        assert!(
            !pair[1].starts_with("| `") || pair[0].starts_with('|'),
            "docs/configuration.md: a table row without its table: {}",
            pair[1]
        );
    }
    let mut checked = 0;
    let mut wrong = Vec::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split(" | ").collect();
        let Some(key) = cells
            .first()
            .and_then(|c| c.strip_prefix("| `"))
            .and_then(|c| c.strip_suffix('`'))
        else {
            continue;
        };
        if key.starts_with('[') || key.contains("[]") || cells.len() < 3 {
            continue;
        }
        let Some(Allowed {
            lo,
            hi,
            float,
            unbounded,
        }) = bounds(cells[1])
        else {
            continue;
        };
        let step = if float { 1e-3 } else { 1.0 };
        let mut expect = |value: f64, accepted: bool| {
            let v = verdict(key, value, float);
            if v.is_ok() != accepted {
                wrong.push(format!(
                    "{key} = {value}: documented {}, but {}",
                    if accepted { "allowed" } else { "refused" },
                    match v {
                        Ok(()) => "accepted".to_owned(),
                        Err(e) => format!("refused: {e}"),
                    }
                ));
            }
        };
        if let Some(b) = lo {
            checked += 1;
            if b.inclusive {
                expect(b.value, true);
                expect(b.value - step, false);
            } else {
                expect(b.value, false);
                expect(b.value + step, true);
            }
        }
        match hi {
            Some(b) => {
                checked += 1;
                if b.inclusive {
                    expect(b.value, true);
                    expect(b.value + step, false);
                } else {
                    expect(b.value, false);
                    expect(b.value - step, true);
                }
            }
            // No upper bound documented: none enforced either (up to 10^9).
            None if unbounded => expect(1e9, true),
            None => {}
        }
    }
    assert!(
        checked > 40,
        "only {checked} bounds found in docs/configuration.md"
    );
    assert!(
        wrong.is_empty(),
        "docs/configuration.md and the parser disagree:\n{}",
        wrong.join("\n")
    );
}
