//! Output for people and for scripts: plain text tables and pretty JSON on stdout.

/// `text` safe to print on a terminal: control characters (C0, DEL, C1: the escape sequences
/// that move the cursor, rewrite lines or retitle the window, and line breaks that would fake
/// rows) and the invisible formatting characters that reorder or hide text (bidirectional
/// overrides and isolates, zero-width characters) are written as `\u{…}` escapes. Much of
/// what a table shows comes from other nodes (a peer's close reason, node IDs it claims), so
/// every cell goes through this.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    fn hidden(c: char) -> bool {
        c.is_control()
            || matches!(
                c,
                '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}'
            )
    }
    if !text.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if hidden(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A plain text table: a header row, then rows, columns padded to their widest cell. Every
/// cell is made [`printable`].
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| printable(c).into_owned()).collect())
        .collect();
    let rows = rows.as_slice();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                s.push_str(cell);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Prints `v` as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize + ?Sized>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_to_the_widest_cell() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["x".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    LONGER\nxyz  1\nx    22\n");
    }

    #[test]
    fn cells_cannot_carry_terminal_controls() {
        // A peer's close reason with an escape sequence (clear the screen), a fake row, a
        // right-to-left override and a zero-width space.
        let reason = "bye\u{1b}[2J\u{1b}]0;owned\u{7}\nfake  row\r\u{9b}x\u{202e}txt.exe\u{200b}";
        let t = table(&["PEER", "LAST ERROR"], &[vec!["ab".into(), reason.into()]]);
        assert_eq!(t.lines().count(), 2, "{t}");
        assert!(
            !t.chars()
                .any(|c| c != '\n' && (c.is_control() || c == '\u{202e}' || c == '\u{200b}')),
            "{t:?}"
        );
        assert!(
            t.contains(
                r"bye\u{1b}[2J\u{1b}]0;owned\u{7}\u{a}fake  row\u{d}\u{9b}x\u{202e}txt.exe\u{200b}"
            ),
            "{t}"
        );
        assert_eq!(
            printable("plain ünïcode, tabs\tnot"),
            "plain ünïcode, tabs\\u{9}not"
        );
        assert!(matches!(printable("plain"), std::borrow::Cow::Borrowed(_)));
    }
}
