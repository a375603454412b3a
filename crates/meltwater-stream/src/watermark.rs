//! The watermark of an operator with several input channels: the minimum over the
//! channels that still count, with Flink's idleness rules.
//!
//! - A channel that ended no longer counts.
//! - A channel marked [`WatermarkStatus::Idle`] no longer counts until it is marked
//!   active again; when every channel that has not ended is idle, the operator itself
//!   turns idle downstream (once), and active again (once) when one of them resumes.
//! - When the last counting channel turns idle, the operator first advances to the
//!   largest watermark of its channels that have not ended (Flink's flush): no channel
//!   advances while all are idle, and the watermarks they reached must not be lost
//!   (otherwise which windows fire would depend on the order in which the channels'
//!   last watermarks and `Idle`s interleave).
//! - A channel that resumes counts at once with the watermark it had: if that is below
//!   the watermark already emitted, the combined watermark holds (it never goes back)
//!   until the channel catches up or turns idle again.

use crate::message::{EventTime, WatermarkStatus, MIN_WATERMARK};

#[derive(Debug, Clone, Copy)]
struct Channel {
    watermark: EventTime,
    idle: bool,
    ended: bool,
}

/// What an input event makes the operator emit, in this order: `Active` if it turned
/// active, the new watermark if it advanced, `Idle` if it turned idle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatermarkUpdate {
    pub became_active: bool,
    pub watermark: Option<EventTime>,
    pub became_idle: bool,
}

/// Per-channel watermarks and statuses of one operator subtask.
#[derive(Debug, Clone)]
pub struct WatermarkCombiner {
    channels: Vec<Channel>,
    /// The last watermark emitted.
    emitted: EventTime,
    /// Whether the operator is idle downstream.
    idle: bool,
}

impl WatermarkCombiner {
    /// `n` channels, all active, at [`MIN_WATERMARK`].
    pub fn new(n: usize) -> Self {
        Self {
            channels: vec![
                Channel {
                    watermark: MIN_WATERMARK,
                    idle: false,
                    ended: false,
                };
                n
            ],
            emitted: MIN_WATERMARK,
            idle: false,
        }
    }

    pub fn is_ended(&self, channel: usize) -> bool {
        self.channels[channel].ended
    }

    /// Whether every channel ended.
    pub fn all_ended(&self) -> bool {
        self.channels.iter().all(|c| c.ended)
    }

    /// Whether the operator is idle downstream.
    pub fn is_idle(&self) -> bool {
        self.idle
    }

    /// The last watermark emitted.
    pub fn emitted(&self) -> EventTime {
        self.emitted
    }

    /// A watermark arrived on `channel`. One arriving on an idle channel is recorded but
    /// counts only once the channel is active again.
    pub fn watermark(&mut self, channel: usize, watermark: EventTime) -> WatermarkUpdate {
        let c = &mut self.channels[channel];
        c.watermark = c.watermark.max(watermark);
        self.update()
    }

    /// `channel` turned idle or active.
    pub fn status(&mut self, channel: usize, status: WatermarkStatus) -> WatermarkUpdate {
        self.channels[channel].idle = status == WatermarkStatus::Idle;
        self.update()
    }

    /// `channel` ended.
    pub fn end(&mut self, channel: usize) -> WatermarkUpdate {
        self.channels[channel].ended = true;
        self.update()
    }

