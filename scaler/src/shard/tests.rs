use super::*;

fn key(namespace: &str, name: &str) -> TargetKey {
    TargetKey {
        namespace: namespace.into(),
        name: name.into(),
    }
}

fn seen(holder: Option<&str>, changed_at: Millis) -> Seen {
    Seen {
        holder: holder.map(str::to_owned),
        changed_at,
        duration_ms: 4_000,
    }
}

#[test]
fn a_target_always_falls_in_the_same_shard_and_targets_spread_over_all_of_them() {
    // Pinned values: every replica, of every version, must agree on them.
    assert_eq!(
        shard_of(&key("web", "checkout"), 8),
        shard_of(&key("web", "checkout"), 8)
    );
    assert_eq!(fnv1a(&[]), 0xcbf2_9ce4_8422_2325);
    assert_ne!(
        fnv1a(&[b"ab", b"c"]),
        fnv1a(&[b"a", b"bc"]),
        "the parts are separated"
    );
    let mut counts = [0_u32; 8];
    for i in 0..800 {
        counts[shard_of(&key("ns", &format!("app-{i}")), 8) as usize] += 1;
    }
    assert!(counts.iter().all(|c| (60..=140).contains(c)), "{counts:?}");
    assert_eq!(shard_of(&key("a", "b"), 0), 0, "no shards reads as one");
}

#[test]
fn a_member_that_leaves_hands_on_its_shards_and_few_others_move() {
    let three = ["a", "b", "c"];
    let before = assignment(64, three);
    for member in three {
        assert!(before.contains(&member), "{member} gets some shards");
    }
    let after = assignment(64, ["a", "c"]);
    assert!(!after.contains(&"b"));
    let moved_elsewhere = before
        .iter()
        .zip(&after)
        .filter(|(was, now)| **was != "b" && was != now)
        .count();
    assert!(
        moved_elsewhere <= 8,
        "{moved_elsewhere} shards of the members that stayed moved"
    );
    // The order members are listed in does not matter.
    assert_eq!(assignment(64, ["c", "a", "b"]), before);
}

#[test]
fn the_live_members_split_the_shards_evenly_and_a_joiner_moves_few_of_them() {
    // Pod names of one ReplicaSet: one prefix, five random characters. Plain rendezvous put
    // all 8 shards on one of two such replicas in this repository's own test run.
    let pods = [
        "surge-scaler-7fbcfdffd-bhfhd",
        "surge-scaler-7fbcfdffd-pd4qw",
        "surge-scaler-7fbcfdffd-x2k9z",
    ];
    let count = |owners: &[&str], pod: &str| owners.iter().filter(|o| **o == pod).count();
    let two = assignment(8, [pods[0], pods[1]]);
    assert_eq!((count(&two, pods[0]), count(&two, pods[1])), (4, 4));
    let three = assignment(8, pods);
    let counts: Vec<usize> = pods.iter().map(|p| count(&three, p)).collect();
    assert!(counts.iter().all(|c| (2..=3).contains(c)), "{counts:?}");
    let moved = two.iter().zip(&three).filter(|(a, b)| a != b).count();
    assert!(
        moved <= 4,
        "{moved} of 8 shards moved when a third replica joined"
    );
    // Everyone computes the same split, whatever order it lists the members in.
    assert_eq!(assignment(8, [pods[2], pods[0], pods[1]]), three);
    assert_eq!(assignment(8, std::iter::empty()), Vec::<&str>::new());
}

#[test]
fn a_lease_lapses_a_duration_after_this_replica_last_saw_it_change() {
    let lease = seen(Some("a"), 10_000);
    assert_eq!(lease.held_by(13_999), Some("a"));
    assert!(lease.lapsed(14_000));
    assert_eq!(lease.held_by(14_000), None);
    assert_eq!(seen(None, 10_000).held_by(10_001), None, "released");
}

#[test]
fn alone_a_replica_takes_every_shard_and_then_renews_them() {
    let steps = plan("a", true, 10_000, 4, &[], &HashMap::new());
    assert_eq!(
        steps,
        (0..4).map(|s| (s, Step::Acquire)).collect::<Vec<_>>()
    );
    let held: HashMap<u32, Seen> = (0..4).map(|s| (s, seen(Some("a"), 9_000))).collect();
    let steps = plan("a", true, 10_000, 4, &[], &held);
    assert!(
        steps.iter().all(|(_, step)| *step == Step::Renew),
        "{steps:?}"
    );
}

#[test]
fn a_joining_member_gets_its_shards_released_to_it_and_takes_nothing_held() {
    let shards = 16;
    let held: HashMap<u32, Seen> = (0..shards).map(|s| (s, seen(Some("a"), 9_000))).collect();
    // "a" sees "b" join: it gives up exactly the shards "b" should hold.
    let steps = plan("a", true, 10_000, shards, &["b".into()], &held);
    let released: Vec<u32> = steps
        .iter()
        .filter(|(_, s)| *s == Step::Release)
        .map(|(shard, _)| *shard)
        .collect();
    let for_b: Vec<u32> = (0..shards)
        .filter(|s| assignment(shards, ["a", "b"])[*s as usize] == "b")
        .collect();
    assert_eq!(released, for_b);
    assert!(!for_b.is_empty());
    assert_eq!(steps.len(), shards as usize, "the rest are renewed");
    // "b" takes nothing while "a" still holds it...
    assert!(plan("b", true, 10_000, shards, &["a".into()], &held).is_empty());
    // ...and takes its own once released.
    let mut after = held.clone();
    for shard in &for_b {
        after.insert(*shard, seen(None, 10_100));
    }
    let steps = plan("b", true, 10_200, shards, &["a".into()], &after);
    assert_eq!(
        steps,
        for_b
            .iter()
            .map(|s| (*s, Step::Acquire))
            .collect::<Vec<_>>()
    );
}

