//! Scenarios: what a researcher describes (in TOML, or by name), and how it runs.
//!
//! The topology is a dumbbell: every flow's sender reaches its receiver through its
//! own access link (an extra one-way delay, to give flows different base delays),
//! then the shared `forward` bottleneck; acknowledgements come back through the shared
//! `reverse` link and the access link. Links may change over time (`[[changes]]`).
//!
//! ```toml
//! name = "yield"
//! duration_s = 60
//! [forward]
//! rate_bps = 10000000
//! delay_ms = 25
//! queue = { bytes = 250000 }
//! [[flows]]
//! kind = "utp"
//! [[flows]]
//! kind = "tcp"
//! start_s = 20
//! stop_s = 40
//! ```

use core::time::Duration;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use utp::proto::congestion::{CongestionConfig, LedbatConfig};
use utp::{Config, Instant};

use crate::engine::{LinkChange, Network, NodeId};
use crate::link::{Link, LinkConfig, LossModel, QueueLimit};
use crate::metrics::{jain, Recorder};
use crate::nodes::{CbrNode, CbrSpec, LibutpNode, TcpNode, TcpSpec, UtpNode, UtpSendSpec};
use crate::rng::SimRng;

/// Serde helpers: a `Duration` written as (fractional) milliseconds.
pub mod millis {
    use core::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes milliseconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1e3)
    }

    /// Reads milliseconds (integer or float, not negative).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        if !(ms.is_finite() && ms >= 0.0) {
            return Err(serde::de::Error::custom(format!(
                "a duration in ms must be >= 0, got {ms}"
            )));
        }
        Ok(Duration::from_secs_f64(ms / 1e3))
    }
}

/// The kind of traffic a flow carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowKind {
    /// Our uTP with LEDBAT.
    Utp,
    /// The real libutp (C++, in virtual time): the reference to compare with.
    Libutp,
    /// The TCP model (CUBIC or NewReno, chosen by `tcp_cc`).
    Tcp,
    /// Constant-rate UDP.
    Cbr,
}

/// Which uTP implementation runs an end of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stack {
    /// This project's core.
    Ours,
    /// The reference libutp.
    Libutp,
}

/// LEDBAT parameters a flow may override (absent fields keep the profile's value).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedbatOverrides {
    /// Target queuing delay in ms.
    pub target_ms: Option<f64>,
    /// Increase gain.
    pub gain: Option<f64>,
    /// Decrease gain.
    pub decrease_gain: Option<f64>,
    /// Factor applied to the window when slow start ends on delay.
    pub slow_start_exit_reduction: Option<f64>,
    /// Minimum window in packets.
    pub min_window_packets: Option<usize>,
    /// Base-delay history, in one-minute buckets.
    pub base_history: Option<usize>,
    /// Whether to use slow start.
    pub slow_start: Option<bool>,
    /// Bytes per RTT cap on growth (libutp/libtorrent 3000).
    pub max_increase_per_rtt: Option<usize>,
    /// Veno's random-loss test: fewer of our packets queued than this at a loss
    /// means random loss (0 disables it).
    pub random_loss_backlog_packets: Option<f64>,
    /// Window factor on a loss judged random.
    pub random_loss_reduction: Option<f64>,
}

/// One flow of a scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowSpec {
    /// What it carries.
    pub kind: FlowKind,
    /// Start, seconds from the beginning.
    pub start_s: f64,
    /// Stop, seconds from the beginning (`None`: until the end or `bytes` are sent).
    pub stop_s: Option<f64>,
    /// Bytes to move (`None`: unlimited).
    pub bytes: Option<u64>,
    /// Extra one-way delay on this flow's access link, in ms (each direction).
    pub extra_delay_ms: f64,
    /// uTP: configuration profile (`default`, `libutp`, `libtorrent`, `bep29_text`).
    pub profile: String,
    /// uTP: LEDBAT parameter overrides.
    pub ledbat: LedbatOverrides,
    /// CBR: rate in bits per second.
    pub rate_bps: u64,
    /// CBR: datagram size; TCP: segment payload size.
    pub packet_bytes: usize,
    /// uTP and libutp: the receiving end's implementation (`"ours"` or `"libutp"`);
    /// absent, the same as the sender's, so `kind = "utp", peer = "libutp"` runs ours
    /// against libutp.
    pub peer: Option<Stack>,
    /// libutp sender: its initial seq_nr, pinned instead of drawn (libutp's fast
    /// retransmit works for about half of them, checklist L bug 1; 16384 is one that
    /// works). Absent: drawn from the seed, as libutp does.
    pub libutp_seq_nr: Option<u16>,
    /// TCP: congestion control, `"cubic"` (RFC 9438, the default, as in Linux) or
    /// `"newreno"` (RFC 5681); both recover losses with SACK (RFC 6675).
    pub tcp_cc: String,
}

