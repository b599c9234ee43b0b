//! The scheduler's timing, on synthetic arrivals.

use super::*;

fn scheduler() -> Scheduler {
    Scheduler::new(&Config::default())
}

fn arrivals(total: u64) -> Arrivals {
    Arrivals {
        indexed: vec![total],
        other: 0,
    }
}

/// Feeds `rps` for `ms` milliseconds in 100 ms ticks from (`t`, `total`), sending the
/// reports that fall due; returns the new (t, total) and the triggers seen with their times.
fn run(
    s: &mut Scheduler,
    schedule: &mut Option<u64>,
    t: u64,
    total: u64,
    rps: u64,
    ms: u64,
) -> (u64, u64, Vec<(u64, Trigger)>) {
    run_in_checks(s, schedule, (t, total), rps, ms, 100)
}

/// [`run`] with checks every `check_ms`.
fn run_in_checks(
    s: &mut Scheduler,
    schedule: &mut Option<u64>,
    (mut t, mut total): (u64, u64),
    rps: u64,
    ms: u64,
    check_ms: u64,
) -> (u64, u64, Vec<(u64, Trigger)>) {
    let mut sent = Vec::new();
    let end = t + ms;
    while t < end {
        t += check_ms;
        total += rps * check_ms / 1000;
        sent.extend(check(s, schedule, t, total).map(|trigger| (t, trigger)));
    }
    (t, total, sent)
}

/// One check at `t` with `total` arrivals so far: the report due then, if any, sent.
fn check(s: &mut Scheduler, schedule: &mut Option<u64>, t: u64, total: u64) -> Option<Trigger> {
    s.observe(t, arrivals(total));
    let trigger = s.due(t, *schedule)?;
    s.sent(t, trigger);
    *schedule = Some(s.next_schedule(t, *schedule, trigger));
    Some(trigger)
}

#[test]
fn an_interval_off_the_check_grid_holds_on_average() {
    let config = Config {
        report_interval_ms: 250,
        surge: SurgeConfig {
            min_rps: 1e9,
            ..SurgeConfig::default()
        },
        ..Config::default()
    };
    let mut s = Scheduler::new(&config);
    let mut schedule = None;
    let (_, _, sent) = run(&mut s, &mut schedule, 0, 0, 100, 10_000);
    // 10 s / 250 ms = 40 reports, although each one waits for a 100 ms check.
    assert!((39..=41).contains(&sent.len()), "{}", sent.len());
}

#[test]
fn after_a_long_gap_the_schedule_restarts_instead_of_catching_up() {
    let s = scheduler();
    assert_eq!(s.next_schedule(1_100, Some(0), Trigger::Periodic), 1_000);
    assert_eq!(s.next_schedule(9_000, Some(0), Trigger::Periodic), 9_000);
    assert_eq!(s.next_schedule(1_500, Some(1_000), Trigger::Surge), 1_000);
    assert_eq!(s.next_schedule(1_500, None, Trigger::Periodic), 1_500);
}

#[test]
fn while_holding_a_report_goes_out_at_every_check_without_moving_the_schedule() {
    let mut s = scheduler();
    let mut schedule = None;
    let (t, total, _) = run(&mut s, &mut schedule, 0, 0, 50, 3_050);
    let baseline = s.last_reported_rate();
    let at = schedule;
    let mut triggers = Vec::new();
    for k in 1..=5 {
        let now = t + 10 * k;
        s.observe(now, arrivals(total));
        let trigger = s.due_holding(now, schedule, true);
        if let Some(trigger) = trigger {
            s.sent(now, trigger);
            schedule = Some(s.next_schedule(now, schedule, trigger));
        }
        triggers.push(trigger);
    }
    assert!(
        triggers.iter().all(|t| *t == Some(Trigger::Activation)),
        "{triggers:?}"
    );
    assert_eq!(schedule, at);
    assert_eq!(s.last_reported_rate(), baseline);
    assert!(!Trigger::Activation.is_surge() && !Trigger::Activation.is_periodic());
    // Not holding: nothing until the interval.
    assert_eq!(s.due_holding(t + 60, schedule, false), None);
    // A periodic report due while holding is the periodic one.
    assert_eq!(
        s.due_holding(t + 1_000, schedule, true),
        Some(Trigger::Periodic)
    );
}

