//! `x0t sim`: a scenario run with the routing core on every simulated node, with an optional
//! PNG timeline (`--plot`) and CSV telemetry with fault labels (`--telemetry`).

use std::fs::File;
use std::io::{BufWriter, IsTerminal as _};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use x0_sim::experiment::{self, ExperimentConfig, Observer, Report};
use x0_sim::telemetry::{self, ControlTraffic, Telemetry, TelemetryConfig, TelemetrySummary};
use x0_sim::{Instance, Instant, Scenario};

use self::canvas::{Canvas, fonts};
use x0_node::exit::{self, CmdResult, Exit};

/// `x0t sim`: run a simulator scenario.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Scenario file (TOML; see docs/sim.md and scenarios/).
    #[arg(long, value_name = "FILE")]
    pub scenario: PathBuf,
    /// Seed of the run (overrides the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Directory for the JSON report (and the plot and telemetry, if asked for).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Source/destination pairs sampled for forwarding checks.
    #[arg(long, default_value_t = 2000)]
    pub sample_pairs: usize,
    /// Write a PNG timeline of the run (events, detect/reroute/converge, control traffic) to
    /// `DIR/sim-<scenario>.png` (needs --out).
    #[arg(long, requires = "out")]
    pub plot: bool,
    /// Write per-link and per-node telemetry with fault labels (links.csv, nodes.csv) to DIR,
    /// or to the --out directory when DIR is left out.
    #[arg(long, value_name = "DIR", num_args = 0..=1)]
    pub telemetry: Option<Option<PathBuf>>,
    /// Telemetry sampling interval, virtual time (e.g. "1s", "250ms").
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub telemetry_interval: std::time::Duration,
    /// Links to sample in the telemetry [default: all up to 2,000 nodes, else 5,000].
    #[arg(long, value_name = "N")]
    pub telemetry_max_links: Option<usize>,
}

/// Runs a scenario and writes its report.
pub fn run(args: SimArgs) -> CmdResult {
    let done = execute(&args, std::io::stderr().is_terminal())?;
    let text =
        serde_json::to_string_pretty(&done.report).map_err(|e| Exit::failure(e.to_string()))?;
    if args.json {
        println!("{text}");
    } else {
        print_summary(&done.name, &done.report);
        if let Some(plot) = &done.plot {
            println!("plot: {}", plot.display());
        }
        if let Some((dir, t)) = &done.telemetry {
            println!(
                "telemetry: {} samples, {} link rows ({} links), {} node rows in {}",
                t.samples,
                t.link_rows,
                t.links_sampled,
                t.node_rows,
                dir.display()
            );
        }
    }
    Ok(())
}

/// What a run produced.
struct Done {
    name: String,
    report: Report,
    plot: Option<PathBuf>,
    telemetry: Option<(PathBuf, TelemetrySummary)>,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> Exit {
    Exit::failure(format!("{}: {e}", path.display()))
}

/// Runs the scenario and writes the files asked for (the JSON report and the plot in `--out`,
/// the telemetry in its directory).
fn execute(args: &SimArgs, show_progress: bool) -> Result<Done, Exit> {
    let scenario =
        Scenario::from_file(&args.scenario).map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
    let instance = scenario
        .instantiate(args.seed)
        .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
    let name = args
        .scenario
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "scenario".into());
    if args.plot && args.out.is_none() {
        return Err(Exit::new(exit::USAGE, "--plot needs --out DIR"));
    }
    let telemetry_dir = match &args.telemetry {
        None => None,
        Some(Some(dir)) => Some(dir.clone()),
        Some(None) => Some(args.out.clone().ok_or_else(|| {
            Exit::new(
                exit::USAGE,
                "--telemetry without a directory writes into --out DIR; give one of them",
            )
        })?),
    };
    if args.telemetry_interval.is_zero() {
        return Err(Exit::new(
            exit::USAGE,
            "--telemetry-interval must be above 0",
        ));
    }
    for dir in args.out.iter().chain(telemetry_dir.iter()) {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    }