impl Default for FlowSpec {
    fn default() -> Self {
        FlowSpec {
            kind: FlowKind::Utp,
            start_s: 0.0,
            stop_s: None,
            bytes: None,
            extra_delay_ms: 0.0,
            profile: "default".into(),
            ledbat: LedbatOverrides::default(),
            rate_bps: 1_000_000,
            packet_bytes: 1380,
            tcp_cc: "cubic".into(),
            peer: None,
            libutp_seq_nr: None,
        }
    }
}

impl FlowSpec {
    /// The implementations at the sending and the receiving end of a uTP flow.
    pub fn stacks(&self) -> Option<(Stack, Stack)> {
        let sender = match self.kind {
            FlowKind::Utp => Stack::Ours,
            FlowKind::Libutp => Stack::Libutp,
            FlowKind::Tcp | FlowKind::Cbr => return None,
        };
        Some((sender, self.peer.unwrap_or(sender)))
    }

    /// Whether this flow is uTP (ours or libutp, at either end).
    pub fn is_utp(&self) -> bool {
        self.stacks().is_some()
    }
}

/// Which shared link a change applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkName {
    /// The data direction's bottleneck.
    Forward,
    /// The acknowledgement direction.
    Reverse,
}

/// A change of a shared link at a point in time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChangeSpec {
    /// When, in seconds.
    pub at_s: f64,
    /// Which link.
    pub link: LinkName,
    /// New rate.
    pub rate_bps: Option<u64>,
    /// New propagation delay, ms.
    pub delay_ms: Option<f64>,
    /// New random loss probability.
    pub loss: Option<f64>,
    /// Down (outage) or up.
    pub down: Option<bool>,
}

impl Default for ChangeSpec {
    fn default() -> Self {
        ChangeSpec {
            at_s: 0.0,
            link: LinkName::Forward,
            rate_bps: None,
            delay_ms: None,
            loss: None,
            down: None,
        }
    }
}

/// A whole experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Short name.
    pub name: String,
    /// What it shows.
    pub description: String,
    /// Seed of every random choice.
    pub seed: u64,
    /// Simulated time, seconds.
    pub duration_s: f64,
    /// Metrics resolution, ms.
    pub resolution_ms: f64,
    /// The data direction's bottleneck.
    pub forward: LinkConfig,
    /// The acknowledgement direction.
    pub reverse: LinkConfig,
    /// The flows.
    pub flows: Vec<FlowSpec>,
    /// Changes of the links over time.
    pub changes: Vec<ChangeSpec>,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "custom".into(),
            description: String::new(),
            seed: 1,
            duration_s: 30.0,
            resolution_ms: 100.0,
            forward: LinkConfig::default(),
            reverse: LinkConfig {
                queue: QueueLimit::Bytes(1_000_000),
                ..LinkConfig::default()
            },
            flows: vec![FlowSpec::default()],
            changes: Vec::new(),
        }
    }
}

/// Names and one-line descriptions of the built-in scenarios.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("alone", "one LEDBAT flow on a 10 Mbit/s, 50 ms RTT bottleneck: fills it, holds the delay near target"),
    ("yield", "LEDBAT yields to a TCP flow active from 20 s to 40 s, and takes the capacity back"),
    ("share", "two LEDBAT flows starting together (equal measured base delay): fair sharing"),
    ("latecomer", "two LEDBAT flows, the second joining a standing queue: the latecomer advantage"),
    ("lossy", "one LEDBAT flow with 1 % random loss on a 200 ms RTT path"),
    ("bursty", "Gilbert-Elliott bursty loss (mean 1 %), reordering jitter and duplication"),
    ("changes", "a delay step at 10 s, a rate drop at 20 s, an outage from 30 s to 32 s"),
    ("cbr", "LEDBAT next to 5 Mbit/s of constant-rate UDP"),
    ("codel", "LEDBAT through a CoDel bottleneck next to TCP"),
];

