//! Pictures of a solve: heatmaps of V, policy entropy or occupancy (viridis, with a legend bar
//! and the value range written under it), policy arrows, sampled trajectories; walls black,
//! goals magenta. Pure CPU drawing into an RGB canvas, encoded as PNG.

use std::path::Path;

use crate::error::{Context, Error, Result, bail, ensure};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::world::grid::{ActionSet, Grid, MOVE_OFFSETS};

/// Wall (blocked cell) colour.
pub const WALL: [u8; 3] = [0, 0, 0];
/// Goal marker colour.
pub const GOAL: [u8; 3] = [255, 0, 255];
/// Colour of cells without a finite value (unreachable with gamma = 1).
pub const NO_VALUE: [u8; 3] = [96, 96, 96];
/// Policy arrow colour.
pub const ARROW: [u8; 3] = [255, 255, 255];
/// Trajectory colour.
pub const TRAJECTORY: [u8; 3] = [255, 64, 32];
/// Longest side of the map area in pixels; larger maps are downsampled.
pub const MAX_SIDE_PX: usize = 2048;
/// Largest map side drawn with policy arrows; beyond it the policy is drawn as entropy.
pub const MAX_ARROW_SIDE: usize = 128;
/// Most trajectories a picture draws (`--trajectories`); more are refused: each is up to
/// `4 (H + W)` steps, and beyond this count they cover the map anyway.
pub const MAX_TRAJECTORIES: usize = 10_000;
/// Largest deviation of a drawn policy row's sum from 1.
pub const POLICY_ROW_TOLERANCE: f64 = 1e-3;

/// Viridis control points (matplotlib's colormap at t = 0, 1/8, ..., 1).
const VIRIDIS: [[f64; 3]; 9] = [
    [68.0, 1.0, 84.0],
    [71.0, 44.0, 123.0],
    [59.0, 81.0, 139.0],
    [44.0, 113.0, 142.0],
    [33.0, 144.0, 141.0],
    [39.0, 173.0, 129.0],
    [92.0, 200.0, 99.0],
    [170.0, 220.0, 50.0],
    [253.0, 231.0, 37.0],
];

/// Viridis at `t` in [0, 1] (clamped), linear between control points.
pub fn viridis(t: f64) -> [u8; 3] {
    let x = t.clamp(0.0, 1.0) * 8.0;
    let i = (x.floor() as usize).min(7);
    let f = x - i as f64;
    let mix = |k: usize| (VIRIDIS[i][k] * (1.0 - f) + VIRIDIS[i + 1][k] * f).round() as u8;
    [mix(0), mix(1), mix(2)]
}

/// An RGB image, row-major.
pub struct Canvas {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Pixels `[y][x]`.
    pub pixels: Vec<[u8; 3]>,
}

impl Canvas {
    fn new(width: usize, height: usize, fill: [u8; 3]) -> Self {
        Self {
            width,
            height,
            pixels: vec![fill; width * height],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            self.pixels[y as usize * self.width + x as usize] = c;
        }
    }

    fn fill_rect(&mut self, x: usize, y: usize, w: usize, h: usize, c: [u8; 3]) {
        for yy in y..(y + h).min(self.height) {
            for xx in x..(x + w).min(self.width) {
                self.pixels[yy * self.width + xx] = c;
            }
        }
    }

    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3]) {
        // No more steps than pixels across the canvas, however far the ends lie.
        let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize)
            .clamp(1, 2 * (self.width + self.height));
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            self.set(
                (x0 + (x1 - x0) * t).round() as i64,
                (y0 + (y1 - y0) * t).round() as i64,
                c,
            );
        }
    }

    /// Writes `text` (digits, `.`, `-`, `+`, `e`) with a 3 x 5 pixel font scaled by `scale`.
    fn text(&mut self, x: usize, y: usize, text: &str, scale: usize, c: [u8; 3]) {
        for (k, ch) in text.chars().enumerate() {
            let rows = glyph(ch);
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        self.fill_rect(x + (k * 4 + col) * scale, y + r * scale, scale, scale, c);
                    }
                }
            }
        }
    }

    /// PNG bytes (8-bit RGB).
    pub fn encode_png(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().context("PNG header")?;
        writer
            .write_image_data(self.pixels.as_flattened())
            .context("PNG data")?;
        writer.finish().context("PNG end")?;
        Ok(out)
    }
}

