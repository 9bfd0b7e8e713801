//! The fuzz target `fuzz/tls_stream`'s check (built with `--cfg fuzzing` only): arbitrary
//! client bytes, split at arbitrary points, into [`TlsStream`], during its handshake or
//! after a real one, with no panic and what it keeps bounded.

use std::future::Future;
use std::io::{Read, Write};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

use crate::server::tls::stream::{TlsStream, MAX_HELD_INPUT, MAX_HELD_OUTPUT, READ_SIZE};

/// A P-256 certificate for `localhost` and its key, made for the fuzz target alone.
const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBkjCCATigAwIBAgIUHeyXOc0tgLgeLFqI5EDiSkYDrHwwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwNzE3NDYwMFoYDzIxMjYxMTEz
MTc0NjAwWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAQ/0+oPI7Sa4nWFdzmVeEVRM6Rtio/9o8B4Awio2fWrthMHu1Fjy3Xm
yA4j1ffqxKE03Kz7tTAQd0z+BfKUkN+Fo2YwZDAdBgNVHQ4EFgQUTY9MbFXMm+Rj
qhwjSk0tAQe7PFgwHwYDVR0jBBgwFoAUTY9MbFXMm+RjqhwjSk0tAQe7PFgwFAYD
VR0RBA0wC4IJbG9jYWxob3N0MAwGA1UdEwEB/wQCMAAwCgYIKoZIzj0EAwIDSAAw
RQIgaDzYnMfc0a/FBeXiEbGZh0PBGOB2mum3cLnFSJq0bWYCIQCtrAg78RzKtEJE
MU1LbQeCkoh/A0q/caaIV2JJtEVsyA==
-----END CERTIFICATE-----";
const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgSkPVpn4kBWLR2dVQ
B4Yp95RP9UMKIc/FrGnQUNaxlVyhRANCAAQ/0+oPI7Sa4nWFdzmVeEVRM6Rtio/9
o8B4Awio2fWrthMHu1Fjy3XmyA4j1ffqxKE03Kz7tTAQd0z+BfKUkN+F
-----END PRIVATE KEY-----";

/// Most the stream may keep: a partial record after a handshake message, plaintext of one
/// read, records not yet taken.
const BOUND: usize = MAX_HELD_INPUT + READ_SIZE + MAX_HELD_OUTPUT + READ_SIZE;

fn configs() -> &'static (Arc<ServerConfig>, Arc<ClientConfig>) {
    static CONFIGS: OnceLock<(Arc<ServerConfig>, Arc<ClientConfig>)> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let cert = CertificateDer::from_pem_slice(CERT.as_bytes()).expect("the fuzz certificate");
        let key = PrivateKeyDer::from_pem_slice(KEY.as_bytes()).expect("the fuzz key");
        let mut server = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("a server config");
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut roots = RootCertStore::empty();
        roots.add(cert).expect("trust the fuzz certificate");
        let mut client = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        (Arc::new(server), Arc::new(client))
    })
}

/// The fuzz input, read as the script of a client.
struct Script<'a>(&'a [u8]);

impl<'a> Script<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    /// Up to `max` bytes, as many as the next byte says.
    fn chunk(&mut self, max: usize) -> &'a [u8] {
        let len = usize::from(self.byte().unwrap_or(0))
            .min(max)
            .min(self.0.len());
        let (chunk, rest) = self.0.split_at(len);
        self.0 = rest;
        chunk
    }
}

fn cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

/// Writes `bytes` to the client's end of the pipe (large enough to take them).
fn send(client: &mut DuplexStream, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match Pin::new(&mut *client).poll_write(&mut cx(), bytes) {
            Poll::Ready(Ok(wrote)) if wrote > 0 => bytes = &bytes[wrote..],
            _ => return,
        }
    }
}

/// What the server sent, all that is in the pipe.
fn received(client: &mut DuplexStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut *client).poll_read(&mut cx(), &mut read) {
            Poll::Ready(Ok(())) if !read.filled().is_empty() => {
                all.extend_from_slice(read.filled())
            }
            _ => return all,
        }
    }
}

/// The server's bytes into the client; false if it refused them.
fn feed(tls: &mut ClientConnection, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        match tls.read_tls(&mut bytes) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        if tls.process_new_packets().is_err() {
            return false;
        }
    }
    true
}