impl Scenario {
    /// A built-in scenario by name.
    pub fn built_in(name: &str) -> Option<Scenario> {
        let utp = FlowSpec::default();
        let mut s = Scenario {
            name: name.into(),
            ..Scenario::default()
        };
        s.description = BUILT_IN.iter().find(|(n, _)| *n == name)?.1.into();
        match name {
            "alone" => {}
            "yield" => {
                // Real paths jitter a little; in a perfectly periodic drop-tail queue the
                // same flow's packets always meet the full buffer (the "phase effect" of
                // Floyd and Jacobson), so only TCP would ever lose.
                s.forward.jitter = Duration::from_millis(2);
                s.duration_s = 60.0;
                s.flows = vec![
                    utp,
                    FlowSpec {
                        kind: FlowKind::Tcp,
                        start_s: 20.0,
                        stop_s: Some(40.0),
                        ..FlowSpec::default()
                    },
                ];
            }
            "share" => {
                // Together: a flow that starts later meets a standing queue and takes
                // it for base delay (see "latecomer"), which is a different story.
                s.duration_s = 60.0;
                s.flows = vec![utp.clone(), utp];
            }
            "latecomer" => {
                s.duration_s = 90.0;
                s.forward.queue = QueueLimit::Bytes(1_000_000);
                s.flows = vec![
                    utp.clone(),
                    FlowSpec {
                        start_s: 20.0,
                        ..utp
                    },
                ];
            }
            "lossy" => {
                s.duration_s = 60.0;
                s.forward.delay = Duration::from_millis(100);
                s.reverse.delay = Duration::from_millis(100);
                s.forward.queue = QueueLimit::Bytes(500_000);
                s.forward.loss = LossModel::Bernoulli { p: 0.01 };
            }
            "bursty" => {
                s.forward.loss = LossModel::GilbertElliott {
                    p_good_to_bad: 0.002,
                    p_bad_to_good: 0.2,
                    loss_good: 0.0,
                    loss_bad: 1.0,
                };
                s.forward.jitter = Duration::from_millis(10);
                s.forward.jitter_reorders = true;
                s.forward.duplicate = 0.005;
            }
            "changes" => {
                s.duration_s = 45.0;
                s.changes = vec![
                    ChangeSpec {
                        at_s: 10.0,
                        delay_ms: Some(60.0),
                        ..ChangeSpec::default()
                    },
                    ChangeSpec {
                        at_s: 20.0,
                        rate_bps: Some(4_000_000),
                        ..ChangeSpec::default()
                    },
                    ChangeSpec {
                        at_s: 30.0,
                        down: Some(true),
                        ..ChangeSpec::default()
                    },
                    ChangeSpec {
                        at_s: 32.0,
                        down: Some(false),
                        ..ChangeSpec::default()
                    },
                ];
            }
            "cbr" => {
                s.flows = vec![
                    utp,
                    FlowSpec {
                        kind: FlowKind::Cbr,
                        rate_bps: 5_000_000,
                        start_s: 10.0,
                        stop_s: Some(20.0),
                        ..FlowSpec::default()
                    },
                ];
            }
            "codel" => {
                s.duration_s = 40.0;
                s.forward.aqm = crate::link::Aqm::Codel {
                    target: Duration::from_millis(5),
                    interval: Duration::from_millis(100),
                };
                s.flows = vec![
                    utp,
                    FlowSpec {
                        kind: FlowKind::Tcp,
                        start_s: 10.0,
                        stop_s: Some(30.0),
                        ..FlowSpec::default()
                    },
                ];
            }
            _ => return None,
        }
        Some(s)
    }