/// Rows of a 3 x 5 glyph, 3 bits each (4 = left column).
fn glyph(ch: char) -> [u8; 5] {
    match ch {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        '+' => [0, 2, 7, 2, 0],
        'e' => [0, 7, 7, 4, 7],
        // Letters in capitals (labels are drawn upper-case; `e` above is the exponent's).
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        '*' => [5, 2, 7, 2, 5],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        '/' => [1, 1, 2, 4, 4],
        ':' => [0, 2, 0, 2, 0],
        ',' => [0, 0, 0, 2, 4],
        '=' => [0, 7, 0, 7, 0],
        _ => [0; 5],
    }
}

/// One line of a [`line_chart`]: its label, colour, and per x index a mean and the half
/// height of its error bar.
pub struct Series<'a> {
    /// Legend text.
    pub label: &'a str,
    /// Line colour.
    pub colour: [u8; 3],
    /// `[x]`.
    pub mean: &'a [f64],
    /// `[x]`, drawn as +- bars (e.g. one standard error).
    pub error: &'a [f64],
}

/// Chart colours of the series, in order (blue, orange, green, red), on white.
pub const SERIES_COLOURS: [[u8; 3]; 4] =
    [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40]];

/// A line chart of `series` over x = 1..=n (n the longest series), with error bars, axes
/// with numbered ticks, `title`, axis labels and a legend; 720 x 440 pixels.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Canvas {
    const INK: [u8; 3] = [0, 0, 0];
    const GRID: [u8; 3] = [225, 225, 225];
    let (width, height, scale) = (720usize, 440usize, 2usize);
    let (left, right, top, bottom) = (70.0, 20.0, 50.0, 60.0);
    let mut canvas = Canvas::new(width, height, [255, 255, 255]);
    let n = series
        .iter()
        .map(|s| s.mean.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let points = || {
        series.iter().flat_map(|s| {
            s.mean
                .iter()
                .zip(s.error)
                .flat_map(|(&m, &e)| [m - e, m + e])
                .filter(|v| v.is_finite())
        })
    };
    let (mut lo, mut hi) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        (lo, hi) = (lo - 0.5, hi + 0.5);
    }
    let pad = 0.05 * (hi - lo);
    (lo, hi) = (lo - pad, hi + pad);
    let plot_w = width as f64 - left - right;
    let plot_h = height as f64 - top - bottom;
    let x_at = |i: usize| {
        if n == 1 {
            left + plot_w / 2.0
        } else {
            left + plot_w * i as f64 / (n - 1) as f64
        }
    };
    let y_at = |v: f64| top + plot_h * (hi - v) / (hi - lo);
    // Horizontal grid lines at round values (steps of 1, 2 or 5 x 10^k, about five).
    let rough = (hi - lo) / 5.0;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= rough)
        .unwrap_or(10.0 * magnitude);
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let first = (lo / step).ceil() as i64;
    for k in first..=(hi / step).floor() as i64 {
        let v = k as f64 * step;
        let y = y_at(v);
        canvas.line((left, y), (left + plot_w, y), GRID);
        let text = format!("{v:.decimals$}");
        let x = (left as usize).saturating_sub(text.len() * 4 * scale + 6);
        canvas.text(x, (y as usize).saturating_sub(5), &text, scale, INK);
    }
    // Axes and x ticks (every episode, labels thinned to ~10).
    canvas.line((left, top), (left, top + plot_h), INK);
    canvas.line((left, top + plot_h), (left + plot_w, top + plot_h), INK);
    let every = n.div_ceil(10);
    for i in 0..n {
        let x = x_at(i);
        canvas.line((x, top + plot_h), (x, top + plot_h + 5.0), INK);
        if i % every == 0 || i == n - 1 {
            let text = (i + 1).to_string();
            let tx = (x as usize).saturating_sub(text.len() * 2 * scale);
            canvas.text(tx, (top + plot_h + 10.0) as usize, &text, scale, INK);
        }
    }
    let upper = |t: &str| t.to_uppercase();
    let x_text = upper(x_label);
    canvas.text(
        (left + plot_w / 2.0) as usize - x_text.len() * 2 * scale,
        height - 22,
        &x_text,
        scale,
        INK,
    );
    canvas.text(8, (top - 18.0) as usize, &upper(y_label), scale, INK);
    let title = upper(title);
    canvas.text(
        (width / 2).saturating_sub(title.len() * 2 * 3),
        8,
        &title,
        3,
        INK,
    );
    // Series: error bars, lines, point marks.
    for s in series {
        for (i, (&m, &e)) in s.mean.iter().zip(s.error).enumerate() {
            let x = x_at(i);
            if e > 0.0 {
                canvas.line((x, y_at(m - e)), (x, y_at(m + e)), s.colour);
                canvas.line((x - 3.0, y_at(m - e)), (x + 3.0, y_at(m - e)), s.colour);
                canvas.line((x - 3.0, y_at(m + e)), (x + 3.0, y_at(m + e)), s.colour);
            }
            canvas.fill_rect(
                (x as usize).saturating_sub(2),
                (y_at(m) as usize).saturating_sub(2),
                5,
                5,
                s.colour,
            );
            if i + 1 < s.mean.len() {
                let next = s.mean[i + 1];
                for dy in [-0.5, 0.0, 0.5] {
                    canvas.line((x, y_at(m) + dy), (x_at(i + 1), y_at(next) + dy), s.colour);
                }
            }
        }
    }
    // Legend on a white box at the right, halfway down, over whatever it covers.
    let longest = series.iter().map(|s| s.label.len()).max().unwrap_or(0);
    let (box_w, box_h) = (longest * 4 * scale + 44, series.len() * 16 + 10);
    let legend_x = (left + plot_w) as usize - box_w - 10;
    let legend_y = (top + plot_h / 2.0) as usize - box_h / 2;
    canvas.fill_rect(legend_x - 1, legend_y - 1, box_w + 2, box_h + 2, INK);
    canvas.fill_rect(legend_x, legend_y, box_w, box_h, [255, 255, 255]);
    let legend_x = legend_x + 8;
    for (k, s) in series.iter().enumerate() {
        let y = legend_y + 6 + k * 16;
        canvas.fill_rect(legend_x, y + 2, 20, 5, s.colour);
        canvas.text(legend_x + 26, y, &upper(s.label), scale, INK);
    }
    canvas
}

