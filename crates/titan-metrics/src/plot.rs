//! An end-of-run SVG of loss and throughput against step, written by hand: two stacked panels,
//! each with a frame, grid, tick labels and a title. No plotting dependency.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{Error, Result};
use crate::pyfmt;

/// The series a run accumulates for its plot; points are `(step, value)`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    pub train_loss: Vec<(f64, f64)>,
    pub validation_loss: Vec<(f64, f64)>,
    /// Tokens per second per device.
    pub throughput: Vec<(f64, f64)>,
}

impl History {
    pub fn is_empty(&self) -> bool {
        self.train_loss.is_empty() && self.validation_loss.is_empty() && self.throughput.is_empty()
    }
}

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 720.0;
const MARGIN_LEFT: f64 = 90.0;
const MARGIN_RIGHT: f64 = 30.0;
const TRAIN_COLOR: &str = "#1f77b4";
const VALIDATION_COLOR: &str = "#d62728";
const THROUGHPUT_COLOR: &str = "#2ca02c";

/// Where a panel sits on the canvas, in pixels.
struct PanelBox {
    top: f64,
    bottom: f64,
}

/// One line (or marker set) inside a panel.
struct Series<'a> {
    name: &'a str,
    points: &'a [(f64, f64)],
    color: &'a str,
    markers_only: bool,
}

/// The SVG document for `history` under `title`.
pub fn render_svg(title: &str, history: &History) -> String {
    let mut svg = String::with_capacity(16 * 1024);
    let _ = writeln!(
        svg,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>
<text x="{}" y="28" text-anchor="middle" font-size="18" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape_xml(title)
    );
    let x_range = step_range(history);
    let loss_series = [
        Series {
            name: "train loss",
            points: &history.train_loss,
            color: TRAIN_COLOR,
            markers_only: false,
        },
        Series {
            name: "validation loss",
            points: &history.validation_loss,
            color: VALIDATION_COLOR,
            markers_only: true,
        },
    ];
    render_panel(
        &mut svg,
        "Loss",
        &PanelBox {
            top: 70.0,
            bottom: 330.0,
        },
        x_range,
        false,
        &loss_series,
    );
    let throughput_series = [Series {
        name: "tokens/s per device",
        points: &history.throughput,
        color: THROUGHPUT_COLOR,
        markers_only: false,
    }];
    render_panel(
        &mut svg,
        "Throughput (tokens/s per device)",
        &PanelBox {
            top: 410.0,
            bottom: 670.0,
        },
        x_range,
        true,
        &throughput_series,
    );
    svg.push_str("</svg>\n");
    svg
}

/// Render `history` and write it to `path`.
pub fn write_svg(path: &Path, title: &str, history: &History) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io("create the plot folder", parent, e))?;
    }
    std::fs::write(path, render_svg(title, history))
        .map_err(|e| Error::io("write the plot", path, e))
}

fn render_panel(
    svg: &mut String,
    title: &str,
    panel: &PanelBox,
    x_range: (f64, f64),
    y_from_zero: bool,
    series: &[Series<'_>],
) {
    let left = MARGIN_LEFT;
    let right = WIDTH - MARGIN_RIGHT;
    let _ = writeln!(
        svg,
        r#"<g class="panel">
<text x="{}" y="{}" text-anchor="middle" font-size="14">{}</text>"#,
        (left + right) / 2.0,
        panel.top - 10.0,
        escape_xml(title)
    );
    let finite: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|&(_, y)| y)
        .collect();
    if finite.is_empty() {
        let _ = writeln!(
            svg,
            r#"<rect x="{left}" y="{}" width="{}" height="{}" fill="none" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle" fill="gray">no data</text>
</g>"#,
            panel.top,
            right - left,
            panel.bottom - panel.top,
            (left + right) / 2.0,
            (panel.top + panel.bottom) / 2.0
        );
        return;
    }
    let mut y_min = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let y_max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if y_from_zero {
        y_min = y_min.min(0.0);
    }
    let y_ticks = nice_ticks(y_min, y_max);
    let x_ticks = nice_ticks(x_range.0, x_range.1);
    let (y_lo, y_hi) = (y_ticks.first, y_ticks.last);
    let (x_lo, x_hi) = (x_ticks.first, x_ticks.last);
    let to_px = |x: f64, y: f64| {
        (
            left + (x - x_lo) / (x_hi - x_lo) * (right - left),
            panel.bottom - (y - y_lo) / (y_hi - y_lo) * (panel.bottom - panel.top),
        )
    };

    // Grid and tick labels.
    for y in y_ticks.values() {
        let (_, py) = to_px(x_lo, y);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{py:.2}" x2="{right}" y2="{py:.2}" stroke="#dddddd"/>
<text x="{:.2}" y="{:.2}" text-anchor="end">{}</text>"##,
            left - 6.0,
            py + 4.0,
            pyfmt::fixed_grouped(y, y_ticks.decimals)
        );
    }
    for x in x_ticks.values() {
        let (px, _) = to_px(x, y_lo);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.2}" y1="{}" x2="{px:.2}" y2="{}" stroke="#dddddd"/>
