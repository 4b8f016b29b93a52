//! What a Postgres client sends, checked before pgwire decodes it.
//!
//! pgwire 0.41's decoders read a message's fields without checking them against the message's
//! length: a Bind whose parameter length points past the bytes received panicked the
//! connection's task (found by fuzzing the listener, issue 14). So each message a client sends
//! is framed and its fields checked here first, and only whole, well-formed messages reach
//! pgwire; a malformed one ends the connection with a protocol-violation error that names the
//! message and what was wrong with it. SSL and GSS encryption requests are answered "no" here.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The longest message a client may send (a query's text, a Bind's parameters).
const MAX_MESSAGE: usize = 64 << 20;
/// The longest startup message (Postgres's own limit).
const MAX_STARTUP: usize = 10_000;
const SSL_REQUEST: i32 = 80_877_103;
const GSS_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

/// Answer "no" to each SSL or GSS encryption request the client opens with; returns what it
/// sent after them.
pub(crate) async fn refuse_encryption(socket: &mut TcpStream) -> io::Result<BytesMut> {
    let mut received = BytesMut::with_capacity(512);
    loop {
        while received.len() < 8 {
            if socket.read_buf(&mut received).await? == 0 {
                return Ok(received);
            }
        }
        let (length, code) = (be_i32(&received[..4]), be_i32(&received[4..8]));
        if length != 8 || (code != SSL_REQUEST && code != GSS_REQUEST) {
            return Ok(received);
        }
        socket.write_all(b"N").await?;
        received.advance(8);
    }
}

/// A client connection whose reads give only whole messages that passed [`check_next`].
pub(crate) struct CheckedStream {
    inner: TcpStream,
    /// What the client sent and pgwire has not read yet; the first `checked` bytes are checked.
    received: BytesMut,
    checked: usize,
    /// Still before the startup message (messages have no type byte yet).
    starting: bool,
    closed: bool,
}

impl CheckedStream {
    /// `received`: what was read from `inner` already.
    pub(crate) fn new(inner: TcpStream, received: BytesMut) -> Self {
        CheckedStream { inner, received, checked: 0, starting: true, closed: false }
    }
}

impl AsyncRead for CheckedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.checked > 0 {
                let n = this.checked.min(buf.remaining());
                buf.put_slice(&this.received[..n]);
                this.received.advance(n);
                this.checked -= n;
                return Poll::Ready(Ok(()));
            }
            match check_next(&this.received, &mut this.starting) {
                Ok(Some(length)) => {
                    this.checked = length;
                    continue;
                }
                Ok(None) => {}
                Err(why) => return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, why))),
            }
            if this.closed {
                // The end of the stream; a message cut short is dropped with the connection.
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.closed = true;
            }
            this.received.extend_from_slice(read.filled());
        }
    }
}

impl AsyncWrite for CheckedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

