//! Control messages over a QUIC bidirectional stream.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use quinn::{RecvStream, SendStream};
use thiserror::Error;
use x0_wire::control::FRAME_HEADER_LEN;
use x0_wire::{ControlMessage, DecodeError, FrameHeader};

use crate::metrics::LinkMetrics;

/// Failures reading or writing control messages.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The stream or connection ended.
    #[error("control stream closed: {0}")]
    Closed(String),
    /// The peer sent bytes that do not parse; counted in `control_messages_malformed`.
    #[error("malformed control message: {0}")]
    Malformed(#[from] DecodeError),
}

/// One end of a control stream.
#[derive(Debug)]
pub struct ControlStream {
    /// Sending half.
    pub send: ControlSender,
    /// Receiving half.
    pub recv: ControlReceiver,
}

/// Writes control messages.
#[derive(Debug)]
pub struct ControlSender {
    stream: SendStream,
}

/// Reads control messages, bounding every frame before reading it.
#[derive(Debug)]
pub struct ControlReceiver {
    stream: RecvStream,
    metrics: Arc<LinkMetrics>,
}

impl ControlStream {
    pub(crate) fn new(send: SendStream, recv: RecvStream, metrics: Arc<LinkMetrics>) -> Self {
        Self {
            send: ControlSender { stream: send },
            recv: ControlReceiver {
                stream: recv,
                metrics,
            },
        }
    }
}

impl ControlSender {
    /// Sends one message.
    pub async fn send(&mut self, msg: &ControlMessage) -> Result<(), ControlError> {
        self.stream
            .write_all(&msg.encode())
            .await
            .map_err(|e| ControlError::Closed(e.to_string()))
    }

    /// Finishes the stream (no more messages).
    pub fn finish(&mut self) {
        let _ = self.stream.finish();
    }
}

impl ControlReceiver {
    /// Reads one message.
    pub async fn recv(&mut self) -> Result<ControlMessage, ControlError> {
        let mut header = [0u8; FRAME_HEADER_LEN];
        self.stream
            .read_exact(&mut header)
            .await
            .map_err(|e| ControlError::Closed(e.to_string()))?;
        let header = FrameHeader::parse(header).map_err(|e| self.malformed(e))?;
        let mut payload = vec![0u8; header.len];
        self.stream
            .read_exact(&mut payload)
            .await
            .map_err(|e| ControlError::Closed(e.to_string()))?;
        ControlMessage::decode(header.kind, &payload).map_err(|e| self.malformed(e))
    }

    fn malformed(&self, e: DecodeError) -> ControlError {
        self.metrics
            .control_messages_malformed
            .fetch_add(1, Ordering::Relaxed);
        ControlError::Malformed(e)
    }
}
