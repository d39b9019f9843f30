//! Configuration of an endpoint and of every connection on it.

use core::fmt;
use core::time::Duration;

use super::congestion::{CongestionConfig, LedbatConfig};
use crate::wire::HEADER_LEN;

/// Everything tunable about an [`super::Endpoint`] and its connections.
///
/// `Config::default()` follows BEP 29 where it fixes a value and says so on each field;
/// [`Config::libutp`] and [`Config::libtorrent`] reproduce those stacks' choices.
/// Check a hand-built configuration with [`Config::validate`] (the endpoint does).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// Largest datagram we send, uTP header included (UDP payload). Default 1400,
    /// which fits a 1500-byte Ethernet MTU with IPv6 and UDP headers to spare.
    pub max_packet_size: usize,
    /// Bytes the application may queue for sending (unsent plus unacknowledged).
    /// Writes beyond it are refused until data is acknowledged. Default 1 MiB.
    pub send_buffer_size: usize,
    /// Bytes of received data buffered for the application, in order and out of order.
    /// This is the window advertised in `wnd_size` (BEP 29 A10). Default 1 MiB.
    pub recv_buffer_size: usize,
    /// Retransmission timeout before any RTT sample. BEP 29 G47: 1000 ms.
    pub initial_timeout: Duration,
    /// Floor of the retransmission timeout. BEP 29 G44: 500 ms (libutp uses 1000 ms).
    pub min_timeout: Duration,
    /// Ceiling of the retransmission timeout after exponential backoff. Default 60 s.
    pub max_timeout: Duration,
    /// Consecutive retransmission timeouts without progress before the connection
    /// gives up with [`super::ConnectionError::TimedOut`]. Default 6.
    pub max_retransmits: u32,
    /// SYN retransmissions before `connect` fails with `TimedOut`; each waits twice as
    /// long as the one before, starting at `initial_timeout`. Default 3.
    pub syn_retries: u32,
    /// How long an incoming connection may stay half open (SYN received, our SYN-ACK
    /// not yet acknowledged) before it is dropped. The initiator counts itself
    /// connected once it has our answer, and its proof (its first packet after it) may
    /// be lost and resent on its retransmission timer (1 s, then 2 s, 4 s): the
    /// default leaves room for three resends. A flood cannot use the longer life to
    /// lock clients out: a full table evicts its oldest entry. Default 10 s.
    pub handshake_timeout: Duration,
    /// Longest delay of an acknowledgement for in-order data; every second full packet
    /// is acknowledged at once regardless. Default 20 ms.
    pub delayed_ack: Duration,
    /// Send an empty STATE when nothing was sent for this long, so NATs keep the
    /// mapping (libutp: 29 s). `None` disables keep-alive. Default 29 s.
    pub keepalive_interval: Option<Duration>,
    /// Close the connection with `TimedOut` when nothing arrives for this long.
    /// Default 60 s.
    pub idle_timeout: Duration,
    /// How long a closed connection lingers to acknowledge a retransmitted FIN, in
    /// multiples of its current retransmission timeout, at least 8 s; every resend
    /// from the peer that arrives meanwhile doubles the stay (at most `max_timeout`),
    /// as the peer's own timer backs off. Default 2.
    pub linger_rtos: u32,
    /// Largest span of out-of-order packets accepted beyond the next expected one;
    /// also bounds the selective-ACK bitmask (span / 8 bytes). Default 1024.
    pub max_reorder_packets: u16,
    /// The congestion controller. Default: LEDBAT with RFC 6817's parameters and BEP
    /// 29's growth of 3000 bytes per RTT (`LedbatConfig::default`).
    pub congestion: CongestionConfig,
    /// Most connections an endpoint holds at once (all states). Beyond it, `connect`
    /// fails and incoming SYNs are refused with a RESET. Default 1024 (the original
    /// uTorrent client allowed 5 per socket; a library serves many peers).
    pub max_connections: usize,
    /// Most incoming connections that may be half open at once. A SYN that finds the
    /// table full evicts the oldest half-open connection (silently: the application
    /// never saw it), so a flood cannot lock real clients out. Default 64.
    pub max_half_open: usize,
    /// Most established incoming connections waiting to be accepted. Default 128.
    pub accept_queue: usize,
    /// Whether incoming SYNs are accepted at all. Default true.
    pub accept_incoming: bool,
    /// Answer packets for unknown connections with a RESET (libutp does, rate
    /// limited; libtorrent does not). Default true.
    pub reset_unknown: bool,
    /// Most RESETs sent per [`Config::reset_interval`] (libutp: 1000 per 10 s).
    pub reset_limit: u32,
    /// The period of `reset_limit`. Default 10 s.
    pub reset_interval: Duration,
    /// SYN-ACK numbering (checklist X1). `false` (default), as libutp and libtorrent
    /// do: the acceptor's answer carries its *unconsumed* seq_nr, its first DATA reuses
    /// it, and the initiator sets `ack_nr = seq_nr - 1`. `true`, as the BEP 29 text
    /// says: the answer consumes a seq_nr (`seq_nr = c.seq_nr++`) and the initiator
    /// sets `ack_nr = seq_nr`. The two do not interoperate as initiator and acceptor;
    /// only [`Config::bep29_text`] sets it.
    pub syn_ack_consumes_seq_nr: bool,
    /// Where the seq_nr of a connection we open starts (checklist X2). `true`
    /// (default), as libutp, libtorrent and every deployed stack do: at a random value,
    /// so that an off-path attacker cannot guess the sequence window. `false`, as the
    /// BEP 29 text says: at 1 (the acceptor's is random either way). Any peer start is
    /// accepted whatever this says; only [`Config::bep29_text`] sets it to `false`.
    pub random_initial_seq_nr: bool,
    /// Packet size by rate (checklist H49, BEP 29: "as low as 150 bytes on slow links,
    /// larger at high rates"). `true`: a new DATA packet carries at most an eighth of
    /// the congestion window (between 130 bytes of payload, a 150-byte packet, and the
    /// full `max_packet_size`), so a small window still holds enough packets for three
    /// duplicate ACKs to signal a loss, and a slow link is not held for a whole large
    /// packet. `false` (default): every packet is as large as `max_packet_size`
    /// allows, as libutp and libtorrent do (they size packets by the path MTU). Only
    /// [`Config::bep29_text`] sets it.
    pub adaptive_packet_size: bool,
    /// Tail loss probe (RFC 8985 section 7): when no ACK arrives for two smoothed RTTs
    /// plus `delayed_ack` with data in flight, resend the newest packet once, so that
    /// a loss at the end of a burst is repaired by fast retransmit rather than by the
    /// retransmission timeout (at least `min_timeout`). BEP 29, libutp and libtorrent
    /// have none. Default true; false in the libutp, libtorrent and BEP-text profiles.
    pub tail_loss_probe: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_packet_size: 1400,
            send_buffer_size: 1 << 20,
            recv_buffer_size: 1 << 20,
            initial_timeout: Duration::from_millis(1000),
            min_timeout: Duration::from_millis(500),
            max_timeout: Duration::from_secs(60),
            max_retransmits: 6,
            syn_retries: 3,
            handshake_timeout: Duration::from_secs(10),
            delayed_ack: Duration::from_millis(20),
            keepalive_interval: Some(Duration::from_secs(29)),
            idle_timeout: Duration::from_secs(60),
            linger_rtos: 2,
            max_reorder_packets: 1024,
            congestion: CongestionConfig::default(),
            max_connections: 1024,
            max_half_open: 64,
            accept_queue: 128,
            accept_incoming: true,
            reset_unknown: true,
            reset_limit: 1000,
            reset_interval: Duration::from_secs(10),
            syn_ack_consumes_seq_nr: false,
            random_initial_seq_nr: true,
            adaptive_packet_size: false,
            tail_loss_probe: true,
        }
    }
}

