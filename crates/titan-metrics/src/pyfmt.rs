//! Number formatting that reproduces Python's format specs used by torchtitan's log lines.
//!
//! Rust's `{:.N}` already rounds exact ties to even as Python does; what differs is NaN
//! (`NaN` vs `nan`), exponents (`e14` vs `e+14`) and the `,` thousands separator, which Rust
//! lacks. Each function names the Python spec it reproduces.

/// Python `f"{v:,}"` for an integer: `6163712` -> `6,163,712`.
pub fn int_grouped(v: i128) -> String {
    let digits = v.unsigned_abs().to_string();
    let sign = if v < 0 { "-" } else { "" };
    format!("{sign}{}", group_digits(&digits))
}

/// Python `f"{v:{width}.{precision}f}"`: right-aligned fixed point, `nan`/`inf` spelled as Python.
pub fn fixed(v: f64, width: usize, precision: usize) -> String {
    let body = fixed_body(v, precision);
    format!("{body:>width$}")
}

/// Python `f"{v:,.{precision}f}"`: fixed point with `,` between thousands of the integer part.
pub fn fixed_grouped(v: f64, precision: usize) -> String {
    let body = fixed_body(v, precision);
    if !v.is_finite() {
        return body;
    }
    let (sign, unsigned) = match body.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", body.as_str()),
    };
    let (int_part, frac_part) = match unsigned.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (unsigned, None),
    };
    let grouped = group_digits(int_part);
    match frac_part {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

/// Python `f"{round(v):,}"`: round half to even, then group thousands. Python raises on a
/// non-finite value; a log line must not fail, so those print as Python spells them (`nan`, `inf`).
pub fn rounded_grouped(v: f64) -> String {
    if !v.is_finite() {
        return fixed_body(v, 0);
    }
    let rounded = v.round_ties_even();
    // Beyond i128 a float has no meaningful units digit left; fall back to plain fixed point.
    if rounded.abs() < 1e38 {
        int_grouped(rounded as i128)
    } else {
        fixed_grouped(rounded, 0)
    }
}

/// Python `f"{v:.{precision}e}"`: `9.890e+14` (sign always, at least two exponent digits).
pub fn scientific(v: f64, precision: usize) -> String {
    if !v.is_finite() {
        return fixed_body(v, precision);
    }
    let rust = format!("{v:.precision$e}");
    match rust.split_once('e') {
        Some((mantissa, exponent)) => {
            let (sign, digits) = match exponent.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exponent),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => rust,
    }
}

/// Fixed point without width; the one place NaN and infinities get Python's spelling.
fn fixed_body(v: f64, precision: usize) -> String {
    if v.is_nan() {
        "nan".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.to_string()
    } else {
        format!("{v:.precision$}")
    }
}

/// Insert `,` every three digits from the right of a string of ASCII digits.
fn group_digits(digits: &str) -> String {
    let len = digits.len();
    let mut out = String::with_capacity(len + len / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (len - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected strings are what CPython 3 prints for the same format spec.
    #[test]
    fn thousands_separators_match_python() {
        assert_eq!(int_grouped(0), "0");
        assert_eq!(int_grouped(999), "999");
        assert_eq!(int_grouped(1000), "1,000");
        assert_eq!(int_grouped(6_163_712), "6,163,712");
        assert_eq!(int_grouped(1_498_482_688), "1,498,482,688");
        assert_eq!(int_grouped(-1_234_567), "-1,234,567");
        assert_eq!(int_grouped(100_000), "100,000");
    }

    #[test]
    fn fixed_matches_python_width_and_specials() {
        assert_eq!(fixed(7.123456, 8, 5), " 7.12346");
        assert_eq!(fixed(12.00934, 8, 5), "12.00934");
        assert_eq!(fixed(123.456789, 8, 5), "123.45679");
        assert_eq!(fixed(0.5745, 7, 4), " 0.5745");
        assert_eq!(fixed(f64::NAN, 8, 5), "     nan");
        assert_eq!(fixed(f64::INFINITY, 7, 4), "    inf");
        assert_eq!(fixed(f64::NEG_INFINITY, 7, 4), "   -inf");
        // Exact binary ties round to even, as Python's formatting does.
        assert_eq!(fixed(0.125, 0, 2), "0.12");
        assert_eq!(fixed(0.375, 0, 2), "0.38");
    }

    #[test]
    fn fixed_grouped_matches_python() {
        assert_eq!(fixed_grouped(28.68, 2), "28.68");
        assert_eq!(fixed_grouped(1234567.891, 2), "1,234,567.89");
        assert_eq!(fixed_grouped(-1234.5, 2), "-1,234.50");
        assert_eq!(fixed_grouped(999.999, 2), "1,000.00");
        assert_eq!(fixed_grouped(f64::NAN, 2), "nan");
    }

    #[test]
    fn rounded_grouped_rounds_half_to_even() {
        assert_eq!(rounded_grouped(69111.4), "69,111");
        assert_eq!(rounded_grouped(2.5), "2");
        assert_eq!(rounded_grouped(3.5), "4");
        assert_eq!(rounded_grouped(1234.5), "1,234");
        assert_eq!(rounded_grouped(f64::INFINITY), "inf");
    }

    #[test]
    fn scientific_matches_python() {
        assert_eq!(scientific(989e12, 3), "9.890e+14");
        assert_eq!(scientific(2.25e15, 3), "2.250e+15");
        assert_eq!(scientific(1.5e-7, 3), "1.500e-07");
        assert_eq!(scientific(0.0, 3), "0.000e+00");
        assert_eq!(scientific(3.682e7, 3), "3.682e+07");
        assert_eq!(scientific(1e100, 2), "1.00e+100");
    }
}
