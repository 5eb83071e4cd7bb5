//! Hand-written SVG charts: line charts (with shaded bands, markers and alarm lines) and stacked bar charts.
//!
//! Why not a plotting crate: the report must render offline in any browser, and the only thing a plotting library
//! would add over these few hundred lines is text layout, which needs font files at build time (plotters measures
//! text with system fonts). Here the browser lays out the text with whatever sans-serif font it has, and every
//! element carries a class (`series`, `band`, `bar`, `alarm-marker`, `legend-item`) and `data-*` attributes so that
//! tests can count what a chart holds.

use std::fmt::Write;

/// A colour-blind-friendly categorical palette (Tableau 10).
pub(crate) const PALETTE: [&str; 10] =
    ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];

/// Escapes text for SVG/HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// How values map onto an axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Linear,
    /// Base 2, for k in max@k (k = 1, 2, 4, ...). Values must be positive.
    Log2,
}

/// One axis: its label, scale and optional fixed range (else fitted to the data).
#[derive(Debug, Clone)]
pub(crate) struct Axis {
    pub label: String,
    pub scale: Scale,
    pub range: Option<(f64, f64)>,
    /// Ticks only at whole numbers (steps, epochs, counts).
    pub integer: bool,
}

impl Axis {
    pub fn linear(label: impl Into<String>) -> Self {
        Axis { label: label.into(), scale: Scale::Linear, range: None, integer: false }
    }
    pub fn integer(label: impl Into<String>) -> Self {
        Axis { integer: true, ..Axis::linear(label) }
    }
    pub fn log2(label: impl Into<String>) -> Self {
        Axis { scale: Scale::Log2, integer: true, ..Axis::linear(label) }
    }
    pub(crate) fn with_range(mut self, lo: f64, hi: f64) -> Self {
        self.range = Some((lo, hi));
        self
    }
}

/// How a line is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stroke {
    Solid,
    Dashed,
    Dotted,
}

/// One line of a line chart; points with a non-finite y are gaps.
#[derive(Debug, Clone)]
pub struct Line {
    pub name: String,
    pub color: String,
    pub points: Vec<(f64, f64)>,
    pub stroke: Stroke,
    pub width: f64,
    /// Draws a line that holds its value until the next point (a running best).
    pub step: bool,
}

impl Line {
    pub fn new(name: impl Into<String>, color: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Line { name: name.into(), color: color.into(), points, stroke: Stroke::Solid, width: 2.0, step: false }
    }
    pub(crate) fn stroke(mut self, stroke: Stroke) -> Self {
        self.stroke = stroke;
        self
    }
    pub fn width(mut self, width: f64) -> Self {
        self.width = width;
        self
    }
    pub fn step(mut self) -> Self {
        self.step = true;
        self
    }
}

/// A shaded area between two curves over the same x values (e.g. mean ± std).
#[derive(Debug, Clone)]
pub(crate) struct Band {
    pub name: String,
    pub color: String,
    /// (x, low, high)
    pub points: Vec<(f64, f64, f64)>,
}

/// A collapse alarm on a chart: a vertical line at `x`, or, for alarms at several consecutive points, a shaded
/// span from `x` to `x_end` (one red wall of lines would hide the data); the tooltip says what fired.
#[derive(Debug, Clone)]
pub(crate) struct Marker {
    pub x: f64,
    pub x_end: f64,
    pub tooltip: String,
}

/// Chart size in SVG units; the SVG scales to its container's width.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub width: f64,
    pub height: f64,
}

pub(crate) const WIDE: Size = Size { width: 860.0, height: 320.0 };
pub(crate) const SMALL: Size = Size { width: 420.0, height: 250.0 };

#[derive(Debug, Clone)]
pub(crate) struct LineChart {
    /// Used as `data-chart`, to find the chart in the page.
    pub id: String,
    pub size: Size,
    pub x: Axis,
    pub y: Axis,
    pub lines: Vec<Line>,
    pub bands: Vec<Band>,
    pub markers: Vec<Marker>,
}

