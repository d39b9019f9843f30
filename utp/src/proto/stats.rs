//! Always-on statistics: per connection and per endpoint.

use core::time::Duration;

/// Counters and gauges of one connection; read with [`super::Connection::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Payload bytes handed to the network for the first time.
    pub bytes_sent: u64,
    /// Payload bytes delivered in order to the application's receive buffer.
    pub bytes_received: u64,
    /// Datagrams sent (all types, retransmissions included).
    pub packets_sent: u64,
    /// Datagrams received and accepted by this connection.
    pub packets_received: u64,
    /// DATA/FIN packets resent after a retransmission timeout.
    pub retransmits_timeout: u64,
    /// Packets resent after three duplicate ACKs.
    pub retransmits_dup_ack: u64,
    /// Packets resent because selective ACKs showed three later packets arrived.
    pub retransmits_sack: u64,
    /// Tail loss probes: the newest unacknowledged packet resent when no ACK came for
    /// about two round trips, so that the ACK it draws shows any loss before it.
    pub retransmits_probe: u64,
    /// Retransmission timeouts that fired.
    pub timeouts: u64,
    /// Duplicate ACKs received while data was in flight.
    pub dup_acks_received: u64,
    /// Packets received that carried a selective ACK.
    pub sacks_received: u64,
    /// Packets we sent with a selective ACK.
    pub sacks_sent: u64,
    /// Received DATA packets that we already had.
    pub duplicate_packets_received: u64,
    /// Received packets dropped: ack_nr outside our window, beyond the reorder span,
    /// or no room in the receive buffer.
    pub packets_dropped: u64,
    /// Smoothed round-trip time (zero before the first sample).
    pub rtt: Duration,
    /// Round-trip time variation.
    pub rtt_var: Duration,
    /// The current retransmission timeout, backoff included.
    pub rto: Duration,
    /// The congestion window in bytes.
    pub congestion_window: u64,
    /// Payload bytes in flight.
    pub bytes_in_flight: u64,
    /// The receive window the peer last advertised.
    pub peer_window: u64,
    /// One-way delay samples received from the peer (`timestamp_difference` ≠ 0).
    pub delay_samples: u64,
    /// The latest one-way delay sample (peer-relative µs clock).
    pub last_delay_sample: u32,
    /// The queuing delay the congestion controller estimates.
    pub queuing_delay: Duration,
}

/// Counters of an endpoint; read with [`super::Endpoint::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Datagrams handed to [`super::Endpoint::handle_datagram`].
    pub datagrams_received: u64,
    /// Datagrams produced by [`super::Endpoint::poll_transmit`].
    pub datagrams_sent: u64,
    /// Datagrams that did not decode as uTP version 1 (dropped).
    pub malformed: u64,
    /// Packets for no known connection (dropped, perhaps answered by a RESET).
    pub unknown_connection: u64,
    /// RESETs sent in answer to packets for unknown connections.
    pub resets_sent: u64,
    /// RESETs not sent because the rate limit was reached.
    pub resets_suppressed: u64,
    /// SYNs refused: limits reached, accepting disabled, or connection-id collision.
    pub syns_rejected: u64,
    /// Incoming connections accepted (handshake completed).
    pub connections_accepted: u64,
    /// Half-open incoming connections dropped by the handshake timeout.
    pub half_open_expired: u64,
    /// Half-open incoming connections evicted, oldest first, to make room for a new
    /// SYN while the half-open table was full (a SYN flood).
    pub half_open_evicted: u64,
    /// Finished (or half-open) connections replaced by a new SYN from the same peer
    /// with the same ids.
    pub connections_replaced: u64,
}