    let nodes = instance.topology.node_count() as usize;
    let mut telemetry = match &telemetry_dir {
        Some(dir) => {
            let cfg = TelemetryConfig {
                interval: args.telemetry_interval,
                max_links: args
                    .telemetry_max_links
                    .or_else(|| telemetry::default_max_links(nodes)),
            };
            let open = |file: &str| {
                let path = dir.join(file);
                File::create(&path)
                    .map(BufWriter::new)
                    .map_err(|e| io_err(&path, e))
            };
            let t = Telemetry::new(&instance, &cfg, open("links.csv")?, open("nodes.csv")?)
                .map_err(|e| io_err(dir, e))?;
            Some(t)
        }
        None => None,
    };
    let mut traffic = args
        .plot
        .then(|| ControlTraffic::new(ControlTraffic::interval_for(nodes)));

    let total = instance.duration.as_micros() as u64;
    let bar = if show_progress {
        ProgressBar::new(total.max(1))
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {percent}% of simulated time ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("sim {nodes} nodes"));
    let cfg = ExperimentConfig {
        sample_pairs: args.sample_pairs,
        ..ExperimentConfig::default()
    };
    let mut observers: Vec<&mut dyn Observer> = Vec::new();
    if let Some(t) = telemetry.as_mut() {
        observers.push(t);
    }
    if let Some(t) = traffic.as_mut() {
        observers.push(t);
    }
    let report = experiment::run_observed(
        &instance,
        &cfg,
        &mut |t: Instant| bar.set_position(t.as_micros()),
        &mut observers,
    )
    .map_err(|e| Exit::failure(format!("simulation: {e}")))?;
    bar.finish_and_clear();

    let telemetry = match (telemetry, telemetry_dir) {
        (Some(t), Some(dir)) => {
            let summary = t.finish().map_err(|e| io_err(&dir, e))?;
            Some((dir, summary))
        }
        _ => None,
    };
    let mut plot = None;
    if let Some(dir) = &args.out {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| Exit::failure(e.to_string()))?;
        let file = dir.join(format!("sim-{name}.json"));
        std::fs::write(&file, format!("{text}\n")).map_err(|e| io_err(&file, e))?;
        if let Some(traffic) = &traffic {
            let file = dir.join(format!("sim-{name}.png"));
            let title = Title {
                name: &name,
                description: scenario.description.as_deref(),
            };
            draw_timeline(&file, &title, &instance, &report, &traffic.series)
                .map_err(|e| io_err(&file, e))?;
            plot = Some(file);
        }
    }
    Ok(Done {
        name,
        report,
        plot,
        telemetry,
    })
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into())
}

fn print_summary(name: &str, r: &Report) {
    println!(
        "{name}: {} nodes, {} links, {:.0} s simulated in {:.1} s wall ({:.1} s with the checks; seed {}, {} simulator events)",
        r.nodes, r.links, r.simulated_s, r.wall_s, r.total_wall_s, r.seed, r.sim_events
    );
    println!("cold start converged in {} ms", opt(r.initial_converge_ms));
    println!(
        "{:<14} {:>8} {:>10} {:>11} {:>12} {:>9}",
        "event", "at s", "detect ms", "reroute ms", "converge ms", "affected"
    );
    for e in &r.events {
        println!(
            "{:<14} {:>8.1} {:>10} {:>11} {:>12} {:>9}",
            e.kind,
            e.at_s,
            opt(e.detect_ms),
            opt(e.reroute_ms),
            opt(e.converge_ms),
            e.affected_pairs
        );
    }
    println!(
        "end: {} of {} sampled connected pairs checked: {} loops, {} unreachable",
        r.pairs_checked, r.pairs_checked, r.loops_found, r.unreachable_pairs
    );
    println!(
        "control traffic: {:.0} B/node/s overall, {:.0} B/node/s steady",
        r.control_bytes_per_node_per_s, r.steady_control_bytes_per_node_per_s,
    );
    println!(
        "route updates: {:.3}/node/s steady + {:.3}/node/s periodic refresh (amortised) = {:.4} × a Babel-style protocol ({}/node/s)",
        r.steady_updates_per_node_per_s,
        r.refresh_updates_per_node_per_s,
        r.updates_ratio_vs_babel_style,
        r.babel_style_updates_per_node_per_s
    );
    println!(
        "peak RSS {:.0} MiB at the end of the simulation, {:.0} MiB after the final route checks",
        r.peak_rss_mb, r.peak_rss_with_checks_mb
    );
}