/// Reads what the server stream gives, into buffers of `size` bytes, until it waits, ends
/// or fails; appends it to `into`. False once it ended or failed.
fn read_all(stream: &mut TlsStream<DuplexStream>, size: usize, into: &mut Vec<u8>) -> bool {
    let mut buf = vec![0u8; size.max(1)];
    loop {
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut *stream).poll_read(&mut cx(), &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => return false,
            Poll::Ready(Ok(())) => into.extend_from_slice(read.filled()),
            Poll::Ready(Err(_)) => return false,
            Poll::Pending => return true,
        }
        assert!(
            stream.held_bytes() <= BOUND,
            "{} bytes held",
            stream.held_bytes()
        );
    }
}

/// The check: the first byte chooses raw bytes during the handshake, or a real handshake
/// then a script of client records, raw bytes, server writes and closes.
pub(crate) fn check(data: &[u8]) {
    let mut script = Script(data);
    let (server_config, client_config) = configs();
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let mut accept = Box::pin(TlsStream::accept(server, server_config.clone()));
    if script.byte().unwrap_or(0) % 2 == 0 {
        // The client's bytes from the first, split as the script says.
        while !script.0.is_empty() {
            let chunk = script.chunk(usize::MAX);
            send(&mut client, chunk);
            if let Poll::Ready(_) = accept.as_mut().poll(&mut cx()) {
                return;
            }
            let _ = received(&mut client);
        }
        return;
    }
    let name = ServerName::try_from("localhost").expect("a name");
    let mut tls = ClientConnection::new(client_config.clone(), name).expect("a client");
    let mut stream = loop {
        let mut out = Vec::new();
        while tls.wants_write() {
            if tls.write_tls(&mut out).is_err() {
                return;
            }
        }
        // The client's records split where the script says.
        let split = usize::from(script.byte().unwrap_or(255)).min(out.len());
        let mut done = None;
        for part in [&out[..split], &out[split..]] {
            send(&mut client, part);
            if done.is_none() {
                if let Poll::Ready(result) = accept.as_mut().poll(&mut cx()) {
                    done = Some(result);
                }
            }
        }
        match done {
            Some(Ok(stream)) => break stream,
            Some(Err(error)) => panic!("a real client's handshake failed: {error}"),
            None => {}
        }
        let back = received(&mut client);
        assert!(
            feed(&mut tls, &back),
            "the client refused the server's handshake"
        );
    };
    let mut sent = Vec::new();
    let mut got = Vec::new();
    let mut intact = true;
    let mut open = true;
    let mut shut_down = false;
    while open {
        let Some(op) = script.byte() else { break };
        match op % 5 {
            0 => {
                // Plaintext, encrypted by the client, its records split anywhere.
                let chunk = script.chunk(usize::MAX);
                let _ = tls.writer().write_all(chunk);
                sent.extend_from_slice(chunk);
                let mut out = Vec::new();
                while tls.wants_write() && tls.write_tls(&mut out).is_ok() {}
                let split = usize::from(script.byte().unwrap_or(0)) * 16 % (out.len() + 1);
                send(&mut client, &out[..split]);
                open = read_all(&mut stream, usize::from(op), &mut got);
                send(&mut client, &out[split..]);
            }
            1 => {
                // Anything at all: the session may fail, not panic.
                send(&mut client, script.chunk(usize::MAX));
                intact = false;
            }
            2 => {
                // The server writes; the client reads it back.
                let chunk = script.chunk(usize::MAX);
                let wrote = match Pin::new(&mut stream).poll_write(&mut cx(), chunk) {
                    Poll::Ready(Ok(wrote)) => wrote,
                    _ => 0,
                };
                let _ = Pin::new(&mut stream).poll_flush(&mut cx());
                let back = received(&mut client);
                if intact && feed(&mut tls, &back) {
                    let mut plain = vec![0u8; wrote];
                    if wrote > 0 {
                        let read = tls.reader().read(&mut plain).unwrap_or(0);
                        assert_eq!(&plain[..read], &chunk[..read], "the server's plaintext");
                    }
                }
            }
            3 => {
                tls.send_close_notify();
                let mut out = Vec::new();
                while tls.wants_write() && tls.write_tls(&mut out).is_ok() {}
                send(&mut client, &out);
            }
            _ => {
                // From now on the stream drains what arrives unread.
                shut_down = true;
                let _ = Pin::new(&mut stream).poll_shutdown(&mut cx());
                let _ = received(&mut client);
            }
        }
        open = open && read_all(&mut stream, usize::from(op) * 64 + 1, &mut got);
        assert!(
            stream.held_bytes() <= BOUND,
            "{} bytes held",
            stream.held_bytes()
        );
        if intact {
            assert!(
                sent.starts_with(&got),
                "the stream read what the client did not send"
            );
        }
    }
    if intact && open && !shut_down {
        assert_eq!(got, sent, "the stream lost or changed what the client sent");
    }
}