/// A configuration value that cannot work; the message says what to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid uTP configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// libutp's choices: 1000 ms minimum RTO, SYN given up after 2 resends, LEDBAT
    /// with 3000 bytes/RTT gain and 13 minutes of base-delay history.
    pub fn libutp() -> Self {
        Config {
            max_packet_size: 1402,
            min_timeout: Duration::from_millis(1000),
            syn_retries: 2,
            max_retransmits: 4,
            tail_loss_probe: false,
            congestion: CongestionConfig::Ledbat(LedbatConfig::libutp()),
            ..Config::default()
        }
    }

    /// libtorrent's choices: 500 ms minimum RTO, LEDBAT with 3000 bytes/RTT gain and
    /// 20 minutes of base-delay history, no RESET for unknown connections.
    pub fn libtorrent() -> Self {
        Config {
            reset_unknown: false,
            tail_loss_probe: false,
            congestion: CongestionConfig::Ledbat(LedbatConfig::libtorrent()),
            ..Config::default()
        }
    }

    /// The BEP 29 text read literally where deployed stacks depart from it (checklist
    /// section X): the SYN-ACK consumes a seq_nr (X1), no keep-alive (X8), the 500 ms
    /// minimum timeout (X4), window growth counted in packets (one per RTT, X7), a loss
    /// halves the window whatever the queue (X14), no tail loss probe. For
    /// talking to another implementation of the text; libutp and libtorrent peers need
    /// the default numbering.
    pub fn bep29_text() -> Self {
        let mut ledbat = LedbatConfig::rfc6817();
        ledbat.random_loss_backlog_packets = 0.0;
        Config {
            syn_ack_consumes_seq_nr: true,
            random_initial_seq_nr: false,
            adaptive_packet_size: true,
            tail_loss_probe: false,
            keepalive_interval: None,
            min_timeout: Duration::from_millis(500),
            congestion: CongestionConfig::Ledbat(ledbat),
            ..Config::default()
        }
    }

    /// The largest payload of one packet (the MSS): `max_packet_size` minus the header.
    pub fn max_payload(&self) -> usize {
        self.max_packet_size - HEADER_LEN
    }

    /// Checks that the values can work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: &str| Err(ConfigError(m.to_string()));
        if !(HEADER_LEN + 130..=65_507).contains(&self.max_packet_size) {
            return err("max_packet_size must be between 150 and 65507 bytes");
        }
        if self.send_buffer_size < self.max_payload() {
            return err("send_buffer_size must hold at least one full packet");
        }
        if self.recv_buffer_size < self.max_payload() || self.recv_buffer_size > u32::MAX as usize {
            return err("recv_buffer_size must be between one packet and 4 GiB");
        }
        if self.min_timeout.is_zero() || self.initial_timeout < self.min_timeout {
            return err("min_timeout must be positive and initial_timeout at least min_timeout");
        }
        if self.max_timeout < self.initial_timeout {
            return err("max_timeout must be at least initial_timeout");
        }
        if self.max_reorder_packets == 0 || self.max_reorder_packets > 16_384 {
            return err("max_reorder_packets must be between 1 and 16384");
        }
        if self.max_connections == 0 {
            return err("max_connections must be at least 1");
        }
        if self.idle_timeout.is_zero() || self.handshake_timeout.is_zero() {
            return err("idle_timeout and handshake_timeout must be positive");
        }
        if self.reset_interval.is_zero() {
            return err("reset_interval must be positive");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_valid() {
        Config::default().validate().unwrap();
        Config::libutp().validate().unwrap();
        Config::libtorrent().validate().unwrap();
    }

    #[test]
    fn bad_values_say_what_to_fix() {
        let c = Config {
            max_packet_size: 40,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_packet_size"));
        let c = Config {
            send_buffer_size: 10,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("send_buffer_size"));
    }
}