#[test]
fn a_held_answer_is_followed_at_once_and_a_quick_one_waits_for_the_check() {
    let s = scheduler();
    let check = Config::default().surge.check_period_ms;
    // Kept by the scaler for 250 ms, the proxy still holding: the next report goes now.
    assert!(s.follows_answer(1_000, 1_250, true));
    assert!(s.follows_answer(1_000, 1_000 + check, true));
    // Answered within a check period (a scaler that does not keep answers, or one that
    // answered "warm" at once): the checks pace the reports, so they never spin.
    assert!(!s.follows_answer(1_000, 1_000 + check - 1, true));
    assert!(!s.follows_answer(1_000, 1_002, true));
    // Nothing held: nothing follows, however long the answer took.
    assert!(!s.follows_answer(1_000, 1_250, false));
    // A clock stepping back never follows.
    assert!(!s.follows_answer(1_000, 900, true));
}

#[test]
fn first_report_goes_out_at_once() {
    let s = scheduler();
    assert_eq!(s.due(5, None), Some(Trigger::Periodic));
}

#[test]
fn steady_load_sends_one_report_per_interval() {
    let mut s = scheduler();
    let mut last = None;
    let (_, _, sent) = run(&mut s, &mut last, 0, 0, 200, 10_000);
    assert!(
        sent.iter().all(|(_, t)| *t == Trigger::Periodic),
        "{sent:?}"
    );
    assert_eq!(sent.len(), 10, "{sent:?}");
}

#[test]
fn a_tenfold_step_is_reported_within_one_check_period() {
    let mut s = scheduler();
    let mut last = None;
    let (t, total, _) = run(&mut s, &mut last, 0, 0, 50, 3_050);
    let (_, _, sent) = run(&mut s, &mut last, t, total, 500, 500);
    let first = sent.first().copied();
    assert_eq!(first, Some((t + 100, Trigger::Surge)), "{sent:?}");
}

#[test]
fn a_doubling_of_a_busy_proxy_is_a_surge() {
    // 200 -> 400 rps: 40 expected in the window, 80 seen.
    let mut s = scheduler();
    let mut last = None;
    let (t, total, _) = run(&mut s, &mut last, 0, 0, 200, 3_050);
    let (_, _, sent) = run(&mut s, &mut last, t, total, 400, 300);
    assert!(sent.iter().any(|(_, k)| *k == Trigger::Surge), "{sent:?}");
}

#[test]
fn a_doubling_at_a_few_requests_per_second_is_noise_not_a_surge() {
    // 10 -> 20 rps: 2 expected in a 200 ms window, 4 seen: twice the baseline, but only
    // 1.4 sigmas above it.
    let mut s = scheduler();
    let mut last = None;
    let (t, total, _) = run(&mut s, &mut last, 0, 0, 10, 3_050);
    let (_, _, sent) = run(&mut s, &mut last, t, total, 20, 900);
    assert!(
        sent.iter().all(|(_, k)| *k == Trigger::Periodic),
        "{sent:?}"
    );
}