/// One stacked column: its x label and one value per layer (layers in the chart's order).
#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub label: String,
    pub values: Vec<f64>,
}

#[derive(Debug, Clone)]
pub(crate) struct StackedBars {
    pub id: String,
    pub size: Size,
    pub x_label: String,
    pub y: Axis,
    /// (name, colour) of each layer, bottom first.
    pub layers: Vec<(String, String)>,
    pub columns: Vec<Column>,
    /// Alarms over columns: (first, last) column index of a run of alarms, and its tooltip.
    pub markers: Vec<(usize, usize, String)>,
}

/// Margins around the plot area: room for tick labels, axis labels and the legend on the right.
struct Frame {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    size: Size,
}

impl Frame {
    fn new(size: Size, legend: bool) -> Self {
        let legend_width = if !legend {
            16.0
        } else if size.width >= 700.0 {
            230.0
        } else {
            145.0
        };
        Frame { left: 64.0, right: legend_width, top: 14.0, bottom: 46.0, size }
    }
    fn plot_width(&self) -> f64 {
        self.size.width - self.left - self.right
    }
    fn plot_height(&self) -> f64 {
        self.size.height - self.top - self.bottom
    }
    fn x0(&self) -> f64 {
        self.left
    }
    fn x1(&self) -> f64 {
        self.left + self.plot_width()
    }
    fn y0(&self) -> f64 {
        self.top + self.plot_height()
    }
}

/// Maps data values to pixels along one axis.
struct Mapper {
    scale: Scale,
    lo: f64,
    hi: f64,
    px0: f64,
    px1: f64,
}

impl Mapper {
    fn value(&self, v: f64) -> f64 {
        match self.scale {
            Scale::Linear => v,
            Scale::Log2 => v.max(f64::MIN_POSITIVE).log2(),
        }
    }
    fn map(&self, v: f64) -> f64 {
        let (lo, hi) = (self.value(self.lo), self.value(self.hi));
        let t = if hi > lo { (self.value(v) - lo) / (hi - lo) } else { 0.5 };
        self.px0 + t * (self.px1 - self.px0)
    }
}

/// "Nice" tick positions (1, 2, 5 times a power of ten) covering [lo, hi], about `target` of them.
pub(crate) fn nice_ticks(lo: f64, hi: f64, target: usize, integer: bool) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi < lo {
        return Vec::new();
    }
    let span = (hi - lo).max(f64::EPSILON);
    let raw = span / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    // The candidate nearest to the raw spacing (by ratio), so that the tick count stays near the target.
    let mut step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .min_by(|a, b| (a / raw).ln().abs().total_cmp(&(b / raw).ln().abs()))
        .expect("four candidates");
    if integer {
        step = step.max(1.0).round();
    }
    let first = (lo / step).ceil() * step;
    let mut ticks = Vec::new();
    let mut i = 0;
    loop {
        let t = first + i as f64 * step;
        if t > hi + step * 1e-9 {
            break;
        }
        // Avoid "-0" and float dust such as 0.30000000000000004.
        ticks.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        i += 1;
    }
    ticks
}

/// Widens [lo, hi] so that the data do not touch the frame, and gives a flat series a visible range.
fn padded(lo: f64, hi: f64, integer: bool) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        let pad = if integer {
            1.0
        } else if lo.abs() > 1e-12 {
            lo.abs() * 0.1
        } else {
            0.5
        };
        return (lo - pad, hi + pad);
    }
    if integer {
        return (lo, hi);
    }
    let pad = (hi - lo) * 0.06;
    (lo - pad, hi + pad)
}

/// A tick label with as many decimals as the tick spacing needs.
pub(crate) fn format_tick(v: f64, spacing: f64) -> String {
    if v.abs() >= 1e5 {
        return format!("{v:.1e}");
    }
    let decimals = if spacing > 0.0 { (-spacing.log10().floor()).max(0.0) as usize } else { 2 };
    format!("{v:.decimals$}")
}

