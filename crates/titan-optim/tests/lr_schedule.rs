//! torchtitan's warmup-stable-decay schedule, step by step.
//!
//! Expected factors are the reference's listed values (torchtitan.md §5.7) or worked out by
//! hand from the formula in the comments.

use titan_optim::{DecayType, Error, LrScheduler, LrSchedulerConfig, LrSchedulerState};

fn sched(
    total: u64,
    warmup: u64,
    decay_ratio: Option<f64>,
    decay_type: DecayType,
    min: f64,
) -> LrScheduler {
    LrScheduler::new(LrSchedulerConfig {
        lr: 1.0,
        warmup_steps: warmup,
        decay_ratio,
        decay_type,
        min_lr_factor: min,
        total_steps: total,
    })
    .expect("valid schedule")
}

fn assert_factors(s: &LrScheduler, want: &[(u64, f64)]) {
    for &(step, f) in want {
        let got = s.factor_at(step);
        assert!((got - f).abs() < 1e-12, "step {step}: got {got}, want {f}");
    }
}

#[test]
fn debug_config_factors() {
    // steps 10, warmup 2, decay_ratio 0.8 -> decay 8, stable 1.
    let s = sched(10, 2, Some(0.8), DecayType::Linear, 0.0);
    assert_eq!(
        (s.warmup_steps(), s.stable_steps(), s.decay_steps()),
        (2, 1, 8)
    );
    let want = [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125];
    for (i, f) in want.iter().enumerate() {
        assert_factors(&s, &[(i as u64 + 1, *f)]);
    }
}

#[test]
fn llama3_8b_config_factors() {
    // 1000 steps, warmup 200, no decay ratio -> stable 1, decay 800; lr 3e-4.
    let s = LrScheduler::new(LrSchedulerConfig {
        lr: 3e-4,
        warmup_steps: 200,
        total_steps: 1000,
        ..Default::default()
    })
    .expect("valid");
    assert_eq!(
        (s.warmup_steps(), s.stable_steps(), s.decay_steps()),
        (200, 1, 800)
    );
    assert_factors(
        &s,
        &[
            (1, 0.005),
            (200, 1.0),
            (201, 1.0),
            (202, 0.99875),
            (1000, 0.00125),
        ],
    );
    assert!((s.lr_at(1) - 3e-4 * 0.005).abs() < 1e-18);
    assert!((s.lr_at(202) - 3e-4 * 0.99875).abs() < 1e-18);
}

#[test]
fn sqrt_and_cosine_decay() {
    // total 10, warmup 2, no ratio: decay 8, stable 1. Step n (n >= 4): p = (n - 3) / 8.
    let sqrt = sched(10, 2, None, DecayType::Sqrt, 0.0);
    // step 4: p = 1/8 -> 1 - sqrt(0.125); step 7: p = 0.5 -> 1 - sqrt(0.5); step 10: p = 7/8.
    assert_factors(
        &sqrt,
        &[
            (1, 0.5),
            (3, 1.0),
            (4, 1.0 - 0.125f64.sqrt()),
            (7, 1.0 - 0.5f64.sqrt()),
            (10, 1.0 - 0.875f64.sqrt()),
        ],
    );
    let cosine = sched(10, 2, None, DecayType::Cosine, 0.0);
    // step 7: p = 0.5 -> (1 + cos(pi/2))/2 = 0.5; step 5: p = 0.25 -> (1 + sqrt(2)/2)/2.
    assert_factors(
        &cosine,
        &[
            (2, 1.0),
            (3, 1.0),
            (5, (1.0 + 0.5f64.sqrt()) / 2.0),
            (7, 0.5),
            (11, 0.0),
        ],
    );
}

#[test]
fn min_lr_factor_lifts_the_decay() {
    // Linear, min 0.1: f = 0.1 + 0.9 * (1 - p). Debug config step 4 (p = 1/8): 0.1 + 0.9*0.875.
    let s = sched(10, 2, Some(0.8), DecayType::Linear, 0.1);
    assert_factors(
        &s,
        &[
            (1, 0.5),
            (2, 1.0),
            (4, 0.1 + 0.9 * 0.875),
            (10, 0.1 + 0.9 * 0.125),
            (11, 0.1),
        ],
    );
    // Cosine with min 0.2 at p = 0.5: 0.2 + 0.8 * 0.5 = 0.6.
    let c = sched(10, 2, None, DecayType::Cosine, 0.2);
    assert_factors(&c, &[(7, 0.6)]);
}

