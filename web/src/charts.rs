//! Charts drawn as SVG: bars and lines, each with its axis labels, so each
//! reads at a glance.

use dioxus::prelude::*;

const PALETTE: [&str; 8] = [
    "#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6", "#dd4477", "#66aa00",
];

pub fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// Horizontal bars: label, value, the value's text.
#[component]
pub fn Bars(id: String, title: String, bars: Vec<(String, f64, String)>) -> Element {
    let max = bars
        .iter()
        .map(|b| b.1)
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let h = 26 * bars.len().max(1) + 10;
    rsx! {
        figure { class: "chart", id: "{id}",
            figcaption { "{title}" }
            if bars.is_empty() {
                p { class: "muted small", "Nothing in this range yet." }
            } else {
                svg { view_box: "0 0 400 {h}", width: "100%", role: "img", "aria-label": "{title}",
                    for (i, (label, v, text)) in bars.iter().enumerate() {
                        text { x: "0", y: "{i * 26 + 17}", font_size: "11", "{label}" }
                        rect { x: "150", y: "{i * 26 + 5}", height: "16", width: "{(v / max * 170.0).max(1.0)}", fill: "{color(i)}", rx: "2" }
                        text { x: "{150.0 + (v / max * 170.0).max(1.0) + 4.0}", y: "{i * 26 + 17}", font_size: "11", "{text}" }
                    }
                }
            }
        }
    }
}

/// Lines over shared x labels: each series a name and its values.
#[component]
pub fn Lines(
    id: String,
    title: String,
    x: Vec<String>,
    series: Vec<(String, Vec<f64>)>,
    unit: String,
) -> Element {
    let max = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .fold(0.0, f64::max);
    let top = if max > 0.0 { max } else { 1.0 };
    let (w, h, left, bottom) = (560.0, 200.0, 60.0, 24.0);
    let n = x.len().max(2) as f64 - 1.0;
    let px = move |i: usize| left + (w - left - 10.0) * i as f64 / n;
    let py = move |v: f64| (h - bottom) - (h - bottom - 10.0) * v / top;
    let step = (x.len() / 6).max(1);
    rsx! {
        figure { class: "chart", id: "{id}",
            figcaption { "{title}" }
            if x.is_empty() || max <= 0.0 {
                p { class: "muted small", "Nothing in this range yet." }
            }
            svg { view_box: "0 0 {w} {h}", width: "100%", role: "img", "aria-label": "{title}",
                line { x1: "{left}", y1: "{py(0.0)}", x2: "{w - 10.0}", y2: "{py(0.0)}", stroke: "#999" }
                text { x: "0", y: "14", font_size: "10", "{format_axis(top, &unit)}" }
                text { x: "0", y: "{py(0.0)}", font_size: "10", "0" }
                for (i, label) in x.iter().enumerate().filter(|(i, _)| i % step == 0) {
                    text { x: "{px(i) - 14.0}", y: "{h - 6.0}", font_size: "9", "{label}" }
                }
                for (k, (_, values)) in series.iter().enumerate() {
                    polyline { fill: "none", stroke: "{color(k)}", stroke_width: "2",
                        points: values.iter().enumerate().map(|(i, v)| format!("{:.1},{:.1}", px(i), py(*v))).collect::<Vec<_>>().join(" ") }
                    for (i, v) in values.iter().enumerate() {
                        circle { cx: "{px(i)}", cy: "{py(*v)}", r: "2.5", fill: "{color(k)}" }
                    }
                }
            }
            if series.len() > 1 {
                ul { class: "legend",
                    for (k, (name, _)) in series.iter().enumerate() {
                        li { span { class: "swatch", style: "background:{color(k)}" } "{name}" }
                    }
                }
            }
        }
    }
}

fn format_axis(v: f64, unit: &str) -> String {
    if unit == "$" {
        format!("${v:.4}")
    } else {
        format!("{v:.0} {unit}")
    }
}
