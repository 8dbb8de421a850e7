//! A listener's socket: bound on TCP (`IP:PORT`) or as a Unix socket file (`unix:/path`, for
//! the policy service and the milter), and what it accepts.
//!
//! Responsible for: binding, with a hint for the usual errors; a stale socket file left by a
//! backstop that did not stop cleanly is replaced, anything else at that path is left alone and
//! refused; the file is removed when the listener closes. Not responsible for: what is spoken
//! on the connections (the sessions) or which listeners run (`Listeners`).

use crate::config::ListenAddr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UnixListener, UnixStream};

/// Pending connections the kernel may queue for us. SMTP servers speak first, so a client whose
/// handshake was dropped from a full queue waits for a greeting that never comes: be generous
/// (the kernel caps this at net.core.somaxconn).
const LISTEN_BACKLOG: u32 = 4096;

/// A bound socket.
pub enum Bound {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix socket and its file.
    Unix(UnixListener, PathBuf),
}

/// A connection accepted, and who it is from (for the log).
pub enum Accepted {
    /// TCP, and the client's address.
    Tcp(TcpStream, SocketAddr),
    /// A Unix socket (its client is a local process).
    Unix(UnixStream),
}

impl Bound {
    /// Where it listens (for TCP port 0: the port given).
    pub fn local(&self, configured: &ListenAddr) -> ListenAddr {
        match self {
            Bound::Tcp(l) => l.local_addr().map_or(configured.clone(), ListenAddr::Inet),
            Bound::Unix(_, p) => ListenAddr::Unix(p.clone()),
        }
    }

    /// The next connection. Every protocol here answers a request and waits for the next, so
    /// a TCP connection never holds a small answer back for more to send (TCP_NODELAY).
    pub async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            Bound::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok(Accepted::Tcp(s, peer))
            }
            Bound::Unix(l, _) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
        }
    }
}

/// Removes the socket file of a listener that closed (nothing for TCP).
pub fn remove_file(addr: &ListenAddr) {
    if let ListenAddr::Unix(p) = addr
        && let Err(e) = std::fs::remove_file(p)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %p.display(), error = %e, "cannot remove the socket file");
    }
}

/// Binds a TCP listener.
pub fn tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Binds a socket file that any local user may connect to, as to a port on 127.0.0.1: who
/// reaches it is decided by its directory's permissions (Postfix's `private/` works the same
/// way). The MTA runs as another user (`postfix`), so the file alone cannot restrict it.
pub fn unix(path: &Path) -> Result<Bound, String> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let shown = path.display();
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(format!(
                "{shown} exists and is not a socket (not removed: move it away or choose another path)"
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "{shown}: another process listens there already (`ss -lxp src {shown}` shows which)"
            ));
        }
        // left by a backstop that did not stop cleanly: nobody answers on it
        std::fs::remove_file(path)
            .map_err(|e| format!("{shown}: cannot remove the stale socket: {e}"))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "{e}: the directory {} does not exist",
            path.parent().unwrap_or(Path::new("/")).display()
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            "{e}: backstop's user may not create files in {}",
            path.parent().unwrap_or(Path::new("/")).display()
        ),
        _ => e.to_string(),
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("{shown}: cannot set its permissions: {e}"))?;
    Ok(Bound::Unix(listener, path.to_path_buf()))
}

/// An error from binding a TCP listener, with what to do about it where there is something.
pub fn hint(e: &std::io::Error, addr: SocketAddr) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => format!(
            "{e}: ports below 1024 need root or the capability CAP_NET_BIND_SERVICE; run backstop \
             from its systemd unit (AmbientCapabilities=CAP_NET_BIND_SERVICE, see contrib/), or \
             `setcap cap_net_bind_service=+ep` on the binary, or listen on a port above 1023"
        ),
        std::io::ErrorKind::AddrInUse => format!(
            "{e}: another process listens there already (`ss -ltnp 'sport = :{}'` shows which)",
            addr.port()
        ),
        std::io::ErrorKind::AddrNotAvailable => {
            format!("{e}: no interface of this machine has that address")
        }
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_file_replaces_only_a_dead_socket() {
        let d = tempfile::tempdir().unwrap();
        // a regular file is someone's data: refused, kept
        let file = d.path().join("data");
        std::fs::write(&file, "keep me").unwrap();
        let e = unix(&file).err().unwrap();
        assert!(e.contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
        // a socket someone answers on: refused
        let live = d.path().join("live");
        let _other = std::os::unix::net::UnixListener::bind(&live).unwrap();
        let e = unix(&live).err().unwrap();
        assert!(e.contains("another process listens there"), "{e}");
        // a socket nobody answers on: replaced, reachable, and removed at the close
        let stale = d.path().join("stale");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let bound = unix(&stale).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&stale).is_ok());
        drop(bound);
        remove_file(&ListenAddr::Unix(stale.clone()));
        assert!(!stale.exists());
        // a directory that is not there: said so
        let e = unix(&d.path().join("none/sock")).err().unwrap();
        assert!(e.contains("does not exist"), "{e}");
    }
}
