//! The trace bench's plot: hit rate against capacity, per trace, for kvtier, LRU, Belady's
//! OPT and the reuse bound (an SVG for docs/benchmarks.md).

use anyhow::{Result, anyhow};
use plotters::prelude::*;

/// One capacity's hit rates, in percent.
pub(crate) struct Point {
    pub(crate) trace: String,
    pub(crate) capacity_pct: f64,
    pub(crate) kvtier: f64,
    pub(crate) lru: f64,
    pub(crate) opt: f64,
    pub(crate) bound: f64,
}

/// A line of the plot: its name, color and value at a point.
type Series = (&'static str, RGBColor, fn(&Point) -> f64);

pub(crate) fn draw(points: &[Point], path: &std::path::Path) -> Result<()> {
    let mut traces: Vec<&str> = points.iter().map(|p| p.trace.as_str()).collect();
    traces.dedup();
    let root = SVGBackend::new(path, (480 * traces.len() as u32, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    for (area, trace) in root.split_evenly((1, traces.len())).iter().zip(&traces) {
        let mine: Vec<&Point> = points.iter().filter(|p| p.trace == *trace).collect();
        let x_max = mine.iter().map(|p| p.capacity_pct).fold(1.0, f64::max) * 1.05;
        let y_max = mine.iter().map(|p| p.bound.max(p.opt)).fold(1.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{trace}: hit rate vs capacity"), ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("node capacity, % of the working set")
            .y_desc("blocks hit, %")
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        let series: [Series; 4] = [
            ("kvtier", RED, |p| p.kvtier),
            ("LRU", BLUE, |p| p.lru),
            ("Belady OPT", GREEN, |p| p.opt),
            ("reuse bound", BLACK, |p| p.bound),
        ];
        for (name, color, value) in series {
            chart
                .draw_series(LineSeries::new(mine.iter().map(|p| (p.capacity_pct, value(p))), color.stroke_width(2)))
                .map_err(|e| anyhow!("{e}"))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