#[test]
fn a_step_crossed_mid_window_is_followed_by_its_full_rate() {
    // 60 -> 600 rps, 40 ms before a check: that check's window reads 60 + 540 * 40 / 200
    // = 168 rps; the next checks see more of the step, and one window later the full 600,
    // each going out early as it rises.
    let mut s = scheduler();
    let mut schedule = None;
    let (t, total, _) = run(&mut s, &mut schedule, 0, 0, 60, 3_050);
    let step_at = t + 60;
    let mut total = total;
    let mut sent = Vec::new();
    let mut now = t;
    for _ in 0..6 {
        now += 100;
        let before = 100u64.min(step_at.saturating_sub(now - 100));
        total += (60 * before + 600 * (100 - before)) / 1000;
        if let Some(trigger) = check(&mut s, &mut schedule, now, total) {
            sent.push((now, trigger, s.last_reported_rate()));
        }
    }
    // The reports that carry a higher rate than the one before them: the rise as it shows.
    let rising: Vec<_> = sent
        .iter()
        .filter(|(_, k, _)| *k == Trigger::Surge)
        .scan(0.0, |top, &(at, _, rate)| {
            let rate = rate.unwrap_or(0.0);
            let higher = rate > *top;
            *top = top.max(rate);
            Some(higher.then_some((at, rate)))
        })
        .flatten()
        .collect();
    assert!((2..=3).contains(&rising.len()), "{sent:?}");
    assert!(rising[0].1 < 300.0, "{sent:?}");
    let last = rising[rising.len() - 1];
    assert!(last.1 >= 590.0, "{sent:?}");
    assert!(last.0 - rising[0].0 <= 200, "{sent:?}");
    // After it, the surge lasting: a window apart, nothing new to say but more of the same.
    let after: Vec<_> = sent.iter().filter(|(at, _, _)| *at > last.0).collect();
    assert!(
        after
            .windows(2)
            .all(|w| w[1].0 - w[0].0 >= Config::default().surge.window_ms),
        "{sent:?}"
    );
}

/// A scheduler checking every 50 ms, early reports a check apart, at 40 rps for three
/// seconds (two requests a check), reports sent as they fall due; returns it, the time and the
/// total so far.
fn at_40_rps_in_50_ms_checks() -> (Scheduler, Option<u64>, u64, u64) {
    let config = Config {
        surge: SurgeConfig {
            check_period_ms: 50,
            min_gap_ms: 50,
            ..SurgeConfig::default()
        },
        ..Config::default()
    };
    let mut s = Scheduler::new(&config);
    let mut schedule = None;
    let (t, total, _) = run_in_checks(&mut s, &mut schedule, (0, 0), 40, 3_050, 50);
    (s, schedule, t, total)
}

/// Feeds `added` arrivals at each of the next checks 50 ms apart; returns the reports sent.
fn feed_checks(
    s: &mut Scheduler,
    schedule: &mut Option<u64>,
    (t, total): (&mut u64, &mut u64),
    added: &[u64],
) -> Vec<(u64, Trigger)> {
    let mut sent = Vec::new();
    for &n in added {
        *t += 50;
        *total += n;
        sent.extend(check(s, schedule, *t, *total).map(|trigger| (*t, trigger)));
    }
    sent
}

#[test]
fn a_step_is_followed_at_the_next_check_within_noise_of_its_first_report() {
    // A 10x step into a proxy that stalled: its first check takes the requests that waited (30),
    // the next one the step's rate (18 in 50 ms). The first window reads 36 requests (180 rps),
    // the next 52 (260 rps): 1.4x the first, but within three standard deviations of it (54
    // needed), though far above the 40 rps before the step. It goes out at that check: the
    // scaler can act on 52.
    let (mut s, mut schedule, mut t, mut total) = at_40_rps_in_50_ms_checks();
    let step = t;
    let sent = feed_checks(&mut s, &mut schedule, (&mut t, &mut total), &[30, 18]);
    let surges: Vec<u64> = sent
        .iter()
        .filter(|(_, k)| k.is_surge())
        .map(|&(at, _)| at)
        .collect();
    assert_eq!(surges, vec![step + 50, step + 100], "{sent:?}");
}

#[test]
fn past_the_cap_a_follow_up_needs_its_noise_margin_again() {
    // 40 -> 240 rps: the window fills over four checks, each a rise within noise of the last
    // report, sent as the surge's; with the two that follow a window apart, the cap is spent
    // 600 ms after the step, before the next periodic report.
    let (mut s, mut schedule, mut t, mut total) = at_40_rps_in_50_ms_checks();
    let sent = feed_checks(&mut s, &mut schedule, (&mut t, &mut total), &[12; 12]);
    let surges = sent.iter().filter(|(_, k)| k.is_surge()).count();
    assert_eq!(surges, 1 + MAX_LASTING_REPORTS as usize, "{sent:?}");
    assert!(sent.iter().all(|(_, k)| *k == Trigger::Surge), "{sent:?}");
    // Then 320 rps: 64 in a window against the 48 last reported, 1.33x, within its noise (69
    // needed). With no report left, nothing goes out early.
    let after = feed_checks(&mut s, &mut schedule, (&mut t, &mut total), &[16; 5]);
    assert!(after.is_empty(), "{after:?}");
}