/// What `render` draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// Heatmap of V.
    Value,
    /// Value heatmap with expected-move arrows (entropy beyond [`MAX_ARROW_SIDE`]).
    Policy,
    /// Heatmap of log10 occupancy.
    Occupancy,
    /// Heatmap of the policy entropy `-sum_a pi log pi` (nats).
    Entropy,
}

/// One task of a solve, as read back from its output folder.
pub struct TaskView<'a> {
    /// The map.
    pub grid: &'a Grid,
    /// The action list.
    pub actions: ActionSet,
    /// Slip probability (for sampled trajectories).
    pub slip: f64,
    /// Goal cells of the task.
    pub goals: &'a [usize],
    /// V `[row][col]`.
    pub values: &'a [f32],
    /// pi `[row][col][action]`, when the solve wrote it.
    pub policy: Option<&'a [f32]>,
    /// Occupancy `[row][col]`, when the solve wrote it.
    pub occupancy: Option<&'a [f32]>,
}

impl TaskView<'_> {
    /// Checks what was read back against the map: the slip a probability, the goals on free
    /// cells, every array the map's size, the values on free cells a number or -inf, the
    /// occupancy there finite, and each policy row either NaN (no policy there) or
    /// probabilities in [0, 1] summing to 1 within [`POLICY_ROW_TOLERANCE`]. Errors name the
    /// array (as its file in a solve's folder) and the cell.
    pub fn validate(&self) -> Result<()> {
        let g = self.grid;
        let cells = g.cells();
        let n_actions = self.actions.count();
        let at = |c: usize| format!("X={},Y={}", c % g.width, c / g.width);
        ensure!(
            self.slip.is_finite() && (0.0..=1.0).contains(&self.slip),
            "slip {} is not a probability in [0, 1]",
            self.slip
        );
        for &goal in self.goals {
            ensure!(
                goal < cells && g.free[goal],
                "goal cell {goal} is {} the {}x{} map",
                if goal < cells {
                    "a blocked cell of"
                } else {
                    "off"
                },
                g.width,
                g.height
            );
        }
        ensure!(
            self.values.len() == cells,
            "the values (values.npy) hold {} cells, the map {cells}",
            self.values.len()
        );
        if let Some(c) = (0..cells).find(|&c| {
            let v = self.values[c];
            g.free[c] && (v.is_nan() || v == f32::INFINITY)
        }) {
            bail!(
                "the value (values.npy) at {} is {} (a free cell holds a number, or -inf where \
                 no goal is reachable)",
                at(c),
                self.values[c]
            );
        }
        if let Some(d) = self.occupancy {
            ensure!(
                d.len() == cells,
                "the occupancy (occupancy.npy) holds {} cells, the map {cells}",
                d.len()
            );
            if let Some(c) = (0..cells).find(|&c| g.free[c] && !d[c].is_finite()) {
                bail!(
                    "the occupancy (occupancy.npy) at {} is {} (a free cell holds a number)",
                    at(c),
                    d[c]
                );
            }
        }
        if let Some(p) = self.policy {
            ensure!(
                Some(p.len()) == cells.checked_mul(n_actions),
                "the policy (policy.npy) holds {} numbers, not {cells} cells x {n_actions} \
                 actions",
                p.len()
            );
            for (c, row) in p.chunks_exact(n_actions).enumerate() {
                if row.iter().all(|x| x.is_nan()) {
                    continue;
                }
                if let Some(x) = row.iter().find(|x| !(0.0..=1.0).contains(*x)) {
                    bail!(
                        "the policy (policy.npy) at {} has an entry {x}, not a probability in \
                         [0, 1]",
                        at(c)
                    );
                }
                let sum: f64 = row.iter().map(|&x| x as f64).sum();
                ensure!(
                    (sum - 1.0).abs() <= POLICY_ROW_TOLERANCE,
                    "the policy (policy.npy) at {} sums to {sum}, not 1 (tolerance \
                     {POLICY_ROW_TOLERANCE})",
                    at(c)
                );
            }
        }
        Ok(())
    }
}

