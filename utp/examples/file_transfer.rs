//! The libutp `utp_file` example in Rust: send a file over uTP on loopback and check
//! that it arrived intact.
//!
//! ```text
//! cargo run --example file_transfer -- [FILE]   (default: this example's source)
//! ```

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use utp::net::UtpSocket;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| file!().to_string());
    let file = tokio::fs::read(&path).await?;

    let receiver = UtpSocket::bind("127.0.0.1:0").await?;
    let addr = receiver.local_addr()?;
    let receiving = tokio::spawn(async move {
        let (mut stream, peer) = receiver.accept().await?;
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await?;
        std::io::Result::Ok((got, peer))
    });

    let sender = UtpSocket::bind("127.0.0.1:0").await?;
    let started = tokio::time::Instant::now();
    let mut stream = sender.connect(addr).await?;
    stream.write_all(&file).await?;
    stream.shutdown().await?;
    let (got, peer) = receiving.await.expect("receiver task")?;
    let took: Duration = started.elapsed();

    assert_eq!(got, file, "the file arrived intact");
    let stats = stream.stats();
    println!(
        "sent {} ({} bytes) from {peer} in {:.3} s: {} packets, {} retransmitted, rtt {:.2} ms",
        path,
        file.len(),
        took.as_secs_f64(),
        stats.packets_sent,
        stats.retransmits_timeout + stats.retransmits_dup_ack + stats.retransmits_sack,
        stats.rtt.as_secs_f64() * 1e3
    );
    Ok(())
}