#[test]
fn the_shards_of_a_member_that_died_are_taken_once_its_leases_lapse() {
    let shards = 16;
    let held: HashMap<u32, Seen> = (0..shards)
        .map(|s| {
            // "a" renews its own (last at 13 500); "b" renewed last at 10 000 and died.
            let holder = assignment(shards, ["a", "b"])[s as usize];
            let renewed = if holder == "a" { 13_500 } else { 10_000 };
            (s, seen(Some(holder), renewed))
        })
        .collect();
    let members: HashMap<String, Seen> = [
        ("a".to_owned(), seen(Some("a"), 13_500)),
        ("b".to_owned(), seen(Some("b"), 10_000)),
    ]
    .into();
    // Before the Leases lapse, "b" still counts: "a" renews its own and leaves b's alone.
    let others = live_members("a", 13_000, &members);
    assert_eq!(others, ["b"]);
    let steps = plan("a", true, 13_000, shards, &others, &held);
    assert!(steps.iter().all(|(_, s)| *s == Step::Renew), "{steps:?}");
    // At 14 000 b's Leases have lapsed: a takes b's shards and renews its own.
    let others = live_members("a", 14_000, &members);
    assert!(others.is_empty());
    let steps = plan("a", true, 14_000, shards, &others, &held);
    let taken = steps.iter().filter(|(_, s)| *s == Step::Acquire).count();
    let b_had = (0..shards)
        .filter(|s| assignment(shards, ["a", "b"])[*s as usize] == "b")
        .count();
    assert_eq!(taken, b_had);
    assert_eq!(steps.len(), shards as usize);
}

#[test]
fn ownership_follows_the_hold_and_stops_a_margin_before_it_runs_out() {
    let clock = Clock::default();
    let ownership = Ownership::sharded("a", 4, 1_000, clock);
    let target = key("web", "checkout");
    let shard = shard_of(&target, 4);
    assert!(
        !ownership.owns(&target),
        "nothing is owned before a Lease is held"
    );
    let mut changes = ownership.changes();
    ownership.hold(shard, Some(clock.now() + 5_000));
    assert!(ownership.owns(&target));
    assert_eq!(ownership.held(), [shard]);
    assert!(changes.has_changed().unwrap(), "the loops are told");
    changes.mark_unchanged();
    // Renewing moves the deadline but is not news.
    ownership.hold(shard, Some(clock.now() + 6_000));
    assert!(!changes.has_changed().unwrap());
    // Held, but within the margin of its end: no more writes.
    ownership.hold(shard, Some(clock.now() + 900));
    assert!(!ownership.owns(&target));
    ownership.hold(shard, None);
    assert!(changes.has_changed().unwrap());
    assert!(
        Ownership::everything().owns(&target),
        "one replica owns everything"
    );
    ownership.hold(99, Some(u64::MAX));
    assert!(
        ownership.held().is_empty(),
        "a shard out of range is ignored"
    );
}

#[test]
fn a_replica_that_just_joined_gets_shards_only_once_it_has_been_live_a_warmup() {
    let others = vec![("b".to_owned(), 0), ("c".to_owned(), 9_000)];
    // "a" started at 9 000, "c" was first seen at 9 000, "b" long before: at 10 000 only "b"
    // is warm, and takes everything.
    assert_eq!(
        candidates(9_000, &others, 10_000, 4_000),
        (false, vec!["b".to_owned()])
    );
    // At 13 000 all three are.
    assert_eq!(
        candidates(9_000, &others, 13_000, 4_000),
        (true, vec!["b".to_owned(), "c".to_owned()])
    );
    // Nobody warm (started together): every live member counts at once.
    let fresh = vec![("b".to_owned(), 9_500)];
    assert_eq!(
        candidates(9_000, &fresh, 10_000, 4_000),
        (true, vec!["b".to_owned()])
    );
    // Alone and just started: it takes everything at once.
    assert_eq!(candidates(9_900, &[], 10_000, 4_000), (true, vec![]));
    // Started together, one turning warm before the other: both still count, so the split
    // made at start stays (no handing everything to the first one warm, and back).
    for now in [9_600, 13_000, 13_400, 13_600] {
        assert_eq!(
            candidates(9_000, &[("b".to_owned(), 9_500)], now, 4_000),
            (true, vec!["b".to_owned()]),
            "at {now}"
        );
    }
    // The warm one died: the ones that joined later count among themselves.
    assert_eq!(
        candidates(9_000, &[("c".to_owned(), 9_000)], 10_000, 4_000),
        (true, vec!["c".to_owned()])
    );
    // Not a candidate: it releases what it holds and takes nothing.
    let held: HashMap<u32, Seen> = (0..4).map(|s| (s, seen(Some("a"), 9_500))).collect();
    let steps = plan("a", false, 10_000, 4, &["b".into()], &held);
    assert!(steps.iter().all(|(_, s)| *s == Step::Release), "{steps:?}");
    assert!(plan("a", false, 10_000, 4, &["b".into()], &HashMap::new()).is_empty());
}