#[test]
fn a_surge_that_lasts_is_reported_a_window_apart_five_times_more() {
    // 30 -> 90 rps, a 3x step: the first early report's window holds a single reading of it,
    // which the scaler cannot yet tell from noise (18 requests in 200 ms against 6); each
    // window after it adds 18 more, five times, a periodic report falling due among them
    // flagged as one of them.
    let mut s = scheduler();
    let mut schedule = None;
    let (t, total, _) = run(&mut s, &mut schedule, 0, 0, 30, 3_050);
    let (_, _, sent) = run(&mut s, &mut schedule, t, total, 90, 3_000);
    let window = Config::default().surge.window_ms;
    let surges: Vec<(u64, Trigger)> = sent.iter().copied().filter(|(_, k)| k.is_surge()).collect();
    assert_eq!(surges.len(), 1 + MAX_LASTING_REPORTS as usize, "{sent:?}");
    assert!(surges[0].0 <= t + 200, "{sent:?}");
    let early: Vec<u64> = surges
        .iter()
        .filter(|(_, k)| *k == Trigger::Surge)
        .map(|&(at, _)| at)
        .collect();
    assert!(early.windows(2).all(|w| w[1] - w[0] >= window), "{sent:?}");
    // After them the steady 90 rps is not a surge.
    let last = surges[surges.len() - 1].0;
    assert!(
        sent.iter()
            .filter(|(at, _)| *at > last)
            .all(|(_, k)| *k == Trigger::Periodic),
        "{sent:?}"
    );
}

#[test]
fn a_periodic_report_during_a_lasting_surge_is_one_of_its_reports() {
    // The step 200 ms before a periodic report, as one came on the real control plane: the
    // early report goes out at the second check, the periodic one falls due a check later.
    // Flagged as a surge, it keeps the follow-ups going instead of closing the surge.
    let mut s = scheduler();
    let mut schedule = None;
    let (t, total, _) = run(&mut s, &mut schedule, 0, 0, 30, 2_750);
    let (_, _, sent) = run(&mut s, &mut schedule, t, total, 90, 2_000);
    assert_eq!(sent[0], (t + 200, Trigger::Surge), "{sent:?}");
    assert_eq!(sent[1], (t + 300, Trigger::PeriodicSurge), "{sent:?}");
    let surges = sent.iter().filter(|(_, k)| k.is_surge()).count();
    assert_eq!(surges, 1 + MAX_LASTING_REPORTS as usize, "{sent:?}");
}

#[test]
fn a_lasting_surge_is_capped_and_spaced_whatever_the_settings() {
    // The shortest settings the configuration allows, and a 10 s interval: the windows (20 ms)
    // would allow a report every other check, and nothing periodic closes the surge for
    // seconds. The follow-ups stay 100 ms apart and stop after five.
    let config = Config {
        report_interval_ms: 10_000,
        surge: SurgeConfig {
            check_period_ms: 10,
            window_ms: 20,
            min_gap_ms: 0,
            ..SurgeConfig::default()
        },
        ..Config::default()
    };
    let mut s = Scheduler::new(&config);
    let mut schedule = None;
    // 300 rps for 12 s (two periodic reports), then 900 rps for 8 s, in 10 ms checks.
    let (t, total, _) = run_in_checks(&mut s, &mut schedule, (0, 0), 300, 12_000, 10);
    let (_, _, sent) = run_in_checks(&mut s, &mut schedule, (t, total), 900, 8_000, 10);
    let surges: Vec<u64> = sent
        .iter()
        .filter(|(_, k)| k.is_surge())
        .map(|&(at, _)| at)
        .collect();
    assert_eq!(surges.len(), 1 + MAX_LASTING_REPORTS as usize, "{sent:?}");
    assert!(
        surges.windows(2).all(|w| w[1] - w[0] >= LASTING_MIN_GAP_MS),
        "{sent:?}"
    );
}