    /// Reads a scenario from TOML text.
    pub fn from_toml(text: &str) -> Result<Scenario, String> {
        let s: Scenario =
            toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))?;
        s.validate()?;
        Ok(s)
    }

    /// Checks the values; the message says what to fix.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.duration_s.is_finite() && self.duration_s > 0.0) {
            return Err(format!(
                "duration_s must be positive, got {}",
                self.duration_s
            ));
        }
        if !(self.resolution_ms.is_finite() && self.resolution_ms >= 1.0) {
            return Err(format!(
                "resolution_ms must be at least 1, got {}",
                self.resolution_ms
            ));
        }
        self.forward
            .validate()
            .map_err(|e| format!("forward: {e}"))?;
        self.reverse
            .validate()
            .map_err(|e| format!("reverse: {e}"))?;
        if self.flows.is_empty() {
            return Err("a scenario needs at least one [[flows]] entry".into());
        }
        if self.flows.len() > 250 {
            return Err("at most 250 flows".into());
        }
        for (i, f) in self.flows.iter().enumerate() {
            if !(f.start_s.is_finite() && f.start_s >= 0.0)
                || f.stop_s.is_some_and(|t| t.is_nan() || t <= f.start_s)
            {
                return Err(format!("flows[{i}]: need 0 <= start_s < stop_s"));
            }
            if !(f.extra_delay_ms.is_finite() && f.extra_delay_ms >= 0.0) {
                return Err(format!("flows[{i}]: extra_delay_ms must be >= 0"));
            }
            if f.kind == FlowKind::Utp || f.peer == Some(Stack::Ours) {
                utp_config(f).map_err(|e| format!("flows[{i}]: {e}"))?;
            }
            if f.peer.is_some() && !f.is_utp() {
                return Err(format!(
                    "flows[{i}]: peer applies to utp and libutp flows only"
                ));
            }
            if f.kind == FlowKind::Cbr
                && (f.rate_bps == 0 || !(1..=65_000).contains(&f.packet_bytes))
            {
                return Err(format!(
                    "flows[{i}]: cbr needs rate_bps > 0 and 1 <= packet_bytes <= 65000"
                ));
            }
            TcpSpec::parse_cc(&f.tcp_cc).map_err(|e| format!("flows[{i}]: {e}"))?;
            if f.kind == FlowKind::Tcp && !(100..=65_000).contains(&f.packet_bytes) {
                return Err(format!(
                    "flows[{i}]: tcp needs 100 <= packet_bytes <= 65000"
                ));
            }
        }
        for (i, c) in self.changes.iter().enumerate() {
            if !(c.at_s.is_finite() && c.at_s >= 0.0) {
                return Err(format!("changes[{i}]: at_s must be >= 0"));
            }
            if c.loss.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
                return Err(format!("changes[{i}]: loss must be between 0 and 1"));
            }
        }
        Ok(())
    }
}

/// The uTP configuration of a flow: its profile with its LEDBAT overrides.
pub fn utp_config(f: &FlowSpec) -> Result<Config, String> {
    let mut c = match f.profile.as_str() {
        "default" => Config::default(),
        "libutp" => Config::libutp(),
        "libtorrent" => Config::libtorrent(),
        "bep29_text" => Config::bep29_text(),
        other => {
            return Err(format!(
                "unknown profile {other:?} (default, libutp, libtorrent or bep29_text)"
            ))
        }
    };
    let o = &f.ledbat;
    if let CongestionConfig::Ledbat(l) = &mut c.congestion {
        apply(l, o);
    }
    c.validate().map_err(|e| e.to_string())?;
    Ok(c)
}

fn apply(l: &mut LedbatConfig, o: &LedbatOverrides) {
    if let Some(t) = o.target_ms {
        l.target = Duration::from_secs_f64(t.max(0.0) / 1e3);
    }
    if let Some(g) = o.gain {
        l.gain = g;
    }
    if let Some(g) = o.decrease_gain {
        l.decrease_gain = g;
    }
    if let Some(r) = o.slow_start_exit_reduction {
        l.slow_start_exit_reduction = r;
    }
    if let Some(m) = o.min_window_packets {
        l.min_window_packets = m;
    }
    if let Some(h) = o.base_history {
        l.base_history = h;
    }
    if let Some(s) = o.slow_start {
        l.slow_start = s;
    }
    if o.max_increase_per_rtt.is_some() {
        l.max_increase_per_rtt = o.max_increase_per_rtt;
    }
    if let Some(b) = o.random_loss_backlog_packets {
        l.random_loss_backlog_packets = b;
    }
    if let Some(r) = o.random_loss_reduction {
        l.random_loss_reduction = r;
    }
}

/// Per-flow results of a run.
#[derive(Clone, Debug)]
pub struct FlowResult {
    /// The flow's description.
    pub spec: FlowSpec,
    /// Bytes delivered to the receiver.
    pub delivered: u64,
    /// Mean goodput while the flow was active (start to stop or completion).
    pub goodput_bps: f64,
    /// When a bounded flow completed.
    pub finished: Option<Duration>,
    /// Retransmissions.
    pub retransmits: u64,
}

/// Everything a run measured.
pub struct RunResult {
    /// The scenario as run.
    pub scenario: Scenario,
    /// Time series.
    pub recorder: Recorder,
    /// Per-flow summaries.
    pub flows: Vec<FlowResult>,
    /// Link statistics: forward, reverse.
    pub links: Vec<crate::link::LinkStats>,
    /// Simulated time covered.
    pub simulated: Duration,
    /// Datagrams that crossed a link.
    pub datagrams: u64,
    /// The pcap image, if captured.
    pub pcap: Option<Vec<u8>>,
    /// The first failure (corruption, a connection that died), if any.
    pub failure: Option<String>,
}