fn be_i32(bytes: &[u8]) -> i32 {
    i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// The length of the whole message at the start of `received` once it has all arrived and its
/// fields fit it; `None` while it has not all arrived; what is wrong with it otherwise.
pub(crate) fn check_next(received: &[u8], starting: &mut bool) -> Result<Option<usize>, String> {
    if *starting {
        if received.len() < 4 {
            return Ok(None);
        }
        let length = be_i32(received);
        if length < 8 || length as usize > MAX_STARTUP {
            return Err(format!("a startup message of {length} bytes (it must have 8 to {MAX_STARTUP})"));
        }
        let length = length as usize;
        if received.len() < length {
            return Ok(None);
        }
        let code = be_i32(&received[4..8]);
        let mut fields = Fields { body: &received[8..length], at: 0, message: "startup" };
        match code {
            CANCEL_REQUEST if length == 16 => {}
            CANCEL_REQUEST => return Err(format!("a cancel request of {length} bytes (it has 16)")),
            _ if code >> 16 == 3 => {
                // Name and value pairs, then an empty name.
                while fields.cstring("a parameter name")? > 0 {
                    fields.cstring("a parameter value")?;
                }
                fields.end()?;
                *starting = false;
            }
            _ => {
                return Err(format!(
                    "a startup message for protocol {}.{} (weir speaks 3.0)",
                    code >> 16,
                    code & 0xffff
                ));
            }
        }
        return Ok(Some(length));
    }
    if received.len() < 5 {
        return Ok(None);
    }
    let (tag, length) = (received[0], be_i32(&received[1..5]));
    let message = name(tag).ok_or_else(|| format!("a message of unknown type {:?} (byte {tag})", tag as char))?;
    if length < 4 || length as usize > MAX_MESSAGE {
        return Err(format!("a {message} message of {length} bytes (it must have 4 to {MAX_MESSAGE})"));
    }
    let total = 1 + length as usize;
    if received.len() < total {
        return Ok(None);
    }
    let mut fields = Fields { body: &received[5..total], at: 0, message };
    match tag {
        b'Q' | b'f' => {
            fields.cstring("its text")?;
        }
        b'P' => {
            fields.cstring("the statement name")?;
            fields.cstring("the query")?;
            let types = fields.count("the parameter type count")?;
            fields.skip(types * 4, "the parameter types")?;
        }
        b'B' => {
            fields.cstring("the portal name")?;
            fields.cstring("the statement name")?;
            let formats = fields.count("the parameter format count")?;
            fields.skip(formats * 2, "the parameter formats")?;
            for _ in 0..fields.count("the parameter count")? {
                let length = fields.i32("a parameter's length")?;
                if length < -1 {
                    return Err(format!("an invalid Bind message: a parameter of length {length}"));
                }
                if length > 0 {
                    fields.skip(length as usize, "a parameter's value")?;
                }
            }
            let results = fields.count("the result format count")?;
            fields.skip(results * 2, "the result formats")?;
        }
        b'D' | b'C' => {
            let target = fields.take(1, "what it names")?[0];
            if target != b'S' && target != b'P' {
                return Err(format!(
                    "an invalid {message} message: it names {:?}, not a statement (S) or a portal (P)",
                    target as char
                ));
            }
            fields.cstring("the name")?;
        }
        b'E' => {
            fields.cstring("the portal name")?;
            fields.i32("the row limit")?;
        }
        // Bytes of any shape: a password (read up to its end), COPY data.
        b'p' | b'd' => fields.at = fields.body.len(),
        // Sync, Flush, Terminate, CopyDone: nothing.
        _ => {}
    }
    fields.end()?;
    Ok(Some(total))
}

fn name(tag: u8) -> Option<&'static str> {
    Some(match tag {
        b'Q' => "Query",
        b'P' => "Parse",
        b'B' => "Bind",
        b'D' => "Describe",
        b'C' => "Close",
        b'E' => "Execute",
        b'H' => "Flush",
        b'S' => "Sync",
        b'X' => "Terminate",
        b'p' => "password",
        b'd' => "CopyData",
        b'c' => "CopyDone",
        b'f' => "CopyFail",
        _ => return None,
    })
}

