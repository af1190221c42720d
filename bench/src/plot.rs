//! SVG plots of the figures (plotters' SVG backend: no fonts or system libraries needed).

use std::path::Path;

use anyhow::Result;
use plotters::{coord::ranged1d::SegmentValue, prelude::*};

use crate::stats::Figure;

/// A chart of one section.
pub enum Plot {
    /// Horizontal bars (median) with min–max whiskers, first bar on top.
    Bars {
        file: String,
        title: String,
        unit: String,
        bars: Vec<(String, Figure)>,
    },
    /// Lines over a logarithmic x axis, min–max as error bars.
    Lines {
        file: String,
        title: String,
        x_label: String,
        y_label: String,
        series: Vec<(String, Vec<(f64, Figure)>)>,
    },
}

impl Plot {
    pub fn file(&self) -> &str {
        match self {
            Plot::Bars { file, .. } | Plot::Lines { file, .. } => file,
        }
    }

    pub fn title(&self) -> &str {
        match self {
            Plot::Bars { title, .. } | Plot::Lines { title, .. } => title,
        }
    }

    /// Writes the SVG into `dir`.
    pub fn render(&self, dir: &Path) -> Result<()> {
        let path = dir.join(self.file());
        match self {
            Plot::Bars {
                title, unit, bars, ..
            } => bars_svg(&path, title, unit, bars),
            Plot::Lines {
                title,
                x_label,
                y_label,
                series,
                ..
            } => lines_svg(&path, title, x_label, y_label, series),
        }
    }
}

const WIDTH: u32 = 1000;
const FONT: &str = "sans-serif";

fn bars_svg(path: &Path, title: &str, unit: &str, bars: &[(String, Figure)]) -> Result<()> {
    let n = bars.len().max(1);
    let root = SVGBackend::new(path, (WIDTH, 110 + 26 * n as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = bars.iter().map(|(_, f)| f.max).fold(0.0, f64::max);
    let x_max = if top > 0.0 { top * 1.1 } else { 1.0 };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(420)
        .build_cartesian_2d(0f64..x_max, (0..n).into_segmented())?;
    // Segment 0 is at the bottom; bar i is drawn in segment n-1-i so the first is on top.
    let label = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(s) if *s < n => bars
            .get(n - 1 - s)
            .map(|(l, _)| l.clone())
            .unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&label)
        .x_desc(unit)
        .label_style((FONT, 13))
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, f))| {
        let s = n - 1 - i;
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(s)),
                (f.median, SegmentValue::Exact(s + 1)),
            ],
            BLUE.mix(0.55).filled(),
        );
        bar.set_margin(4, 4, 0, 0);
        bar
    }))?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, f))| {
        let s = SegmentValue::CenterOf(n - 1 - i);
        PathElement::new(vec![(f.min, s.clone()), (f.max, s)], BLACK.stroke_width(2))
    }))?;
    root.present()?;
    Ok(())
}

fn lines_svg(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, Figure)>)],
) -> Result<()> {
    let root = SVGBackend::new(path, (WIDTH, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let points = || series.iter().flat_map(|(_, p)| p.iter());
    let x_min = points().map(|(x, _)| *x).fold(f64::INFINITY, f64::min);
    let x_max = points().map(|(x, _)| *x).fold(0.0, f64::max);
    let y_min = points().map(|(_, f)| f.min).fold(f64::INFINITY, f64::min);
    let y_max = points()
        .map(|(_, f)| f.max)
        .fold(f64::NEG_INFINITY, f64::max);
    let (x_min, x_max) = if x_min.is_finite() && x_max > x_min {
        (x_min / 1.5, x_max * 1.5)
    } else {
        (1.0, 10.0)
    };
    let pad = ((y_max - y_min).abs() * 0.1).max(1e-3);
    let (y_min, y_max) = if y_min.is_finite() {
        (y_min.min(0.0) - pad, y_max + pad)
    } else {
        (0.0, 1.0)
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((x_min..x_max).log_scale(), y_min..y_max)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|x| si(*x))
        .label_style((FONT, 13))
        .draw()?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|(x, f)| (*x, f.median)),
                colour.stroke_width(2),
            ))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        chart.draw_series(pts.iter().map(|(x, f)| {
            PathElement::new(vec![(*x, f.min), (*x, f.max)], colour.stroke_width(1))
        }))?;
        chart.draw_series(
            pts.iter()
                .map(|(x, f)| Circle::new((*x, f.median), 3, colour.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .draw()?;
    root.present()?;
    Ok(())
}

/// 1000000 -> "1M".
pub fn si(x: f64) -> String {
    let (v, unit) = match x.abs() {
        a if a >= 1e9 => (x / 1e9, "G"),
        a if a >= 1e6 => (x / 1e6, "M"),
        a if a >= 1e3 => (x / 1e3, "k"),
        _ => (x, ""),
    };
    let s = format!("{v:.1}");
    format!("{}{unit}", s.trim_end_matches(".0"))
}
