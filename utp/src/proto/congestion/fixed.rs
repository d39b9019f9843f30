//! A constant congestion window: a test double for protocol tests.
//!
//! Protocol tests (retransmission, reordering, shutdown, …) should not depend on how
//! LEDBAT reacts to the delays and losses they provoke. [`FixedWindow`] lets exactly
//! the configured number of bytes be in flight, whatever happens on the path.

use core::time::Duration;

use super::{AckEvent, CongestionController};
use crate::time::Instant;

/// A congestion controller whose window never changes.
///
/// Every hook is a no-op and [`CongestionController::window`] always returns the
/// value given to [`FixedWindow::new`]. It reports no queuing delay, no base delay and
/// is never in slow start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedWindow {
    window: usize,
}

impl FixedWindow {
    /// A controller that always allows `window_bytes` payload bytes in flight.
    pub fn new(window_bytes: usize) -> Self {
        FixedWindow {
            window: window_bytes,
        }
    }
}

impl CongestionController for FixedWindow {
    fn on_sent(&mut self, _now: Instant, _bytes: usize, _flight_size: usize) {}

    fn on_ack(&mut self, _now: Instant, _ack: &AckEvent) {}

    fn on_loss(&mut self, _now: Instant, _smoothed_rtt: Duration, _mss: usize) {}

    fn on_timeout(&mut self, _now: Instant, _mss: usize) {}

    fn window(&self) -> usize {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_constant_whatever_happens() {
        for window in [0, 1, 1400, 64 * 1024, usize::MAX] {
            let mut cc = FixedWindow::new(window);
            let mut now = Instant::from_millis(5);
            assert_eq!(cc.window(), window);
            for i in 0..100u32 {
                now += Duration::from_millis(7);
                cc.on_sent(now, 1400, i as usize * 1400);
                assert_eq!(cc.window(), window);
                cc.on_ack(
                    now,
                    &AckEvent {
                        bytes_acked: 1400,
                        flight_size: 2800,
                        delay_sample: Some(i.wrapping_mul(0x9E37_79B9)),
                        rtt_sample: Some(Duration::from_millis(i.into())),
                        smoothed_rtt: Duration::from_millis(50),
                        mss: 1400,
                    },
                );
                assert_eq!(cc.window(), window);
                if i % 7 == 0 {
                    cc.on_loss(now, Duration::from_millis(50), 1400);
                    assert_eq!(cc.window(), window);
                }
                if i % 13 == 0 {
                    cc.on_timeout(now, 1400);
                    assert_eq!(cc.window(), window);
                }
            }
            assert_eq!(cc.queuing_delay(), None);
            assert_eq!(cc.base_delay(), None);
            assert!(!cc.in_slow_start());
        }
    }
}
