//! The text of `tandem mirror plan NAME`: the write-rate figures, an hour-of-day
//! sparkline, the recommendation in one sentence and the standard-link table, all from
//! the API's [`Plan`] (`--json` prints the plan itself).

use std::fmt::Write;

use crate::mirror::plan::{LinkLag, Outcome, Plan, Sizing, Target};

/// The whole text, ending with a newline.
pub fn render_plan(p: &Plan) -> String {
    let mut out = String::new();
    let c = &p.coverage;
    let _ = writeln!(
        out,
        "Mirror `{}`: {} minutes of write history observed ({} in the span, {} not observed)",
        p.mirror,
        c.observed_minutes,
        human_minutes(c.span_minutes),
        c.gap_minutes
    );
    match &p.outcome {
        Outcome::NotEnoughHistory { needed_minutes } => {
            let _ = writeln!(
                out,
                "Not enough history to size a link: at least {needed_minutes} minutes are needed. \
                 The daemon records the application's writes once a minute while this copy is primary."
            );
        }
        Outcome::Sized(s) => render_sizing(&mut out, &p.target, s),
    }
    out
}

fn render_sizing(out: &mut String, t: &Target, s: &Sizing) {
    let r = &s.rates;
    let _ = writeln!(
        out,
        "\nWrite rate (one-minute averages, observed minutes only):"
    );
    let rows = [
        ("peak", r.peak_bytes_per_second),
        ("p99", r.p99_bytes_per_second),
        ("p95", r.p95_bytes_per_second),
        ("p50", r.p50_bytes_per_second),
        ("mean", r.mean_bytes_per_second),
    ];
    for (name, v) in rows {
        let _ = write!(
            out,
            "  {name:<6}{:>12}  {:>13}",
            bytes_rate(v),
            bits_rate(v * 8.0)
        );
        if name == "peak" {
            let _ = write!(
                out,
                "  at {}",
                crate::utc::UtcTime::from_unix_ms(r.peak_minute_ms).to_minute()
            );
        }
        out.push('\n');
    }
    let _ = writeln!(out, "  daily volume {}", volume(r.daily_volume_bytes));
    render_hours(out, s);
    out.push('\n');
    render_recommendation(out, t, &s.recommended);
    render_links(out, t, &s.standard_links);
}

/// A sparkline of the mean rate per hour of the day (`·`: never observed).
fn render_hours(out: &mut String, s: &Sizing) {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let top = s
        .hourly
        .iter()
        .map(|h| h.mean_bytes_per_second)
        .fold(0.0, f64::max);
    let line: String = s
        .hourly
        .iter()
        .map(|h| match h.observed_minutes {
            0 => '·',
            _ if top <= 0.0 => BARS[0],
            _ => BARS[((h.mean_bytes_per_second / top) * 7.0).round() as usize],
        })
        .collect();
    let _ = writeln!(out, "\nMean write rate by hour of day (UTC):");
    let _ = writeln!(out, "  {line}");
    let _ = writeln!(out, "  0     6     12    18   23");
    if let Some(busiest) = s
        .hourly
        .iter()
        .filter(|h| h.observed_minutes > 0)
        .max_by(|a, b| a.mean_bytes_per_second.total_cmp(&b.mean_bytes_per_second))
    {
        let _ = writeln!(
            out,
            "  busiest hour {:02}:00-{:02}:00 at {} on average",
            busiest.hour,
            (busiest.hour + 1) % 24,
            bytes_rate(busiest.mean_bytes_per_second)
        );
    }
}

fn render_recommendation(out: &mut String, t: &Target, best: &LinkLag) {
    let pct = percent(t.percentile);
    let lag = duration(t.lag_seconds);
    if best.bandwidth_bits_per_second <= 0.0 {
        let _ = writeln!(
            out,
            "Nothing was written in the observed minutes: any link keeps the lag under {lag}."
        );
    } else {
        let _ = writeln!(
            out,
            "A link of {} keeps the lag under {lag} in {pct} of minutes; the worst lag at that rate is {}.",
            bits_rate(best.bandwidth_bits_per_second),
            duration(best.worst_lag_seconds)
        );
    }
    let compression = match t.compression_ratio {
        Some(c) => format!("the writes divided by the compression ratio {c} as asked"),
        None => {
            "no compression applied: pass --compression RATIO to use a measured ratio".to_string()
        }
    };
    let _ = writeln!(
        out,
        "(assuming {} of the link carries data; {compression})",
        percent(t.efficiency * 100.0)
    );
}

fn render_links(out: &mut String, t: &Target, links: &[LinkLag]) {
    let pct = format!("lag at p{}", t.percentile);
    let _ = writeln!(
        out,
        "\n  {:<12}{pct:>14}{:>14}  under {}",
        "link",
        "worst lag",
        duration(t.lag_seconds)
    );
    for l in links {
        let _ = writeln!(
            out,
            "  {:<12}{:>14}{:>14}  {}",
            bits_rate(l.bandwidth_bits_per_second),
            duration(l.lag_at_percentile_seconds),
            duration(l.worst_lag_seconds),
            if l.meets_target { "yes" } else { "no" }
        );
    }
}

/// SI: 1 kB = 1000 B, as link speeds are.
fn si(v: f64, unit: &str) -> String {
    const PREFIXES: [&str; 5] = ["", "k", "M", "G", "T"];
    let mut v = v;
    let mut i = 0;
    while v >= 1000.0 && i < PREFIXES.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.1} {}{unit}", PREFIXES[i])
    }
}

fn bytes_rate(bytes_per_second: f64) -> String {
    si(bytes_per_second, "B/s")
}

fn bits_rate(bits_per_second: f64) -> String {
    si(bits_per_second, "bit/s")
}

fn volume(bytes: f64) -> String {
    si(bytes, "B")
}

fn percent(p: f64) -> String {
    format!("{}%", (p * 10.0).round() / 10.0)
}

/// `0 s`, `4.2 s`, `45 s`, `4 min 10 s`, `2 h 5 min`.
fn duration(seconds: f64) -> String {
    if seconds < 10.0 {
        let s = (seconds * 10.0).round() / 10.0;
        return format!("{s} s");
    }
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 if s.is_multiple_of(60) => format!("{} min", s / 60),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

fn human_minutes(minutes: u64) -> String {
    match minutes {
        0..120 => format!("{minutes} min"),
        120..2880 => format!("{:.1} h", minutes as f64 / 60.0),
        _ => format!("{:.1} days", minutes as f64 / 1440.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_formatted_for_people() {
        assert_eq!(duration(0.0), "0 s");
        assert_eq!(duration(4.24), "4.2 s");
        assert_eq!(duration(250.0), "4 min 10 s");
        assert_eq!(duration(120.0), "2 min");
        assert_eq!(duration(7500.0), "2 h 5 min");
        assert_eq!(bits_rate(23_400_000.0), "23.4 Mbit/s");
        assert_eq!(bytes_rate(512.0), "512 B/s");
        assert_eq!(volume(8.64e9), "8.6 GB");
        assert_eq!(percent(95.0), "95%");
    }
}