// ---- the timeline plot -------------------------------------------------------------------

/// Text for the plot, set with the embedded DejaVu fonts.
mod canvas {
    use std::sync::OnceLock;

    use ab_glyph::{Font as _, FontRef, PxScale, ScaleFont as _, point};
    use plotters::prelude::{BitMapBackend, DrawingBackend};
    use plotters::style::FontStyle;
    use plotters::style::text_anchor::{HPos, VPos};
    use plotters_backend::{
        BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind,
    };

    /// DejaVu Sans, regular and bold, from the `dejavu` crate.
    pub(super) struct Fonts {
        regular: FontRef<'static>,
        bold: FontRef<'static>,
    }

    pub(super) fn fonts() -> Result<&'static Fonts, String> {
        static FONTS: OnceLock<Option<Fonts>> = OnceLock::new();
        FONTS
            .get_or_init(|| {
                Some(Fonts {
                    regular: FontRef::try_from_slice(dejavu::sans::regular()).ok()?,
                    bold: FontRef::try_from_slice(dejavu::sans::bold()).ok()?,
                })
            })
            .as_ref()
            .ok_or_else(|| "the embedded DejaVu Sans font did not load".to_string())
    }

    /// A bitmap that sets its text with `ab_glyph` and the embedded DejaVu fonts (whatever family
    /// a style names), placing each glyph at its own bearing; everything else is the bitmap
    /// backend's. Plotters' own `ab_glyph` text drops the left bearings, which makes letter spacing
    /// uneven, and its `ttf` text needs system fonts.
    pub(super) struct Canvas<'a> {
        pub(super) inner: BitMapBackend<'a>,
        pub(super) fonts: &'static Fonts,
    }

    type CanvasError<'a> = DrawingErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>;

    impl Canvas<'_> {
        fn font(&self, style: FontStyle) -> &FontRef<'static> {
            match style {
                FontStyle::Bold => &self.fonts.bold,
                _ => &self.fonts.regular,
            }
        }

        /// Width and height of `text` set at `size` px.
        fn measure(&self, text: &str, style: FontStyle, size: f64) -> (f32, f32) {
            let font = self.font(style).as_scaled(PxScale::from(size as f32));
            let mut width = 0.0;
            let mut prev = None;
            for c in text.chars() {
                let id = font.glyph_id(c);
                if let Some(p) = prev {
                    width += font.kern(p, id);
                }
                width += font.h_advance(id);
                prev = Some(id);
            }
            (width, font.ascent() - font.descent())
        }
    }

    impl<'a> DrawingBackend for Canvas<'a> {
        type ErrorType = <BitMapBackend<'a> as DrawingBackend>::ErrorType;

        fn get_size(&self) -> (u32, u32) {
            self.inner.get_size()
        }
        fn ensure_prepared(&mut self) -> Result<(), CanvasError<'a>> {
            self.inner.ensure_prepared()
        }
        fn present(&mut self) -> Result<(), CanvasError<'a>> {
            self.inner.present()
        }
        fn draw_pixel(
            &mut self,
            point: BackendCoord,
            color: BackendColor,
        ) -> Result<(), CanvasError<'a>> {
            self.inner.draw_pixel(point, color)
        }
        fn draw_line<S: BackendStyle>(
            &mut self,
            from: BackendCoord,
            to: BackendCoord,
            style: &S,
        ) -> Result<(), CanvasError<'a>> {
            self.inner.draw_line(from, to, style)
        }
        fn draw_rect<S: BackendStyle>(
            &mut self,
            upper_left: BackendCoord,
            bottom_right: BackendCoord,
            style: &S,
            fill: bool,
        ) -> Result<(), CanvasError<'a>> {
            self.inner.draw_rect(upper_left, bottom_right, style, fill)
        }
        fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
            &mut self,
            path: I,
            style: &S,
        ) -> Result<(), CanvasError<'a>> {
            self.inner.draw_path(path, style)
        }
        fn draw_circle<S: BackendStyle>(
            &mut self,
            center: BackendCoord,
            radius: u32,
            style: &S,
            fill: bool,
        ) -> Result<(), CanvasError<'a>> {
            self.inner.draw_circle(center, radius, style, fill)
        }
        fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
            &mut self,
            vert: I,
            style: &S,
        ) -> Result<(), CanvasError<'a>> {
            self.inner.fill_polygon(vert, style)
        }
        fn blit_bitmap(
            &mut self,
            pos: BackendCoord,
            size: (u32, u32),
            src: &[u8],
        ) -> Result<(), CanvasError<'a>> {
            self.inner.blit_bitmap(pos, size, src)
        }

        fn estimate_text_size<T: BackendTextStyle>(
            &self,
            text: &str,
            style: &T,
        ) -> Result<(u32, u32), CanvasError<'a>> {
            let (w, h) = self.measure(text, style.style(), style.size());
            Ok((w.ceil() as u32, h.ceil() as u32))
        }

        fn draw_text<T: BackendTextStyle>(
            &mut self,
            text: &str,
            style: &T,
            pos: BackendCoord,
        ) -> Result<(), CanvasError<'a>> {
            let color = style.color();
            if color.alpha == 0.0 {
                return Ok(());
            }
            let (width, height) = self.measure(text, style.style(), style.size());
            let (width, height) = (width.round() as i32, height.round() as i32);
            let anchor = style.anchor();
            let dx = match anchor.h_pos {
                HPos::Left => 0,
                HPos::Right => -width,
                HPos::Center => -width / 2,
            };
            let dy = match anchor.v_pos {
                VPos::Top => 0,
                VPos::Center => -height / 2,
                VPos::Bottom => -height,
            };
            let transform = style.transform();
            let font = self.font(style.style()).clone();
            let scale = PxScale::from(style.size() as f32);
            let scaled = font.as_scaled(scale);
            let mut caret = 0.0;
            let mut prev = None;
            let mut pixels = Vec::new();
            for c in text.chars() {
                let id = scaled.glyph_id(c);
                if let Some(p) = prev {
                    caret += scaled.kern(p, id);
                }
                prev = Some(id);
                let glyph = id.with_scale_and_position(scale, point(caret, scaled.ascent()));
                caret += scaled.h_advance(id);
                if let Some(outline) = font.outline_glyph(glyph) {
                    let b = outline.px_bounds();
                    outline.draw(|x, y, coverage| {
                        if coverage > 0.0 {
                            pixels.push((
                                b.min.x as i32 + x as i32,
                                b.min.y as i32 + y as i32,
                                coverage,
                            ));
                        }
                    });
                }
            }
            for (x, y, coverage) in pixels {
                let (x, y) = transform.transform(x + dx, y + dy);
                self.inner.draw_pixel(
                    (pos.0 + x, pos.1 + y),
                    BackendColor {
                        alpha: color.alpha * f64::from(coverage.min(1.0)),
                        rgb: color.rgb,
                    },
                )?;
            }
            Ok(())
        }
    }
}