/// Pixels per cell, or cells per pixel for maps over [`MAX_SIDE_PX`]: `(scale, block)`.
fn geometry(grid: &Grid) -> (usize, usize) {
    let side = grid.width.max(grid.height);
    if side > MAX_SIDE_PX {
        (1, side.div_ceil(MAX_SIDE_PX))
    } else {
        ((1024 / side).clamp(1, 16), 1)
    }
}

/// Policy entropy per cell (NaN where the policy is NaN).
pub fn entropy(policy: &[f32], n_actions: usize) -> Vec<f32> {
    policy
        .chunks_exact(n_actions)
        .map(|p| {
            if p[0].is_nan() {
                return f32::NAN;
            }
            -p.iter()
                .filter(|&&x| x > 0.0)
                .map(|&x| x * x.ln())
                .sum::<f32>()
        })
        .collect()
}

/// Draws `layer` of `view`; returns the canvas and the (min, max) of the colour scale.
pub fn render(
    view: &TaskView,
    layer: Layer,
    trajectories: Option<(usize, u64)>,
) -> Result<(Canvas, (f64, f64))> {
    view.validate()?;
    if let Some((count, _)) = trajectories {
        ensure!(
            count <= MAX_TRAJECTORIES,
            "--trajectories {count} is over the {MAX_TRAJECTORIES} a picture draws"
        );
    }
    let g = view.grid;
    let n_actions = view.actions.count();
    let need_policy = || {
        view.policy
            .context("this layer needs policy.npy (solve without --no-policy)")
    };
    let arrows = layer == Layer::Policy && g.width.max(g.height) <= MAX_ARROW_SIDE;
    let scalar: Vec<f32> = match layer {
        Layer::Value => view.values.to_vec(),
        Layer::Policy if arrows => view.values.to_vec(),
        Layer::Policy | Layer::Entropy => entropy(need_policy()?, n_actions),
        Layer::Occupancy => view
            .occupancy
            .context("this layer needs occupancy.npy (solve with --occupancy)")?
            .iter()
            .map(|&d| if d > 0.0 { d.log10() } else { f32::NAN })
            .collect(),
    };
    let is_goal = |c: usize| view.goals.contains(&c);
    // Colour scale over free, non-goal cells with a finite value.
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for (c, &v) in scalar.iter().enumerate() {
        if g.free[c] && !is_goal(c) && v.is_finite() {
            lo = lo.min(v as f64);
            hi = hi.max(v as f64);
        }
    }
    if lo > hi {
        (lo, hi) = (0.0, 0.0);
    }
    let colour = |v: f32| -> [u8; 3] {
        if !v.is_finite() {
            NO_VALUE
        } else if hi > lo {
            viridis((v as f64 - lo) / (hi - lo))
        } else {
            viridis(0.5)
        }
    };
    let (scale, block) = geometry(g);
    let (map_w, map_h) = (
        g.width.div_ceil(block) * scale,
        g.height.div_ceil(block) * scale,
    );
    let legend_w = map_w.max(160);
    let (bar_y, label_y) = (map_h + 8, map_h + 8 + 16 + 4);
    let mut canvas = Canvas::new(legend_w, label_y + 14, [255, 255, 255]);
    // Map area: each pixel block covers block x block cells.
    for by in 0..g.height.div_ceil(block) {
        for bx in 0..g.width.div_ceil(block) {
            let (mut sum, mut count, mut any_free, mut goal) = (0.0f64, 0usize, false, false);
            for r in by * block..((by + 1) * block).min(g.height) {
                for c in bx * block..((bx + 1) * block).min(g.width) {
                    let cell = r * g.width + c;
                    if !g.free[cell] {
                        continue;
                    }
                    any_free = true;
                    goal |= is_goal(cell);
                    if scalar[cell].is_finite() {
                        sum += scalar[cell] as f64;
                        count += 1;
                    }
                }
            }
            let c = if goal {
                GOAL
            } else if !any_free {
                WALL
            } else if count == 0 {
                NO_VALUE
            } else {
                colour((sum / count as f64) as f32)
            };
            canvas.fill_rect(bx * scale, by * scale, scale, scale, c);
        }
    }
    if arrows {
        let policy = need_policy()?;
        let moves = view.actions.moves();
        let mask = g.move_mask(&view.actions);
        for cell in (0..g.cells()).filter(|&c| g.free[c] && !is_goal(c)) {
            let p = &policy[cell * n_actions..(cell + 1) * n_actions];
            if p[0].is_nan() {
                continue;
            }
            let (mut dx, mut dy) = (0.0, 0.0);
            // The expected displacement: blocked moves stay put.
            for (a, &m) in moves
                .iter()
                .enumerate()
                .filter(|&(a, _)| mask[cell] & (1 << a) != 0)
            {
                dx += p[a] as f64 * MOVE_OFFSETS[m].1 as f64;
                dy += p[a] as f64 * MOVE_OFFSETS[m].0 as f64;
            }
            let centre = (
                ((cell % g.width) as f64 + 0.5) * scale as f64,
                ((cell / g.width) as f64 + 0.5) * scale as f64,
            );
            let tip = (
                centre.0 + dx * 0.45 * scale as f64,
                centre.1 + dy * 0.45 * scale as f64,
            );
            canvas.line(centre, tip, ARROW);
            canvas.fill_rect(
                tip.0.max(0.0) as usize,
                tip.1.max(0.0) as usize,
                2,
                2,
                ARROW,
            );
        }
    }
    if let Some((count, seed)) = trajectories {
        let policy = need_policy()?;
        let at = |c: usize| {
            (
                ((c % g.width) as f64 + 0.5) * scale as f64 / block as f64,
                ((c / g.width) as f64 + 0.5) * scale as f64 / block as f64,
            )
        };
        // Each path drawn as it is sampled: only one is held at a time.
        for_each_path(view, policy, count, seed, |path| {
            for w in path.windows(2) {
                canvas.line(at(w[0]), at(w[1]), TRAJECTORY);
            }
        });
    }
    // Legend: the colour bar from min (left) to max (right), the range written under it.
    for x in 0..legend_w {
        let c = viridis(x as f64 / (legend_w - 1).max(1) as f64);
        canvas.fill_rect(x, bar_y, 1, 16, c);
    }
    let (lo_text, hi_text) = (format!("{lo:.4e}"), format!("{hi:.4e}"));
    canvas.text(0, label_y, &lo_text, 2, [0, 0, 0]);
    canvas.text(
        legend_w.saturating_sub(hi_text.len() * 8),
        label_y,
        &hi_text,
        2,
        [0, 0, 0],
    );
    Ok((canvas, (lo, hi)))
}

