//! A small NBD client (fixed newstyle, `NBD_OPT_GO`, simple replies, one request at a
//! time) for Tandem's own use: the demo service keeps its data on the mirrored volume
//! through it, and tests use it to read a volume back. Real applications use the
//! kernel's nbd driver, qemu or libnbd.

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::proto::*;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("NBD connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("NBD server broke the protocol: {0}")]
    Protocol(String),
    #[error("NBD server refused the export (option reply {0:#x})")]
    Refused(u32),
    #[error("NBD request failed with errno {0}")]
    Errno(u32),
}

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISCONNECT: u16 = 2;
const CMD_FLUSH: u16 = 3;

/// One connection to an export.
pub struct NbdClient {
    stream: UnixStream,
    size: u64,
    transmission_flags: u16,
    next_handle: u64,
}

impl NbdClient {
    /// Connects to the Unix socket and negotiates the default export.
    pub async fn connect(socket: &Path) -> Result<NbdClient, ClientError> {
        let mut s = UnixStream::connect(socket).await?;
        if s.read_u64().await? != NBDMAGIC || s.read_u64().await? != IHAVEOPT {
            return Err(ClientError::Protocol("not a newstyle NBD server".into()));
        }
        let server_flags = s.read_u16().await?;
        if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(ClientError::Protocol("server is not fixed newstyle".into()));
        }
        let mut client_flags = CLIENT_FIXED_NEWSTYLE;
        if server_flags & FLAG_NO_ZEROES != 0 {
            client_flags |= CLIENT_NO_ZEROES;
        }
        s.write_u32(client_flags).await?;
        // NBD_OPT_GO: empty export name, no information requests.
        let mut opt = Vec::with_capacity(24);
        opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
        opt.extend_from_slice(&OPT_GO.to_be_bytes());
        opt.extend_from_slice(&6u32.to_be_bytes());
        opt.extend_from_slice(&0u32.to_be_bytes());
        opt.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&opt).await?;
        let mut size = None;
        let mut transmission_flags = 0;
        loop {
            if s.read_u64().await? != OPTION_REPLY_MAGIC {
                return Err(ClientError::Protocol("bad option reply magic".into()));
            }
            let _option = s.read_u32().await?;
            let reply = s.read_u32().await?;
            let len = s.read_u32().await?;
            if len > 64 << 10 {
                return Err(ClientError::Protocol(format!(
                    "option reply of {len} bytes"
                )));
            }
            let mut data = vec![0u8; len as usize];
            s.read_exact(&mut data).await?;
            match reply {
                REP_ACK => break,
                REP_INFO if data.len() >= 12 && data[..2] == INFO_EXPORT.to_be_bytes() => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&data[2..10]);
                    size = Some(u64::from_be_bytes(b));
                    transmission_flags = u16::from_be_bytes([data[10], data[11]]);
                }
                REP_INFO => {}
                r if r & (1 << 31) != 0 => return Err(ClientError::Refused(r)),
                r => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected option reply {r}"
                    )))
                }
            }
        }
        let size = size.ok_or_else(|| ClientError::Protocol("no export size".into()))?;
        Ok(NbdClient {
            stream: s,
            size,
            transmission_flags,
            next_handle: 1,
        })
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True if the server exports read-only.
    pub fn read_only(&self) -> bool {
        self.transmission_flags & TFLAG_READ_ONLY != 0
    }

    /// The export's transmission flags (`NBD_FLAG_*`) from the negotiation.
    pub fn transmission_flags(&self) -> u16 {
        self.transmission_flags
    }

    /// Ends the negotiation side: the socket, in the transmission phase, for a
    /// client that speaks the protocol itself (the kernel's nbd driver).
    pub fn into_socket(self) -> UnixStream {
        self.stream
    }

    async fn request(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> Result<u64, ClientError> {
        let handle = self.next_handle;
        self.next_handle += 1;
        let mut req = Vec::with_capacity(28 + payload.len());
        req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req.extend_from_slice(&flags.to_be_bytes());
        req.extend_from_slice(&command.to_be_bytes());
        req.extend_from_slice(&handle.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&len.to_be_bytes());
        req.extend_from_slice(payload);
        self.stream.write_all(&req).await?;
        Ok(handle)
    }

    async fn simple_reply(&mut self, handle: u64) -> Result<(), ClientError> {
        if self.stream.read_u32().await? != SIMPLE_REPLY_MAGIC {
            return Err(ClientError::Protocol("bad reply magic".into()));
        }
        let errno = self.stream.read_u32().await?;
        if self.stream.read_u64().await? != handle {
            return Err(ClientError::Protocol("reply for another request".into()));
        }
        if errno != 0 {
            return Err(ClientError::Errno(errno));
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, ClientError> {
        let h = self.request(CMD_READ, 0, offset, len, &[]).await?;
        self.simple_reply(h).await?;
        let mut data = vec![0u8; len as usize];
        self.stream.read_exact(&mut data).await?;
        Ok(data)
    }

    /// Writes `data` at `offset`; with `fua`, durable when this returns.
    pub async fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<(), ClientError> {
        let len = u32::try_from(data.len())
            .map_err(|_| ClientError::Protocol("write larger than 4 GiB".into()))?;
        let flags = if fua { CMD_FLAG_FUA } else { 0 };
        let h = self.request(CMD_WRITE, flags, offset, len, data).await?;
        self.simple_reply(h).await
    }

    /// Makes every completed write durable.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        let h = self.request(CMD_FLUSH, 0, 0, 0, &[]).await?;
        self.simple_reply(h).await
    }

    /// Ends the session politely.
    pub async fn disconnect(mut self) -> Result<(), ClientError> {
        self.request(CMD_DISCONNECT, 0, 0, 0, &[]).await?;
        self.stream.shutdown().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::mirror::nbd::{NbdServer, ServerConfig};
    use crate::mirror::volume::Volume;

    #[tokio::test]
    async fn writes_read_back_through_the_server() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("vol");
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(1 << 20))
            .expect("backing file");
        let socket = dir.path().join("nbd.sock");
        let server = NbdServer::bind(ServerConfig {
            name: "t".into(),
            description: String::new(),
            unix: Some(socket.clone()),
            tcp: None,
            metrics: None,
        })
        .await
        .expect("bind");
        let volume = Arc::new(Volume::open(&file, false).expect("open"));
        let task = tokio::spawn(server.run(volume));
        let mut c = NbdClient::connect(&socket).await.expect("connect");
        assert_eq!(c.size(), 1 << 20);
        assert!(!c.read_only());
        c.write(8192, b"tandem", true).await.expect("write");
        c.flush().await.expect("flush");
        assert_eq!(c.read(8192, 6).await.expect("read"), b"tandem");
        // Past the end: the server's error reaches the caller, the connection lives on.
        assert!(matches!(
            c.read(1 << 20, 4096).await,
            Err(ClientError::Errno(_))
        ));
        assert_eq!(c.read(8192, 6).await.expect("read again"), b"tandem");
        c.disconnect().await.expect("disconnect");
        task.abort();
    }
}