    fn update(&mut self) -> WatermarkUpdate {
        let counting = || self.channels.iter().filter(|c| !c.ended && !c.idle);
        let open = self.channels.iter().any(|c| !c.ended);
        let idle = open && counting().next().is_none();
        let mut u = WatermarkUpdate::default();
        if self.idle != idle {
            u.became_active = !idle;
            u.became_idle = idle;
            self.idle = idle;
        }
        let target = if u.became_idle {
            self.channels
                .iter()
                .filter(|c| !c.ended)
                .map(|c| c.watermark)
                .max()
        } else {
            // Nothing while idle.
            counting().map(|c| c.watermark).min()
        };
        if let Some(w) = target {
            if w > self.emitted {
                self.emitted = w;
                u.watermark = Some(w);
            }
        }
        u
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use WatermarkStatus::{Active, Idle};

    fn wm(w: EventTime) -> WatermarkUpdate {
        WatermarkUpdate {
            watermark: Some(w),
            ..Default::default()
        }
    }

    const NONE: WatermarkUpdate = WatermarkUpdate {
        became_active: false,
        watermark: None,
        became_idle: false,
    };

    #[test]
    fn minimum_over_active_channels() {
        let mut c = WatermarkCombiner::new(3);
        assert_eq!(c.watermark(0, 10), NONE);
        assert_eq!(c.watermark(1, 20), NONE);
        // The minimum is 10 once every channel has one.
        assert_eq!(c.watermark(2, 30), wm(10));
        // A lower or equal watermark changes nothing.
        assert_eq!(c.watermark(0, 5), NONE);
        assert_eq!(c.watermark(0, 10), NONE);
        assert_eq!(c.watermark(0, 25), wm(20));
        assert_eq!(c.emitted(), 20);
    }

    #[test]
    fn idle_channel_is_left_out_and_all_idle_turns_the_operator_idle() {
        let mut c = WatermarkCombiner::new(3);
        c.watermark(0, 10);
        c.watermark(1, 20);
        // Channel 2 never had a watermark (a source subtask without splits): idle, it
        // stops holding the others back.
        assert_eq!(c.status(2, Idle), wm(10));
        assert!(!c.is_idle());
        assert_eq!(c.watermark(0, 30), wm(20));
        // Channel 0 idle: channel 1 alone counts; its watermark is already emitted.
        assert_eq!(c.status(0, Idle), NONE);
        // All idle: the operator advances to the largest watermark (30, channel 0's),
        // then turns idle, once.
        assert_eq!(
            c.status(1, Idle),
            WatermarkUpdate {
                became_active: false,
                watermark: Some(30),
                became_idle: true,
            }
        );
        assert!(c.is_idle());
        assert_eq!(c.status(1, Idle), NONE);
        // A watermark on an idle channel is recorded, not emitted.
        assert_eq!(c.watermark(1, 50), NONE);
        // Channel 1 resumes: the operator turns active, and its recorded watermark counts.
        assert_eq!(
            c.status(1, Active),
            WatermarkUpdate {
                became_active: true,
                watermark: Some(50),
                became_idle: false,
            }
        );
        assert!(!c.is_idle());
    }

    #[test]
    fn all_idle_keeps_the_watermarks_reached_whatever_the_order() {
        // Channel 0 reached 24 and turned idle before channel 1 (which never had a
        // watermark) did: the 24 must still come out.
        let mut c = WatermarkCombiner::new(2);
        assert_eq!(c.watermark(0, 24), NONE);
        assert_eq!(c.status(0, Idle), NONE);
        assert_eq!(
            c.status(1, Idle),
            WatermarkUpdate {
                became_active: false,
                watermark: Some(24),
                became_idle: true,
            }
        );
        // The other order gives the same.
        let mut c = WatermarkCombiner::new(2);
        assert_eq!(c.status(1, Idle), NONE);
        assert_eq!(c.watermark(0, 24), wm(24));
        assert_eq!(
            c.status(0, Idle),
            WatermarkUpdate {
                became_idle: true,
                ..Default::default()
            }
        );
        assert_eq!(c.emitted(), 24);
    }

    #[test]
    fn ended_channels_are_left_out_and_idle_ones_then_make_the_operator_idle() {
        let mut c = WatermarkCombiner::new(3);
        c.watermark(0, 10);
        c.watermark(1, 20);
        assert_eq!(c.status(2, Idle), wm(10));
        // Channel 0 ends: channel 1 alone counts.
        assert_eq!(c.end(0), wm(20));
        assert!(c.is_ended(0) && !c.all_ended());
        // Channel 1 ends: only the idle channel 2 is left, the operator turns idle.
        assert_eq!(
            c.end(1),
            WatermarkUpdate {
                became_idle: true,
                ..Default::default()
            }
        );
        // The idle channel ends too: nothing is open, the operator is no longer idle (the
        // end of its input follows, with the final watermark).
        assert_eq!(
            c.end(2),
            WatermarkUpdate {
                became_active: true,
                ..Default::default()
            }
        );
        assert!(c.all_ended());
        assert_eq!(c.emitted(), 20);
    }

    #[test]
    fn reactivated_channel_below_the_combined_watermark_holds_it_without_going_back() {
        let mut c = WatermarkCombiner::new(2);
        c.watermark(0, 5);
        assert_eq!(c.status(1, Idle), wm(5));
        assert_eq!(c.watermark(0, 100), wm(100));
        // Channel 1 resumes at 5, below the 100 emitted: nothing goes back.
        assert_eq!(c.status(1, Active), NONE);
        assert_eq!(c.emitted(), 100);
        // It holds the combined watermark while behind, whatever channel 0 does.
        assert_eq!(c.watermark(0, 200), NONE);
        assert_eq!(c.watermark(1, 80), NONE);
        assert_eq!(c.emitted(), 100);
        // Once it catches up, the minimum advances again.
        assert_eq!(c.watermark(1, 150), wm(150));
        assert_eq!(c.watermark(0, 400), NONE);
        // Turning idle again releases the hold at once.
        assert_eq!(c.status(1, Idle), wm(400));
    }

    #[test]
    fn ending_every_channel_and_no_channels() {
        let mut c = WatermarkCombiner::new(1);
        assert!(!c.all_ended());
        assert_eq!(c.end(0), NONE);
        assert!(c.all_ended() && !c.is_idle());
        assert_eq!(WatermarkCombiner::new(0).update(), NONE);
    }
}