/// The font family the plot names (the [`Canvas`] sets every text in DejaVu Sans, embedded from
/// the `dejavu` crate: no system fonts are needed or read).
const FONT: &str = "sans-serif";
const WIDTH: u32 = 1500;
const HEAD_HEIGHT: u32 = 76;
const TRAFFIC_HEIGHT: u32 = 430;
const LANE_HEIGHT: u32 = 62;
/// Lanes drawn at most (the rest are named in the title).
const MAX_LANES: usize = 60;
const LABEL_AREA: u32 = 250;

const DETECT: RGBColor = RGBColor(230, 120, 20);
const REROUTE: RGBColor = RGBColor(40, 110, 210);
const CONVERGE: RGBColor = RGBColor(40, 150, 70);
const EVENT: RGBColor = RGBColor(200, 30, 30);
const TRAFFIC: RGBColor = RGBColor(60, 60, 140);
const STEADY: RGBColor = RGBColor(120, 180, 230);
const GRID: RGBColor = RGBColor(225, 225, 225);

/// `1234.5` → `1.2 kB/s`.
fn rate(v: f64) -> String {
    let (div, unit) = match v.abs() {
        x if x >= 1e9 => (1e9, "GB/s"),
        x if x >= 1e6 => (1e6, "MB/s"),
        x if x >= 1e3 => (1e3, "kB/s"),
        _ => (1.0, "B/s"),
    };
    let x = v / div;
    let text = if x >= 10.0 || div == 1.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    };
    format!("{} {unit}", text.trim_end_matches(".0"))
}

