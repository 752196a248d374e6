use super::*;
use proptest::prelude::*;

/// Minute 0 of a day, midnight UTC (2025-12-31).
const DAY0: u32 = 29_452_320;

fn history(bytes: impl IntoIterator<Item = u64>) -> WriteHistory {
    WriteHistory::from_minutes(
        bytes
            .into_iter()
            .enumerate()
            .map(|(i, b)| MinuteWrites {
                minute: DAY0 + i as u32,
                bytes: b,
            })
            .collect(),
    )
}

fn target(lag_s: u64, pct: f64) -> Target {
    Target::new(Duration::from_secs(lag_s), pct, DEFAULT_EFFICIENCY, None).unwrap()
}

fn sizing(p: &Plan) -> &Sizing {
    match &p.outcome {
        Outcome::Sized(s) => s,
        other => panic!("not sized: {other:?}"),
    }
}

/// The recommendation meets the target and 5 % less does not.
fn assert_minimal(h: &WriteHistory, t: &Target) {
    let p = plan("vol", h, t);
    let s = sizing(&p);
    let sent: Vec<f64> = h
        .minutes()
        .map(|m| m.bytes as f64 / t.compression_ratio.unwrap_or(1.0))
        .collect();
    let best = s.recommended.bandwidth_bits_per_second;
    assert!(s.recommended.meets_target, "{s:?}");
    assert!(meets(&sent, best, t));
    if best > 0.0 {
        assert!(
            !meets(&sent, best * 0.95, t),
            "{best} bit/s is not minimal for {t:?}"
        );
    }
}

#[test]
fn a_steady_rate_needs_the_rate_over_the_efficiency() {
    let per_minute = 6_000_000; // 100 kB/s = 0.8 Mbit/s
    let h = history(std::iter::repeat_n(per_minute, 1440));
    let t = target(30, 95.0);
    let p = plan("vol", &h, &t);
    let s = sizing(&p);
    let rate_bits = 100_000.0 * 8.0 / DEFAULT_EFFICIENCY;
    let best = s.recommended.bandwidth_bits_per_second;
    assert!(
        best >= rate_bits * 0.999 && best <= rate_bits * 1.01,
        "{best}"
    );
    assert_eq!(s.rates.peak_bytes_per_second, 100_000.0);
    assert_eq!(s.rates.p50_bytes_per_second, 100_000.0);
    assert_eq!(s.rates.p99_bytes_per_second, 100_000.0);
    assert!((s.rates.daily_volume_bytes - 8.64e9).abs() < 1.0);
    assert_eq!(p.coverage.observed_minutes, 1440);
    assert_eq!(p.coverage.gap_minutes, 0);
    // Every standard link carries 0.8 Mbit/s without lag.
    assert!(s.standard_links.iter().all(|l| l.worst_lag_seconds == 0.0));
    assert_minimal(&h, &t);
}

#[test]
fn a_daily_peak_shows_in_the_hour_profile_and_sets_the_link() {
    // 7 days: 100 kB/s, and 10 MB/s from 09:00 to 10:00 UTC.
    let h = history((0..WINDOW_MINUTES).map(|i| {
        if (540..600).contains(&(i % 1440)) {
            600_000_000
        } else {
            6_000_000
        }
    }));
    let t = target(30, 95.0);
    let p = plan("vol", &h, &t);
    let s = sizing(&p);
    assert_eq!(s.hourly.len(), 24);
    assert_eq!(s.hourly[9].mean_bytes_per_second, 10_000_000.0);
    assert_eq!(s.hourly[8].mean_bytes_per_second, 100_000.0);
    assert_eq!(s.hourly[9].observed_minutes, 7 * 60);
    assert_eq!(s.rates.peak_bytes_per_second, 10_000_000.0);
    // The peak is 1 hour in 24 (4.2 % of minutes): p95 is the base, p99 the peak.
    assert_eq!(s.rates.p95_bytes_per_second, 100_000.0);
    assert_eq!(s.rates.p99_bytes_per_second, 10_000_000.0);
    let best = s.recommended.bandwidth_bits_per_second;
    assert!(best > 0.8e6 / 0.9 && best < 80e6 / 0.9, "{best}");
    assert_minimal(&h, &t);
    // At p100 the peak hour itself must drain within 30 s of lag.
    let strict = target(30, 100.0);
    assert_minimal(&h, &strict);
    let all = sizing(&plan("vol", &h, &strict)).recommended;
    assert!(all.bandwidth_bits_per_second > best);
    assert!(all.worst_lag_seconds <= 30.0);
}