<text x="{px:.2}" y="{}" text-anchor="middle">{}</text>"##,
            panel.top,
            panel.bottom,
            panel.bottom + 16.0,
            pyfmt::fixed_grouped(x, x_ticks.decimals)
        );
    }
    let _ = writeln!(
        svg,
        r#"<rect x="{left}" y="{}" width="{}" height="{}" fill="none" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">step</text>"#,
        panel.top,
        right - left,
        panel.bottom - panel.top,
        (left + right) / 2.0,
        panel.bottom + 34.0
    );

    // Data, then a legend naming each non-empty series.
    let mut legend_y = panel.top + 16.0;
    for s in series {
        let pixels: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| to_px(x, y))
            .collect();
        if pixels.is_empty() {
            continue;
        }
        if s.markers_only {
            for (px, py) in &pixels {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{px:.2}" cy="{py:.2}" r="3.5" fill="{}"/>"#,
                    s.color
                );
            }
        } else {
            let mut points = String::with_capacity(pixels.len() * 16);
            for (i, (px, py)) in pixels.iter().enumerate() {
                if i > 0 {
                    points.push(' ');
                }
                let _ = write!(points, "{px:.2},{py:.2}");
            }
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{points}"/>"#,
                s.color
            );
        }
        let _ = writeln!(
            svg,
            r#"<rect x="{}" y="{}" width="170" height="16" fill="white" fill-opacity="0.8"/>
<rect x="{}" y="{}" width="14" height="4" fill="{}"/>
<text x="{}" y="{}">{}</text>"#,
            right - 176.0,
            legend_y - 12.0,
            right - 170.0,
            legend_y - 6.0,
            s.color,
            right - 150.0,
            legend_y,
            escape_xml(s.name)
        );
        legend_y += 16.0;
    }
    svg.push_str("</g>\n");
}

/// The step range shared by both panels.
fn step_range(history: &History) -> (f64, f64) {
    let steps = history
        .train_loss
        .iter()
        .chain(&history.validation_loss)
        .chain(&history.throughput)
        .map(|&(x, _)| x)
        .filter(|x| x.is_finite());
    let (lo, hi) = steps.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    if lo.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    }
}

/// Evenly spaced round tick values covering a range.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ticks {
    first: f64,
    last: f64,
    spacing: f64,
    /// Decimals needed to print `spacing` exactly.
    decimals: usize,
}

impl Ticks {
    fn values(&self) -> impl Iterator<Item = f64> + '_ {
        let count = ((self.last - self.first) / self.spacing).round() as usize;
        (0..=count).map(move |i| self.first + i as f64 * self.spacing)
    }
}

/// About five ticks at 1, 2 or 5 times a power of ten, from at or below `lo` to at or above `hi`.
fn nice_ticks(lo: f64, hi: f64) -> Ticks {
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        // A flat series still needs a range to draw in.
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - pad, hi + pad)
    };
    let rough = (hi - lo) / 5.0;
    let magnitude = 10f64.powf(rough.log10().floor());
    let spacing = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= rough)
        .unwrap_or(10.0 * magnitude);
    let decimals = if spacing >= 1.0 {
        0
    } else {
        (-spacing.log10().floor()) as usize
    };
    Ticks {
        first: (lo / spacing).floor() * spacing,
        last: (hi / spacing).ceil() * spacing,
        spacing,
        decimals,
    }
}

fn escape_xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ticks_cover_the_range_with_round_spacing() {
        let t = nice_ticks(1.0, 100.0);
        assert_eq!(
            (t.first, t.last, t.spacing, t.decimals),
            (0.0, 100.0, 20.0, 0)
        );
        let t = nice_ticks(2.7, 8.1);
        assert_eq!((t.first, t.last, t.spacing), (2.0, 10.0, 2.0));
        let t = nice_ticks(0.12, 0.31);
        assert_eq!(t.spacing, 0.05);
        assert_eq!(t.decimals, 2);
        let values: Vec<f64> = nice_ticks(0.0, 10.0).values().collect();
        assert_eq!(values, [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let flat = nice_ticks(5.0, 5.0);
        assert!(flat.first < 5.0 && flat.last > 5.0);
    }

    #[test]
    fn svg_has_one_polyline_point_per_finite_value() {
        let history = History {
            train_loss: vec![(1.0, 8.0), (2.0, f64::NAN), (3.0, 6.0), (4.0, 5.0)],
            validation_loss: vec![(2.0, 7.0), (4.0, 5.5)],
            throughput: vec![(1.0, 1000.0), (2.0, 1500.0), (3.0, 1600.0), (4.0, 1550.0)],
        };
        let svg = render_svg("run <1> & co", &history);
        assert!(svg.contains("run &lt;1&gt; &amp; co"));
        let polylines: Vec<&str> = svg
            .split("points=\"")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap_or(""))
            .collect();
        assert_eq!(polylines.len(), 2);
        assert_eq!(polylines[0].split(' ').count(), 3); // the NaN loss is skipped
        assert_eq!(polylines[1].split(' ').count(), 4);
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(svg.contains(">1,600<") || svg.contains(">1,500<"));
    }

    #[test]
    fn empty_history_still_renders_both_panels() {
        let svg = render_svg("empty", &History::default());
        assert_eq!(svg.matches("no data").count(), 2);
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