/// The simulation's epoch: virtual time starts here (so µs timestamps are not tiny).
pub const EPOCH: Instant = Instant::from_millis(1_000);

/// Index of the forward bottleneck in [`RunResult::links`] and the recorder.
pub const FORWARD: usize = 0;
/// Index of the reverse link.
pub const REVERSE: usize = 1;

impl RunResult {
    /// Time `s` seconds into the run.
    pub fn at(&self, s: f64) -> Instant {
        EPOCH + Duration::from_secs_f64(s.max(0.0))
    }

    /// Mean goodput of flow `i` between `from_s` and `to_s` (bits per second).
    pub fn goodput(&self, i: usize, from_s: f64, to_s: f64) -> f64 {
        self.recorder.goodput(i, self.at(from_s), self.at(to_s))
    }

    /// Mean queuing delay at the bottleneck between `from_s` and `to_s`.
    pub fn queue_delay(&self, from_s: f64, to_s: f64) -> Duration {
        self.recorder
            .mean_queue_delay(FORWARD, self.at(from_s), self.at(to_s))
    }

    /// Jain's index of the flows' goodputs between `from_s` and `to_s`.
    pub fn fairness(&self, flows: &[usize], from_s: f64, to_s: f64) -> f64 {
        let xs: Vec<f64> = flows
            .iter()
            .map(|&i| self.goodput(i, from_s, to_s))
            .collect();
        jain(&xs)
    }
}