#[test]
fn bursts_are_absorbed_within_the_lag_target() {
    // An idle volume with a 600 MB burst in one minute every hour, for a day.
    let h = history((0..1440).map(|i| if i % 60 == 30 { 600_000_000 } else { 0 }));
    let t = target(300, 95.0);
    let p = plan("vol", &h, &t);
    let s = sizing(&p);
    assert_eq!(s.rates.p50_bytes_per_second, 0.0);
    assert_eq!(s.rates.peak_bytes_per_second, 10_000_000.0);
    // Far below the burst's own rate: 5 minutes of lag are allowed to drain it.
    let best = s.recommended.bandwidth_bits_per_second;
    assert!(best < 80e6 / 0.9 / 4.0, "{best}");
    assert!(s.recommended.worst_lag_seconds > 0.0);
    assert_minimal(&h, &t);
    assert_minimal(&h, &target(10, 99.0));
}

#[test]
fn a_compression_ratio_is_applied_only_when_asked() {
    let h = history(std::iter::repeat_n(6_000_000, 120));
    let plain = sizing(&plan("vol", &h, &target(30, 95.0))).recommended;
    let t = Target::new(Duration::from_secs(30), 95.0, 0.9, Some(2.0)).unwrap();
    let p = plan("vol", &h, &t);
    let half = sizing(&p).recommended;
    let ratio = plain.bandwidth_bits_per_second / half.bandwidth_bits_per_second;
    assert!((ratio - 2.0).abs() < 0.02, "{ratio}");
    // The rates stay the application's.
    assert_eq!(sizing(&p).rates.peak_bytes_per_second, 100_000.0);
    assert_minimal(&h, &t);
}

#[test]
fn less_than_an_hour_is_not_enough_history() {
    let t = Target::default();
    let p = plan("vol", &history(std::iter::repeat_n(1, 59)), &t);
    assert_eq!(
        p.outcome,
        Outcome::NotEnoughHistory {
            needed_minutes: MIN_OBSERVED_MINUTES
        }
    );
    assert!(matches!(
        plan("vol", &history(std::iter::repeat_n(1, 60)), &t).outcome,
        Outcome::Sized(_)
    ));
    let empty = plan("vol", &WriteHistory::default(), &t);
    assert_eq!(empty.coverage.span_minutes, 0);
    assert!(matches!(empty.outcome, Outcome::NotEnoughHistory { .. }));
}

#[test]
fn nothing_written_needs_no_link() {
    let s = sizing(&plan(
        "vol",
        &history(std::iter::repeat_n(0, 90)),
        &Target::default(),
    ))
    .clone();
    assert_eq!(s.recommended.bandwidth_bits_per_second, 0.0);
    assert!(s.recommended.meets_target);
    assert_eq!(s.recommended.worst_lag_seconds, 0.0);
}

#[test]
fn gaps_are_left_out_not_counted_as_idle_minutes() {
    // An hour at 1 MB/s, 1000 minutes of downtime, another hour at 1 MB/s.
    let mut minutes: Vec<MinuteWrites> = (0..60)
        .map(|i| MinuteWrites {
            minute: DAY0 + i,
            bytes: 60_000_000,
        })
        .collect();
    minutes.extend((1060..1120).map(|i| MinuteWrites {
        minute: DAY0 + i,
        bytes: 60_000_000,
    }));
    let p = plan(
        "vol",
        &WriteHistory::from_minutes(minutes),
        &Target::default(),
    );
    assert_eq!(p.coverage.observed_minutes, 120);
    assert_eq!(p.coverage.span_minutes, 1120);
    assert_eq!(p.coverage.gap_minutes, 1000);
    let s = sizing(&p);
    assert_eq!(s.rates.p50_bytes_per_second, 1_000_000.0);
    assert!((s.rates.daily_volume_bytes - 86.4e9).abs() < 1.0);
}

#[test]
fn the_fluid_queue_drains_at_bandwidth_times_efficiency() {
    // 1 byte/s drains 60 per minute: 120 leaves 60 (60 s), the idle minute drains it.
    let lags = replay(&[120.0, 0.0], 8.0, 1.0);
    assert_eq!(lags, vec![60.0, 0.0]);
    let lags = replay(&[200.0, 100.0, 0.0], 8.0, 0.5);
    // Drain 0.5 byte/s = 30 per minute: 170 (340 s), 240 (480 s), 210 (420 s).
    assert_eq!(lags, vec![340.0, 480.0, 420.0]);
}

fn sample(at_s: u64, written: u64, primary: bool) -> Sample {
    Sample {
        at_ms: u64::from(DAY0) * MINUTE_MS + at_s * 1000,
        written,
        primary,
    }
}