/// `12.3` ms → `12 ms`, `0.4` → `0.4 ms`, `2500` → `2.50 s`.
fn millis(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 || ms == 0.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// Whether the experiment measures detect and reroute for this event kind.
fn is_failure(kind: &str) -> bool {
    matches!(kind, "link-down" | "node-crash" | "partition")
}

/// One lane of the timeline: a label, when it starts, and its three measured intervals.
struct Lane {
    title: String,
    at_s: f64,
    bars: [(&'static str, RGBColor, Option<f64>, bool); 3],
}

fn lanes(report: &Report) -> Vec<Lane> {
    let mut lanes = vec![Lane {
        title: "cold start".into(),
        at_s: 0.0,
        bars: [
            ("detect", DETECT, None, false),
            ("reroute", REROUTE, None, false),
            ("converge", CONVERGE, report.initial_converge_ms, true),
        ],
    }];
    for (i, e) in report.events.iter().enumerate() {
        let failure = is_failure(&e.kind);
        lanes.push(Lane {
            title: format!("#{} {} at {:.3} s", i + 1, e.kind, e.at_s).replace(".000 s", " s"),
            at_s: e.at_s,
            bars: [
                ("detect", DETECT, e.detect_ms, failure),
                ("reroute", REROUTE, e.reroute_ms, failure),
                ("converge", CONVERGE, e.converge_ms, true),
            ],
        });
    }
    lanes
}

/// What the plot is called.
struct Title<'a> {
    /// The scenario's file name without `.toml`.
    name: &'a str,
    /// The scenario's `description`.
    description: Option<&'a str>,
}

/// Draws the run's timeline: control traffic over the whole run on top, one lane per event
/// below with its detect, reroute and converge intervals.
fn draw_timeline(
    path: &Path,
    title: &Title<'_>,
    instance: &Instance,
    report: &Report,
    traffic: &[(f64, f64)],
) -> Result<(), String> {
    let fonts = fonts()?;
    let all = lanes(report);
    let hidden = all.len().saturating_sub(MAX_LANES);
    let lanes = &all[..all.len().min(MAX_LANES)];
    let height = HEAD_HEIGHT + TRAFFIC_HEIGHT + 70 + LANE_HEIGHT * lanes.len() as u32 + 40;
    let root = Canvas {
        inner: BitMapBackend::new(path, (WIDTH, height)),
        fonts,
    }
    .into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let duration = instance.duration.as_secs_f64().max(1e-3);
    let step = traffic
        .first()
        .map(|p| p.0)
        .unwrap_or(0.1)
        .clamp(1e-6, duration);
    let mut heading = format!(
        "{}: {} nodes, {} links, seed {}, {} s simulated",
        title.name,
        report.nodes,
        report.links,
        report.seed,
        fmt_num(report.simulated_s)
    );
    if hidden > 0 {
        heading.push_str(&format!(" ({hidden} more events not drawn)"));
    }
    let (head, body) = root.split_vertically(HEAD_HEIGHT);
    head.draw(&Text::new(
        heading,
        (20, 14),
        (FONT, 24).into_font().style(FontStyle::Bold),
    ))
    .map_err(|e| e.to_string())?;
    if let Some(d) = title.description {
        head.draw(&Text::new(d.to_owned(), (20, 46), (FONT, 16).into_font()))
            .map_err(|e| e.to_string())?;
    }
    let (top, bottom) = body.split_vertically(TRAFFIC_HEIGHT);
    draw_traffic(&top, duration, step, report, traffic)?;
    draw_lanes(&bottom, duration, lanes)?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn draw_traffic(
    area: &DrawingArea<Canvas<'_>, Shift>,
    duration: f64,
    step: f64,
    report: &Report,
    traffic: &[(f64, f64)],
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<_>| e.to_string();
    let positive = traffic.iter().map(|p| p.1).filter(|v| *v > 0.0);
    let max = positive.clone().fold(1.0f64, f64::max);
    let min = positive.fold(max, f64::min);
    // From the decade below the quietest interval to just above the loudest.
    let (lo, hi) = (10f64.powf((min / 2.0).max(1.0).log10().floor()), max * 2.0);
    let mut chart = ChartBuilder::on(area)
        .margin_right(40)
        .margin_top(10)
        .caption(
            format!(
                "control traffic, mesh-wide (every {} of virtual time; log scale)",
                if step >= 1.0 {
                    format!("{} s", fmt_num(step))
                } else {
                    format!("{} ms", fmt_num((step * 1000.0).round()))
                }
            ),
            (FONT, 18),
        )
        .x_label_area_size(40)
        .y_label_area_size(LABEL_AREA)
        .build_cartesian_2d(0f64..duration, (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(GRID)
        .x_desc("virtual time, s")
        .y_label_formatter(&|v| rate(*v))
        .x_label_formatter(&|v| fmt_num(*v))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(err)?;
    // Event times.
    for e in &report.events {
        chart
            .draw_series(DashedLineSeries::new(
                [(e.at_s, lo), (e.at_s, hi)],
                6,
                4,
                EVENT.mix(0.6).stroke_width(1),
            ))
            .map_err(err)?;
    }
    // Each point is the mean over the interval ending at its time: draw it as a step.
    let mut points = Vec::with_capacity(2 * traffic.len());
    let mut start = 0.0;
    for &(end, v) in traffic {
        let v = v.max(lo);
        points.push((start, v));
        points.push((end, v));
        start = end;
    }
    chart
        .draw_series(LineSeries::new(points, TRAFFIC.stroke_width(2)))
        .map_err(err)?
        .label("sent by all nodes (probes, adverts, acks, link hellos)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 24, y)], TRAFFIC.stroke_width(2)));
    // The report's steady-state figure, over its window (the second half of the time before
    // the first event).
    if report.steady_window_s > 0.0 {
        let end = report.events.first().map_or(report.simulated_s, |e| e.at_s);
        let level = report.steady_control_bytes_per_node_per_s * report.nodes as f64;
        if level > 0.0 {
            chart
                .draw_series(DashedLineSeries::new(
                    [(end - report.steady_window_s, level), (end, level)],
                    10,
                    5,
                    STEADY.stroke_width(2),
                ))
                .map_err(err)?
                .label(format!(
                    "steady state in the report: {} ({:.0} B/node/s)",
                    rate(level),
                    report.steady_control_bytes_per_node_per_s
                ))
                .legend(|(x, y)| PathElement::new([(x, y), (x + 24, y)], STEADY.stroke_width(2)));
        }
    }
    if !report.events.is_empty() {
        chart
            .draw_series(std::iter::once(PathElement::new(
                [(0.0, lo), (0.0, lo)],
                EVENT.mix(0.6),
            )))
            .map_err(err)?
            .label("scenario event")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 24, y)], EVENT.mix(0.6)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(180, 180, 180))
        .label_font((FONT, 14))
        .draw()
        .map_err(err)?;
    Ok(())
}

fn draw_lanes(
    area: &DrawingArea<Canvas<'_>, Shift>,
    duration: f64,
    lanes: &[Lane],
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<_>| e.to_string();
    let n = lanes.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .margin_right(40)
        .margin_top(10)
        .caption(
            "events: detect (first neighbour declares it), reroute (affected pairs forward on a \
             working path), converge (every database matches the true graph)",
            (FONT, 16),
        )
        .x_label_area_size(40)
        .y_label_area_size(LABEL_AREA)
        .build_cartesian_2d(0f64..duration, 0f64..n)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(GRID)
        .x_desc("virtual time, s")
        .x_label_formatter(&|v| fmt_num(*v))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(err)?;
    let (px, _) = chart.plotting_area().dim_in_pixel();
    // `backend_coord` is in pixels of the whole image; `area.draw` wants them relative to it.
    let (bx, by) = area.get_base_pixel();
    let at = |(x, y): (i32, i32)| (x - bx, y - by);
    // Bars are at least 3 px wide, so that a 1 ms interval still shows on a 60 s axis.
    let min_width = 3.0 * duration / f64::from(px.max(1));
    let left = |c: &RGBColor| {
        (FONT, 13)
            .into_font()
            .color(c)
            .pos(Pos::new(HPos::Left, VPos::Center))
    };
    for (i, lane) in lanes.iter().enumerate() {
        // Lane i spans [n − i − 1, n − i], top to bottom.
        let top = n - i as f64;
        let bottom = top - 1.0;
        if i % 2 == 1 {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.0, bottom), (duration, top)],
                    RGBColor(246, 246, 250).filled(),
                )))
                .map_err(err)?;
        }
        // The lane's title, in the label area on the left.
        let (_, y) = at(chart.backend_coord(&(0.0, top - 0.5)));
        let (x0, _) = at(chart.backend_coord(&(0.0, top)));
        area.draw(&Text::new(
            lane.title.clone(),
            (x0 - LABEL_AREA as i32 + 8, y),
            (FONT, 15)
                .into_font()
                .style(FontStyle::Bold)
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(err)?;
        // When it was applied.
        if i > 0 {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    [(lane.at_s, bottom + 0.04), (lane.at_s, top - 0.04)],
                    EVENT.stroke_width(2),
                )))
                .map_err(err)?;
        }
        for (k, (what, color, value, expected)) in lane.bars.iter().enumerate() {
            let row_top = top - 0.1 - 0.28 * k as f64;
            let row_bottom = row_top - 0.22;
            let mid = (row_top + row_bottom) / 2.0;
            let text_x;
            let text = match value {
                Some(ms) => {
                    let end = lane.at_s + (ms / 1000.0).max(min_width);
                    chart
                        .draw_series(std::iter::once(Rectangle::new(
                            [(lane.at_s, row_bottom), (end.min(duration), row_top)],
                            color.filled(),
                        )))
                        .map_err(err)?;
                    text_x = end.min(duration);
                    format!("{what} {}", millis(*ms))
                }
                None if *expected => {
                    text_x = lane.at_s;
                    format!("{what}: not reached")
                }
                None => continue,
            };
            let (x, y) = at(chart.backend_coord(&(text_x, mid)));
            // Right of the bar, or left of its start when it would run off the plot.
            let style = left(&if value.is_some() { BLACK } else { EVENT });
            let width = estimate_width(&text);
            let (x1, _) = at(chart.backend_coord(&(duration, mid)));
            let pos = if x + 6 + width > x1 {
                let (xs, _) = at(chart.backend_coord(&(lane.at_s, mid)));
                (xs - 6 - width, y)
            } else {
                (x + 6, y)
            };
            area.draw(&Text::new(text, pos, style)).map_err(err)?;
        }
    }
    Ok(())
}