fn dash(stroke: Stroke) -> &'static str {
    match stroke {
        Stroke::Solid => "",
        Stroke::Dashed => " stroke-dasharray=\"7 4\"",
        Stroke::Dotted => " stroke-dasharray=\"2 3\"",
    }
}

fn open_svg(out: &mut String, id: &str, kind: &str, size: Size) {
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart-svg\" data-chart=\"{}\" data-kind=\"{kind}\" \
         viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" font-family=\"system-ui, -apple-system, 'Segoe UI', \
         'DejaVu Sans', Arial, sans-serif\" font-size=\"12\">",
        escape(id),
        w = size.width,
        h = size.height
    );
    let _ =
        write!(out, "<rect x=\"0\" y=\"0\" width=\"{}\" height=\"{}\" fill=\"#ffffff\"/>", size.width, size.height);
}

/// Grid lines, tick labels and axis titles.
fn axes(out: &mut String, f: &Frame, xm: &Mapper, x_ticks: &[(f64, String)], ym: &Mapper, y_ticks: &[(f64, String)]) {
    out.push_str("<g class=\"axes\" stroke=\"#e3e3e3\" stroke-width=\"1\">");
    for (v, _) in y_ticks {
        let y = ym.map(*v);
        let _ = write!(out, "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\"/>", f.x0(), f.x1());
    }
    out.push_str("</g>");
    let _ = write!(
        out,
        "<g stroke=\"#555\" stroke-width=\"1\"><line x1=\"{x0:.1}\" y1=\"{y0:.1}\" x2=\"{x1:.1}\" y2=\"{y0:.1}\"/>\
         <line x1=\"{x0:.1}\" y1=\"{top:.1}\" x2=\"{x0:.1}\" y2=\"{y0:.1}\"/></g>",
        x0 = f.x0(),
        x1 = f.x1(),
        y0 = f.y0(),
        top = f.top
    );
    out.push_str("<g fill=\"#333\">");
    for (v, label) in y_ticks {
        let y = ym.map(*v);
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" dominant-baseline=\"middle\">{}</text>",
            f.x0() - 6.0,
            y,
            escape(label)
        );
    }
    for (v, label) in x_ticks {
        let x = xm.map(*v);
        let _ = write!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{y0:.1}\" x2=\"{x:.1}\" y2=\"{y1:.1}\" stroke=\"#555\"/>\
             <text x=\"{x:.1}\" y=\"{ty:.1}\" text-anchor=\"middle\">{}</text>",
            escape(label),
            y0 = f.y0(),
            y1 = f.y0() + 4.0,
            ty = f.y0() + 17.0
        );
    }
    out.push_str("</g>");
}

fn axis_titles(out: &mut String, f: &Frame, x_label: &str, y_label: &str) {
    let _ = write!(
        out,
        "<text class=\"axis-label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#222\" font-size=\"13\">{}</text>",
        f.x0() + f.plot_width() / 2.0,
        f.size.height - 8.0,
        escape(x_label)
    );
    let (cx, cy) = (15.0, f.top + f.plot_height() / 2.0);
    let _ = write!(
        out,
        "<text class=\"axis-label\" x=\"{cx}\" y=\"{cy:.1}\" text-anchor=\"middle\" fill=\"#222\" font-size=\"13\" \
         transform=\"rotate(-90 {cx} {cy:.1})\">{}</text>",
        escape(y_label)
    );
}

