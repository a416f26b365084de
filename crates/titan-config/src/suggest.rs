//! "Did you mean ...?" for misspelled keys and values: the closest candidate by edit distance.

/// Optimal-string-alignment distance: insertions, deletions, substitutions and swaps of two
/// adjacent characters each cost 1 (so `stpes` is one edit from `steps`).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j] = distance between a[..i] and b[..j]; three rows suffice for the swap rule.
    let mut before_prev: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur: Vec<usize> = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(before_prev[j - 2] + 1);
            }
            cur[j] = best;
        }
        std::mem::swap(&mut before_prev, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The candidate closest to `input`, if it is close enough to be a plausible typo.
pub(crate) fn closest<'a, I>(input: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let input_lower = input.to_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        let distance = edit_distance(&input_lower, &candidate.to_lowercase());
        if best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    // Allow about one edit per four characters, at least two: catches typos, not unrelated words.
    let limit = (input.chars().count() / 4).max(2);
    best.filter(|(d, _)| *d <= limit).map(|(_, c)| c)
}

/// Keys and sections of older torchtitan releases (0.1) and their 0.2.2 names, so that old
/// files get a pointed suggestion rather than a distant guess.
const RENAMED: &[(&str, &str)] = &[
    ("job.print_args", "job.print_config"),
    ("training.compile", "compile.enable"),
    ("training.seed", "debug.seed"),
    ("training.deterministic", "debug.deterministic"),
    ("checkpoint.enable_checkpoint", "checkpoint.enable"),
    (
        "checkpoint.initial_load_model_weights_only",
        "checkpoint.initial_load_model_only",
    ),
    (
        "checkpoint.last_save_model_weights_only",
        "checkpoint.last_save_model_only",
    ),
    ("lr_scheduler.lr_min", "lr_scheduler.min_lr_factor"),
    ("memory_estimation.enabled", "memory_estimation.enable"),
    ("float8", "quantize.linear.float8"),
    ("mx", "quantize.linear.mx"),
];

/// For dotted keys or section paths: the 0.2.2 name of a renamed one, else the closest, else
/// one with the same last segment (`--steps` suggests `training.steps`).
pub(crate) fn closest_key<'a, I>(input: &str, keys: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str> + Clone,
{
    if let Some((_, new)) = RENAMED.iter().find(|(old, _)| *old == input) {
        return Some(new);
    }
    if let Some(found) = closest(input, keys.clone()) {
        return Some(found);
    }
    let leaf = input.rsplit('.').next().unwrap_or(input);
    keys.into_iter()
        .find(|key| key.rsplit('.').next() == Some(leaf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_counts_edits_and_swaps() {
        assert_eq!(edit_distance("steps", "steps"), 0);
        assert_eq!(edit_distance("stpes", "steps"), 1);
        assert_eq!(edit_distance("step", "steps"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn closest_ignores_unrelated_words() {
        let keys = ["training.steps", "training.seq_len", "validation.steps"];
        assert_eq!(
            closest("training.stpes", keys.iter().copied()),
            Some("training.steps")
        );
        assert_eq!(closest("zzzzzzzzzzzzzzzz", keys.iter().copied()), None);
    }

    #[test]
    fn renamed_keys_point_to_their_new_names() {
        let keys = ["compile.enable", "training.steps"];
        assert_eq!(
            closest_key("training.compile", keys.iter().copied()),
            Some("compile.enable")
        );
    }

    #[test]
    fn closest_key_falls_back_to_the_leaf() {
        let keys = ["training.steps", "training.seq_len"];
        assert_eq!(
            closest_key("steps", keys.iter().copied()),
            Some("training.steps")
        );
    }
}
