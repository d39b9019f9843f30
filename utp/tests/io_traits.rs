//! UtpStream in tokio's ecosystem, unchanged: `tokio::io::copy`, `BufReader` lines,
//! `tokio_util` codecs; and a dropped stream still delivers everything written.

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_util::codec::{Framed, LinesCodec};
use utp::net::UtpSocket;

#[tokio::test]
async fn copy_bufreader_and_codecs_work() {
    let server = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr().unwrap();
    let srv = tokio::spawn(async move {
        // A line protocol through tokio_util's codec: answer each line in upper case.
        let (stream, _) = server.accept().await.unwrap();
        let mut framed = Framed::new(stream, LinesCodec::new());
        while let Some(line) = framed.next().await {
            let line = line.unwrap();
            framed.send(line.to_uppercase()).await.unwrap();
        }
        framed.into_inner().shutdown().await.unwrap();
    });
    let stream = client.connect(addr).await.unwrap();
    let (r, mut w) = stream.into_split();
    let input: Vec<u8> = (0..2000)
        .flat_map(|i| format!("line number {i}\n").into_bytes())
        .collect();
    let writer = tokio::spawn(async move {
        // tokio::io::copy from any AsyncRead into the stream.
        let mut src = &input[..];
        let n = tokio::io::copy(&mut src, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
        n
    });
    let mut lines = BufReader::new(r).lines();
    let mut count = 0;
    while let Some(line) = lines.next_line().await.unwrap() {
        assert_eq!(line, format!("LINE NUMBER {count}"));
        count += 1;
    }
    assert_eq!(count, 2000);
    assert!(writer.await.unwrap() > 20_000);
    srv.await.unwrap();
}

#[tokio::test]
async fn dropping_a_stream_closes_it_gracefully() {
    let server = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = UtpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr().unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
    let expected = data.clone();
    let srv = tokio::spawn(async move {
        let (mut s, _) = server.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap(); // EOF comes from the background close
        got
    });
    let mut s = client.connect(addr).await.unwrap();
    s.write_all(&data).await.unwrap();
    drop(s); // no shutdown: the socket's task still sends the rest and a FIN
    assert!(srv.await.unwrap() == expected);
}