#[test]
fn wsd_with_long_stable_phase() {
    // total 20, warmup 4, ratio 0.25 -> decay 5, stable 20 + 1 - 4 - 5 = 12.
    // Steps 5..=16 at 1.0; step 17: p = (17 - 16)/5 = 0.2 -> 0.8; step 20: p = 0.8 -> 0.2.
    let s = sched(20, 4, Some(0.25), DecayType::Linear, 0.0);
    assert_eq!(
        (s.warmup_steps(), s.stable_steps(), s.decay_steps()),
        (4, 12, 5)
    );
    assert_factors(
        &s,
        &[
            (1, 0.25),
            (4, 1.0),
            (5, 1.0),
            (16, 1.0),
            (17, 0.8),
            (20, 0.2),
        ],
    );
}

#[test]
fn decay_steps_round_half_to_even_and_clamp() {
    // round(10 * 0.25) = round(2.5) = 2 in Python (ties to even), not 3.
    let s = sched(10, 0, Some(0.25), DecayType::Linear, 0.0);
    assert_eq!(s.decay_steps(), 2);
    // round(10 * 0.45) = round(4.5) = 4.
    assert_eq!(
        sched(10, 0, Some(0.45), DecayType::Linear, 0.0).decay_steps(),
        4
    );
    // warmup 5 + decay 8 > 10: decay becomes 5.
    let c = sched(10, 5, Some(0.8), DecayType::Linear, 0.0);
    assert_eq!((c.decay_steps(), c.stable_steps()), (5, 1));
    // Warmup longer than training is clamped to it: warmup 10, decay 0, stable 1.
    let w = sched(10, 50, None, DecayType::Linear, 0.0);
    assert_eq!(
        (w.warmup_steps(), w.stable_steps(), w.decay_steps()),
        (10, 1, 0)
    );
    assert_factors(&w, &[(1, 0.1), (10, 1.0), (11, 1.0), (1000, 1.0)]);
    // No warmup: step 1 starts at 1.0 (stable = 1) then decays.
    let n = sched(4, 0, None, DecayType::Linear, 0.0);
    assert_factors(&n, &[(1, 1.0), (2, 0.75), (4, 0.25)]);
}

#[test]
fn steps_past_total_hold_the_final_value() {
    let s = sched(10, 2, Some(0.8), DecayType::Linear, 0.0);
    // Virtual step 11 is 0 for linear decay; later steps do not go negative.
    assert_factors(&s, &[(11, 0.0), (12, 0.0), (1_000_000, 0.0)]);
    // Step 0 reads as step 1.
    assert_factors(&s, &[(0, 0.5)]);
}

#[test]
fn scheduler_state_steps_and_round_trips() {
    let mut s = sched(10, 2, Some(0.8), DecayType::Linear, 0.0);
    assert_eq!(s.last_step(), 0);
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(s.current_lr());
        s.step();
    }
    assert_eq!(seen, vec![0.5, 1.0, 1.0, 0.875]);
    let json = serde_json::to_string(&s.state()).expect("serializes");
    let state: LrSchedulerState = serde_json::from_str(&json).expect("deserializes");
    let mut resumed = sched(10, 2, Some(0.8), DecayType::Linear, 0.0);
    resumed.load_state(state);
    assert_eq!(resumed.last_step(), 4);
    assert_eq!(resumed.current_lr(), 0.75);
    assert_eq!(resumed, s);
}

#[test]
fn invalid_configs_name_their_key() {
    let base = LrSchedulerConfig {
        total_steps: 10,
        ..Default::default()
    };
    let cases = [
        (
            LrSchedulerConfig {
                total_steps: 0,
                ..base
            },
            "training.steps",
        ),
        (
            LrSchedulerConfig {
                decay_ratio: Some(1.5),
                ..base
            },
            "lr_scheduler.decay_ratio",
        ),
        (
            LrSchedulerConfig {
                decay_ratio: Some(f64::NAN),
                ..base
            },
            "lr_scheduler.decay_ratio",
        ),
        (
            LrSchedulerConfig {
                min_lr_factor: -0.1,
                ..base
            },
            "lr_scheduler.min_lr_factor",
        ),
        (
            LrSchedulerConfig {
                lr: f64::INFINITY,
                ..base
            },
            "optimizer.lr",
        ),
    ];
    for (cfg, key) in cases {
        let err = LrScheduler::new(cfg).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidConfig { key: k, .. } if *k == key),
            "{err}"
        );
    }
    assert_eq!(
        "cosine".parse::<DecayType>().expect("known"),
        DecayType::Cosine
    );
    assert!(matches!(
        "exp".parse::<DecayType>(),
        Err(Error::InvalidConfig {
            key: "lr_scheduler.decay_type",
            ..
        })
    ));
    let toml_like: DecayType = serde_json::from_str("\"sqrt\"").expect("lowercase names");
    assert_eq!(toml_like, DecayType::Sqrt);
}
