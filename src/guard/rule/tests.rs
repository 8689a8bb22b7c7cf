use super::*;

const NOW: i64 = 1_800_000_000_000;
const ME: &str = "A1B2C3D4E5F60718293A4B5C6D7E8F9012345678";
const OTHER: &str = "0000000000000000000000000000000000000001";

fn me() -> Address {
    Address::from_hex(ME).unwrap()
}

fn settings() -> Settings {
    Settings {
        chain_id: "testchain-1".into(),
        lookback: 10,
        max_tip_age: Duration::from_secs(60),
        max_spread: 2,
        fence_margin: Duration::from_secs(5),
    }
}

fn sig(flag: Flag, who: &str, unix_ms: i64) -> Signature {
    Signature {
        flag,
        address: (flag != Flag::Absent).then(|| Address::from_hex(who).unwrap()),
        unix_ms,
    }
}

/// A chain at `tip` whose commits below it carry `signers(h)`.
fn endpoint(tip: i64, signers: impl Fn(i64) -> Vec<Signature>) -> Observation {
    Observation {
        endpoint: "http://sentry:26657".into(),
        status: Ok(Status {
            network: "testchain-1".into(),
            catching_up: false,
            latest_height: tip,
            latest_unix_ms: NOW - 3_000,
            earliest_height: 1,
        }),
        commits: Ok((1..tip)
            .map(|h| Commit {
                height: h,
                signatures: signers(h),
            })
            .collect()),
        in_set: Some(true),
    }
}

fn seen(o: &Observation, a: Allowance) -> Seen {
    judge_endpoint(o, me(), &a, &settings(), NOW)
}

#[test]
fn block_id_flags_are_cometbfts_numbers() {
    assert_eq!(Flag::from_code(1), Some(Flag::Absent));
    assert_eq!(Flag::from_code(2), Some(Flag::Commit));
    assert_eq!(Flag::from_code(3), Some(Flag::Nil));
    assert_eq!(Flag::from_code(0), None);
    assert_eq!(Flag::from_code(4), None);
}

#[test]
fn an_address_is_40_hex_digits_and_prints_upper_case() {
    assert_eq!(Address::from_hex(&ME.to_lowercase()), Some(me()));
    assert_eq!(me().to_string(), ME);
    assert_eq!(Address::from_hex(""), None);
    assert_eq!(Address::from_hex(&ME[..38]), None);
    assert_eq!(Address::from_hex(&format!("{}zz", &ME[..38])), None);
}

#[test]
fn our_own_signatures_at_or_below_the_state_never_count_so_a_restart_waits_for_nothing() {
    // We signed every height up to 95 and stopped; the chain went on
    // without us (ABSENT entries name nobody).
    let o = endpoint(100, |h| {
        let mine = if h <= 95 {
            sig(Flag::Commit, ME, NOW - (100 - h) * 1000)
        } else {
            sig(Flag::Absent, ME, 0)
        };
        vec![sig(Flag::Commit, OTHER, NOW), mine]
    });
    let v = seen(&o, Allowance::UpTo { height: 95 });
    assert_eq!(
        v,
        Seen::Clean {
            tip: 100,
            checked: 96..=99,
            in_set: Some(true)
        }
    );
    // At the tip: nothing above the state yet, nothing to check.
    let o = endpoint(96, |_| vec![sig(Flag::Commit, ME, NOW)]);
    assert!(matches!(
        seen(&o, Allowance::UpTo { height: 95 }),
        Seen::Clean { checked, .. } if checked.is_empty()
    ));
}

#[test]
fn a_signature_above_the_state_is_foreign_nil_included() {
    for flag in [Flag::Commit, Flag::Nil] {
        let o = endpoint(100, |h| {
            vec![sig(
                if h == 97 { flag } else { Flag::Absent },
                ME,
                NOW - 3_000,
            )]
        });
        match seen(&o, Allowance::UpTo { height: 95 }) {
            Seen::Foreign(s) => assert_eq!((s.height, s.flag), (97, flag)),
            other => panic!("{flag:?}: {other:?}"),
        }
    }
}

#[test]
fn after_a_takeover_the_old_holders_signatures_before_its_fence_are_not_a_rogues() {
    // Carried 90, raised to 97 (skip 7); the old holder was fenced by NOW - 60 s.
    let fenced = NOW - 60_000;
    let a = Allowance::TakenOver {
        carried: 90,
        raised: 97,
        fenced_by_ms: fenced,
    };
    // It signed 91..=94 before its fence (timestamps before it).
    let old = endpoint(100, |h| {
        vec![if (91..=94).contains(&h) {
            sig(Flag::Commit, ME, fenced - (95 - h) * 1000)
        } else {
            sig(Flag::Absent, ME, 0)
        }]
    });
    assert!(matches!(seen(&old, a), Seen::Clean { .. }));
    // Within the clock margin of the fence: still the old holder's.
    let edge = endpoint(100, |h| {
        vec![sig(
            if h == 93 { Flag::Nil } else { Flag::Absent },
            ME,
            fenced + 4_000,
        )]
    });
    assert!(matches!(seen(&edge, a), Seen::Clean { .. }));
    // After the fence, at a height the skip covers: a rogue.
    let rogue = endpoint(100, |h| {
        vec![sig(
            if h == 95 { Flag::Commit } else { Flag::Absent },
            ME,
            fenced + 30_000,
        )]
    });
    assert!(matches!(seen(&rogue, a), Seen::Foreign(s) if s.height == 95));
    // Above what our state was raised to, whenever: the skip was too small
    // or someone else signs; our node would sign those heights again.
    let above = endpoint(100, |h| {
        vec![sig(
            if h == 98 { Flag::Commit } else { Flag::Absent },
            ME,
            fenced - 1,
        )]
    });
    assert!(matches!(seen(&above, a), Seen::Foreign(s) if s.height == 98));
}