/// Trajectories from seeded random free starts following `policy` with the grid's slip
/// dynamics, until a goal or `4 (H + W)` steps: cells visited, in order.
pub fn sample_paths(view: &TaskView, policy: &[f32], count: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut paths = Vec::new();
    for_each_path(view, policy, count, seed, |path| paths.push(path.to_vec()));
    paths
}

/// [`sample_paths`], handing each path to `draw` as it is sampled instead of keeping them.
fn for_each_path(
    view: &TaskView,
    policy: &[f32],
    count: usize,
    seed: u64,
    mut draw: impl FnMut(&[usize]),
) {
    let g = view.grid;
    let moves = view.actions.moves();
    let n = moves.len();
    let mask = g.move_mask(&view.actions);
    let starts: Vec<usize> = (0..g.cells())
        .filter(|&c| g.free[c] && !view.goals.contains(&c) && !policy[c * n].is_nan())
        .collect();
    let mut rng = StdRng::seed_from_u64(seed);
    if starts.is_empty() {
        return;
    }
    let mut path = Vec::new();
    for _ in 0..count {
        let mut cell = starts[rng.random_range(0..starts.len())];
        path.clear();
        path.push(cell);
        for _ in 0..4 * (g.width + g.height) {
            if view.goals.contains(&cell) || policy[cell * n].is_nan() {
                break;
            }
            let p = &policy[cell * n..(cell + 1) * n];
            let u: f32 = rng.random();
            let mut a = n - 1;
            let mut acc = 0.0;
            for (k, &pk) in p.iter().enumerate() {
                acc += pk;
                if u < acc {
                    a = k;
                    break;
                }
            }
            // A slip outside [0, 1] (refused by `TaskView::validate`) never slips here.
            if (0.0..=1.0).contains(&view.slip) && rng.random_bool(view.slip) {
                a = rng.random_range(0..n);
            }
            cell = g.destination(cell, mask[cell], &moves, a);
            path.push(cell);
        }
        draw(&path);
    }
}

/// Writes `canvas` as a PNG at `path` through a temporary file.
pub fn write_png(canvas: &Canvas, path: &Path) -> Result<()> {
    let bytes = canvas.encode_png()?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    ensure!(
        !name.is_empty(),
        "--out {} is not a file name",
        path.display()
    );
    let temp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    if let Err(e) = std::fs::write(&temp, bytes) {
        // A full disk leaves a partial file: not ours to keep.
        let _ = std::fs::remove_file(&temp);
        return Err(Error::io("cannot write", &temp, e));
    }
    if let Err(e) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(Error::io("cannot move into place", path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viridis_ends_and_font_cover_number_formats() {
        assert_eq!(viridis(0.0), [68, 1, 84]);
        assert_eq!(viridis(1.0), [253, 231, 37]);
        assert_eq!(viridis(-3.0), viridis(0.0));
        for ch in format!("{:.4e}{:.4e}", -12.5f64, 0.003f64).chars() {
            assert!(glyph(ch).iter().any(|&r| r != 0), "no glyph for {ch:?}");
        }
    }
}