/// Rough width in pixels of 13 px text.
fn estimate_width(text: &str) -> i32 {
    (text.chars().count() as f64 * 7.2) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(file: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../scenarios")
            .join(file)
    }

    fn args(scenario: PathBuf, out: Option<PathBuf>) -> SimArgs {
        SimArgs {
            scenario,
            seed: None,
            json: false,
            out,
            sample_pairs: 2000,
            plot: false,
            telemetry: None,
            telemetry_interval: std::time::Duration::from_secs(1),
            telemetry_max_links: None,
        }
    }

    fn rows(path: &Path) -> Vec<Vec<String>> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| l.split(',').map(str::to_owned).collect())
            .collect()
    }

    #[test]
    fn ring_plot_and_telemetry() {
        let dir = tempfile::tempdir().unwrap();
        let ring = scenario("ring-8-link-down.toml");
        let plain = execute(&args(ring.clone(), None), false).unwrap();

        let mut a = args(ring, Some(dir.path().to_path_buf()));
        a.plot = true;
        a.telemetry = Some(None);
        let done = execute(&a, false).unwrap();
        // Observing does not change the run.
        assert_eq!(done.report.trace_digest, plain.report.trace_digest);
        assert_eq!(
            format!("{:?}", done.report.events),
            format!("{:?}", plain.report.events)
        );

        let png = std::fs::read(dir.path().join("sim-ring-8-link-down.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(png.len() > 10_000, "{} bytes", png.len());
        assert!(dir.path().join("sim-ring-8-link-down.json").exists());

        // 20 samples (1 s … 20 s) × 8 links × 2 directions, and × 8 nodes.
        let links = rows(&dir.path().join("links.csv"));
        let nodes = rows(&dir.path().join("nodes.csv"));
        assert_eq!(links[0].join(","), telemetry::LINKS_HEADER);
        assert_eq!(nodes[0].join(","), telemetry::NODES_HEADER);
        assert_eq!(links.len() - 1, 20 * 16);
        assert_eq!(nodes.len() - 1, 20 * 8);
        let t = done.telemetry.unwrap().1;
        assert_eq!((t.samples, t.link_rows, t.node_rows), (20, 320, 160));
        // Link 0–1 is down from 5 s to 10 s: labelled so in both directions, and only then.
        let label = |time: &str, from: &str, to: &str| {
            links
                .iter()
                .find(|r| r[0] == time && r[2] == from && r[3] == to)
                .map(|r| r[8].clone())
                .unwrap()
        };
        assert_eq!(label("4", "0", "1"), "normal");
        for time in ["5", "7", "9"] {
            assert_eq!(label(time, "0", "1"), "link-down");
            assert_eq!(label(time, "1", "0"), "link-down");
            assert_eq!(label(time, "1", "2"), "normal");
        }
        assert_eq!(label("10", "0", "1"), "normal");
        let faulty = links.iter().filter(|r| r[8] == "link-down").count();
        assert_eq!(faulty, 5 * 2);
        assert!(nodes.iter().skip(1).all(|r| r[5] == "normal"));
    }

    #[test]
    fn telemetry_dir_and_plot_need_a_directory() {
        let mut a = args(scenario("ring-8-link-down.toml"), None);
        a.plot = true;
        assert!(execute(&a, false).is_err());
        let mut a = args(scenario("ring-8-link-down.toml"), None);
        a.telemetry = Some(None);
        assert!(execute(&a, false).is_err());
    }

    #[test]
    fn rates_and_durations_read_well() {
        assert_eq!(rate(950.0), "950 B/s");
        assert_eq!(rate(12_345.0), "12 kB/s");
        assert_eq!(rate(1_234.0), "1.2 kB/s");
        assert_eq!(rate(2_500_000.0), "2.5 MB/s");
        assert_eq!(rate(1_000_000.0), "1 MB/s");
        assert_eq!(millis(0.0), "0 ms");
        assert_eq!(millis(3.25), "3.2 ms");
        assert_eq!(millis(110.0), "110 ms");
        assert_eq!(millis(2500.0), "2.50 s");
    }
}