#[test]
fn an_endpoint_is_believed_only_on_our_chain_synced_and_fresh() {
    let base = endpoint(100, |_| vec![]);
    let a = Allowance::UpTo { height: 50 };
    let with = |f: &dyn Fn(&mut Status)| {
        let mut o = base.clone();
        f(o.status.as_mut().unwrap());
        seen(&o, a)
    };
    assert_eq!(
        with(&|s| s.network = "otherchain-7".into()),
        Seen::Unusable(Unusable::OtherChain {
            theirs: "otherchain-7".into()
        })
    );
    assert_eq!(
        with(&|s| s.catching_up = true),
        Seen::Unusable(Unusable::CatchingUp)
    );
    assert!(matches!(
        with(&|s| s.latest_unix_ms = NOW - 61_000),
        Seen::Unusable(Unusable::Stale { .. })
    ));
    // Pruned below the window: unknown, never clean.
    assert_eq!(
        with(&|s| s.earliest_height = 95),
        Seen::Unusable(Unusable::Pruned {
            earliest: 95,
            needed: 90
        })
    );
    let mut down = base.clone();
    down.status = Err("connection refused".into());
    assert!(matches!(
        seen(&down, a),
        Seen::Unusable(Unusable::Unreachable(_))
    ));
}

#[test]
fn a_missing_height_is_unknown_but_a_foreign_signature_vetoes_anyway() {
    let mut o = endpoint(100, |h| {
        vec![sig(
            if h == 99 { Flag::Commit } else { Flag::Absent },
            ME,
            NOW,
        )]
    });
    if let Ok(c) = &mut o.commits {
        c.retain(|c| c.height != 95);
    }
    assert!(matches!(seen(&o, Allowance::UpTo { height: 50 }), Seen::Foreign(s) if s.height == 99));
    let mut o = endpoint(100, |_| vec![]);
    if let Ok(c) = &mut o.commits {
        c.retain(|c| c.height != 95);
    }
    assert_eq!(
        seen(&o, Allowance::UpTo { height: 50 }),
        Seen::Unusable(Unusable::Incomplete("no commit for height 95".into()))
    );
}

#[test]
fn the_window_reads_only_heights_that_could_be_foreign() {
    let s = settings();
    assert_eq!(s.window(100, &Allowance::UpTo { height: 50 }), 90..=99);
    assert_eq!(s.window(100, &Allowance::UpTo { height: 95 }), 96..=99);
    assert!(s.window(100, &Allowance::UpTo { height: 99 }).is_empty());
    let t = Allowance::TakenOver {
        carried: 93,
        raised: 100,
        fenced_by_ms: 0,
    };
    assert_eq!(s.window(100, &t), 94..=99);
    assert_eq!(s.window(5, &Allowance::UpTo { height: 0 }), 1..=4);
}

#[test]
fn any_healthy_endpoint_vetoes_clean_needs_one_and_the_tips_must_agree() {
    let s = settings();
    let clean = |tip| Seen::Clean {
        tip,
        checked: std::ops::RangeInclusive::new(100, 99),
        in_set: Some(true),
    };
    let foreign = Seen::Foreign(Sighting {
        endpoint: "b".into(),
        height: 99,
        flag: Flag::Nil,
        unix_ms: NOW,
    });
    let down = Seen::Unusable(Unusable::Unreachable("timeout".into()));
    let v = |seen: Vec<Seen>| {
        judge(
            &seen
                .into_iter()
                .enumerate()
                .map(|(i, v)| (format!("e{i}"), v))
                .collect::<Vec<_>>(),
            &s,
        )
    };
    // One endpoint alone shows the rogue: veto.
    assert!(matches!(
        v(vec![clean(100), foreign.clone(), clean(100)]),
        Verdict::Foreign(_)
    ));
    assert_eq!(
        v(vec![clean(100), down.clone(), clean(102)]),
        Verdict::Clean {
            tip: 102,
            outside_set: false
        }
    );
    assert!(
        matches!(v(vec![down.clone(), down.clone()]), Verdict::Unknown(w) if w.contains("timeout"))
    );
    assert!(matches!(v(vec![]), Verdict::Unknown(_)));
    assert!(matches!(v(vec![clean(100), clean(103)]), Verdict::Unknown(w) if w.contains("fork")));
    // Outside the active set: clean, and said so.
    let out = Seen::Clean {
        tip: 100,
        checked: 90..=99,
        in_set: Some(false),
    };
    assert_eq!(
        v(vec![out]),
        Verdict::Clean {
            tip: 100,
            outside_set: true
        }
    );
}