#[test]
fn a_surge_that_fades_sends_no_follow_up() {
    // 300 ms at 90 rps, then back to 30: the window no longer stands out from the 30 before
    // the surge once the 90 has left it, and nothing goes out until the periodic report.
    let mut s = scheduler();
    let mut schedule = None;
    let (t, total, _) = run(&mut s, &mut schedule, 0, 0, 30, 3_050);
    let (t, total, burst) = run(&mut s, &mut schedule, t, total, 90, 300);
    assert!(burst.iter().any(|(_, k)| *k == Trigger::Surge), "{burst:?}");
    let (_, _, after) = run(&mut s, &mut schedule, t, total, 30, 2_000);
    let calm = after
        .iter()
        .filter(|(at, _)| *at >= t + Config::default().surge.window_ms)
        .collect::<Vec<_>>();
    assert!(
        calm.iter().all(|(_, k)| *k == Trigger::Periodic),
        "{after:?}"
    );
}

#[test]
fn a_rise_after_a_periodic_report_needs_the_whole_factor() {
    // 200 -> 280 rps is a rise of 1.4x: a follow-up's size, but no report before it was
    // early.
    let mut s = scheduler();
    let mut schedule = None;
    let (t, total, _) = run(&mut s, &mut schedule, 0, 0, 200, 3_050);
    let (_, _, sent) = run(&mut s, &mut schedule, t, total, 280, 900);
    assert!(
        sent.iter().all(|(_, k)| *k == Trigger::Periodic),
        "{sent:?}"
    );
}

#[test]
fn a_check_a_moment_early_still_comes_a_gap_later() {
    // 50 -> 500 rps, the checks reading 99 ms apart (the tick's timer and the filter's clock
    // disagree by a moment): the follow-up goes out at the next check, not a check later.
    let mut s = scheduler();
    let mut schedule = None;
    let (mut t, mut total, _) = run(&mut s, &mut schedule, 0, 0, 50, 3_050);
    let step = t;
    let mut surges = Vec::new();
    for _ in 0..3 {
        t += 99;
        total += 500 * 99 / 1000;
        if check(&mut s, &mut schedule, t, total).is_some_and(Trigger::is_surge) {
            surges.push(t);
        }
    }
    assert_eq!(surges[..2], [step + 99, step + 198], "{surges:?}");
}

#[test]
fn early_reports_are_rate_limited() {
    let mut config = Config::default();
    config.surge.min_gap_ms = 250;
    let mut s = Scheduler::new(&config);
    let mut last = None;
    let (mut t, mut total, _) = run(&mut s, &mut last, 0, 0, 20, 3_050);
    // Tripling every tick would trigger every tick without the gap.
    let mut rps = 60;
    let mut early = Vec::new();
    for _ in 0..6 {
        let (t2, total2, sent) = run(&mut s, &mut last, t, total, rps, 100);
        early.extend(sent.into_iter().filter(|(_, k)| *k == Trigger::Surge));
        (t, total, rps) = (t2, total2, rps * 3);
    }
    for pair in early.windows(2) {
        assert!(pair[1].0 - pair[0].0 >= 250, "{early:?}");
    }
    assert!(!early.is_empty());
}

#[test]
fn low_traffic_noise_below_min_rps_sends_nothing_early() {
    let mut config = Config::default();
    config.surge.min_rps = 50.0;
    let mut s = Scheduler::new(&config);
    let mut last = None;
    let (t, total, _) = run(&mut s, &mut last, 0, 0, 0, 2_050);
    // 0 -> 40 rps is "infinitely" more, but below min_rps (50).
    let (_, _, sent) = run(&mut s, &mut last, t, total, 40, 500);
    assert!(
        sent.iter().all(|(_, k)| *k == Trigger::Periodic),
        "{sent:?}"
    );
}