#[test]
fn samples_record_minutes_and_skip_what_was_not_observed() {
    let mut h = WriteHistory::default();
    assert_eq!(
        h.record(sample(1, 100, true)),
        Recorded::Skipped(Skip::First)
    );
    assert_eq!(
        h.record(sample(30, 150, true)),
        Recorded::Skipped(Skip::SameMinute)
    );
    assert_eq!(
        h.record(sample(61, 400, true)),
        Recorded::Minute(MinuteWrites {
            minute: DAY0,
            bytes: 300
        })
    );
    // Three minutes missed: no minute is recorded, the next one counts again.
    assert_eq!(
        h.record(sample(241, 900, true)),
        Recorded::Skipped(Skip::Gap { minutes: 2 })
    );
    assert_eq!(
        h.record(sample(301, 1000, false)),
        Recorded::Minute(MinuteWrites {
            minute: DAY0 + 4,
            bytes: 100
        })
    );
    assert_eq!(
        h.record(sample(361, 1000, false)),
        Recorded::Skipped(Skip::NotPrimary)
    );
    // The daemon restarted: the counter starts again from 0.
    assert_eq!(
        h.record(sample(421, 10, true)),
        Recorded::Skipped(Skip::CounterReset)
    );
    assert!(matches!(
        h.record(sample(481, 20, true)),
        Recorded::Minute(_)
    ));
    let minutes: Vec<u32> = h.minutes().map(|m| m.minute - DAY0).collect();
    assert_eq!(minutes, vec![0, 4, 7]);
}

#[test]
fn the_window_keeps_seven_days() {
    let h = history(std::iter::repeat_n(1, WINDOW_MINUTES as usize + 100));
    assert_eq!(h.len(), WINDOW_MINUTES as usize);
    assert_eq!(h.minutes().next().unwrap().minute, DAY0 + 100);
}

#[test]
fn the_codec_round_trips_and_refuses_damage() {
    let h = history((0..500).map(|i| i * 1000));
    let bytes = encode(&h);
    assert_eq!(bytes.len(), HEADER + 500 * ENTRY + CHECKSUM);
    assert_eq!(decode(&bytes).unwrap(), h);
    let mut flipped = bytes.clone();
    flipped[100] ^= 1;
    assert_eq!(decode(&flipped), Err(PlanError::Checksum));
    assert!(matches!(
        decode(&bytes[..bytes.len() - 1]),
        Err(PlanError::Length { .. })
    ));
    assert!(matches!(decode(b"TD"), Err(PlanError::Length { .. })));
    let mut magic = bytes.clone();
    magic[0] = b'X';
    assert_eq!(decode(&magic), Err(PlanError::Magic));
    let mut version = bytes;
    version[4] = 9;
    assert_eq!(decode(&version), Err(PlanError::Version(9)));
    assert_eq!(decode(&encode(&WriteHistory::default())).unwrap().len(), 0);
}

#[test]
fn targets_are_checked() {
    let lag = Duration::from_secs(30);
    assert!(Target::new(lag, 95.0, 0.9, None).is_ok());
    assert!(matches!(
        Target::new(Duration::ZERO, 95.0, 0.9, None),
        Err(PlanError::Lag(_))
    ));
    assert!(matches!(
        Target::new(Duration::from_secs(90_000), 95.0, 0.9, None),
        Err(PlanError::Lag(_))
    ));
    for p in [0.0, 100.5, f64::NAN] {
        assert!(matches!(
            Target::new(lag, p, 0.9, None),
            Err(PlanError::Percentile(_))
        ));
    }
    assert!(matches!(
        Target::new(lag, 95.0, 1.5, None),
        Err(PlanError::Efficiency(_))
    ));
    assert!(matches!(
        Target::new(lag, 95.0, 0.9, Some(0.5)),
        Err(PlanError::Compression(_))
    ));
}

#[test]
fn the_rounding_only_goes_up() {
    assert_eq!(round_up_3_digits(23_410_000.0), 23_500_000.0);
    assert!(round_up_3_digits(999.0) >= 999.0);
    assert_eq!(percentile(&[1.0, 2.0], 50.0), 1.0);
    assert_eq!(rank(95.0, 100), 95);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the history, the recommendation meets the target and is minimal.
    #[test]
    fn the_recommendation_is_minimal(
        base in 0u64..5_000_000,
        bursts in proptest::collection::vec((0usize..400, 1u64..2_000_000_000), 0..12),
        len in 60usize..400,
        lag in 1u64..600,
        pct in prop_oneof![Just(50.0), Just(90.0), Just(95.0), Just(99.0), Just(100.0)],
    ) {
        let mut bytes = vec![base; len];
        for (at, b) in bursts {
            bytes[at % len] += b;
        }
        let h = history(bytes);
        assert_minimal(&h, &target(lag, pct));
    }
}