/// The legend to the right of the plot; long names are cut with an ellipsis (the full name is the tooltip).
fn legend(out: &mut String, f: &Frame, items: &[(String, String, Stroke, bool)]) {
    let max_chars = ((f.right - 40.0) / 6.6).max(8.0) as usize;
    let x = f.x1() + 14.0;
    for (i, (name, color, stroke, area)) in items.iter().enumerate() {
        let y = f.top + 8.0 + i as f64 * 18.0;
        if y > f.y0() {
            let _ = write!(
                out,
                "<text x=\"{x:.1}\" y=\"{y:.1}\" fill=\"#666\" dominant-baseline=\"middle\">… {} more</text>",
                items.len() - i
            );
            break;
        }
        let shown: String = if name.chars().count() > max_chars {
            name.chars().take(max_chars - 1).chain(['…']).collect()
        } else {
            name.clone()
        };
        let swatch = if *area {
            format!("<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"20\" height=\"11\" fill=\"{color}\"/>", y - 5.5)
        } else {
            format!(
                "<line x1=\"{x:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{color}\" stroke-width=\"2.5\"{}/>",
                x + 20.0,
                dash(*stroke)
            )
        };
        let _ = write!(
            out,
            "<g class=\"legend-item\"><title>{}</title>{swatch}<text x=\"{:.1}\" y=\"{y:.1}\" fill=\"#222\" \
             dominant-baseline=\"middle\">{}</text></g>",
            escape(name),
            x + 26.0,
            escape(&shown)
        );
    }
}

/// An alarm marker: a red dashed line with a small flag on top at `x0`, and a light red span to `x1` when the
/// alarms last several points; the tooltip lists the alarms.
fn alarm_marker(out: &mut String, f: &Frame, x0: f64, x1: f64, tooltip: &str) {
    let span = if x1 > x0 + 0.5 {
        format!(
            "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#d62728\" fill-opacity=\"0.07\"/>",
            f.top,
            x1 - x0,
            f.plot_height()
        )
    } else {
        String::new()
    };
    let _ = write!(
        out,
        "<g class=\"alarm-marker\"><title>{}</title>{span}<line x1=\"{x0:.1}\" y1=\"{top:.1}\" x2=\"{x0:.1}\" \
         y2=\"{y0:.1}\" stroke=\"#d62728\" stroke-width=\"1.5\" stroke-dasharray=\"4 3\"/><path \
         d=\"M{x0:.1} {top:.1} l7 4 l-7 4 z\" fill=\"#d62728\"/></g>",
        escape(tooltip),
        top = f.top,
        y0 = f.y0()
    );
}

fn data_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.filter(|v| v.is_finite()).fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Tick positions and labels along x; `target` ticks at most (about one per 60 px, so labels never touch).
fn x_ticks(axis: &Axis, lo: f64, hi: f64, target: usize) -> Vec<(f64, String)> {
    match axis.scale {
        Scale::Log2 => {
            let (a, b) = (lo.max(1.0).log2().floor() as i32, hi.max(1.0).log2().ceil() as i32);
            // Skip powers when the range is wide.
            let stride = ((b - a) / target as i32 + 1).max(1);
            (a..=b).step_by(stride as usize).map(|e| (2f64.powi(e), format!("{}", 2f64.powi(e)))).collect()
        }
        Scale::Linear => {
            let ticks = nice_ticks(lo, hi, target, axis.integer);
            let spacing = if ticks.len() > 1 { ticks[1] - ticks[0] } else { 1.0 };
            ticks.into_iter().map(|t| (t, format_tick(t, spacing))).collect()
        }
    }
}