/// Runs a scenario. `capture` records a pcap of every datagram.
///
/// The first run in a process asks the allocator to keep the memory runs free
/// ([`keep_freed_memory`]), so that the runs of a sweep or a benchmark reuse it.
pub fn run(s: &Scenario, capture: bool) -> Result<RunResult, String> {
    static TUNED: std::sync::Once = std::sync::Once::new();
    TUNED.call_once(keep_freed_memory);
    s.validate()?;
    let mut rng = SimRng::new(s.seed);
    let mut net = Network::new(EPOCH);
    if capture {
        net.capture();
    }
    let secs = |x: f64| EPOCH + Duration::from_secs_f64(x);
    let fwd = net.add_link(Link::new(s.forward.clone(), rng.fork(1)));
    let rev = net.add_link(Link::new(s.reverse.clone(), rng.fork(2)));
    let mut pairs: Vec<(NodeId, NodeId)> = Vec::new();
    for (i, f) in s.flows.iter().enumerate() {
        let send_addr = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8 + 1)),
            6881,
        );
        let recv_addr = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(10, 1, (i / 250) as u8, (i % 250) as u8 + 1)),
            6881,
        );
        let start = secs(f.start_s);
        let stop = f.stop_s.map(secs);
        let (sender, receiver): (Box<dyn crate::engine::Node>, Box<dyn crate::engine::Node>) =
            match f.kind {
                FlowKind::Utp | FlowKind::Libutp => {
                    let spec = UtpSendSpec {
                        flow: i,
                        remote: recv_addr,
                        bytes: f.bytes,
                        start,
                        stop,
                    };
                    let (send_stack, recv_stack) = f.stacks().unwrap_or((Stack::Ours, Stack::Ours));
                    let sender: Box<dyn crate::engine::Node> = match send_stack {
                        Stack::Ours => Box::new(
                            UtpNode::new(send_addr, utp_config(f)?, rng.seed32())?
                                .with_sender(spec),
                        ),
                        Stack::Libutp => Box::new(
                            LibutpNode::new(send_addr, rng.next_u64())
                                .with_initial_seq_nr(f.libutp_seq_nr)
                                .with_sender(spec),
                        ),
                    };
                    let receiver: Box<dyn crate::engine::Node> = match recv_stack {
                        Stack::Ours => Box::new(
                            UtpNode::new(recv_addr, utp_config(f)?, rng.seed32())?.with_receiver(i),
                        ),
                        Stack::Libutp => {
                            Box::new(LibutpNode::new(recv_addr, rng.next_u64()).with_receiver(i))
                        }
                    };
                    (sender, receiver)
                }
                FlowKind::Tcp => {
                    let spec = TcpSpec {
                        flow: i,
                        remote: recv_addr,
                        bytes: f.bytes,
                        start,
                        stop,
                        mss: f.packet_bytes,
                        cc: TcpSpec::parse_cc(&f.tcp_cc)?,
                    };
                    (
                        Box::new(TcpNode::sender(send_addr, spec)),
                        Box::new(TcpNode::receiver(recv_addr, i)),
                    )
                }
                FlowKind::Cbr => {
                    let spec = CbrSpec {
                        flow: i,
                        remote: recv_addr,
                        rate_bps: f.rate_bps,
                        size: f.packet_bytes,
                        start,
                        stop,
                    };
                    (
                        Box::new(CbrNode::sender(send_addr, spec)),
                        Box::new(CbrNode::sink(recv_addr, i)),
                    )
                }
            };
        let a = net.add_node(send_addr.ip(), sender);
        let b = net.add_node(recv_addr.ip(), receiver);
        let extra = Duration::from_secs_f64(f.extra_delay_ms / 1e3);
        if extra.is_zero() {
            net.add_route(a, b, vec![fwd]);
            net.add_route(b, a, vec![rev]);
        } else {
            let up = net.add_link(Link::new(
                LinkConfig::wire(extra),
                rng.fork(100 + 2 * i as u64),
            ));
            let down = net.add_link(Link::new(
                LinkConfig::wire(extra),
                rng.fork(101 + 2 * i as u64),
            ));
            net.add_route(a, b, vec![up, fwd]);
            net.add_route(b, a, vec![rev, down]);
        }
        pairs.push((a, b));
    }
    let mut current = [s.forward.clone(), s.reverse.clone()];
    let mut changes = s.changes.clone();
    changes.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    for c in &changes {
        let idx = match c.link {
            LinkName::Forward => 0,
            LinkName::Reverse => 1,
        };
        let cfg = &mut current[idx];
        if let Some(r) = c.rate_bps {
            cfg.rate_bps = r;
        }
        if let Some(d) = c.delay_ms {
            cfg.delay = Duration::from_secs_f64(d.max(0.0) / 1e3);
        }
        if let Some(p) = c.loss {
            cfg.loss = LossModel::Bernoulli { p };
        }
        net.schedule_change(LinkChange {
            at: secs(c.at_s),
            link: [fwd, rev][idx],
            config: cfg.clone(),
            down: c.down.unwrap_or(false),
        });
    }
    net.sample_every(Duration::from_secs_f64(s.resolution_ms / 1e3));
    let end = secs(s.duration_s);
    // Bounded flows may finish early: then the run ends (after one more sample).
    let all_bounded = s.flows.iter().all(|f| f.bytes.is_some());
    let flow_count = pairs.len();
    if all_bounded {
        net.run_while(end, |n| {
            n.failed() || n.samples.finished.len() == flow_count
        });
    } else {
        net.run_while(end, |n| n.failed());
    }
    let failure = net.failure();
    let simulated = net.now() - EPOCH;
    let recorder = std::mem::take(&mut net.samples);
    let flows = s
        .flows
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let series = recorder.flows.get(&i);
            let last = series.and_then(|v| v.last());
            let finished = recorder.finished.get(&i).map(|t| *t - EPOCH);
            let from = secs(f.start_s);
            let to = finished
                .map(|d| EPOCH + d)
                .or(f.stop_s.map(secs))
                .unwrap_or(net.now())
                .min(net.now());
            let delivered = last.map_or(0, |p| p.delivered);
            let active = (to - from).as_secs_f64();
            FlowResult {
                spec: f.clone(),
                delivered,
                goodput_bps: if active > 0.0 {
                    recorder.goodput(i, from, to)
                } else {
                    0.0
                },
                finished,
                retransmits: last.map_or(0, |p| p.retransmits),
            }
        })
        .collect();
    Ok(RunResult {
        scenario: s.clone(),
        flows,
        links: vec![net.links[fwd].stats.clone(), net.links[rev].stats.clone()],
        simulated,
        datagrams: net.datagrams,
        pcap: net.take_pcap(),
        failure,
        recorder,
    })
}

/// Asks glibc's allocator to keep freed memory instead of handing it back to the
/// system (trim and mmap thresholds at 256 MiB). A run allocates a few megabytes
/// (send buffers grow to a MiB, datagram pools) and frees them at its end; by default
/// glibc then trims the heap, and the next run faults every page in again, which cost
/// a 100 Mbit/s run of five simulated seconds 8 % of its time. Elsewhere it does
/// nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const KEEP: libc::c_int = 256 << 20;
        // SAFETY: mallopt only changes two thresholds of the allocator's policy; it
        // is safe to call at any time, from any thread.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP);
            libc::mallopt(libc::M_MMAP_THRESHOLD, KEEP);
        }
    }
}
