//! SVG line charts (plotters): memory vs frozen layers (paper Figs. 2 / 17 style) and
//! accuracy vs round / energy from a run's `rounds.csv` (Figs. 8 / 9 style).

use std::path::Path;

use plotters::prelude::*;

use crate::accounting::memory_probe::MemoryRow;

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, thiserror::Error)]
#[error("drawing {path}: {message}")]
pub struct PlotError {
    pub path: String,
    pub message: String,
}

const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The chart every plot here draws in: an SVG of `size` with a title, axes over
/// `x ∈ [xmin, xmax]`, `y ∈ [0, ymax]`, and a legend at `legend` after `draw` adds the series.
type Chart<'a> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>>;

struct Frame<'t> {
    title: &'t str,
    x_label: &'t str,
    y_label: &'t str,
    size: (u32, u32),
    legend: SeriesLabelPosition,
}

fn framed(path: &Path, frame: Frame<'_>, (xmin, xmax): (f64, f64), ymax: f64, draw: impl FnOnce(&mut Chart<'_>) -> Result<(), PlotError>) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError { path: path.display().to_string(), message: e.to_string() };
    let xmax = if xmax > xmin { xmax } else { xmin + 1.0 };
    let root = SVGBackend::new(path, frame.size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(frame.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(xmin..xmax, 0.0..ymax.max(1e-9))
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc(frame.x_label).y_desc(frame.y_label).draw().map_err(|e| err(&e))?;
    draw(&mut chart)?;
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .position(frame.legend)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

pub fn line_chart(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError { path: path.display().to_string(), message: e.to_string() };
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.iter().copied()).collect();
    if all.is_empty() {
        return Err(err(&"nothing to plot"));
    }
    let x = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let ymax = all.iter().fold(0.0f64, |a, p| a.max(p.1)) * 1.08;
    let frame = Frame { title, x_label, y_label, size: (800, 520), legend: SeriesLabelPosition::UpperRight };
    framed(path, frame, x, ymax, |chart| {
        for (i, s) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(|e| err(&e))?;
        }
        Ok(())
    })
}

/// Measured peaks per mode against frozen layers — the step's extra peak and the absolute
/// peak (resident + extra) — with ordered freezing's Eq. 23 line.
pub fn memory_chart(path: &Path, title: &str, rows: &[MemoryRow]) -> Result<(), PlotError> {
    let mut modes: Vec<&str> = Vec::new();
    for r in rows {
        if !modes.contains(&r.mode.as_str()) {
            modes.push(&r.mode);
        }
    }
    let mut series: Vec<Series> = modes
        .iter()
        .flat_map(|m| {
            let of_mode = || rows.iter().filter(move |r| r.mode == *m);
            [
                Series { name: format!("{m} (extra)"), points: of_mode().map(|r| (r.frozen as f64, r.measured_mb())).collect() },
                Series { name: format!("{m} (absolute)"), points: of_mode().map(|r| (r.frozen as f64, r.absolute_mb())).collect() },
            ]
        })
        .collect();
    // `none` is one measurement; draw it as a level reference across the x range.
    let max_l = rows.iter().map(|r| r.frozen).max();
    for none in series.iter_mut().filter(|s| s.name.starts_with("none")) {
        if let (Some(&(_, y)), Some(max_l)) = (none.points.first(), max_l) {
            none.points = vec![(0.0, y), (max_l as f64, y)];
        }
    }
    series.push(Series {
        name: "ordered (Eq. 23)".into(),
        points: rows.iter().filter(|r| r.mode == "ordered").map(|r| (r.frozen as f64, r.theoretical_mb())).collect(),
    });
    line_chart(path, title, "frozen layers l", "peak memory of one training step (MB)", &series)
}

/// One method's accuracy over rounds across trials: `(x, mean, min, max)` per point.
pub struct Band {
    pub name: String,
    pub points: Vec<(f64, f64, f64, f64)>,
}

/// Mean lines with their min–max bands (shaded), one colour per band.
pub fn band_chart(path: &Path, title: &str, x_label: &str, y_label: &str, bands: &[Band]) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError { path: path.display().to_string(), message: e.to_string() };
    let all: Vec<&(f64, f64, f64, f64)> = bands.iter().flat_map(|b| b.points.iter()).collect();
    if all.is_empty() {
        return Err(err(&"nothing to plot"));
    }
    let x = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let ymax = all.iter().fold(0.0f64, |a, p| a.max(p.3)) * 1.08;
    let frame = Frame { title, x_label, y_label, size: (960, 600), legend: SeriesLabelPosition::LowerRight };
    framed(path, frame, x, ymax, |chart| {
        for (i, b) in bands.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let mut outline: Vec<(f64, f64)> = b.points.iter().map(|p| (p.0, p.3)).collect();
            outline.extend(b.points.iter().rev().map(|p| (p.0, p.2)));
            chart.draw_series(std::iter::once(Polygon::new(outline, color.mix(0.15).filled()))).map_err(|e| err(&e))?;
            let line: Vec<(f64, f64)> = b.points.iter().map(|p| (p.0, p.1)).collect();
            let style = color.stroke_width(2);
            // Past the palette, the same colours again, dashed.
            let drawn = if i >= PALETTE.len() {
                chart.draw_series(DashedLineSeries::new(line, 6, 4, style)).map_err(|e| err(&e))?
            } else {
                chart.draw_series(LineSeries::new(line, style)).map_err(|e| err(&e))?
            };
            drawn.label(b.name.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        Ok(())
    })
}
