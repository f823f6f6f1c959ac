//! A client for a running daemon's HTTP API ([`crate::api`]), used by the CLI's reading
//! commands and by the benchmark harness: one request per connection, bounded in time and size,
//! errors as [`Exit`] values carrying the exit code the CLI should end with.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use crate::config::{Config, DEFAULT_API_LISTEN};
use crate::exit::{self, Exit};

/// Time to connect to the daemon's API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time for a whole request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// An HTTP client for one daemon's API.
#[derive(Debug)]
pub struct Client {
    addr: SocketAddr,
    token: Option<String>,
}

/// Where a daemon listening on `listen` is reached from this machine.
fn connect_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
        }
        IpAddr::V6(v6) if v6.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port())
        }
        _ => listen,
    }
}

/// Reads an API bearer token file (surrounding whitespace trimmed).
pub fn read_token(path: &Path) -> Result<String, Exit> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Exit::new(
            exit::NO_INPUT,
            format!("{}: cannot read the API token: {e}", path.display()),
        )
    })?;
    Ok(text.trim().to_owned())
}

impl Client {
    /// A client for the daemon listening on `listen` (an unspecified address is reached on
    /// loopback), sending `token` as its bearer token.
    pub fn new(listen: SocketAddr, token: Option<String>) -> Self {
        Self {
            addr: connect_addr(listen),
            token,
        }
    }

    /// A client for the daemon configured by `config` (its `[api] listen` and `token_file`;
    /// `token_file` overrides the latter); `api` instead of a configuration file gives the
    /// address directly (default [`DEFAULT_API_LISTEN`]).
    pub fn locate(
        api: Option<SocketAddr>,
        config: Option<&Path>,
        token_file: Option<&Path>,
    ) -> Result<Self, Exit> {
        let (addr, mut file) = match config {
            Some(path) => {
                let config = Config::load(path).map_err(|e| Exit::usage(e.to_string()))?;
                if !config.api.enabled {
                    return Err(Exit::usage(format!(
                        "{}: the daemon's API is disabled (api.enabled = false)",
                        path.display()
                    )));
                }
                (config.api.listen_addr(), config.api.token_file)
            }
            None => (api.unwrap_or(DEFAULT_API_LISTEN), None),
        };
        if let Some(t) = token_file {
            file = Some(t.to_path_buf());
        }
        let token = file.as_deref().map(read_token).transpose()?;
        Ok(Self::new(addr, token))
    }

    /// The address requests go to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn unavailable(&self, why: impl std::fmt::Display) -> Exit {
        Exit::new(
            exit::UNAVAILABLE,
            format!(
                "no x0t daemon answers at {} ({why}); is `x0t up` running? \
                 (--api HOST:PORT or --config FILE point at another one)",
                self.addr
            ),
        )
    }

    /// GETs `path` and returns the status and body.
    pub async fn fetch(&self, path: &str) -> Result<(u16, Bytes), Exit> {
        self.exchange(hyper::Method::GET, path, None).await
    }

    /// Sends one request (with a JSON body, if any) and returns the status and body.
    async fn exchange(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Bytes), Exit> {
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(self.addr))
                .await
                .map_err(|_| self.unavailable("connection timed out"))?
                .map_err(|e| self.unavailable(e))?;
        let exchange = async {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let mut req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, self.addr.to_string())
                .header(hyper::header::ACCEPT, "application/json");
            if body.is_some() {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
            }
            if let Some(t) = &self.token {
                req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let req = req
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| std::io::Error::other(e.to_string()))
                .map_err(hyper_io)?;
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
                .map_err(hyper_io)?
                .to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| self.unavailable("no answer in time"))?
            .map_err(|e| self.unavailable(e))
    }

    /// GETs `path` and decodes the JSON answer, refusing non-2xx answers.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Exit> {
        let body = self.send(hyper::Method::GET, path, None).await?;
        self.decode(path, &body)
    }

    /// Sends a request and returns the body of a 2xx answer; other answers are errors.
    pub async fn send(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, Exit> {
        let (status, body) = self.exchange(method, path, body).await?;
        if status == 401 {
            return Err(Exit::new(
                exit::NO_PERM,
                format!(
                    "the daemon at {} wants an API token: pass --token-file FILE (its \
                     api.token_file) or --config FILE",
                    self.addr
                ),
            ));
        }
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<crate::api::ApiError>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            let message = crate::text::printable(&message);
            return Err(Exit::failure(format!(
                "the daemon at {} answered {status} to {path}: {message}",
                self.addr
            )));
        }
        Ok(body)
    }

    /// GETs `path` and decodes the JSON answer whatever the status (`/health` answers 503 with
    /// a body when the node is not ready).
    pub async fn get_any_status<T: DeserializeOwned>(&self, path: &str) -> Result<T, Exit> {
        let (_, body) = self.fetch(path).await?;
        self.decode(path, &body)
    }

    /// Decodes a JSON answer of `path`.
    pub fn decode<T: DeserializeOwned>(&self, path: &str, body: &[u8]) -> Result<T, Exit> {
        serde_json::from_slice(body).map_err(|e| {
            Exit::new(
                exit::DATA,
                format!(
                    "the answer of {} to {path} is not what this x0t expects ({e}); is it an \
                     x0t daemon of the same version?",
                    self.addr
                ),
            )
        })
    }
}

/// Any error as a boxed error (for the `?`s in one request).
fn hyper_io(e: std::io::Error) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_is_reached_on_loopback() {
        assert_eq!(
            connect_addr("0.0.0.0:5471".parse().unwrap()),
            "127.0.0.1:5471".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            connect_addr("[::]:1".parse().unwrap()),
            "[::1]:1".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            connect_addr("192.0.2.1:9".parse().unwrap()),
            "192.0.2.1:9".parse::<SocketAddr>().unwrap()
        );
    }
}