/// Renders a line chart as an `<svg>` element.
pub(crate) fn line_chart(chart: &LineChart) -> String {
    let legend_items: Vec<(String, String, Stroke, bool)> = chart
        .bands
        .iter()
        .map(|b| (b.name.clone(), b.color.clone(), Stroke::Solid, true))
        .chain(chart.lines.iter().map(|l| (l.name.clone(), l.color.clone(), l.stroke, false)))
        .collect();
    // A single line needs no legend: the chart's title names it.
    let show_legend = legend_items.len() > 1;
    let f = Frame::new(chart.size, show_legend);
    let xs = chart
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .chain(chart.markers.iter().flat_map(|m| [m.x, m.x_end]));
    let (x_lo, x_hi) = chart.x.range.or_else(|| data_range(xs)).unwrap_or((0.0, 1.0));
    let ys = chart
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .chain(chart.bands.iter().flat_map(|b| b.points.iter().flat_map(|p| [p.1, p.2])));
    let (y_lo, y_hi) = match chart.y.range {
        Some(r) => r,
        None => {
            let (lo, hi) = data_range(ys).unwrap_or((0.0, 1.0));
            padded(lo, hi, false)
        }
    };
    let (x_lo, x_hi) = if chart.x.range.is_none() && chart.x.scale == Scale::Linear {
        padded(x_lo, x_hi, chart.x.integer)
    } else {
        (x_lo, x_hi)
    };
    let xm = Mapper { scale: chart.x.scale, lo: x_lo, hi: x_hi, px0: f.x0() + 6.0, px1: f.x1() - 6.0 };
    let ym = Mapper { scale: Scale::Linear, lo: y_lo, hi: y_hi, px0: f.y0(), px1: f.top };
    let y_ticks = {
        let ticks = nice_ticks(y_lo, y_hi, 5, chart.y.integer);
        let spacing = if ticks.len() > 1 { ticks[1] - ticks[0] } else { 1.0 };
        ticks.into_iter().map(|t| (t, format_tick(t, spacing))).collect::<Vec<_>>()
    };
    let mut out = String::new();
    open_svg(&mut out, &chart.id, "line", chart.size);
    let x_target = ((f.plot_width() / 60.0) as usize).clamp(3, 10);
    axes(&mut out, &f, &xm, &x_ticks(&chart.x, x_lo, x_hi, x_target), &ym, &y_ticks);
    for band in &chart.bands {
        let pts: Vec<&(f64, f64, f64)> = band.points.iter().filter(|p| p.1.is_finite() && p.2.is_finite()).collect();
        if pts.is_empty() {
            continue;
        }
        let mut d = String::new();
        for (i, p) in pts.iter().enumerate() {
            let _ = write!(d, "{}{:.1} {:.1} ", if i == 0 { "M" } else { "L" }, xm.map(p.0), ym.map(p.2));
        }
        for p in pts.iter().rev() {
            let _ = write!(d, "L{:.1} {:.1} ", xm.map(p.0), ym.map(p.1));
        }
        let _ = write!(
            out,
            "<path class=\"band\" data-series=\"{}\" d=\"{}Z\" fill=\"{}\" fill-opacity=\"0.18\" stroke=\"none\"/>",
            escape(&band.name),
            d.trim_end(),
            band.color
        );
    }
    for line in &chart.lines {
        out.push_str(&line_path(line, &xm, &ym));
    }
    for m in &chart.markers {
        alarm_marker(&mut out, &f, xm.map(m.x), xm.map(m.x_end), &m.tooltip);
    }
    axis_titles(&mut out, &f, &chart.x.label, &chart.y.label);
    if show_legend {
        legend(&mut out, &f, &legend_items);
    }
    out.push_str("</svg>");
    out
}

/// One line as a `<g class="series">` holding its path (split at gaps) and, for short series, point markers.
fn line_path(line: &Line, xm: &Mapper, ym: &Mapper) -> String {
    let mut d = String::new();
    let mut pen_down = false;
    let mut last_y = None;
    for &(x, y) in &line.points {
        if !y.is_finite() || !x.is_finite() {
            pen_down = false;
            last_y = None;
            continue;
        }
        let (px, py) = (xm.map(x), ym.map(y));
        if pen_down {
            if let (true, Some(prev)) = (line.step, last_y) {
                let _ = write!(d, "L{px:.1} {prev:.1} ");
            }
            let _ = write!(d, "L{px:.1} {py:.1} ");
        } else {
            let _ = write!(d, "M{px:.1} {py:.1} ");
        }
        pen_down = true;
        last_y = Some(py);
    }
    let finite = line.points.iter().filter(|p| p.0.is_finite() && p.1.is_finite()).count();
    let mut out = format!(
        "<g class=\"series\" data-series=\"{}\" data-points=\"{finite}\"><title>{}</title>",
        escape(&line.name),
        escape(&line.name)
    );
    if !d.is_empty() {
        let _ = write!(
            out,
            "<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{}\" stroke-linejoin=\"round\"{}/>",
            d.trim_end(),
            line.color,
            line.width,
            dash(line.stroke)
        );
    }
    // Markers keep single points visible and show where the samples are when there are few of them.
    if finite <= 40 {
        for &(x, y) in line.points.iter().filter(|p| p.0.is_finite() && p.1.is_finite()) {
            let _ = write!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{:.1}\" fill=\"{}\"><title>{}: ({}, {})</title></circle>",
                xm.map(x),
                ym.map(y),
                (line.width + 1.2).min(4.0),
                line.color,
                escape(&line.name),
                trim_number(x),
                trim_number(y)
            );
        }
    }
    out.push_str("</g>");
    out
}

