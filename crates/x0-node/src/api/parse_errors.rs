//! JSON bodies for the answers hyper writes on its own.
//!
//! When a request cannot be parsed (not HTTP, a bad header, a request line or head over the
//! size limit) hyper answers before any service runs — `400`, `414` or `431` with an empty
//! body — and closes the connection. docs/api.md promises a JSON `{"error": …}` body for every
//! error, so the connection's writer recognises such an answer and writes it with one.
//!
//! Recognising it is exact: hyper's automatic answer is a bare head (`HTTP/1.1 4xx …`,
//! `content-length: 0`, nothing after the blank line) and always the last thing written on the
//! connection, while every error answer of the router carries a JSON body
//! (`super::json_errors`). The writer is not vectored, so hyper hands it whole buffers.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose writer gives hyper's automatic error answers a JSON body.
#[derive(Debug)]
pub(crate) struct JsonParseErrors<S> {
    inner: S,
    /// A rewritten answer still to be written, and how much of it was.
    pending: Vec<u8>,
    written: usize,
}

impl<S> JsonParseErrors<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> JsonParseErrors<S> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonParseErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        let Some(rewritten) = with_json_body(buf) else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        this.pending = rewritten;
        // Whatever goes now; the rest on the next write, flush or shutdown.
        if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// What an automatic answer says, by status.
fn message(status: u16) -> String {
    match status {
        431 => format!(
            "the request line and headers are larger than {} bytes",
            super::MAX_HEAD_BYTES
        ),
        414 => "the request target is too long".to_owned(),
        _ => "not an HTTP/1.1 request (bad request line or header)".to_owned(),
    }
}

/// `buf` with hyper's automatic error answer at its end rewritten to carry a JSON body, or
/// `None` when `buf` ends with no such answer.
fn with_json_body(buf: &[u8]) -> Option<Vec<u8>> {
    const END: &[u8] = b"\r\n\r\n";
    if !buf.ends_with(END) {
        return None;
    }
    // The answer's head starts at the last status line; nothing but that head follows it.
    let start = (0..buf.len().saturating_sub(12)).rev().find(|&i| {
        let rest = &buf[i..];
        (rest.starts_with(b"HTTP/1.1 ") || rest.starts_with(b"HTTP/1.0 "))
            && (rest[9] == b'4' || rest[9] == b'5')
    })?;
    let head = &buf[start..];
    if head.windows(END.len()).position(|w| w == END) != Some(head.len() - END.len()) {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.get(9..12)?.parse().ok()?;
    let mut empty = false;
    let mut kept = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("content-length") {
            empty = value.trim() == "0";
        } else if !name.eq_ignore_ascii_case("connection") {
            kept.push(line);
        }
    }
    if !empty {
        return None;
    }
    let body = serde_json::to_string(&super::ApiError {
        error: message(status),
    })
    .ok()?;
    let mut out = buf[..start].to_vec();
    out.extend_from_slice(status_line.as_bytes());
    out.extend_from_slice(b"\r\nconnection: close\r\ncontent-type: application/json\r\n");
    for line in kept {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n{body}", body.len()).as_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "date: Mon, 07 Dec 2026 22:25:32 GMT";

    #[test]
    fn automatic_answers_get_a_json_body() {
        for (status, words) in [
            (400, "Bad Request"),
            (431, "Request Header Fields Too Large"),
        ] {
            let head = format!(
                "HTTP/1.1 {status} {words}\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n\r\n"
            );
            let out = String::from_utf8(with_json_body(head.as_bytes()).unwrap()).unwrap();
            let (head, body) = out.split_once("\r\n\r\n").unwrap();
            assert!(
                head.starts_with(&format!("HTTP/1.1 {status} {words}\r\n")),
                "{head}"
            );
            assert!(head.contains("content-type: application/json"), "{head}");
            assert!(head.contains(DATE), "{head}");
            assert!(
                head.contains(&format!("content-length: {}", body.len())),
                "{head}"
            );
            assert_eq!(head.matches("connection").count(), 1, "{head}");
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert!(v["error"].is_string(), "{body}");
        }
    }

    #[test]
    fn an_answer_before_the_automatic_one_is_kept() {
        let first =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        let buf = format!(
            "{first}HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        );
        let out = String::from_utf8(with_json_body(buf.as_bytes()).unwrap()).unwrap();
        assert!(out.starts_with(first));
        assert!(out.ends_with("\"}"), "{out}");
    }

    #[test]
    fn other_answers_are_left_alone() {
        for buf in [
            // The router's answers: a body, or no error.
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n{\"error\":\"\"}",
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            // A head written apart from its body.
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n",
            "",
            "\r\n\r\n",
        ] {
            assert!(with_json_body(buf.as_bytes()).is_none(), "{buf:?}");
        }
    }

    #[tokio::test]
    async fn the_writer_sends_the_rewritten_answer() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = JsonParseErrors::new(a);
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            b.read_to_end(&mut out).await.unwrap();
            out
        });
        // The duplex holds 64 bytes: the rewritten answer goes out over several writes.
        assert_eq!(w.write(head).await.unwrap(), head.len());
        w.shutdown().await.unwrap();
        drop(w);
        let out = String::from_utf8(reader.await.unwrap()).unwrap();
        assert!(out.contains("content-type: application/json"), "{out}");
        assert!(out.ends_with("16384 bytes\"}"), "{out}");
    }
}