/// The fields of one message's body, read in order.
struct Fields<'a> {
    body: &'a [u8],
    at: usize,
    message: &'static str,
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        match self.at.checked_add(n) {
            Some(end) if end <= self.body.len() => {
                let bytes = &self.body[self.at..end];
                self.at = end;
                Ok(bytes)
            }
            _ => Err(format!(
                "an invalid {} message: {what} ({n} bytes at byte {}) runs past its end ({} bytes)",
                self.message,
                self.at,
                self.body.len()
            )),
        }
    }

    fn skip(&mut self, n: usize, what: &str) -> Result<(), String> {
        self.take(n, what).map(|_| ())
    }

    /// A NUL-terminated string; its length without the NUL.
    fn cstring(&mut self, what: &str) -> Result<usize, String> {
        let rest = &self.body[self.at..];
        let length = rest.iter().position(|b| *b == 0).ok_or_else(|| {
            format!("an invalid {} message: {what} at byte {} has no terminating NUL", self.message, self.at)
        })?;
        self.at += length + 1;
        Ok(length)
    }

    fn i32(&mut self, what: &str) -> Result<i32, String> {
        self.take(4, what).map(be_i32)
    }

    /// A 16-bit count, which may not be negative.
    fn count(&mut self, what: &str) -> Result<usize, String> {
        let bytes = self.take(2, what)?;
        let n = i16::from_be_bytes([bytes[0], bytes[1]]);
        usize::try_from(n).map_err(|_| format!("an invalid {} message: {what} is {n}", self.message))
    }

    fn end(&self) -> Result<(), String> {
        if self.at == self.body.len() {
            Ok(())
        } else {
            Err(format!(
                "an invalid {} message: {} bytes follow its last field at byte {}",
                self.message,
                self.body.len() - self.at,
                self.at
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn check(bytes: &[u8]) -> Result<Option<usize>, String> {
        check_next(bytes, &mut false)
    }

    #[test]
    fn whole_well_formed_messages_pass() {
        let query = message(b'Q', b"SELECT 1\0");
        assert_eq!(check(&query), Ok(Some(query.len())));
        assert_eq!(check(&query[..query.len() - 1]), Ok(None), "not all there yet");
        let mut bind = b"\0s1\0".to_vec();
        bind.extend_from_slice(&[0, 1, 0, 0, 0, 2, 0, 0, 0, 3]);
        bind.extend_from_slice(b"c-1");
        bind.extend_from_slice(&(-1i32).to_be_bytes());
        bind.extend_from_slice(&[0, 1, 0, 1]);
        let bind = message(b'B', &bind);
        assert_eq!(check(&bind), Ok(Some(bind.len())));
        let mut startup = 196_608i32.to_be_bytes().to_vec();
        startup.extend_from_slice(b"user\0weir\0\0");
        let mut framed = (startup.len() as i32 + 4).to_be_bytes().to_vec();
        framed.extend_from_slice(&startup);
        let mut starting = true;
        assert_eq!(check_next(&framed, &mut starting), Ok(Some(framed.len())));
        assert!(!starting);
    }

    #[test]
    fn fields_that_run_past_their_message_are_refused_naming_them() {
        // The fuzzer's find: a Bind parameter whose length points past the message.
        let mut bind = b"\0s1\0".to_vec();
        bind.extend_from_slice(&[0, 0, 0, 1, 0x7f, 0, 0, 0]);
        let error = check(&message(b'B', &bind)).unwrap_err();
        assert!(
            error.starts_with("an invalid Bind message: a parameter's value (2130706432 bytes at byte 12)"),
            "{error}"
        );
        let error = check(&message(b'Q', b"SELECT 1")).unwrap_err();
        assert_eq!(error, "an invalid Query message: its text at byte 0 has no terminating NUL");
        let error = check(&message(b'E', b"\0\0\0")).unwrap_err();
        assert!(error.contains("the row limit (4 bytes at byte 1) runs past its end (3 bytes)"), "{error}");
        let error = check(&message(b'D', b"X\0")).unwrap_err();
        assert!(error.contains("not a statement (S) or a portal (P)"), "{error}");
        let error = check(&message(b'S', b"x")).unwrap_err();
        assert_eq!(error, "an invalid Sync message: 1 bytes follow its last field at byte 0");
        let error = check(b"Q\xff\xff\xff\xff").unwrap_err();
        assert!(error.starts_with("a Query message of -1 bytes"), "{error}");
        assert!(check(b"F\0\0\0\x04").unwrap_err().contains("unknown type 'F'"));
        let error = check_next(b"\0\0\0\x08\x04\xd2\x16\x2f", &mut true).unwrap_err();
        assert_eq!(error, "a startup message for protocol 1234.5679 (weir speaks 3.0)");
    }
}