/// A number for a tooltip: integers as integers, others with four significant decimals.
pub(crate) fn trim_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e12 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

/// Renders stacked bars as an `<svg>` element: one column per x label, layers bottom up.
pub(crate) fn stacked_bars(chart: &StackedBars) -> String {
    let show_legend = chart.layers.len() > 1;
    let f = Frame::new(chart.size, show_legend);
    let totals: Vec<f64> = chart.columns.iter().map(|c| c.values.iter().filter(|v| v.is_finite()).sum()).collect();
    let (y_lo, y_hi) = chart.y.range.unwrap_or_else(|| {
        let hi = totals.iter().cloned().fold(0.0f64, f64::max);
        (0.0, if hi > 0.0 { hi * 1.05 } else { 1.0 })
    });
    let ym = Mapper { scale: Scale::Linear, lo: y_lo, hi: y_hi, px0: f.y0(), px1: f.top };
    let n = chart.columns.len().max(1);
    let slot = f.plot_width() / n as f64;
    // Gaps between bars help few columns and stripe many: dense columns touch, with crisp edges so that
    // anti-aliasing does not draw seams between them.
    let dense = slot < 4.0;
    let bar_width = if dense { slot } else { slot * 0.8 };
    let crisp = if dense { " shape-rendering=\"crispEdges\"" } else { "" };
    let xm = Mapper { scale: Scale::Linear, lo: 0.0, hi: n as f64, px0: f.x0(), px1: f.x1() };
    // Label every 1, 2, 5, 10, 20, ... columns: at most about 12 labels, at round positions.
    let stride = nice_ticks(0.0, n as f64, 12, true).windows(2).next().map_or(1, |w| (w[1] - w[0]) as usize).max(1);
    let x_ticks: Vec<(f64, String)> =
        chart.columns.iter().enumerate().step_by(stride).map(|(i, c)| (i as f64 + 0.5, c.label.clone())).collect();
    let y_ticks = {
        let ticks = nice_ticks(y_lo, y_hi, 5, chart.y.integer);
        let spacing = if ticks.len() > 1 { ticks[1] - ticks[0] } else { 1.0 };
        ticks.into_iter().map(|t| (t, format_tick(t, spacing))).collect::<Vec<_>>()
    };
    let mut out = String::new();
    open_svg(&mut out, &chart.id, "stacked-bars", chart.size);
    axes(&mut out, &f, &xm, &x_ticks, &ym, &y_ticks);
    for (i, column) in chart.columns.iter().enumerate() {
        let x = xm.map(i as f64 + 0.5) - bar_width / 2.0;
        let mut base = 0.0;
        for (layer, value) in chart.layers.iter().zip(&column.values) {
            if !value.is_finite() || *value <= 0.0 {
                continue;
            }
            let (y_top, y_bottom) = (ym.map(base + value), ym.map(base));
            let _ = write!(
                out,
                "<rect class=\"bar\" data-series=\"{}\" x=\"{x:.2}\" y=\"{y_top:.1}\" width=\"{bar_width:.2}\" \
                 height=\"{:.1}\" fill=\"{}\"{crisp}><title>{} — {}: {}</title></rect>",
                escape(&layer.0),
                (y_bottom - y_top).max(0.0),
                layer.1,
                escape(&column.label),
                escape(&layer.0),
                trim_number(*value)
            );
            base += value;
        }
    }
    for (first, last, tooltip) in &chart.markers {
        alarm_marker(&mut out, &f, xm.map(*first as f64 + 0.5), xm.map(*last as f64 + 0.5), tooltip);
    }
    axis_titles(&mut out, &f, &chart.x_label, &chart.y.label);
    let items: Vec<(String, String, Stroke, bool)> =
        chart.layers.iter().rev().map(|(n, c)| (n.clone(), c.clone(), Stroke::Solid, true)).collect();
    if show_legend {
        legend(&mut out, &f, &items);
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(nice_ticks(0.0, 1.0, 5, false), [0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
        assert_eq!(nice_ticks(0.0, 7.0, 8, true), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        assert_eq!(nice_ticks(-0.5, 2.5, 8, true), [0.0, 1.0, 2.0]);
        assert_eq!(nice_ticks(3.0, 1000.0, 4, true), [200.0, 400.0, 600.0, 800.0, 1000.0]);
        assert!(nice_ticks(f64::NAN, 1.0, 5, false).is_empty());
        assert_eq!(format_tick(0.6000000000000001, 0.2), "0.6");
        assert_eq!(format_tick(400.0, 200.0), "400");
        assert_eq!(format_tick(0.035, 0.005), "0.035");
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("a<b & \"c\"'"), "a&lt;b &amp; &quot;c&quot;&#39;");
    }

    #[test]
    fn line_chart_draws_each_line_band_and_marker() {
        let chart = LineChart {
            id: "t<1>".into(),
            size: WIDE,
            x: Axis::integer("step"),
            y: Axis::linear("reward"),
            lines: vec![
                Line::new("mean", PALETTE[0], vec![(0.0, 0.1), (1.0, f64::NAN), (2.0, 0.3)]),
                Line::new("best", PALETTE[1], vec![(0.0, 0.2), (1.0, 0.5), (2.0, 0.5)]).step(),
            ],
            bands: vec![Band { name: "± std".into(), color: PALETTE[0].into(), points: vec![(0.0, 0.0, 0.2)] }],
            markers: vec![Marker { x: 1.0, x_end: 1.0, tooltip: "alarm <x>".into() }],
        };
        let svg = line_chart(&chart);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("data-chart=\"t&lt;1&gt;\""));
        assert_eq!(svg.matches("class=\"series\"").count(), 2);
        assert_eq!(svg.matches("class=\"band\"").count(), 1);
        assert_eq!(svg.matches("class=\"alarm-marker\"").count(), 1);
        assert_eq!(svg.matches("class=\"legend-item\"").count(), 3);
        // The NaN is a gap: the mean line has two pieces (two moves) and two markers.
        let mean = svg.split("data-series=\"mean\"").nth(1).unwrap().split("</g>").next().unwrap();
        assert_eq!(mean.matches('M').count(), 2, "{mean}");
        assert_eq!(mean.matches("<circle").count(), 2);
        assert!(svg.contains("alarm &lt;x&gt;"));
    }

    #[test]
    fn stacked_bars_stack_and_skip_empty_layers() {
        let chart = StackedBars {
            id: "s".into(),
            size: SMALL,
            x_label: "step".into(),
            y: Axis::linear("share").with_range(0.0, 1.0),
            layers: vec![("a".into(), PALETTE[0].into()), ("b".into(), PALETTE[1].into())],
            columns: vec![
                Column { label: "0".into(), values: vec![0.25, 0.75] },
                Column { label: "1".into(), values: vec![1.0, 0.0] },
            ],
            markers: vec![(0, 1, "x".into())],
        };
        let svg = stacked_bars(&chart);
        assert_eq!(svg.matches("class=\"bar\"").count(), 3);
        assert_eq!(svg.matches("class=\"alarm-marker\"").count(), 1);
        // The full column reaches the top of the plot area (y = top margin).
        assert!(svg.contains("data-series=\"a\" x=") && svg.contains("y=\"14.0\""), "{svg}");
    }
}