#[test]
fn traffic_from_zero_above_min_rps_is_a_surge() {
    let mut s = scheduler();
    let mut last = None;
    let (t, total, _) = run(&mut s, &mut last, 0, 0, 0, 2_050);
    let (_, _, sent) = run(&mut s, &mut last, t, total, 100, 300);
    assert_eq!(sent.first().map(|(_, k)| *k), Some(Trigger::Surge));
}

#[test]
fn no_surge_is_called_before_a_rate_was_reported() {
    let mut s = scheduler();
    s.observe(100, arrivals(0));
    s.sent(100, Trigger::Periodic);
    assert_eq!(s.last_reported_rate(), None);
    s.observe(200, arrivals(100));
    assert_eq!(s.due(200, Some(100)), None);
}

#[test]
fn a_surge_when_the_periodic_report_falls_due_is_flagged() {
    let mut s = scheduler();
    let mut schedule = None;
    let (t, total, _) = run(&mut s, &mut schedule, 0, 0, 30, 3_000);
    // The periodic report is due at the next check (t + 100), just as the load steps up.
    let (_, _, sent) = run(&mut s, &mut schedule, t, total, 300, 100);
    assert_eq!(sent, [(t + 100, Trigger::PeriodicSurge)]);
    assert_eq!(schedule, Some(t + 100), "still advances the schedule");
}

#[test]
fn a_report_from_another_vm_keeps_the_schedule() {
    let s = scheduler();
    assert_eq!(s.due(10_500, Some(10_000)), None);
    assert_eq!(s.due(11_000, Some(10_000)), Some(Trigger::Periodic));
}

#[test]
fn recent_rate_needs_two_samples() {
    let mut s = scheduler();
    s.observe(100, arrivals(10));
    assert_eq!(s.recent_rate(), None);
    s.observe(300, arrivals(50));
    assert_eq!(s.recent_rate(), Some(200.0));
}

#[test]
fn the_window_spans_from_the_last_sample_before_its_start() {
    let mut s = scheduler();
    for (t, n) in [(100, 0), (200, 10), (300, 30), (400, 60), (500, 100)] {
        s.observe(t, arrivals(n));
    }
    // Window 200 ms ending at 500: from the sample at 300.
    let recent = s.recent().unwrap();
    assert_eq!(recent.span_ms, 200);
    assert_eq!(recent.arrivals.total(), 70);
    assert_eq!(s.samples.len(), 3, "older samples are dropped");
}

#[test]
fn the_window_is_counted_per_route_and_new_routes_count_from_zero() {
    let mut s = scheduler();
    s.observe(
        100,
        Arrivals {
            indexed: vec![5],
            other: 1,
        },
    );
    s.observe(
        300,
        Arrivals {
            indexed: vec![9, 4],
            other: 3,
        },
    );
    let recent = s.recent().unwrap();
    assert_eq!(recent.arrivals.indexed, [4, 4]);
    assert_eq!(recent.arrivals.other, 2);
}

#[test]
fn a_count_read_below_its_base_counts_as_nothing() {
    let now = Arrivals {
        indexed: vec![7, 2],
        other: 0,
    };
    let base = Arrivals {
        indexed: vec![9, 1],
        other: 5,
    };
    assert_eq!(
        now.since(&base),
        Arrivals {
            indexed: vec![0, 1],
            other: 0
        }
    );
}

#[test]
fn a_clock_step_back_is_ignored() {
    let mut s = scheduler();
    s.observe(1_000, arrivals(10));
    s.observe(900, arrivals(20));
    s.observe(1_100, arrivals(30));
    assert_eq!(s.recent_rate(), Some(200.0));
}

#[test]
fn samples_stay_bounded_whatever_the_window() {
    let mut config = Config::default();
    config.surge.check_period_ms = 10;
    config.surge.window_ms = 640;
    let mut s = Scheduler::new(&config);
    for k in 0..1_000 {
        s.observe(k * 10, arrivals(k));
    }
    assert!(s.samples.len() <= MAX_SAMPLES);
    assert_eq!(s.recent().map(|r| r.span_ms), Some(640));
}
